"""Outbound packets for a shard that is not READY (issue 11, defect 6), against the real RabbitMQ.

Held unacked by the worker, they used to fill the SEND consumer's prefetch (SEND stalled for
every healthy shard of the process) and, held past RabbitMQ's ``consumer_timeout``, made the
broker close the channel. Now RabbitMQ keeps them, in the shard's own durable queue, until the
shard is READY; nothing is held unacked for it meanwhile.
"""

from __future__ import annotations

import asyncio
import json
import threading

from shard_worker import spectacles
from shard_worker.gateway.connection import LocalIdentifyGate, Permit
from supervisor.simulator import SimulatorThread
from tests.helpers import TOKEN, WorkerThread, wait_for, worker_config

PREFETCH = 4


class HoldingGate(LocalIdentifyGate):
    """Grants every shard but the held ones, which wait until ``release``."""

    def __init__(self, max_concurrency: int, held: set[int]) -> None:
        super().__init__(max_concurrency, interval=0.5)
        self.held = held
        self._released = threading.Event()

    def release(self) -> None:
        self._released.set()

    async def acquire(self, shard_id: int) -> Permit:
        while shard_id in self.held and not self._released.is_set():
            await asyncio.sleep(0.05)
        return await super().acquire(shard_id)


def guild_on(shard: int, count: int, n: int) -> int:
    return next(g for g in range((n + 1) << 22, 1 << 40, 1 << 22) if (g >> 22) % count == shard)


def send(group_rabbit, group: str, shard: int, i: int) -> None:
    guild = guild_on(shard, 2, i)
    packet = {"op": 8, "d": {"guild_id": str(guild), "query": f"p{i}", "limit": 0}}
    group_rabbit.publish(group, spectacles.SEND_EVENT, json.dumps({"guild_id": str(guild), "packet": packet}).encode())


def sent_queries(snapshot, shard: int) -> list[str]:
    return [p["d"]["query"] for p in snapshot["sent"] if p["shard"] == shard and p["op"] == 8]


def test_packets_for_a_shard_that_is_not_ready_wait_in_rabbitmq_not_in_the_prefetch(amqp_url, rabbit, group):
    rabbit.track(*(spectacles.shard_queue(group, s) for s in range(2)), spectacles.send_queue(group))
    gate = HoldingGate(1, held={1})
    with SimulatorThread(token=TOKEN, shard_count=2, heartbeat_interval_ms=1000) as sim:
        config = worker_config(sim, amqp_url, group, [0, 1], prefetch=PREFETCH)
        with WorkerThread(config, gate=gate) as worker:
            bridge = worker.worker.bridge
            sim.wait_until(lambda s: 0 in s["ready"], timeout=30)
            wait_for(lambda: bridge._sub is not None, 20, what="consuming")
            # Three prefetches' worth for the shard that cannot send, then some for the one that can.
            for i in range(3 * PREFETCH):
                send(rabbit, group, 1, i)
            for i in range(100, 103):
                send(rabbit, group, 0, i)
            snap = sim.wait_until(lambda s: len(sent_queries(s, 0)) == 3, timeout=20)
            assert sent_queries(snap, 0) == ["p100", "p101", "p102"]  # SEND did not stall
            # Shard 1's packets are parked in its queue, which is not consumed while it is not READY.
            wait_for(lambda: worker.call(lambda: bridge.buffered) == 0, 20, what="parked and confirmed")
            assert rabbit.depth(spectacles.shard_queue(group, 1)) == 3 * PREFETCH
            assert rabbit.depth(spectacles.send_queue(group)) == 0
            assert worker.call(lambda: len(worker.worker.runners[1].outbox)) == 0
            gate.release()
            snap = sim.wait_until(lambda s: len(sent_queries(s, 1)) == 3 * PREFETCH, timeout=60)
            assert sent_queries(snap, 1) == [f"p{i}" for i in range(3 * PREFETCH)]  # all, in order
            wait_for(lambda: rabbit.depth(spectacles.shard_queue(group, 1)) == 0, 20, what="acked")
            counters = bridge.counters()
    assert counters["send_parked"] == 3 * PREFETCH



def test_a_shard_that_reconnects_often_leaves_no_consumer_tag_behind(amqp_url, rabbit, group):
    """Each time a shard leaves READY its queue's consumer is cancelled, and consumed again when
    it is back. pika keeps a tag cancelled with nowait until the channel closes: the bridge must
    cancel synchronously (the soak found one tag kept per reconnect, for months)."""
    rabbit.track(spectacles.shard_queue(group, 0), spectacles.send_queue(group))
    with SimulatorThread(token=TOKEN, shard_count=1, heartbeat_interval_ms=5000) as sim:
        config = worker_config(sim, amqp_url, group, [0])
        with WorkerThread(config) as worker:
            bridge = worker.worker.bridge
            sim.wait_until(lambda s: 0 in s["ready"], timeout=30)
            wait_for(lambda: worker.call(lambda: len(bridge._queue_of_consumer)) == 2, 20, what="consuming")
            for n in range(1, 21):
                sim.call("reconnect", 0)
                sim.wait_until(lambda s, n=n: len(s["resumes"]) >= n and 0 in s["ready"], timeout=30)
            wait_for(lambda: worker.call(lambda: len(bridge._queue_of_consumer)) == 2, 20, what="consuming again")
            wait_for(lambda: worker.call(lambda: len(bridge._sub._cancelled)) == 0, 20, what="cancels settled")
            kept = worker.call(lambda: (len(bridge._sub._consumers), len(bridge._sub._cancelled)))
            reconnects = worker.call(lambda: worker.worker.runners[0].reconnects)
    assert reconnects >= 20
    assert kept == (2, 0)  # the shard's queue and SEND: nothing of the 20 cancelled consumers
