"""Three supervisors ("hosts") on one RabbitMQ and one Redis, with disjoint shard ranges."""

from __future__ import annotations

import signal
import time
import uuid

import psutil
import redis

from supervisor.simulator import SimulatorThread
from tests.helpers import TOKEN, wait_for
from tests.supervisor.supervisor_process import SupervisorProcess

SHARDS = 24
MAX_CONCURRENCY = 4
RANGES = ["0-7", "8-15", "16-23"]


def accepted(snap):
    return [i for i in snap["identifies"] if i["accepted"]]


def test_three_hosts_share_buckets_and_a_moved_range_resumes(amqp_url, redis_url, group, tmp_path):
    prefix = f"test-{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(redis_url)
    with SimulatorThread(token=TOKEN, shard_count=SHARDS, max_concurrency=MAX_CONCURRENCY, heartbeat_interval_ms=2000) as sim:
        hosts = [
            SupervisorProcess(
                sim, amqp_url, group, tmp_path / f"host{i}", "--shards", shards, "--shards-per-process", "4",
                "--redis-url", redis_url, "--redis-prefix", prefix,
            )  # fmt: skip
            for i, shards in enumerate(RANGES)
        ]
        moved = None
        try:
            snap = sim.wait_until(lambda s: s["ready"] == set(range(SHARDS)), timeout=120)
            assert snap["violations"] == []  # no bucket broken across hosts
            idents = sorted(accepted(snap), key=lambda i: i["time"])
            assert len(idents) == SHARDS
            last: dict[int, float] = {}
            for ident in idents:
                bucket = ident["shard"] % MAX_CONCURRENCY
                assert bucket not in last or ident["time"] - last[bucket] >= 5.0
                last[bucket] = ident["time"]
            assert int(client.zcount(f"{prefix}:identify:log", "-inf", "+inf")) == SHARDS

            # host 1 dies with all its processes; its range starts on a new host and resumes
            wait_for(lambda: all(client.exists(f"{prefix}:session:{SHARDS}:{s}") for s in range(8, 16)), 15)
            sessions = {s: sim.snapshot()["shards"][s]["session_id"] for s in range(8, 16)}
            victim = hosts[1]
            kids = victim.children()
            victim.signal(signal.SIGKILL)
            victim.wait(10)
            psutil.wait_procs(kids, timeout=15)
            moved = SupervisorProcess(
                sim, amqp_url, group, tmp_path / "host3", "--shards", "8-15", "--shards-per-process", "4",
                "--redis-url", redis_url, "--redis-prefix", prefix,
            )  # fmt: skip
            started = time.time()
            snap = sim.wait_until(
                lambda s: {r["shard"] for r in s["resumes"] if r["result"] == "ok" and r["time"] > started} >= set(range(8, 16))
                and s["ready"] == set(range(SHARDS)),
                timeout=60,
            )
            for shard in range(8, 16):
                resume = [r for r in snap["resumes"] if r["shard"] == shard and r["result"] == "ok"][-1]
                assert resume["session_id"] == sessions[shard]
            assert len(accepted(snap)) == SHARDS  # every moved shard resumed: no new identify
            assert snap["violations"] == []
        finally:
            for host in [*hosts, *([moved] if moved else [])]:
                host.stop()
            for key in client.scan_iter(f"{prefix}:*"):
                client.delete(key)
