"""Prometheus metrics: the aggregation of the children's reports (no processes), the HTTP server,
and a real supervisor with the simulator and RabbitMQ scraped over HTTP."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.request

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from shard_worker import spectacles
from shard_worker.config import WorkerConfig
from supervisor.core.arbiter import Arbiter, ArbiterOptions
from supervisor.observe import metrics as metrics_module
from supervisor.observe.metrics import (
    SHARD_STATES,
    MetricsState,
    build_registry,
    merge_histograms,
)
from supervisor.observe.serve import MetricsServer
from supervisor.simulator import SimulatorThread
from tests.helpers import TOKEN, free_port, wait_for
from tests.supervisor.supervisor_process import SupervisorProcess

BOUNDS = [0.01, 0.1, 1.0]


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def parse(text: str) -> dict[tuple[str, frozenset], float]:
    """``{(sample name, frozenset(labels.items())): value}`` of an exposition."""
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def scrape_state(state: MetricsState) -> dict[tuple[str, frozenset], float]:
    return parse(generate_latest(build_registry(state)).decode())


def value(samples, name, **labels):
    return samples.get((name, frozenset((k, str(v)) for k, v in labels.items())))


def series(samples, name):
    return {labels: v for (n, labels), v in samples.items() if n == name}


def shard(state="ready", seq=10, received=None, published=None, **counters):
    """A shard's report, plus (under ``_by_type``) what it adds to its process's counters."""
    return {
        "state": state,
        "seq": seq,
        "session": None,
        "latency_ms": counters.pop("latency_ms", 42.0),
        "received": sum((received or {}).values()),
        "published": sum((published or {}).values()),
        "reconnects": counters.get("reconnects", 0),
        "identifies": counters.get("identifies", 0),
        "resumes": counters.get("resumes", 0),
        "sent": counters.get("sent", 0),
        "outbox": counters.get("outbox", 0),
        "_by_type": (dict(received or {}), dict(published or {})),
    }


def report(shards, *, rejected=None, broker=None, counts=None, total=0.0, buffered=0, connected=True):
    """``(process report, shard reports)`` as a child sends them (``heartbeat``, ``shards``)."""
    counts = counts or [0, 0, 0, 0]
    received: dict[str, int] = {}
    published: dict[str, int] = {}
    reports = {}
    for key, value in shards.items():
        value = dict(value)
        by_received, by_published = value.pop("_by_type")
        for counts_by, more in ((received, by_received), (published, by_published)):
            for t, n in more.items():
                counts_by[t] = counts_by.get(t, 0) + n
        reports[str(key)] = value
    process = {
        "buffered": buffered,
        "buffered_bytes": buffered * 100,
        "broker_connected": connected,
        "rejected": dict(rejected or {}),
        "broker": dict(broker or {}),
        "confirm_latency": {"bounds": BOUNDS, "counts": counts, "sum": total, "count": sum(counts)},
        "received_by_type": received,
        "published_by_type": published,
        "sizes": {"asyncio_tasks": 7 + len(shards), "ledger_inflight": buffered},
    }
    return process, reports


def push(state: MetricsState, group: int, pid: int, both) -> None:
    process, reports = both
    state.shard_reports(group, pid, reports)
    state.child_report(group, pid, process)


def state_of(samples, shard, group):
    code = value(samples, "spectacles_shard_state", shard=shard, group=group)
    return None if code is None else SHARD_STATES[int(code)]


# -- aggregation, without processes -----------------------------------------------------------


def test_counters_carry_over_when_a_child_is_replaced():
    clock = Clock()
    state = MetricsState({0: [0, 1], 1: [2]}, clock=clock)
    state.child_started(0, 100, clock.now)
    push(state, 0, 100, report({
        0: shard(received={"MESSAGE_CREATE": 50, "READY": 1}, published={"MESSAGE_CREATE": 40},
                 identifies=1, sent=3, reconnects=2, resumes=1),
        1: shard(received={"READY": 1}, identifies=1),
    }, rejected={"reserved_op": 2}, broker={"published": 40, "confirmed": 39}, counts=[30, 9, 0, 0], total=0.2))
    before = scrape_state(state)
    assert value(before, "spectacles_events_received_total", group=0, type="MESSAGE_CREATE") == 50
    assert value(before, "spectacles_events_received_total", group=0, type="READY") == 2  # both shards
    assert value(before, "spectacles_events_published_total", group=0, type="MESSAGE_CREATE") == 40
    assert value(before, "spectacles_shard_events_received_total", shard=0, group=0) == 51
    assert value(before, "spectacles_shard_events_published_total", shard=0, group=0) == 40
    assert value(before, "spectacles_outbound_sent_total", shard=0, group=0) == 3
    assert value(before, "spectacles_shard_reconnects_total", shard=0, group=0) == 2
    assert value(before, "spectacles_outbound_rejected_total", group=0, reason="reserved_op") == 2

    # kill -9: the last report becomes the base; nothing goes backwards while no child runs
    state.child_exited(0, 100)
    state.set_restarts(0, 1)
    down = scrape_state(state)
    for (name, labels), v in before.items():
        if name.endswith(("_total", "_bucket", "_count", "_sum")) and "spectacles_supervisor" not in name:
            if name != "spectacles_child_restarts_total":
                assert down.get((name, labels)) == v, (name, labels)
    assert state_of(down, 0, 0) == "down"
    assert value(down, "spectacles_child_restarts_total", group=0) == 1
    assert value(down, "spectacles_child_up", group=0) == 0
    assert value(down, "spectacles_shard_seq", shard=0, group=0) is None  # no live figure
    assert value(down, "spectacles_buffer_messages", group=0) is None

    # the replacement counts from 0 again: totals are base + new
    state.child_started(0, 101, clock.now)
    push(state, 0, 101, report({
        0: shard(state="resuming", received={"MESSAGE_CREATE": 5, "RESUMED": 1}, resumes=1),
    }, rejected={"not_json": 1}, broker={"published": 5}, counts=[1, 0, 0, 1], total=2.5))
    after = scrape_state(state)
    assert value(after, "spectacles_events_received_total", group=0, type="MESSAGE_CREATE") == 55
    assert value(after, "spectacles_events_received_total", group=0, type="RESUMED") == 1
    assert value(after, "spectacles_events_received_total", group=0, type="READY") == 2
    assert value(after, "spectacles_events_published_total", group=0, type="MESSAGE_CREATE") == 40
    assert value(after, "spectacles_shard_events_received_total", shard=0, group=0) == 57
    assert value(after, "spectacles_shard_resumes_total", shard=0, group=0) == 2
    assert value(after, "spectacles_shard_identifies_total", shard=0, group=0) == 1
    assert value(after, "spectacles_shard_identifies_total", shard=1, group=0) == 1
    assert value(after, "spectacles_outbound_rejected_total", group=0, reason="reserved_op") == 2
    assert value(after, "spectacles_outbound_rejected_total", group=0, reason="not_json") == 1
    assert value(after, "spectacles_broker_messages_total", group=0, kind="published") == 45
    assert value(after, "spectacles_broker_messages_total", group=0, kind="confirmed") == 39
    # the histogram: cumulative buckets of both children
    assert value(after, "spectacles_publish_confirm_latency_seconds_bucket", group=0, le="0.01") == 31
    assert value(after, "spectacles_publish_confirm_latency_seconds_bucket", group=0, le="0.1") == 40
    assert value(after, "spectacles_publish_confirm_latency_seconds_bucket", group=0, le="1.0") == 40
    assert value(after, "spectacles_publish_confirm_latency_seconds_bucket", group=0, le="+Inf") == 41
    assert value(after, "spectacles_publish_confirm_latency_seconds_count", group=0) == 41
    assert value(after, "spectacles_publish_confirm_latency_seconds_sum", group=0) == pytest.approx(2.7)
    assert state_of(after, 0, 0) == "resuming"
    # never backwards, series by series
    for (name, labels), v in before.items():
        if name.endswith("_total"):
            assert after[(name, labels)] >= v, (name, labels)


def test_a_late_report_of_a_dead_child_is_not_counted_twice():
    state = MetricsState({0: [0]}, clock=Clock())
    state.child_started(0, 100, 0.0)
    push(state, 0, 100, report({0: shard(received={"T": 10})}))
    state.child_exited(0, 100)
    push(state, 0, 100, report({0: shard(received={"T": 12})}))  # ignored: pid 100 is gone
    state.child_exited(0, 100)  # twice: no-op
    state.child_started(0, 200, 0.0)
    push(state, 0, 100, report({0: shard(received={"T": 99})}))  # not the current child
    samples = scrape_state(state)
    assert value(samples, "spectacles_events_received_total", group=0, type="T") == 10
    assert value(samples, "spectacles_shard_events_received_total", shard=0, group=0) == 10
    # a new child started without the old one's exit being seen: the old report still carries
    push(state, 0, 200, report({0: shard(received={"T": 3})}))
    state.child_started(0, 300, 0.0)
    samples = scrape_state(state)
    assert value(samples, "spectacles_events_received_total", group=0, type="T") == 13
    assert value(samples, "spectacles_shard_events_received_total", shard=0, group=0) == 13


def test_shard_states_one_series_per_shard():
    state = MetricsState({0: [0, 1, 2, 3, 4], 1: [5]}, clock=Clock())

    def current(samples, s, g=0):
        assert len([1 for (n, labels) in samples if n == "spectacles_shard_state" and ("shard", str(s)) in labels]) == 1
        return state_of(samples, s, g)

    assert current(scrape_state(state), 0) == "down"  # no child
    state.child_started(0, 7, 0.0)
    assert current(scrape_state(state), 0) == "connecting"  # a child, no report yet
    push(state, 0, 7, report({
        0: shard("ready"), 1: shard("identifying"), 2: shard("resuming"), 3: shard("disconnected"),
        4: shard("connecting"),
    }))
    samples = scrape_state(state)
    assert [current(samples, s) for s in range(5)] == ["ready", "identifying", "resuming", "down", "connecting"]
    assert current(samples, 5, g=1) == "down"
    state.shard_event(0, "stalled")  # the broker is full: stalled until the shard's next event
    push(state, 0, 7, report({0: shard("ready")}))
    assert current(scrape_state(state), 0) == "stalled"
    state.shard_event(0, "ready")
    assert current(scrape_state(state), 0) == "ready"
    state.shard_event(1, "stalled")
    state.child_exited(0, 7)
    state.child_started(0, 8, 0.0)
    assert current(scrape_state(state), 1) == "connecting"  # a new child is not stalled


def test_gauges_child_and_supervisor_figures():
    clock = Clock(500.0)
    state = MetricsState({0: [0], 1: [1]}, clock=clock)
    state.child_started(0, 7, 480.0)
    push(state, 0, 7, report({0: shard(seq=1234, latency_ms=41.5, outbox=3)}, buffered=12, connected=False))
    samples = scrape_state(state)
    assert value(samples, "spectacles_child_rss_bytes", group=0) is None  # not sampled yet
    state.child_sampled(0, 7, 50 * 2**20, 12.5)
    state.child_sampled(0, 999, 1, 1.0)  # another pid: ignored
    state.set_supervisor(identify_budget_remaining=None, identifies_granted=3, identify_waiting=2, shards_ready=1)
    samples = scrape_state(state)
    assert value(samples, "spectacles_shard_seq", shard=0, group=0) == 1234
    assert value(samples, "spectacles_heartbeat_latency_seconds", shard=0, group=0) == pytest.approx(0.0415)
    assert value(samples, "spectacles_outbound_queued_messages", shard=0, group=0) == 3
    assert value(samples, "spectacles_buffer_messages", group=0) == 12
    assert value(samples, "spectacles_buffer_bytes", group=0) == 1200
    assert value(samples, "spectacles_broker_connected", group=0) == 0
    assert value(samples, "spectacles_child_rss_bytes", group=0) == 50 * 2**20
    assert value(samples, "spectacles_child_cpu_percent", group=0) == 12.5
    assert value(samples, "spectacles_child_uptime_seconds", group=0) == 20.0
    assert value(samples, "spectacles_child_up", group=0) == 1
    assert value(samples, "spectacles_child_asyncio_tasks", group=0) == 8
    assert value(samples, "spectacles_child_asyncio_tasks", group=1) is None  # no report
    assert value(samples, "spectacles_child_up", group=1) == 0
    assert value(samples, "spectacles_child_uptime_seconds", group=1) is None
    assert value(samples, "spectacles_identify_budget_remaining") is None  # unknown: absent
    assert value(samples, "spectacles_identifies_granted_total") == 3
    assert value(samples, "spectacles_identify_requests_waiting") == 2
    assert value(samples, "spectacles_shards_ready") == 1
    assert value(samples, "spectacles_supervisor_uptime_seconds") == 0.0
    clock.now += 5
    state.set_supervisor(identify_budget_remaining=995)
    samples = scrape_state(state)
    assert value(samples, "spectacles_identify_budget_remaining") == 995
    assert value(samples, "spectacles_child_uptime_seconds", group=0) == 25.0
    assert value(samples, "spectacles_supervisor_uptime_seconds") == 5.0
    assert value(samples, "spectacles_supervisor_process_resident_memory_bytes") > 0


def test_histograms_with_other_bounds_are_rebucketed_upwards():
    base = {"bounds": [0.01, 0.1], "counts": [1, 1, 0], "sum": 0.06, "count": 2}
    more = {"bounds": [0.005, 0.05, 0.5], "counts": [1, 1, 1, 1], "sum": 10.0, "count": 4}
    merged = merge_histograms(base, more)
    # 0.005 -> 0.01, 0.05 -> 0.1, 0.5 and +Inf -> +Inf: never a smaller latency than observed
    assert merged == {"bounds": [0.01, 0.1], "counts": [2, 2, 2], "sum": pytest.approx(10.06), "count": 6}
    assert merge_histograms(None, None) is None
    assert merge_histograms(None, more)["counts"] == [1, 1, 1, 1]


def test_the_arbiter_feeds_the_state_from_ipc_and_exits(tmp_path):
    """The arbiter's own handlers (no processes): heartbeat, shard_state, a crash, a restart."""
    from shard_worker.ipc import Message

    configs = [WorkerConfig([0, 1], 2, "ws://127.0.0.1:1", token="t" * 20, max_concurrency=2)]
    arbiter = Arbiter(configs, ArbiterOptions(state_dir=str(tmp_path / "state"), live_progress=False))

    class FakeChild:
        def __init__(self, pid):
            self.pid, self.group, self.shard_ids = pid, 0, [0, 1]
            self.shard_set = frozenset(self.shard_ids)
            self.report, self.ready, self.label = {}, set(), f"group 0 (pid {pid})"
            self.shard_reports = {}
            self.out, self.write_watched = b"", False
            self.last_heartbeat = self.started_at = time.monotonic()
            self.stopping_since = None
            self.rss, self.cpu_percent, self.read_fd = 0, 0.0, -1

        def read(self):
            return []

        def close(self):
            pass

        def uptime(self, now):
            return now - self.started_at

    group = arbiter.groups[0]
    child = group.child = FakeChild(41)
    arbiter.metrics.child_started(0, 41, child.started_at)
    process, reports = report({0: shard(received={"MESSAGE_CREATE": 7}), 1: shard()})
    arbiter._on_message(child, Message("shards", {"shards": reports}))
    arbiter._on_message(child, Message("heartbeat", process))
    arbiter._on_message(child, Message("shard_state", {"shard": 1, "state": "stalled"}))
    samples = scrape_state(arbiter.metrics)
    assert value(samples, "spectacles_events_received_total", group=0, type="MESSAGE_CREATE") == 7
    assert value(samples, "spectacles_shard_events_received_total", shard=0, group=0) == 7
    assert state_of(samples, 1, 0) == "stalled"
    assert arbiter.status()["shards"][1]["state"] == "stalled"
    arbiter._on_exit(group, child, -9, time.monotonic())
    samples = scrape_state(arbiter.metrics)
    assert value(samples, "spectacles_child_restarts_total", group=0) == 1
    assert value(samples, "spectacles_events_received_total", group=0, type="MESSAGE_CREATE") == 7
    assert value(samples, "spectacles_shard_events_received_total", shard=0, group=0) == 7
    assert state_of(samples, 1, 0) == "down"


