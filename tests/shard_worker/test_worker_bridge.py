"""The worker end to end: simulator → worker → real RabbitMQ, and RabbitMQ → worker → simulator."""

from __future__ import annotations

import json

import pytest

from shard_worker import spectacles
from supervisor.simulator import SimulatorThread
from supervisor.simulator.payloads import DISPATCH_TYPES
from tests.helpers import TOKEN, WorkerThread, wait_for, worker_config

EVENTS = DISPATCH_TYPES


def bind_events(rabbit, group: str) -> dict[str, str]:
    queues = {}
    for event in EVENTS:
        queue = spectacles.queue_name(group, event, "test")
        rabbit.bind(group, queue, event)
        queues[event] = queue
    return queues


@pytest.mark.parametrize("compress, fragment", [(True, False), (True, True), (False, False)])
def test_every_dispatch_reaches_its_queue_with_body_equal_to_d(amqp_url, rabbit, group, compress, fragment):
    per_shard = 300
    with SimulatorThread(token=TOKEN, shard_count=2, events_per_shard=per_shard, heartbeat_interval_ms=2000, fragment=fragment) as sim:
        queues = bind_events(rabbit, group)
        config = worker_config(sim, amqp_url, group, [0, 1], compress=compress)
        with WorkerThread(config) as worker:
            snap = sim.wait_until(lambda s: all(len(s["dispatched"].get(i, [])) >= 1 + 2 + per_shard for i in (0, 1)), timeout=60)
            wait_for(lambda: worker.call(lambda: worker.worker.bridge.buffered) == 0 and worker.worker.bridge.confirmed >= 2 * (per_shard + 3), 30, what="confirms")
            sent = {}
            for shard in (0, 1):
                session_id = snap["shards"][shard]["session_id"]
                for frame in sim.call("history", session_id):
                    sent[spectacles.message_id(shard, session_id, frame["s"])] = frame
            assert len(sent) == 2 * (per_shard + 3)
            got = {}
            for event, queue in queues.items():
                for method, props, body in rabbit.get_all(queue):
                    assert method.routing_key == event
                    assert props.content_type == "application/json"
                    assert props.delivery_mode == 2
                    assert props.headers[spectacles.SHARD_HEADER] == int(props.message_id.split(":")[0])
                    got[props.message_id] = (event, json.loads(body))
            assert set(got) == set(sent), "every dispatch once, nothing else"
            for message_id, (event, body) in got.items():
                assert sent[message_id]["t"] == event
                assert body == sent[message_id]["d"]
            assert worker.stop() == 0
    conns = snap["connections"]
    assert all(c["compress"] == compress for c in conns)


def test_only_op0_is_published_and_events_filter_applies(amqp_url, rabbit, group):
    with SimulatorThread(token=TOKEN, shard_count=1, events_per_shard=200, heartbeat_interval_ms=500) as sim:
        queues = bind_events(rabbit, group)
        config = worker_config(sim, amqp_url, group, [0], events=frozenset({"MESSAGE_CREATE", "READY"}))
        with WorkerThread(config) as worker:
            snap = sim.wait_until(lambda s: len(s["dispatched"].get(0, [])) >= 203, timeout=60)
            # a few heartbeats/ACKs went by: none of them may be published
            sim.wait_until(lambda s: sum(1 for r in s["sent"] if r["op"] == 1) >= 3, timeout=20)
            wait_for(lambda: worker.call(lambda: worker.worker.bridge.buffered) == 0, 30)
            expected = sum(1 for _, _, t in snap["dispatched"][0] if t in ("MESSAGE_CREATE", "READY"))
            stats = worker.call(lambda: worker.worker.bridge.counters())
            assert stats["published"] == expected
        assert len(rabbit.get_all(queues["MESSAGE_CREATE"])) == expected - 1
        assert len(rabbit.get_all(queues["READY"])) == 1
        for event in ("GUILD_CREATE", "TYPING_START", "PRESENCE_UPDATE", "GUILD_MEMBER_UPDATE"):
            assert rabbit.get_all(queues[event]) == []


