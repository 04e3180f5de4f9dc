"""``--queue-type quorum`` against the real RabbitMQ: the gateway's queues are quorum queues and
work as before; a queue that exists with the other type stops the worker with exit 2 and one
line saying what to do, instead of a reconnect loop."""

from __future__ import annotations

import json
import logging
import time

import pika
import pytest

from shard_worker import exit_codes, spectacles
from supervisor.simulator import SimulatorThread
from tests.helpers import TOKEN, WorkerThread, wait_for, worker_config

QUORUM = {"x-queue-type": "quorum"}


def queue_type(rabbit, queue: str) -> str:
    """``quorum`` or ``classic``: which declaration RabbitMQ finds equivalent to the queue."""
    channel = rabbit.connection.channel()
    try:
        channel.queue_declare(queue, durable=True, arguments=QUORUM)
        return "quorum"
    except pika.exceptions.ChannelClosedByBroker as error:
        assert error.reply_code == 406, error
        return "classic"
    finally:
        if channel.is_open:
            channel.close()


def test_quorum_queues_are_declared_and_carry_packets(amqp_url, rabbit, group):
    queues = [spectacles.shard_queue(group, s) for s in (0, 1)] + [spectacles.send_queue(group)]
    rabbit.track(*queues)
    events = spectacles.queue_name(group, "all", "quorum")
    rabbit.bind(group, events, "MESSAGE_CREATE")
    with SimulatorThread(token=TOKEN, shard_count=2, max_concurrency=2, heartbeat_interval_ms=2000,
                         events_per_shard=50, rate=100) as sim:  # fmt: skip
        config = worker_config(sim, amqp_url, group, [0, 1], queue_type="quorum")
        with WorkerThread(config) as worker:
            sim.wait_until(lambda s: s["ready"] == {0, 1}, timeout=30)
            bridge = worker.worker.bridge
            wait_for(lambda: bridge._sub is not None, 10, what="consuming")
            rabbit.wait_consumed(spectacles.shard_queue(group, 1), spectacles.send_queue(group))
            assert [queue_type(rabbit, q) for q in queues] == ["quorum"] * 3
            for i in range(5):  # through the shard's queue and through SEND
                presence = {"op": 3, "d": {"since": i, "activities": [], "status": "online", "afk": False}}
                rabbit.publish(group, "1", json.dumps(presence).encode())
                rabbit.publish(group, "SEND", json.dumps({"guild_id": "81384788765712384", "packet": {**presence, "d": {**presence["d"], "since": 100 + i}}}).encode())
            snap = sim.wait_until(lambda s: len([p for p in s["sent"] if p["op"] == 3]) == 10, timeout=30)
            assert {p["d"]["since"] for p in snap["sent"] if p["op"] == 3} == {0, 1, 2, 3, 4, 100, 101, 102, 103, 104}
            sim.wait_until(lambda s: all(len(s["dispatched"].get(k, [])) >= 50 for k in (0, 1)), timeout=30)
            wait_for(lambda: bridge.buffered == 0, 30, what="every event confirmed")
            assert worker.stop() == exit_codes.OK
    assert rabbit.get_all(events), "events are published as with classic queues"


@pytest.mark.parametrize(("existing", "wanted"), [("classic", "quorum"), ("quorum", "classic")])
def test_a_queue_of_the_other_type_stops_the_worker_with_a_clear_error(amqp_url, rabbit, group, caplog, existing, wanted):
    caplog.set_level(logging.INFO, logger="shard_worker")
    shard_queue = spectacles.shard_queue(group, 0)
    rabbit.track(shard_queue, spectacles.send_queue(group))
    rabbit.channel.queue_declare(shard_queue, durable=True, arguments=QUORUM if existing == "quorum" else None)
    with SimulatorThread(token=TOKEN, shard_count=1, heartbeat_interval_ms=2000) as sim:
        worker = WorkerThread(worker_config(sim, amqp_url, group, [0], queue_type=wanted))
        started = time.monotonic()
        with worker:
            code = worker.wait_exit(30)
        exit_s = time.monotonic() - started
    assert code == exit_codes.USAGE  # the supervisor halts on 2: no restart, no reconnect loop
    critical = [r.getMessage() for r in caplog.records if r.levelno == logging.CRITICAL]
    assert critical == [
        f"RabbitMQ: queue {shard_queue!r} exists as a {existing} queue but --queue-type is {wanted}: RabbitMQ "
        f"cannot change the type of a queue. Delete the queue (its messages go with it; e.g. rabbitmqctl "
        f"delete_queue {shard_queue!r}) or start with --queue-type {existing}"
    ]
    messages = [r.getMessage() for r in caplog.records if r.name == "shard_worker.amqp.broker"]
    assert not [m for m in messages if "unavailable" in m or "connection lost" in m], messages
    assert not [m for m in messages if "connected;" in m]  # it never got past the declare
    assert exit_s < 15, "the worker stopped on the first declare"
    assert queue_type(rabbit, shard_queue) == existing  # left as it was