def test_a_slow_scrape_never_holds_the_arbiters_lock(monkeypatch):
    state = MetricsState({0: [0]})
    state.child_started(0, 1, time.monotonic())
    building = threading.Event()
    real = metrics_module.families

    def slow_families(snapshot):
        building.set()
        time.sleep(1.5)
        return real(snapshot)

    monkeypatch.setattr(metrics_module, "families", slow_families)
    server = MetricsServer(("127.0.0.1", 0), state)
    try:
        host, port = server.address
        result = {}
        url = f"http://{host}:{port}/metrics"
        scraper = threading.Thread(
            target=lambda: result.setdefault("text", urllib.request.urlopen(url, timeout=30).read())
        )
        scraper.start()
        assert building.wait(10)
        started = time.monotonic()
        for _ in range(100):  # what the arbiter does on every heartbeat, mid-scrape
            push(state, 0, 1, report({0: shard(received={"T": 1})}))
        assert time.monotonic() - started < 0.5
        scraper.join(30)
        assert b"spectacles_shard_state" in result["text"]
    finally:
        server.close()


def test_metrics_server_serves_and_closes():
    state = MetricsState({0: [0]})
    server = MetricsServer(("127.0.0.1", 0), state)
    host, port = server.address
    body = urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10).read().decode()
    assert 'spectacles_shard_state{group="0",shard="0"} 0.0' in body  # 0: down
    server.close()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=2)
    # a taken port is an OSError for the caller (the arbiter exits 1 and says so)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(OSError):
            MetricsServer(taken.getsockname(), state)


