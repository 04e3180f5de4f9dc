"""Issue 11: Redis faults mid-run, with real supervisors, the simulator and the real Redis.

- Defect 5, a hung Redis (accepts, never answers): it used to stall the supervisor's single loop
  for the 2 s socket timeout per call, so ``status`` timed out and children were replaced for
  heartbeat timeouts. Now Redis is called off the loop (:mod:`supervisor.coord.shared_state`).
- Redis unreachable, then back empty as after a restart (its data lost): running shards are not
  disturbed, RESUMEs work, identifies wait for the shared lock and then continue.

Redis is reached through a proxy the test freezes or cuts (:mod:`tests.redis_faults`); the shared
Redis server itself is never stopped.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from urllib.parse import urlsplit

import redis

from supervisor.simulator import SimulatorThread
from tests.helpers import TOKEN, wait_for
from tests.redis_faults import FreezingProxy
from tests.supervisor.supervisor_process import SupervisorProcess

SHARDS = 8
MAX_CONCURRENCY = 4
#: shards 0-3 (one per bucket) lose their session during the fault and must identify anew
INVALIDATED = [0, 1, 2, 3]
#: the process of shards 4-5 is killed with -9 during the fault and must resume them
KILLED = [4, 5]
UNTOUCHED = [6, 7]


def accepted(snap, shards):
    return [i for i in snap["identifies"] if i["accepted"] and i["shard"] in shards]


def timed_status(sup: SupervisorProcess) -> tuple[float, subprocess.CompletedProcess]:
    """``spectacles-supervisor status --json`` as an operator runs it (its own 5 s timeout)."""
    started = time.monotonic()
    done = sup.cli("status", "--json")
    return time.monotonic() - started, done


def start(sim, amqp_url, group, tmp_path, proxy, prefix) -> SupervisorProcess:
    return SupervisorProcess(
        sim, amqp_url, group, tmp_path / "state", "--shards-per-process", "2", "--child-timeout", "10",
        "--redis-url", f"redis://127.0.0.1:{proxy.port}/0", "--redis-prefix", prefix,
    )  # fmt: skip


def pid_of(sup: SupervisorProcess, shards: str) -> int:
    status = json.loads(sup.cli("status", "--json").stdout)
    return next(g["pid"] for g in status["groups"] if g["shards"] == shards)


def ready_and_saved(sim, client, prefix):
    sim.wait_until(lambda s: s["ready"] == set(range(SHARDS)), timeout=90)
    wait_for(lambda: all(client.exists(f"{prefix}:session:{SHARDS}:{s}") for s in range(SHARDS)), 15, what="sessions in Redis")
    return sim.snapshot()


def test_a_hung_redis_stalls_nothing_but_identifies(amqp_url, redis_url, group, tmp_path):
    prefix = f"test-{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(redis_url)
    target = urlsplit(redis_url)
    with FreezingProxy(target.hostname or "127.0.0.1", target.port or 6379) as proxy, SimulatorThread(
        token=TOKEN, shard_count=SHARDS, max_concurrency=MAX_CONCURRENCY, heartbeat_interval_ms=2000
    ) as sim:
        sup = start(sim, amqp_url, group, tmp_path, proxy, prefix)
        try:
            before = ready_and_saved(sim, client, prefix)
            victim = pid_of(sup, "4-5")
            kids_before = {c.pid for c in sup.children()}

            proxy.freeze()  # Redis accepts and never answers from now on
            frozen_at = time.time()
            time.sleep(1.0)
            for shard in INVALIDATED:
                sim.call("invalidate_session", shard, False)
            os.kill(victim, signal.SIGKILL)
            killed_at = time.time()

            # status answers on every try, promptly, while identifies wait on Redis
            answers = []
            for _ in range(5):
                took, done = timed_status(sup)
                assert done.returncode == 0, done.stderr
                answers.append(took)
                time.sleep(4.0)
            print(f"\nstatus answered in {', '.join(f'{t:.2f}' for t in answers)} s with Redis hung")
            assert max(answers) < 4.0
            status = json.loads(done.stdout)
            assert status["redis"]["answering"] is False

            # the killed child's shards resumed without Redis; no identify without the shared lock
            snap = sim.snapshot()
            resumed = {r["shard"] for r in snap["resumes"] if r["result"] == "ok" and r["time"] > killed_at}
            assert resumed >= set(KILLED)
            assert accepted(snap, INVALIDATED) == accepted(before, INVALIDATED)
            assert all(i["time"] < frozen_at for i in snap["identifies"])
            output = sup.output()
            assert "no heartbeat" not in output  # no child replaced for a stalled loop
            assert set(sup.children()) and {c.pid for c in sup.children()} - kids_before != set()
            assert "Redis unavailable" in output

            # Redis answers again: the identifies go through
            proxy.restore()
            restored = time.monotonic()
            snap = sim.wait_until(
                lambda s: len(accepted(s, INVALIDATED)) == 2 * len(INVALIDATED) and s["ready"] == set(range(SHARDS)),
                timeout=90,
            )
            print(f"identifies continued {time.monotonic() - restored:.1f} s after Redis answered again")
            assert snap["violations"] == []
            for shard in UNTOUCHED:  # never disturbed
                assert snap["shards"][shard]["session_id"] == before["shards"][shard]["session_id"]
                assert snap["shards"][shard]["connection"] == before["shards"][shard]["connection"]
            assert "no heartbeat" not in sup.output()
            assert sup.proc.poll() is None
        finally:
            proxy.restore()
            sup.stop()
            for key in client.scan_iter(f"{prefix}:*"):
                client.delete(key)


def test_redis_unreachable_then_back_empty_as_after_a_restart(amqp_url, redis_url, group, tmp_path):
    prefix = f"test-{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(redis_url)
    target = urlsplit(redis_url)
    with FreezingProxy(target.hostname or "127.0.0.1", target.port or 6379) as proxy, SimulatorThread(
        token=TOKEN, shard_count=SHARDS, max_concurrency=MAX_CONCURRENCY, heartbeat_interval_ms=2000
    ) as sim:
        sup = start(sim, amqp_url, group, tmp_path, proxy, prefix)
        try:
            before = ready_and_saved(sim, client, prefix)
            victim = pid_of(sup, "4-5")

            proxy.cut()  # connections reset, new ones refused
            cut_at = time.time()
            time.sleep(1.0)
            for shard in INVALIDATED:
                sim.call("invalidate_session", shard, False)
            os.kill(victim, signal.SIGKILL)
            killed_at = time.time()
            snap = sim.wait_until(
                lambda s: {r["shard"] for r in s["resumes"] if r["result"] == "ok" and r["time"] > killed_at} >= set(KILLED),
                timeout=30,
            )
            took, done = timed_status(sup)
            assert done.returncode == 0 and took < 4.0
            time.sleep(8.0)  # identifies wait: never one without the shared lock
            snap = sim.snapshot()
            assert accepted(snap, INVALIDATED) == accepted(before, INVALIDATED)
            assert all(i["time"] < cut_at for i in snap["identifies"])

            # Redis comes back empty, as a restarted Redis without persistence would
            for key in client.scan_iter(f"{prefix}:*"):
                client.delete(key)
            proxy.restore()
            restored = time.monotonic()
            snap = sim.wait_until(
                lambda s: len(accepted(s, INVALIDATED)) == 2 * len(INVALIDATED) and s["ready"] == set(range(SHARDS)),
                timeout=90,
            )
            print(f"\nidentifies continued {time.monotonic() - restored:.1f} s after Redis came back")
            # the budget was refreshed from Discord (not taken as unlimited), the sessions saved again
            remaining = snap["session_start_limit"]["remaining"]
            wait_for(lambda: client.get(f"{prefix}:identify:remaining") is not None, 10)
            assert int(client.get(f"{prefix}:identify:remaining")) == remaining
            wait_for(lambda: all(client.exists(f"{prefix}:session:{SHARDS}:{s}") for s in range(SHARDS)), 15, what="sessions saved again")
            assert snap["violations"] == []
            for shard in UNTOUCHED:
                assert snap["shards"][shard]["session_id"] == before["shards"][shard]["session_id"]
                assert snap["shards"][shard]["connection"] == before["shards"][shard]["connection"]
            output = sup.output()
            assert "no heartbeat" not in output and "Traceback" not in output
            assert "Redis answers again" in output
            assert sup.proc.poll() is None
        finally:
            proxy.restore()
            sup.stop()
            for key in client.scan_iter(f"{prefix}:*"):
                client.delete(key)
