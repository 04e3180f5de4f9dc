"""RATE_LIMITED (issue 22, item 4): Discord's answer (2025) when an op 8 asks for every member
of a guild more than once per 30 s. It is an op 0 dispatch like any other, so it is published
(routing key ``RATE_LIMITED``, its ``d`` byte for byte, with ``opcode``, ``retry_after`` and
``meta.guild_id`` / ``meta.nonce`` for the requester to match), and counted by opcode."""

from __future__ import annotations

import json

from shard_worker import spectacles
from supervisor.simulator import SimulatorThread
from supervisor.simulator.payloads import guild_ids_for_shard
from tests.helpers import TOKEN, WorkerThread, worker_config


def test_an_all_members_request_asked_twice_is_answered_rate_limited_and_published(amqp_url, rabbit, group):
    with SimulatorThread(token=TOKEN, shard_count=1, heartbeat_interval_ms=20000) as sim:
        limited_queue = spectacles.queue_name(group, "RATE_LIMITED", "test")
        chunks = spectacles.queue_name(group, "GUILD_MEMBERS_CHUNK", "test")
        rabbit.bind(group, limited_queue, "RATE_LIMITED")
        rabbit.bind(group, chunks, "GUILD_MEMBERS_CHUNK")
        rabbit.track(spectacles.shard_queue(group, 0), spectacles.send_queue(group))
        guild = str(guild_ids_for_shard(0, 1, 1)[0])
        with WorkerThread(worker_config(sim, amqp_url, group, [0])) as worker:
            sim.wait_until(lambda s: 0 in s["ready"], timeout=30)
            rabbit.wait_consumed(spectacles.shard_queue(group, 0), spectacles.send_queue(group))
            for nonce in ("first", "second"):
                request = {"guild_id": guild, "packet": {"op": 8, "d": {"guild_id": guild, "query": "", "limit": 0, "nonce": nonce}}}
                rabbit.publish(group, "SEND", json.dumps(request).encode())
            [(_, props, body)] = rabbit.get_all(limited_queue, expect=1, timeout=20)
            counted = worker.call(lambda: dict(worker.worker.rate_limited_by_opcode))
        assert sim.snapshot()["counters"]["rate_limited"] == 1
    d = json.loads(body)
    assert d["opcode"] == 8 and 0 < d["retry_after"] <= 30.0
    assert d["meta"] == {"guild_id": guild, "nonce": "second"}  # the refused request, by its nonce
    assert props.headers["shard_id"] == 0
    assert [json.loads(b).get("nonce") for _, _, b in rabbit.get_all(chunks, expect=1)] == ["first"]
    assert counted == {"8": 1}
