"""Commands that span guilds (issue 22), end to end: a SEND of op 31 (Request Soundboard Sounds)
whose ``d.guild_ids`` name guilds of several shards, two worker processes' worth of shards, real
RabbitMQ, the simulator recording what each shard sent. Before, the whole array went to one
shard (tried: guilds on shards 0, 3, 1, 3 all went to shard 0)."""

from __future__ import annotations

import json

from shard_worker import spectacles
from supervisor.simulator import SimulatorThread
from supervisor.simulator.payloads import guild_ids_for_shard
from tests.helpers import TOKEN, WorkerThread, wait_for, worker_config


def test_a_send_for_guilds_of_four_shards_reaches_each_with_its_own_guilds(amqp_url, rabbit, group):
    with SimulatorThread(token=TOKEN, shard_count=4, max_concurrency=4, heartbeat_interval_ms=20000) as sim:
        rabbit.track(spectacles.send_queue(group), *(spectacles.shard_queue(group, s) for s in range(4)))
        on = {s: [str(g) for g in guild_ids_for_shard(s, 4, 2)] for s in range(4)}
        ids = [on[0][0], on[3][0], on[1][0], on[3][1]]
        with WorkerThread(worker_config(sim, amqp_url, group, [0, 1])) as low, WorkerThread(worker_config(sim, amqp_url, group, [2, 3])) as high:
            sim.wait_until(lambda s: s["ready"] == {0, 1, 2, 3}, timeout=30)
            rabbit.wait_consumed(spectacles.send_queue(group), *(spectacles.shard_queue(group, s) for s in range(4)))
            packet = {"op": 31, "d": {"guild_ids": ids}}
            rabbit.publish(group, "SEND", json.dumps({"packet": packet}).encode())
            # and one put in shard 2's queue: split all the same
            rabbit.publish(group, "2", json.dumps({"op": 31, "d": {"guild_ids": [on[1][1], on[2][0]]}}).encode())

            def sent() -> dict[int, list[list[str]]]:
                out: dict[int, list[list[str]]] = {}
                for record in sim.snapshot()["sent"]:
                    if record["op"] == 31:
                        out.setdefault(record["shard"], []).append(record["d"]["guild_ids"])
                return out

            got = wait_for(lambda: (s := sent()) and sum(map(len, s.values())) == 5 and s, 20, what="5 parts sent")
            assert sorted(got[0]) == [[on[0][0]]]
            assert sorted(got[1]) == [[on[1][0]], [on[1][1]]]
            assert got[2] == [[on[2][0]]]
            assert got[3] == [[on[3][0], on[3][1]]]  # its own guilds, in their order
            assert rabbit.depth(spectacles.send_queue(group)) == 0  # the SEND delivery was acked
            parts = sum(w.call(lambda w=w: w.worker.bridge.counters().get("split_parts", 0)) for w in (low, high))
            assert parts >= 2 + 3  # the shard packet's 2 parts, the SEND's 3 (once the owners re-split none)
