"""The send budget against the simulator (issue 22): Discord counts every payload a connection
sends, heartbeats included, and closes it with 4008 past 120 in 60 s. With a 5 s heartbeat
interval and a burst of 130 packets queued for one shard, the fixed reserve of 5 slots sent 115
commands at once and the heartbeats that followed crossed the limit (tried: closed with 4008).
The reserve now follows the HELLO's interval: no 4008, the packets wait in order, the
heartbeats are never delayed."""

from __future__ import annotations

import json

from shard_worker import spectacles
from supervisor.simulator import SimulatorThread
from tests.helpers import TOKEN, WorkerThread, wait_for, worker_config

PACKETS = 130


def test_a_burst_with_a_5_s_heartbeat_never_costs_a_4008(amqp_url, rabbit, group):
    with SimulatorThread(token=TOKEN, shard_count=1, heartbeat_interval_ms=5000) as sim:
        rabbit.track(spectacles.shard_queue(group, 0), spectacles.send_queue(group))
        with WorkerThread(worker_config(sim, amqp_url, group, [0])):
            sim.wait_until(lambda s: 0 in s["ready"], timeout=30)
            rabbit.wait_consumed(spectacles.shard_queue(group, 0), spectacles.send_queue(group))
            for n in range(PACKETS):
                presence = {"op": 3, "d": {"since": None, "activities": [], "status": "online", "afk": bool(n % 2)}}
                rabbit.publish(group, "0", json.dumps(presence).encode())

            def presences() -> list[dict]:
                return [r for r in sim.snapshot()["sent"] if r["op"] == 3]

            wait_for(lambda: len(presences()) == PACKETS, 100, interval=0.5, what=f"{PACKETS} presences sent")
            snap = sim.snapshot()
    assert [c["close_code"] for c in snap["connections"] if c["close_code"] == 4008] == []
    assert snap["violations"] == [] and len(snap["connections"]) == 1  # never closed, never reconnected
    sent = sorted(r["time"] for r in snap["sent"] if r["shard"] == 0 or r["op"] in (1, 2))
    assert max(sum(1 for t in sent[i:] if t < start + 60.0) for i, start in enumerate(sent)) <= 120
    afk = [r["d"]["afk"] for r in sorted((r for r in snap["sent"] if r["op"] == 3), key=lambda r: r["time"])]
    assert afk == [bool(n % 2) for n in range(PACKETS)]  # in order
    beats = sorted(r["time"] for r in snap["sent"] if r["op"] == 1)
    assert max(b - a for a, b in zip(beats, beats[1:])) < 5.0 + 1.0  # never delayed