def test_outbound_shard_and_send_packets_reach_the_right_shard(amqp_url, rabbit, group):
    from supervisor.simulator.payloads import guild_ids_for_shard

    with SimulatorThread(token=TOKEN, shard_count=4, heartbeat_interval_ms=2000, max_concurrency=4) as sim:
        rabbit.bind(group, spectacles.shard_queue(group, 3), "3")  # another process's shard 3
        config = worker_config(sim, amqp_url, group, [0, 1])
        with WorkerThread(config):
            sim.wait_until(lambda s: {0, 1} <= s["ready"], timeout=30)
            rabbit.track(spectacles.shard_queue(group, 0), spectacles.shard_queue(group, 1), spectacles.send_queue(group))
            rabbit.wait_consumed(spectacles.shard_queue(group, 1), spectacles.send_queue(group))
            # a guild shard 1 owns (a shard packet goes to its guild's owner: see test_worker_reshard)
            guild1 = guild_ids_for_shard(1, 4, 1)[0]
            voice = {"op": 4, "d": {"guild_id": str(guild1), "channel_id": None, "self_mute": False, "self_deaf": False}}
            rabbit.publish(group, "1", json.dumps(voice).encode())
            guild0 = guild_ids_for_shard(0, 4, 1)[0]
            guild3 = guild_ids_for_shard(3, 4, 1)[0]
            members = {"op": 8, "d": {"guild_id": str(guild0), "query": "", "limit": 0}}
            rabbit.publish(group, "SEND", json.dumps({"guild_id": str(guild0), "packet": members}).encode())
            presence = {"op": 3, "d": {"since": None, "activities": [], "status": "idle", "afk": False}}
            rabbit.publish(group, "SEND", json.dumps({"guild_id": guild3, "packet": presence}).encode())

            snap = sim.wait_until(
                lambda s: any(r["op"] == 4 for r in s["sent"]) and any(r["op"] == 8 for r in s["sent"]), timeout=20
            )
            by_op = {r["op"]: r for r in snap["sent"] if r["op"] in (3, 4, 8)}
            assert by_op[4]["shard"] == 1 and by_op[4]["d"] == voice["d"]
            assert by_op[8]["shard"] == 0 and by_op[8]["d"] == members["d"]
            assert 3 not in by_op  # shard 3 is not ours: re-published instead
            [(method, _, body)] = rabbit.get_all(spectacles.shard_queue(group, 3), expect=1)
            assert method.routing_key == "3" and json.loads(body) == presence
            # acked: nothing is left waiting on our queues
            wait_for(lambda: all(rabbit.depth(q) == 0 for q in (spectacles.shard_queue(group, 1), spectacles.send_queue(group))), 10)


BAD_INPUTS = [
    ("shard", b"not json", "not_json"),
    ("shard", b"[1,2,3]", "not_an_object"),
    ("shard", b'{"op": 2, "d": {"token": "hijack"}}', "reserved_op"),
    ("shard", b'{"op": 1, "d": 5}', "reserved_op"),
    ("shard", b'{"op": 6, "d": {}}', "reserved_op"),
    ("shard", b'{"op": 77, "d": {}}', "unknown_op"),
    ("shard", json.dumps({"op": 3, "d": "x" * 5000}).encode(), "oversize"),
    ("send", b'{"guild_id": "abc", "packet": {"op": 3, "d": {}}}', "bad_guild_id"),
    ("send", b'{"packet": {"op": 3, "d": {}}}', "bad_guild_id"),
    ("send", b"\x00\xff", "not_json"),
]


def test_bad_outbound_input_is_rejected_counted_and_the_next_packet_goes(amqp_url, rabbit, group):
    with SimulatorThread(token=TOKEN, shard_count=1, heartbeat_interval_ms=2000) as sim:
        config = worker_config(sim, amqp_url, group, [0])
        with WorkerThread(config) as worker:
            sim.wait_until(lambda s: 0 in s["ready"], timeout=30)
            rabbit.wait_consumed(spectacles.shard_queue(group, 0), spectacles.send_queue(group))
            rabbit.track(spectacles.shard_queue(group, 0), spectacles.send_queue(group))
            for where, body, _ in BAD_INPUTS:
                rabbit.publish(group, "0" if where == "shard" else "SEND", body)
            good = {"op": 3, "d": {"since": None, "activities": [], "status": "online", "afk": False}}
            rabbit.publish(group, "0", json.dumps(good).encode())
            snap = sim.wait_until(lambda s: any(r["op"] == 3 for r in s["sent"]), timeout=20)
            assert [r["d"] for r in snap["sent"] if r["op"] == 3] == [good["d"]]
            assert not any(r["op"] in (2,) and r["d"].get("token") == "hijack" for r in snap["sent"])
            rejected = wait_for(lambda: (r := worker.call(lambda: dict(worker.worker.bridge.rejected))) and sum(r.values()) == len(BAD_INPUTS) and r, 10)
            expected: dict[str, int] = {}
            for _, _, reason in BAD_INPUTS:
                expected[reason] = expected.get(reason, 0) + 1
            assert rejected == expected
            # rejected without requeue: the queues are empty, the worker still runs
            assert rabbit.depth(spectacles.shard_queue(group, 0)) == 0
            assert rabbit.depth(spectacles.send_queue(group)) == 0
            assert worker.alive
            assert snap["violations"] == []
