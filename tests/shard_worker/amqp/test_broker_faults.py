"""Faults of the real RabbitMQ node in the middle of a stream (issue 11): ``stop_app``/``start_app``
and a memory alarm. Each one is undone in a ``finally`` (``tests/rabbitmq_admin.py``) and the node
is waited for until it answers again.

Figures (events, lost, duplicates, recovery) are printed as ``FAULT-FIGURES {...}``
(``pytest -s``) and kept in docs/RELIABILITY.md.
"""

from __future__ import annotations

import json
import threading
import time

import pika
import pytest

from shard_worker import spectacles
from supervisor.simulator import SimulatorThread
from supervisor.simulator.payloads import DISPATCH_TYPES
from tests import rabbitmq_admin
from tests.helpers import TOKEN, WorkerThread, wait_for, worker_config

#: Changes the shared RabbitMQ node: runs alone, before the parallel part of the suite.
pytestmark = pytest.mark.exclusive

#: Everything the simulator dispatches: every event is counted.
TYPES = frozenset(DISPATCH_TYPES) | {"READY", "GUILD_CREATE", "RESUMED"}


def bind_all(rabbit, group: str, subgroup: str) -> str:
    queue = spectacles.queue_name(group, "all", subgroup)
    for t in sorted(TYPES):
        rabbit.bind(group, queue, t)
    return queue


def drain(amqp_url: str, queue: str, expect: int, timeout: float) -> list[str]:
    """Every message id in ``queue`` (consumed with a prefetch: 20,000 basic_gets are slow)."""
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        channel = connection.channel()
        channel.basic_qos(prefetch_count=1000)
        ids: list[str] = []
        deadline = time.monotonic() + timeout
        for method, props, _ in channel.consume(queue, auto_ack=True, inactivity_timeout=2.0):
            if method is None:
                if len(ids) >= expect or time.monotonic() > deadline:
                    break
                continue
            ids.append(props.message_id)
        channel.cancel()
        return ids
    finally:
        connection.close()


def figures(name: str, **values) -> None:
    print("FAULT-FIGURES", json.dumps({"fault": name, **values}))


def test_rabbitmq_stopped_and_started_mid_stream_loses_nothing(amqp_url, rabbit, group):
    total = 20_000
    rabbit.track(*(spectacles.shard_queue(group, s) for s in range(2)), spectacles.send_queue(group))
    queue = bind_all(rabbit, group, "stop-app")
    with SimulatorThread(
        token=TOKEN, shard_count=2, max_concurrency=2, heartbeat_interval_ms=2000,
        events_per_shard=total // 2, rate=600,
    ) as sim:  # fmt: skip
        with WorkerThread(worker_config(sim, amqp_url, group, [0, 1], buffer_events=2000)) as worker:
            bridge = worker.worker.bridge
            sim.wait_until(lambda s: sum(len(v) for v in s["dispatched"].values()) > 2000, timeout=60)
            with rabbitmq_admin.app_stopped(amqp_url):
                wait_for(lambda: not bridge.connected.is_set(), 60, what="the worker saw the broker go")
                time.sleep(5.0)
            back_at = time.monotonic()
            wait_for(lambda: bridge.connected.is_set(), 60, interval=0.2, what="connected again")
            reconnected_s = time.monotonic() - back_at
            final = sim.wait_until(
                lambda s: all(len(s["dispatched"].get(x, [])) >= total // 2 + 3 for x in (0, 1)) and s["ready"] == {0, 1},
                timeout=180,
            )
            ready_s = time.monotonic() - back_at
            wait_for(lambda: worker.call(lambda: bridge.buffered) == 0, 60, what="every message confirmed")
            stats = bridge.counters()
    expected = {spectacles.message_id(s, sid, seq) for s, rows in final["dispatched"].items() for sid, seq, t in rows if t in TYPES}
    ids = drain(amqp_url, queue, len(expected), timeout=120)
    lost = expected - set(ids)
    figures(
        "stop_app/start_app", events=len(expected), lost=len(lost), duplicates=len(ids) - len(set(ids)),
        reconnected_s=round(reconnected_s, 1), ready_s=round(ready_s, 1), republished=stats.get("republished", 0),
    )  # fmt: skip
    assert not lost, f"{len(lost)} events lost"
    assert ready_s <= 30.0 + 15.0, f"shards READY {ready_s:.1f} s after start_app"  # 30 s asked, noisy machine


def test_a_memory_alarm_pauses_reading_without_a_reconnect_and_loses_nothing(amqp_url, rabbit, group):
    total = 8000
    buffer_events = 500
    rabbit.track(spectacles.shard_queue(group, 0), spectacles.send_queue(group))
    queue = bind_all(rabbit, group, "alarm")
    with SimulatorThread(
        token=TOKEN, shard_count=1, heartbeat_interval_ms=2000, events_per_shard=total, rate=400
    ) as sim:
        config = worker_config(sim, amqp_url, group, [0], buffer_events=buffer_events)
        with WorkerThread(config) as worker:
            bridge = worker.worker.bridge
            sim.wait_until(lambda s: len(s["dispatched"].get(0, [])) > 500, timeout=60)
            peak = {"buffered": 0, "blocked": False}
            sampling = threading.Event()

            def sample() -> None:
                while not sampling.is_set():
                    peak["buffered"] = max(peak["buffered"], bridge.buffered)
                    peak["blocked"] = peak["blocked"] or bridge.blocked
                    time.sleep(0.02)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            with rabbitmq_admin.memory_alarm(amqp_url):
                wait_for(lambda: bridge.blocked, 60, interval=0.1, what="the connection blocked")
                blocked_at = time.monotonic()
                runner = worker.worker.runners[0]
                time.sleep(2.0)  # what was already in flight settles into the buffer
                before = runner.received
                time.sleep(13.0)  # below the stall timeout (30 s): the shard just waits
                read_while_blocked = runner.received - before
            held_s = time.monotonic() - blocked_at
            final = sim.wait_until(lambda s: len(s["dispatched"][0]) >= total + 3, timeout=120)
            wait_for(lambda: worker.call(lambda: bridge.buffered) == 0, 60, what="every message confirmed")
            sampling.set()
            sampler.join()
            stats = bridge.counters()
    expected = {spectacles.message_id(0, sid, seq) for sid, seq, t in final["dispatched"][0] if t in TYPES}
    ids = drain(amqp_url, queue, len(expected), timeout=120)
    lost = expected - set(ids)
    figures(
        "memory alarm", events=len(expected), lost=len(lost), duplicates=len(ids) - len(set(ids)),
        blocked_s=round(held_s, 1), read_while_blocked=read_while_blocked, peak_buffered=peak["buffered"],
        gateway_connections=final["counters"]["connections"], amqp_republished=stats.get("republished", 0),
    )  # fmt: skip
    assert peak["blocked"]
    assert not lost, f"{len(lost)} events lost"
    assert peak["buffered"] <= buffer_events + 1  # reading paused within the bound
    assert read_while_blocked == 0, "the gateway read went on while blocked"
    assert final["counters"]["connections"] == 1  # heartbeats went on: no gateway reconnect
    assert stats.get("republished", 0) == 0  # and no AMQP reconnect
