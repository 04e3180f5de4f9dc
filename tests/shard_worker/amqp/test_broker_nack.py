"""The nack storm, against the real RabbitMQ: a queue that rejects publishes (x-max-length with
x-overflow reject-publish) is bound to a published key beside an ordinary queue."""

from __future__ import annotations

from shard_worker import spectacles
from supervisor.simulator import SimulatorThread
from tests.helpers import TOKEN, WorkerThread, wait_for, worker_config

EVENTS = 200


def test_a_queue_that_rejects_publishes_does_not_flood_the_others(amqp_url, rabbit, group):
    rabbit.track(spectacles.shard_queue(group, 0), spectacles.send_queue(group))
    rabbit.declare_exchange(group)
    guard = f"{group}:guarded:MESSAGE_CREATE"
    rabbit.channel.queue_declare(guard, durable=True, arguments={"x-max-length": 1, "x-overflow": "reject-publish"})
    rabbit.channel.queue_bind(guard, group, "MESSAGE_CREATE")
    rabbit.queues.append(guard)
    plain = f"{group}:plain:MESSAGE_CREATE"
    rabbit.bind(group, plain, "MESSAGE_CREATE")
    with SimulatorThread(token=TOKEN, shard_count=1, heartbeat_interval_ms=1000) as sim:
        with WorkerThread(worker_config(sim, amqp_url, group, [0], events=frozenset({"MESSAGE_CREATE"}))) as worker:
            sim.wait_until(lambda s: 0 in s["ready"], timeout=30)
            sim.call("emit", 0, EVENTS, "MESSAGE_CREATE")
            bridge = worker.worker.bridge
            # the broker's verdict is honoured: the buffer drains (each message tried at most 4 times)
            wait_for(lambda: bridge.counters().get("refused", 0) >= EVENTS - 1 and bridge.buffered == 0, 60,
                     interval=0.2, what="every refused message settled")  # fmt: skip
            counters = bridge.counters()
    got = rabbit.get_all(plain, expect=EVENTS, timeout=20)
    ids = [props.message_id for _, props, _ in got]
    assert len(set(ids)) == EVENTS  # the ordinary queue has every event...
    assert len(ids) <= EVENTS * 4  # ...and at most 3 more copies of each, never thousands
    assert counters["nacked"] <= EVENTS * 4
