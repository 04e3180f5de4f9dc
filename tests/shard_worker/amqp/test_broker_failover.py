"""Several RabbitMQ URLs (the nodes of a cluster): a lost node fails over to the next URL with no
event lost, and a dead first URL costs one WARNING line.

Two :class:`TcpProxy` in front of the same RabbitMQ stand for two nodes: cutting one is a node
lost. The figures of the mid-stream cut go to ``docs/reliability/failover.json``.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

from shard_worker import spectacles
from supervisor.simulator import SimulatorThread
from supervisor.simulator.payloads import DISPATCH_TYPES
from tests.helpers import TOKEN, WorkerThread, wait_for, worker_config
from tests.tcp_proxy import TcpProxy

FIGURES = Path(__file__).resolve().parents[3] / "docs" / "reliability" / "failover.json"


def node_url(port: int) -> str:
    return f"amqp://guest:guest@127.0.0.1:{port}/%2F"


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # nothing listens there once this closes


def bind_everything(rabbit, group: str, name: str) -> str:
    """A consumer's queue bound to every dispatch type (and the gateway's queues cleaned up)."""
    queue = spectacles.queue_name(group, "all", name)
    for event in DISPATCH_TYPES:
        rabbit.bind(group, queue, event)
    rabbit.track(spectacles.shard_queue(group, 0), spectacles.send_queue(group))
    return queue


class Watch:
    """Samples the bridge every 10 ms: when it published on a new connection (its publisher
    object changed: a reconnect that took less than a sample is still seen), and when the
    first confirm after that arrived (the failover as a consumer sees it)."""

    def __init__(self, bridge) -> None:
        self.bridge = bridge
        self.events: list[tuple[str, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Watch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        publisher, confirmed, waiting_confirm = self.bridge._pub, 0, False
        while not self._stop.is_set():
            now = time.monotonic()
            current = self.bridge._pub
            if current is not None and current is not publisher:
                self.events.append(("connected", now))
                confirmed, waiting_confirm = self.bridge.confirmed, True
            if current is not None:
                publisher = current
            if waiting_confirm and self.bridge.confirmed > confirmed:
                self.events.append(("confirmed", now))
                waiting_confirm = False
            time.sleep(0.01)

    def first(self, kind: str, after: float) -> float | None:
        return next((t for k, t in self.events if k == kind and t >= after), None)


def test_a_node_lost_mid_stream_fails_over_to_the_next_url_and_loses_nothing(amqp_url, rabbit, group):
    parts = urlsplit(amqp_url)
    total = 4000
    with TcpProxy(parts.hostname, parts.port or 5672) as node1, TcpProxy(parts.hostname, parts.port or 5672) as node2, SimulatorThread(
        token=TOKEN, shard_count=1, heartbeat_interval_ms=2000, events_per_shard=total, rate=150
    ) as sim:  # fmt: skip
        queue = bind_everything(rabbit, group, "failover")
        config = worker_config(sim, f"{node_url(node1.port)},{node_url(node2.port)}", group, [0])
        with WorkerThread(config) as worker:
            bridge = worker.worker.bridge
            sim.wait_until(lambda s: len(s["dispatched"].get(0, [])) > 600, timeout=60)
            assert (node1.connections, node2.connections) == (1, 0)  # the first URL first
            with Watch(bridge) as watch:
                cut_at = time.monotonic()
                node1.cut()  # node 1 is lost, for good
                wait_for(lambda: watch.first("confirmed", cut_at), 30, what="publishing again through node 2")
                assert node2.connections == 1
                # and round robin: node 2 lost too, node 1 back: the worker goes back to node 1
                sim.wait_until(lambda s: len(s["dispatched"][0]) > 2000, timeout=60)
                node1.restore()
                second_cut = time.monotonic()
                node2.cut()
                wait_for(lambda: watch.first("confirmed", second_cut), 30, what="publishing again through node 1")
                assert node1.connections == 2
            final = sim.wait_until(lambda s: len(s["dispatched"][0]) >= total + 3, timeout=120)
            wait_for(lambda: bridge.buffered == 0, 60, what="every message confirmed")
            stats = bridge.counters()
        # the stream never stopped: no stall, no resume, one session
        assert [i["accepted"] for i in final["identifies"]] == [True]
        assert not final["resumes"]

        expected = {spectacles.message_id(0, sid, seq) for sid, seq, _ in final["dispatched"][0]}
        got = rabbit.get_all(queue, expect=len(expected), timeout=60)
        ids = [props.message_id for _, props, _ in got]
        assert expected - set(ids) == set(), "every dispatch is in RabbitMQ at least once"
        connected_at = watch.first("connected", cut_at)
        confirmed_at = watch.first("confirmed", cut_at)
        assert connected_at is not None and confirmed_at is not None
        figures = {
            "events": len(expected),
            "lost": len(expected - set(ids)),
            "duplicates": len(ids) - len(set(ids)),
            "republished": stats.get("republished", 0),
            "cut_to_connected_s": round(connected_at - cut_at, 3),
            "cut_to_first_confirm_s": round(confirmed_at - cut_at, 3),
            "second_cut_to_first_confirm_s": round(watch.first("confirmed", second_cut) - second_cut, 3),
            "resumes": len(final["resumes"]),
        }
        # generous: the reconnect goes out at once, but the machine is noisy
        assert figures["cut_to_first_confirm_s"] < 10, figures
        FIGURES.parent.mkdir(parents=True, exist_ok=True)
        FIGURES.write_text(json.dumps(figures, indent=1) + "\n")


def test_a_dead_first_url_costs_one_warning_and_the_next_one_is_used(amqp_url, rabbit, group, caplog):
    caplog.set_level(logging.INFO, logger="shard_worker.amqp.broker")
    dead = node_url(closed_port())
    with SimulatorThread(token=TOKEN, shard_count=1, heartbeat_interval_ms=2000, events_per_shard=300, rate=100) as sim:
        queue = bind_everything(rabbit, group, "deadfirst")
        started = time.monotonic()
        with WorkerThread(worker_config(sim, f"{dead},{amqp_url}", group, [0])) as worker:
            bridge = worker.worker.bridge
            wait_for(bridge.connected.is_set, 20, what="connected through the second URL")
            connect_s = time.monotonic() - started
            final = sim.wait_until(lambda s: len(s["dispatched"].get(0, [])) >= 303, timeout=60)
            wait_for(lambda: bridge.buffered == 0, 30, what="every message confirmed")
        expected = {spectacles.message_id(0, sid, seq) for sid, seq, _ in final["dispatched"][0]}
        ids = {props.message_id for _, props, _ in rabbit.get_all(queue, expect=len(expected), timeout=30)}
        assert expected <= ids
    assert connect_s < 10
    warnings = [r.getMessage() for r in caplog.records if r.name == "shard_worker.amqp.broker" and r.levelno == logging.WARNING]
    masked_dead = dead.replace("guest:guest", "guest:***")
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith(f"RabbitMQ {masked_dead} unavailable (ConnectionRefusedError")
    assert warnings[0].endswith(f"retrying in 0.0 s with {amqp_url.replace('guest:guest', 'guest:***')}")
    assert not any("guest:guest" in r.getMessage() for r in caplog.records)
