"""Identify options a large bot sets (issue 22, item 5), against the simulator: the initial
presence, ``large_threshold`` and a further field Discord added (``capabilities``) reach
Discord in the IDENTIFY of every shard, beside the fields the worker owns."""

from __future__ import annotations

from supervisor.simulator import SimulatorThread
from tests.helpers import TOKEN, WorkerThread, worker_config

PRESENCE = {"since": None, "activities": [{"name": "the shards", "type": 3}], "status": "idle", "afk": False}


def test_every_identify_carries_the_options(amqp_url, rabbit, group):
    with SimulatorThread(token=TOKEN, shard_count=2, max_concurrency=2, heartbeat_interval_ms=20000) as sim:
        config = worker_config(sim, amqp_url, group, [0, 1], large_threshold=120, presence=PRESENCE,
                               identify_extra={"capabilities": 16381})  # fmt: skip
        with WorkerThread(config):
            sim.wait_until(lambda s: s["ready"] == {0, 1}, timeout=30)
            snap = sim.snapshot()
    identifies = [r for r in snap["sent"] if r["op"] == 2]
    assert snap["violations"] == []
    assert sorted(r["d"]["shard"] for r in identifies) == [[0, 2], [1, 2]]
    for record in identifies:
        d = record["d"]
        assert d["presence"] == PRESENCE and d["large_threshold"] == 120 and d["capabilities"] == 16381
        assert d["token"] == "<redacted>"  # the simulator's record never keeps it
