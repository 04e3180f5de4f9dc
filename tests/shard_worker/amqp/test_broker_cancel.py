"""RabbitMQ cancels a consumer (its queue was deleted): the worker declares and consumes it again,
against the real broker and the simulator."""

from __future__ import annotations

import json

from shard_worker import spectacles
from supervisor.simulator import SimulatorThread
from tests.helpers import TOKEN, WorkerThread, wait_for, worker_config


def test_a_deleted_shard_queue_is_declared_and_consumed_again(amqp_url, rabbit, group):
    rabbit.track(*(spectacles.shard_queue(group, s) for s in range(2)), spectacles.send_queue(group))
    with SimulatorThread(token=TOKEN, shard_count=2, max_concurrency=2, heartbeat_interval_ms=1000) as sim:
        with WorkerThread(worker_config(sim, amqp_url, group, [0, 1])) as worker:
            sim.wait_until(lambda s: s["ready"] == {0, 1}, timeout=30)
            bridge = worker.worker.bridge
            # both shard queues consumed (READY at the simulator comes before the worker's consumers)
            rabbit.wait_consumed(*(spectacles.shard_queue(group, s) for s in range(2)))
            rabbit.channel.queue_delete(spectacles.shard_queue(group, 1))  # the broker cancels our consumer
            wait_for(lambda: bridge.counters().get("consumer_cancels") == 1, 10, what="the cancel seen")
            # the queue is back, bound and consumed: packets published to shard 1 reach Discord. Wait
            # for its consumer, not only for the queue: the worker binds between the two, and a packet
            # published before the binding is unroutable (dropped by the exchange, not the worker)
            wait_for(lambda: _consumers(rabbit, spectacles.shard_queue(group, 1)) == 1, 10, what="the queue consumed again")
            for i in range(20):
                presence = {"op": 3, "d": {"since": i, "activities": [], "status": "online", "afk": False}}
                rabbit.publish(group, "1", json.dumps(presence).encode())
            snap = sim.wait_until(lambda s: len([p for p in s["sent"] if p["shard"] == 1 and p["op"] == 3]) == 20, timeout=20)
            assert {p["d"]["since"] for p in snap["sent"] if p["shard"] == 1 and p["op"] == 3} == set(range(20))
            assert bridge.connected.is_set()


def _consumers(rabbit, queue: str) -> int | None:
    """The consumer count of ``queue``; None while it does not exist."""
    import pika

    channel = rabbit.connection.channel()
    try:
        return channel.queue_declare(queue, passive=True).method.consumer_count
    except pika.exceptions.ChannelClosedByBroker:
        return None
    finally:
        if channel.is_open:
            channel.close()
