"""A live reshard with ``--redis-url``: the new set identifies through the shared buckets and
budget, its sessions reach Redis under the new count, and a supervisor started on another
"host" (a fresh state dir) with the new count resumes all of them from Redis."""

from __future__ import annotations

import signal
import subprocess
import sys
import uuid

import redis

from supervisor.simulator import SimulatorThread
from tests.helpers import TOKEN, wait_for
from tests.supervisor.reshard_watch import reshard_command
from tests.supervisor.supervisor_process import SupervisorProcess


def accepted(snap) -> int:
    return len([i for i in snap["identifies"] if i["accepted"]])


def test_a_reshard_with_redis_saves_the_new_sessions_there(amqp_url, redis_url, group, tmp_path):
    prefix = f"test-{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(redis_url)
    shared = ("--redis-url", redis_url, "--redis-prefix", prefix, "--shards-per-process", "4")
    with SimulatorThread(
        token=TOKEN, shard_count=4, reshardable=True, max_concurrency=4, events_per_shard=-1, rate=5,
        heartbeat_interval_ms=20000,
    ) as sim:  # fmt: skip
        state = tmp_path / "host-a"
        sup = SupervisorProcess(sim, amqp_url, group, state, *shared)
        other = None
        try:
            sim.wait_until(lambda s: s["ready"] == {0, 1, 2, 3}, timeout=60)
            wait_for(lambda: sup.cli("status", "--json").returncode == 0, 10)
            done = subprocess.run(
                [sys.executable, "-m", "supervisor", "reshard", "--shard-count", "8", "--state-dir", str(state)],
                capture_output=True, text=True, timeout=150,
            )  # fmt: skip
            assert done.returncode == 0, done.stdout + done.stderr + sup.output()[-3000:]
            snap = sim.snapshot()
            assert snap["violations"] == [] and accepted(snap) == 4 + 8
            assert int(client.zcount(f"{prefix}:identify:log", "-inf", "+inf")) == 4 + 8  # the shared log
            wait_for(lambda: all(client.exists(f"{prefix}:session:8:{s}") for s in range(8)), 15, what="new sessions in Redis")
            # the old set's sessions ended: nothing may try to resume them
            assert not any(client.exists(f"{prefix}:session:4:{s}") for s in range(4))
            sup.signal(signal.SIGTERM)
            assert sup.wait(20) == 0
            # another host, nothing in its state dir: the new sessions come from Redis
            other = SupervisorProcess(sim, amqp_url, group, tmp_path / "host-b", *shared, "--shard-count", "8")
            sim.wait_until(lambda s: s["ready_sets"].get(8) == list(range(8)), timeout=60)
            snap = sim.snapshot()
            assert accepted(snap) == 4 + 8
            assert len([r for r in snap["resumes"] if r["result"] == "ok"]) == 8
            assert "resuming 8 sessions found in Redis" in other.output()
        finally:
            sup.stop()
            if other is not None:
                other.stop()
            for key in client.scan_iter(f"{prefix}:*"):
                client.delete(key)


def test_the_shared_budget_running_out_aborts_the_reshard(amqp_url, redis_url, group, tmp_path):
    """Another host spends the shared budget down to the reserve while the new set identifies:
    the reshard aborts (it would wait for Discord's reset with two sets connected), the old set
    serves on, ``reshard`` exits 1 with the reason."""
    prefix = f"test-{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(redis_url)
    with SimulatorThread(
        token=TOKEN, shard_count=4, reshardable=True, max_concurrency=2, events_per_shard=-1, rate=5,
        heartbeat_interval_ms=20000,
    ) as sim:  # fmt: skip
        state = tmp_path / "state"
        sup = SupervisorProcess(
            sim, amqp_url, group, state, "--redis-url", redis_url, "--redis-prefix", prefix, "--shards-per-process", "4",
            "--identify-reserve", "5",
        )
        try:
            sim.wait_until(lambda s: s["ready"] == {0, 1, 2, 3}, timeout=60)
            wait_for(lambda: sup.cli("status", "--json").returncode == 0, 10)
            command = reshard_command(state, 8)
            # the first of four bucket rounds of the new set is READY: spend the rest elsewhere
            sim.wait_until(lambda s: len(s["ready_sets"].get(8, [])) >= 1, timeout=60)
            client.set(f"{prefix}:identify:remaining", 5, keepttl=True)
            out, err = command.communicate(timeout=60)
            assert command.returncode == 1, out + err
            assert "reshard aborted: the identify budget ran out (5 left, the reserve)" in err
            wait_for(
                lambda: (r := sim.call("ready_sets"))[4] == [0, 1, 2, 3] and not r.get(8), 20, what="only the old set connected"
            )
            assert sup.proc.poll() is None
            sup.signal(signal.SIGTERM)
            assert sup.wait(20) == 0
        finally:
            sup.stop()
            for key in client.scan_iter(f"{prefix}:*"):
                client.delete(key)