def test_the_arbiter_exits_1_before_any_child_when_the_metrics_port_is_taken(tmp_path, caplog):
    configs = [WorkerConfig([0], 1, "ws://127.0.0.1:1", token="t" * 20)]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        addr = taken.getsockname()
        options = ArbiterOptions(state_dir=str(tmp_path / "state"), metrics_addr=addr, live_progress=False)
        arbiter = Arbiter(configs, options)
        assert arbiter.run() == 1
    assert f"cannot serve metrics on 127.0.0.1:{addr[1]}" in caplog.text
    assert arbiter.groups[0].child is None and arbiter.control is None


# -- a real supervisor, the simulator and RabbitMQ ---------------------------------------------


def scrape(port: int) -> dict[tuple[str, frozenset], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return parse(response.read().decode())


def try_scrape(port: int):
    try:
        return scrape(port)
    except OSError:
        return None


def per_shard_counters(samples):
    return {
        key: v
        for key, v in samples.items()
        if key[0].startswith(("spectacles_events_", "spectacles_shard_", "spectacles_outbound_"))
        and key[0].endswith("_total")
    }


EXPECTED_FAMILIES = {
    "spectacles_events_received_total", "spectacles_events_published_total",
    "spectacles_shard_events_received_total", "spectacles_shard_events_published_total",
    "spectacles_outbound_sent_total", "spectacles_outbound_rejected_total",
    "spectacles_heartbeat_latency_seconds", "spectacles_shard_state", "spectacles_shard_seq",
    "spectacles_shard_reconnects_total", "spectacles_shard_resumes_total",
    "spectacles_shard_identifies_total", "spectacles_publish_confirm_latency_seconds_bucket",
    "spectacles_publish_confirm_latency_seconds_count", "spectacles_publish_confirm_latency_seconds_sum",
    "spectacles_buffer_messages", "spectacles_buffer_bytes", "spectacles_broker_connected",
    "spectacles_broker_messages_total", "spectacles_outbound_queued_messages",
    "spectacles_child_rss_bytes", "spectacles_child_cpu_percent", "spectacles_child_restarts_total",
    "spectacles_child_uptime_seconds", "spectacles_child_up", "spectacles_identify_budget_remaining",
    "spectacles_identifies_granted_total", "spectacles_identify_requests_waiting",
    "spectacles_shards_ready", "spectacles_supervisor_uptime_seconds",
}  # fmt: skip


def test_metrics_of_a_real_supervisor_move_and_survive_a_kill(amqp_url, rabbit, group, tmp_path):
    port = free_port()
    rabbit.declare_exchange(group)
    rabbit.track(*(spectacles.shard_queue(group, s) for s in range(4)), spectacles.send_queue(group))
    with SimulatorThread(
        token=TOKEN, shard_count=4, max_concurrency=4, heartbeat_interval_ms=1000, events_per_shard=-1, rate=20
    ) as sim:
        sup = SupervisorProcess(
            sim, amqp_url, group, tmp_path / "state",
            "--shards-per-process", "2", "--metrics-addr", f"127.0.0.1:{port}", "--log-format", "json",
        )  # fmt: skip
        try:
            sim.wait_until(lambda s: s["ready"] == {0, 1, 2, 3}, timeout=60)
            ready = lambda m: m and all(state_of(m, s, s // 2) == "ready" for s in range(4))  # noqa: E731
            first = wait_for(
                lambda: (m := try_scrape(port)) and ready(m) and m, 30, interval=0.5, what="4 ready shards"
            )
            wait_for(lambda: value(try_scrape(port) or {}, "spectacles_child_rss_bytes", group=1), 20, interval=0.5)

            # outbound: one packet sent to shard 0, one rejected by group 0's child
            presence = {"op": 3, "d": {"since": None, "activities": [], "status": "idle", "afk": False}}
            rabbit.wait_consumed(spectacles.shard_queue(group, 0), spectacles.shard_queue(group, 1))
            rabbit.publish(group, "0", json.dumps(presence).encode())
            rabbit.publish(group, "1", json.dumps({"op": 2, "d": {}}).encode())
            wait_for(
                lambda: (m := try_scrape(port))
                and value(m, "spectacles_outbound_sent_total", shard=0, group=0) == 1
                and value(m, "spectacles_outbound_rejected_total", group=0, reason="reserved_op") == 1,
                30,
                interval=0.5,
                what="the outbound counters",
            )
            time.sleep(3.0)
            second = scrape(port)

            names = {name for name, _ in second}
            assert EXPECTED_FAMILIES <= names, EXPECTED_FAMILIES - names
            # labels: counts by type are per group; every per-shard series names shard and group
            for labels in series(second, "spectacles_events_received_total"):
                assert set(dict(labels)) == {"group", "type"}
            for labels in series(second, "spectacles_shard_events_received_total"):
                labels = dict(labels)
                assert set(labels) == {"shard", "group"}
                assert int(labels["group"]) == int(labels["shard"]) // 2
            for g in (0, 1):
                key = dict(group=g, type="MESSAGE_CREATE")
                for name in ("spectacles_events_received_total", "spectacles_events_published_total"):
                    assert value(second, name, **key) > value(first, name, **key)
                assert value(second, "spectacles_events_received_total", group=g, type="READY") == 2
            for s in range(4):
                key = dict(shard=s, group=s // 2)
                for name in ("spectacles_shard_events_received_total", "spectacles_shard_events_published_total", "spectacles_shard_seq"):
                    assert value(second, name, **key) > value(first, name, **key)
                assert value(second, "spectacles_shard_identifies_total", shard=s, group=s // 2) == 1
                assert 0 <= value(second, "spectacles_heartbeat_latency_seconds", shard=s, group=s // 2) < 5
            for g in (0, 1):
                count = value(second, "spectacles_publish_confirm_latency_seconds_count", group=g)
                assert count > 0
                assert value(second, "spectacles_publish_confirm_latency_seconds_bucket", group=g, le="+Inf") == count
                assert value(second, "spectacles_broker_connected", group=g) == 1
                assert value(second, "spectacles_buffer_messages", group=g) >= 0
                assert value(second, "spectacles_child_rss_bytes", group=g) > 10 * 2**20
                assert value(second, "spectacles_child_uptime_seconds", group=g) > 0
                assert value(second, "spectacles_child_restarts_total", group=g) == 0
            assert value(second, "spectacles_identifies_granted_total") == 4
            assert value(second, "spectacles_identify_budget_remaining") == 1000 - 4
            assert value(second, "spectacles_shards_ready") == 4

            # kill -9 of group 1's child: it resumes, and no per-shard counter goes backwards
            victim = next(c for c in sup.children() if " ".join(c.cmdline()).strip().endswith("shards 2-3"))
            before = scrape(port)
            killed_at = time.time()
            victim.kill()
            sim.wait_until(
                lambda s: {r["shard"] for r in s["resumes"] if r["result"] == "ok" and r["time"] > killed_at} >= {2, 3}
                and s["ready"] == {0, 1, 2, 3},
                timeout=60,
            )
            samples = []

            def recovered():
                m = try_scrape(port)
                if not m:
                    return False
                samples.append(m)
                return (
                    value(m, "spectacles_child_restarts_total", group=1) == 1
                    and ready(m)
                    and all(value(m, "spectacles_shard_resumes_total", shard=s, group=1) >= 1 for s in (2, 3))
                )

            wait_for(recovered, 30, interval=0.3, what="the replacement's metrics")
            after = samples[-1]
            for scraped in samples:  # every scrape during the replacement, not just the last
                for key, v in per_shard_counters(before).items():
                    assert scraped.get(key, 0) >= v, key
            assert value(after, "spectacles_child_restarts_total", group=0) == 0
            assert value(after, "spectacles_identifies_granted_total") == 4  # resumed, no identify
            assert value(after, "spectacles_shard_identifies_total", shard=2, group=1) == 1
            assert value(after, "spectacles_child_uptime_seconds", group=1) < value(
                after, "spectacles_child_uptime_seconds", group=0
            )
            wait_for(
                lambda: (m := try_scrape(port))
                and value(m, "spectacles_shard_events_received_total", shard=2, group=1)
                > value(before, "spectacles_shard_events_received_total", shard=2, group=1) + 20,
                30,
                interval=0.5,
                what="events counted on from the carried-over base",
            )

            # JSON logs of the supervisor and of its children, shard and group where known
            lines = [json.loads(line) for line in sup.output().splitlines() if line.strip()]
            assert all({"time", "level", "logger", "message"} <= set(line) for line in lines)
            readies = [
                line for line in lines
                if line["logger"] == "supervisor.core.arbiter" and " ready (group " in line["message"]
            ]  # fmt: skip
            assert {(line["shard"], line["group"]) for line in readies} >= {(0, 0), (1, 0), (2, 1), (3, 1)}
            assert all(line["message"] == f"shard {line['shard']} ready (group {line['group']})" for line in readies)
            assert any(line["message"].startswith("all 4 shards ready in ") for line in lines)
            assert any(line["message"].startswith("all 4 shards ready again after ") for line in lines)
            died = [line for line in lines if "died (killed by SIGKILL)" in line["message"]]
            assert died and died[0]["group"] == 1 and died[0]["logger"] == "supervisor.core.arbiter"
            child_lines = [line for line in lines if line["logger"].startswith("shard_worker")]
            assert child_lines and all(line["group"] == 0 or line["group"] == 1 for line in child_lines)
            resumed = [line for line in child_lines if line["message"].startswith("shard 2: resumed")]
            assert resumed and resumed[0]["shard"] == 2 and resumed[0]["group"] == 1
            assert TOKEN not in sup.output()
        finally:
            sup.stop()


def test_reshard_gauges_follow_the_status_and_count_each_ended_reshard():
    state = MetricsState({0: [0, 1]})
    samples = scrape_state(state)
    assert value(samples, "spectacles_reshard_phase", phase="idle") == 1  # never asked
    assert value(samples, "spectacles_reshard_target_shards") == 0
    assert value(samples, "spectacles_shards_configured") is None  # not told yet
    running = {"phase": "preparing", "old_count": 4, "new_count": 8, "new_ready": 3}
    state.set_supervisor(shard_count=4, reshard=running, reshards={})
    samples = scrape_state(state)
    assert value(samples, "spectacles_shards_configured") == 4
    assert series(samples, "spectacles_reshard_phase") == {
        frozenset({("phase", p)}): (1.0 if p == "preparing" else 0.0)
        for p in ("idle", "preparing", "cutover", "draining", "done", "aborted")
    }
    assert value(samples, "spectacles_reshard_target_shards") == 8
    assert value(samples, "spectacles_reshard_new_shards_ready") == 3
    assert value(samples, "spectacles_reshards_total", outcome="done") == 0
    state.set_supervisor(shard_count=8, reshard={**running, "phase": "done", "new_ready": None}, reshards={"done": 1})
    samples = scrape_state(state)
    assert value(samples, "spectacles_reshard_phase", phase="done") == 1
    assert value(samples, "spectacles_reshard_target_shards") == 0  # none runs
    assert value(samples, "spectacles_reshard_new_shards_ready") == 0
    assert value(samples, "spectacles_reshards_total", outcome="done") == 1
    assert value(samples, "spectacles_reshards_total", outcome="aborted") == 0


def test_cluster_metrics_only_in_cluster_mode():
    state = MetricsState({0: [0]})
    assert not any(name.startswith("spectacles_cluster_") for name, _ in scrape_state(state))
    state.set_supervisor(cluster={"groups": [1, 4], "nodes": 3, "acquired": {"start": 1, "failover": 1, "takeover": 1},
                                  "handed_over": 2, "fenced": 1, "amnesias": 1})  # fmt: skip
    samples = scrape_state(state)
    assert value(samples, "spectacles_cluster_groups_held") == 2
    assert value(samples, "spectacles_cluster_nodes") == 3
    assert value(samples, "spectacles_cluster_groups_acquired_total", how="failover") == 1
    assert value(samples, "spectacles_cluster_groups_acquired_total", how="handoff") == 0
    assert value(samples, "spectacles_cluster_handoffs_total") == 2
    assert value(samples, "spectacles_cluster_fenced_total") == 1
    assert value(samples, "spectacles_cluster_groups_acquired_total", how="takeover") == 1
    assert value(samples, "spectacles_cluster_redis_amnesias_total") == 1


def test_rate_limited_dispatches_are_counted_by_opcode_and_carried_over():
    # Issue 22: RATE_LIMITED (Discord refusing an op 8 asked too often), per process, by opcode.
    clock = Clock()
    state = MetricsState({0: [0]}, clock=clock)
    state.child_started(0, 100, clock.now)
    process, reports = report({0: shard(received={"RATE_LIMITED": 2})})
    push(state, 0, 100, ({**process, "rate_limited_by_opcode": {"8": 2}}, reports))
    assert value(scrape_state(state), "spectacles_rate_limited_total", group=0, opcode="8") == 2
    state.child_exited(0, 100)  # replaced: the count carries over
    state.child_started(0, 101, clock.now)
    push(state, 0, 101, ({**process, "rate_limited_by_opcode": {"8": 1}}, reports))
    assert value(scrape_state(state), "spectacles_rate_limited_total", group=0, opcode="8") == 3
