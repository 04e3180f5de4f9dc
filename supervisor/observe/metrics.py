"""Prometheus metrics of the supervisor, aggregated from every child's IPC reports.

Three parts (every metric is listed in ``docs/METRICS.md``):

- :class:`MetricsState`, fed by the arbiter from its own loop: each child's latest heartbeat report
  (``shard_worker.supervised.ParentLink.report``), child starts and exits, RSS/CPU samples, the
  identify gate's figures. Each call holds the lock only to swap a few references.
- :func:`families`, pure: a :class:`Snapshot` in, Prometheus metric families out.
- :class:`MetricsServer`: ``/metrics`` over HTTP from a daemon thread (prometheus-client's WSGI app
  on a threading server); its collector copies the state under the lock and builds the families
  outside it, so the arbiter never waits on a scrape, nor a scrape on the arbiter.

Counters never go backwards when a child is replaced: a child's counters start at 0, so when a
child exits, the last report it sent (its ``stopped`` report, else its last heartbeat) is added to
a carried-over base per shard (and per group, for what a child counts as a whole: rejections,
broker counters, the confirm latency histogram). What a killed child counted after its last
heartbeat (at most a second) is lost to the counters, never counted twice.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

log = logging.getLogger("supervisor.observe.metrics")

#: ``spectacles_shard_state`` is one series per shard whose value is the index of its state
#: here (a Grafana value mapping turns it back into a name): 0 down ... 5 ready.
SHARD_STATES = ("down", "connecting", "identifying", "resuming", "stalled", "ready")
STATE_CODE = {name: code for code, name in enumerate(SHARD_STATES)}
#: A shard's reported phase (``ShardMachine.phase``) to its ``state`` label.
_STATE_OF_PHASE = {
    "connecting": "connecting",
    "identifying": "identifying",
    "resuming": "resuming",
    "ready": "ready",
    "stalled": "stalled",
}
#: Per-shard counters of the report: report key -> (metric name, help). With the gauges (state,
#: seq, latency, outbox) a shard has 10 series, whatever the event types: see docs/METRICS.md.
SHARD_COUNTERS: dict[str, tuple[str, str]] = {
    "received": ("spectacles_shard_events_received_total", "Dispatches received from Discord."),
    "published": ("spectacles_shard_events_published_total", "Dispatches published to RabbitMQ."),
    "sent": ("spectacles_outbound_sent_total", "Packets sent to Discord from the outbound queues."),
    "reconnects": ("spectacles_shard_reconnects_total", "Gateway connections lost and reopened."),
    "resumes": ("spectacles_shard_resumes_total", "Sessions resumed (RESUMED received)."),
    "identifies": ("spectacles_shard_identifies_total", "IDENTIFY payloads sent (sessions started)."),
}
#: Per-group (process) counters of the heartbeat: report key -> (metric name, help).
GROUP_COUNTERS: dict[str, tuple[str, str]] = {
    "bad_frames": ("spectacles_gateway_bad_frames_total", "Messages from Discord that were not a gateway payload, skipped."),
}
#: Per-group (process) counters by event type: report key -> (metric name, help).
TYPED_COUNTERS: dict[str, tuple[str, str]] = {
    "received_by_type": ("spectacles_events_received_total", "Dispatches received from Discord, by type."),
    "published_by_type": ("spectacles_events_published_total", "Dispatches published to RabbitMQ, by type."),
    "rate_limited_by_opcode": (
        "spectacles_rate_limited_total",
        "RATE_LIMITED dispatches: commands Discord refused (op 8 asked too often), by their opcode.",
    ),
}
#: The label of each typed counter's key.
TYPED_LABELS = {"received_by_type": "type", "published_by_type": "type", "rate_limited_by_opcode": "opcode"}


# -- the carried-over bases (copy on write: a snapshot shares them) --------------------------


def _add_counts(base: Mapping[str, Any], more: Mapping[str, Any] | None) -> dict[str, int]:
    out = dict(base)
    for key, value in (more or {}).items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = out.get(key, 0) + value
    return out


def _rebucket(counts: Sequence[int], bounds: Sequence[float], target: Sequence[float]) -> list[int]:
    """Move per-bucket ``counts`` (last is +Inf) onto ``target`` bounds: each bucket goes to the
    smallest target bound at or above its own (never understating a latency)."""
    out = [0] * (len(target) + 1)
    for index, count in enumerate(counts):
        bound = bounds[index] if index < len(bounds) else float("inf")
        slot = next((i for i, t in enumerate(target) if t >= bound), len(target))
        out[slot] += count
    return out


def merge_histograms(base: Mapping[str, Any] | None, more: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """``{bounds, counts, sum, count}`` of both (``counts`` per bucket, the last one +Inf)."""
    if not more or not more.get("bounds"):
        return dict(base) if base else None
    if not base or not base.get("bounds"):
        return {
            "bounds": list(more["bounds"]),
            "counts": list(more["counts"]),
            "sum": float(more.get("sum", 0.0)),
            "count": int(more.get("count", 0)),
        }
    bounds = list(base["bounds"])
    counts = list(more["counts"])
    if list(more["bounds"]) != bounds:  # another version of the child: keep the base's buckets
        counts = _rebucket(counts, more["bounds"], bounds)
    return {
        "bounds": bounds,
        "counts": [a + b for a, b in zip(base["counts"], counts)],
        "sum": float(base.get("sum", 0.0)) + float(more.get("sum", 0.0)),
        "count": int(base.get("count", 0)) + int(more.get("count", 0)),
    }


@dataclass(frozen=True)
class ShardBase:
    """What previous children of one shard counted."""

    counters: Mapping[str, int] = field(default_factory=dict)

    def plus(self, report: Mapping[str, Any]) -> ShardBase:
        return ShardBase(_add_counts(self.counters, {k: report.get(k, 0) for k in SHARD_COUNTERS}))


@dataclass(frozen=True)
class GroupBase:
    """What previous children of one group counted as a whole."""

    rejected: Mapping[str, int] = field(default_factory=dict)
    broker: Mapping[str, int] = field(default_factory=dict)
    confirm_latency: Mapping[str, Any] | None = None
    by_type: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    counters: Mapping[str, int] = field(default_factory=dict)

    def plus(self, report: Mapping[str, Any]) -> GroupBase:
        return GroupBase(
            _add_counts(self.rejected, report.get("rejected")),
            _add_counts(self.broker, report.get("broker")),
            merge_histograms(self.confirm_latency, report.get("confirm_latency")),
            {key: _add_counts(self.by_type.get(key, {}), report.get(key)) for key in TYPED_COUNTERS},
            _add_counts(self.counters, {k: report.get(k, 0) for k in GROUP_COUNTERS}),
        )


@dataclass(frozen=True)
class ChildInfo:
    pid: int
    started_at: float  # time.monotonic()
    rss: int = 0
    cpu_percent: float = 0.0


@dataclass(frozen=True)
class Snapshot:
    """A consistent copy of :class:`MetricsState`, for :func:`families`."""

    groups: Mapping[int, Sequence[int]]
    #: each group's child's process-wide report (its last heartbeat)
    reports: Mapping[int, Mapping[str, Any]]
    #: each group's shard reports, by shard id as a string
    shard_reports: Mapping[int, Mapping[str, Mapping[str, Any]]]
    children: Mapping[int, ChildInfo]
    restarts: Mapping[int, int]
    shard_base: Mapping[int, ShardBase]
    group_base: Mapping[int, GroupBase]
    stalled: frozenset[int]
    supervisor: Mapping[str, Any]
    now: float


class MetricsState:
    """The arbiter's latest figures, shared with the HTTP thread under :attr:`lock`."""

    def __init__(self, groups: Mapping[int, Sequence[int]], *, clock: Any = time.monotonic) -> None:
        self.lock = threading.Lock()
        self.clock = clock
        self.started_at = clock()
        self.groups = {g: tuple(shards) for g, shards in groups.items()}
        self.group_of = {s: g for g, shards in self.groups.items() for s in shards}
        self._reports: dict[int, Mapping[str, Any]] = {}
        self._shard_reports: dict[int, dict[str, Mapping[str, Any]]] = {}
        self._children: dict[int, ChildInfo] = {}
        self._restarts: dict[int, int] = {g: 0 for g in self.groups}
        self._shard_base: dict[int, ShardBase] = {s: ShardBase() for s in self.group_of}
        self._group_base: dict[int, GroupBase] = {g: GroupBase() for g in self.groups}
        self._stalled: set[int] = set()
        self._supervisor: dict[str, Any] = {}
        #: The clock at the loop's last pass (``/healthz``); None: the loop has not run yet.
        self.last_tick: float | None = None

    # -- fed by the arbiter -------------------------------------------------------------------
    def tick(self, now: float) -> None:
        """The loop passed at ``now`` (one float store: no lock, read whole by the HTTP thread)."""
        self.last_tick = now

    def set_groups(self, groups: Mapping[int, Sequence[int]]) -> None:
        """The groups after a live reshard (the new set's): shards and groups not seen before
        start from zero; the old ones' counters are kept but no longer shown."""
        with self.lock:
            self.groups = {g: tuple(shards) for g, shards in groups.items()}
            self.group_of = {s: g for g, shards in self.groups.items() for s in shards}
            for g in self.groups:
                self._restarts.setdefault(g, 0)
                self._group_base.setdefault(g, GroupBase())
            for shard in self.group_of:
                self._shard_base.setdefault(shard, ShardBase())

    def child_started(self, group: int, pid: int, started_at: float) -> None:
        with self.lock:
            self._retire(group)
            self._children[group] = ChildInfo(pid, started_at)

    def child_report(self, group: int, pid: int, report: Mapping[str, Any]) -> None:
        """A heartbeat (or the ``stopped`` report) of the group's current child."""
        if not isinstance(report, Mapping):
            return
        with self.lock:
            child = self._children.get(group)
            if child is not None and child.pid == pid:
                self._reports[group] = report

    def shard_reports(self, group: int, pid: int, reports: Mapping[str, Mapping[str, Any]]) -> None:
        """A ``shards`` message of the group's current child: the reports that changed."""
        with self.lock:
            child = self._children.get(group)
            if child is not None and child.pid == pid:
                self._shard_reports.setdefault(group, {}).update(reports)

    def child_sampled(self, group: int, pid: int, rss: int, cpu_percent: float) -> None:
        with self.lock:
            child = self._children.get(group)
            if child is not None and child.pid == pid:
                self._children[group] = ChildInfo(pid, child.started_at, rss, cpu_percent)

    def child_exited(self, group: int, pid: int) -> None:
        """Carry the last report of the group's child over into the bases (once)."""
        with self.lock:
            child = self._children.get(group)
            if child is not None and child.pid == pid:
                self._retire(group)
                del self._children[group]

    def set_restarts(self, group: int, restarts: int) -> None:
        with self.lock:
            self._restarts[group] = restarts

    def shard_event(self, shard: int, state: str) -> None:
        """A ``shard_state`` event: ``stalled`` holds until the shard's next event."""
        with self.lock:
            if state == "stalled":
                self._stalled.add(shard)
            else:
                self._stalled.discard(shard)

    def is_stalled(self, shard: int) -> bool:
        return shard in self._stalled

    def set_supervisor(self, **values: Any) -> None:
        """Supervisor-wide figures: ``identify_budget_remaining``, ``identifies_granted``,
        ``identify_waiting``, ``shards_ready``, ``shard_count``, ``reshard`` (the status's)
        and ``reshards`` (ended ones by outcome)."""
        with self.lock:
            self._supervisor.update(values)

    def _retire(self, group: int) -> None:
        report = self._reports.pop(group, None)
        shard_reports = self._shard_reports.pop(group, None) or {}
        for shard in self.groups.get(group, ()):
            self._stalled.discard(shard)
        for key, shard_report in shard_reports.items():
            try:
                shard = int(key)
            except (TypeError, ValueError):
                continue
            if shard in self._shard_base and isinstance(shard_report, Mapping):
                self._shard_base[shard] = self._shard_base[shard].plus(shard_report)
        if report:
            self._group_base[group] = self._group_base[group].plus(report)

    # -- read by the HTTP thread --------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        with self.lock:
            return Snapshot(
                groups=self.groups,
                reports=dict(self._reports),
                # copied: the arbiter adds to these dicts while a scrape reads the snapshot
                shard_reports={g: dict(r) for g, r in self._shard_reports.items()},
                children=dict(self._children),
                restarts=dict(self._restarts),
                shard_base=dict(self._shard_base),
                group_base=dict(self._group_base),
                stalled=frozenset(self._stalled),
                supervisor={**self._supervisor, "uptime": self.clock() - self.started_at},
                now=self.clock(),
            )


# -- from a snapshot to metric families (pure) -----------------------------------------------


def shard_state(snapshot: Snapshot, group: int, shard: int) -> str:
    """One of :data:`SHARD_STATES`."""
    if group not in snapshot.children:
        return "down"
    if shard in snapshot.stalled:
        return "stalled"
    info = (snapshot.shard_reports.get(group) or {}).get(str(shard))
    if not info:
        return "connecting"  # the child has not reported yet
    return _STATE_OF_PHASE.get(info.get("state"), "down")


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def families(snapshot: Snapshot) -> list[Metric]:
    """Every metric family of ``docs/METRICS.md`` for ``snapshot``."""
    sl = ["shard", "group"]
    typed = {key: CounterMetricFamily(*spec, labels=["group", TYPED_LABELS[key]]) for key, spec in TYPED_COUNTERS.items()}
    counters = {
        key: CounterMetricFamily(*spec, labels=sl) for key, spec in SHARD_COUNTERS.items()
    }
    latency = GaugeMetricFamily(
        "spectacles_heartbeat_latency_seconds",
        "Time from the last gateway heartbeat to its ACK.",
        labels=sl,
    )
    seq = GaugeMetricFamily("spectacles_shard_seq", "Last sequence number received.", labels=sl)
    outbox = GaugeMetricFamily(
        "spectacles_outbound_queued_messages",
        "Packets waiting for room in the 120 per 60 s send window.",
        labels=sl,
    )
    state = GaugeMetricFamily(
        "spectacles_shard_state",
        "The shard's state: " + ", ".join(f"{code} {name}" for code, name in enumerate(SHARD_STATES)) + ".",
        labels=sl,
    )
    rejected = CounterMetricFamily(
        "spectacles_outbound_rejected_total",
        "Outbound messages rejected (not sent, not requeued), by reason.",
        labels=["group", "reason"],
    )
    broker = CounterMetricFamily(
        "spectacles_broker_messages_total",
        "AMQP bridge counters of the group's child, by kind.",
        labels=["group", "kind"],
    )
    confirm = HistogramMetricFamily(
        "spectacles_publish_confirm_latency_seconds",
        "Time from publishing a dispatch to RabbitMQ's confirm.",
        labels=["group"],
    )
    group_counters = {key: CounterMetricFamily(*spec, labels=["group"]) for key, spec in GROUP_COUNTERS.items()}
    buffered = GaugeMetricFamily(
        "spectacles_buffer_messages", "Dispatches published but not confirmed yet.", labels=["group"]
    )
    buffered_bytes = GaugeMetricFamily(
        "spectacles_buffer_bytes", "Bytes of the dispatches not confirmed yet.", labels=["group"]
    )
    connected = GaugeMetricFamily(
        "spectacles_broker_connected", "1 while the group's child is connected to RabbitMQ.", labels=["group"]
    )
    tasks = GaugeMetricFamily(
        "spectacles_child_asyncio_tasks",
        "asyncio tasks alive in the group's child (flat over a long run; growth is a leak).",
        labels=["group"],
    )
    up = GaugeMetricFamily("spectacles_child_up", "1 while the group has a running child.", labels=["group"])
    rss = GaugeMetricFamily("spectacles_child_rss_bytes", "Resident memory of the group's child.", labels=["group"])
    cpu = GaugeMetricFamily(
        "spectacles_child_cpu_percent",
        "CPU use of the group's child over the last sample interval (100 = one core).",
        labels=["group"],
    )
    restarts = CounterMetricFamily(
        "spectacles_child_restarts_total",
        "Times the group's child died or was replaced and restarted (rolling restarts excluded).",
        labels=["group"],
    )
    uptime = GaugeMetricFamily(
        "spectacles_child_uptime_seconds", "Seconds since the group's child started.", labels=["group"]
    )

    for group, shards in sorted(snapshot.groups.items()):
        g = str(group)
        report = snapshot.reports.get(group) or {}
        shard_reports = snapshot.shard_reports.get(group) or {}
        empty: Mapping[str, Any] = {}
        no_base = ShardBase()
        for shard in shards:
            key_s = str(shard)
            labels = [key_s, g]
            live = shard_reports.get(key_s) or empty
            base = snapshot.shard_base.get(shard) or no_base
            for key, family in counters.items():
                family.add_metric(labels, base.counters.get(key, 0) + (_number(live.get(key)) or 0))
            state.add_metric(labels, STATE_CODE[shard_state(snapshot, group, shard)])
            if (ms := _number(live.get("latency_ms"))) is not None:
                latency.add_metric(labels, ms / 1000.0)
            if (value := _number(live.get("seq"))) is not None:
                seq.add_metric(labels, value)
            if (value := _number(live.get("outbox"))) is not None:
                outbox.add_metric(labels, value)

        gbase = snapshot.group_base.get(group) or GroupBase()
        for key, family in typed.items():
            for event_type, value in sorted(_add_counts(gbase.by_type.get(key, {}), report.get(key)).items()):
                family.add_metric([g, event_type], value)
        for key, family in group_counters.items():
            family.add_metric([g], gbase.counters.get(key, 0) + (_number(report.get(key)) or 0))
        for reason, value in sorted(_add_counts(gbase.rejected, report.get("rejected")).items()):
            rejected.add_metric([g, reason], value)
        for kind, value in sorted(_add_counts(gbase.broker, report.get("broker")).items()):
            broker.add_metric([g, kind], value)
        hist = merge_histograms(gbase.confirm_latency, report.get("confirm_latency"))
        if hist:
            running = 0
            buckets = []
            for bound, count in zip([*hist["bounds"], float("inf")], hist["counts"]):
                running += count
                buckets.append((floatToGoString(bound), running))
            confirm.add_metric([g], buckets, sum_value=hist["sum"])
        if report:
            for key, family in (("buffered", buffered), ("buffered_bytes", buffered_bytes)):
                if (value := _number(report.get(key))) is not None:
                    family.add_metric([g], value)
            sizes = report.get("sizes")
            if isinstance(sizes, Mapping) and (value := _number(sizes.get("asyncio_tasks"))) is not None:
                tasks.add_metric([g], value)
            if isinstance(report.get("broker_connected"), bool):
                connected.add_metric([g], 1.0 if report["broker_connected"] else 0.0)

        child = snapshot.children.get(group)
        up.add_metric([g], 1.0 if child else 0.0)
        restarts.add_metric([g], snapshot.restarts.get(group, 0))
        if child is not None:
            uptime.add_metric([g], max(0.0, snapshot.now - child.started_at))
            if child.rss:  # sampled (every few seconds)
                rss.add_metric([g], child.rss)
                cpu.add_metric([g], child.cpu_percent)

    out: list[Metric] = [
        *typed.values(), *counters.values(), latency, seq, outbox, state,
        rejected, broker, confirm, *group_counters.values(), buffered, buffered_bytes, connected,
        tasks, up, rss, cpu, restarts, uptime,
    ]  # fmt: skip
    out.extend(_supervisor_families(snapshot.supervisor))
    return out


def _supervisor_families(values: Mapping[str, Any]) -> Iterator[Metric]:
    remaining = _number(values.get("identify_budget_remaining"))
    if remaining is not None:  # unknown until Discord said it (or identifies were logged)
        yield GaugeMetricFamily(
            "spectacles_identify_budget_remaining",
            "Identifies left in Discord's daily session start limit.",
            value=remaining,
        )
    reserve = _number(values.get("identify_budget_reserve"))
    if reserve is not None:
        yield GaugeMetricFamily(
            "spectacles_identify_budget_reserve",
            "Identifies never spent on our own (--identify-reserve): a token reset is the price of the last.",
            value=reserve,
        )
    yield GaugeMetricFamily(
        "spectacles_identify_held",
        "1 while identifies are held because the daily budget is down to its reserve.",
        value=1.0 if values.get("identify_held") else 0.0,
    )
    yield CounterMetricFamily(
        "spectacles_identifies_granted_total",
        "Identifies the supervisor's gate granted (since it started).",
        value=_number(values.get("identifies_granted")) or 0.0,
    )
    yield GaugeMetricFamily(
        "spectacles_identify_requests_waiting",
        "Shards waiting for an identify grant.",
        value=_number(values.get("identify_waiting")) or 0.0,
    )
    yield GaugeMetricFamily(
        "spectacles_shards_ready", "Shards READY now.", value=_number(values.get("shards_ready")) or 0.0
    )
    count = _number(values.get("shard_count"))
    if count is not None:
        yield GaugeMetricFamily(
            "spectacles_shards_configured",
            "The shard count the supervisor serves: the N of every IDENTIFY's [shard, N] (the new one once a reshard is done).",
            value=count,
        )
    yield from _reshard_families(values)
    yield from _cluster_families(values.get("cluster"))
    yield GaugeMetricFamily(
        "spectacles_supervisor_uptime_seconds",
        "Seconds since the supervisor started.",
        value=_number(values.get("uptime")) or 0.0,
    )


#: ``spectacles_reshard_phase`` has one series per phase of ``supervisor.reshard.shard_sets.Phase``.
RESHARD_PHASES = ("idle", "preparing", "cutover", "draining", "done", "aborted")


def _reshard_families(values: Mapping[str, Any]) -> Iterator[Metric]:
    """The reshard in progress (or the last one): ``reshard`` is ``Reshard.describe()`` plus
    ``new_ready``; ``reshards`` counts the ended ones by outcome."""
    reshard = values.get("reshard") if isinstance(values.get("reshard"), dict) else {}
    current = reshard.get("phase", "idle")
    phase = GaugeMetricFamily(
        "spectacles_reshard_phase", "1 for the phase of the running (or last) reshard, 0 for the others.", labels=["phase"]
    )
    for name in RESHARD_PHASES:
        phase.add_metric([name], 1.0 if name == current else 0.0)
    yield phase
    running = current in ("preparing", "cutover", "draining")
    yield GaugeMetricFamily(
        "spectacles_reshard_target_shards", "The new shard count while a reshard runs (0: none runs).",
        value=float(reshard.get("new_count") or 0) if running else 0.0,
    )  # fmt: skip
    yield GaugeMetricFamily(
        "spectacles_reshard_new_shards_ready", "Shards of the new set READY while a reshard runs.",
        value=float(reshard.get("new_ready") or 0) if running else 0.0,
    )  # fmt: skip
    ended = CounterMetricFamily("spectacles_reshards_total", "Reshards ended, by outcome.", labels=["outcome"])
    for outcome in ("done", "aborted"):
        ended.add_metric([outcome], float((values.get("reshards") or {}).get(outcome, 0)))
    yield ended


def _cluster_families(cluster: Any) -> Iterator[Metric]:
    """Cluster mode (``--cluster``): absent without it. ``cluster`` is ``ClusterMember.describe()``."""
    if not isinstance(cluster, dict):
        return
    yield GaugeMetricFamily("spectacles_cluster_groups_held", "Shard groups this node holds a lease on.",
                            value=float(len(cluster.get("groups") or ())))  # fmt: skip
    yield GaugeMetricFamily("spectacles_cluster_nodes", "Live nodes of the cluster, as last read from Redis.",
                            value=float(cluster.get("nodes") or 0))  # fmt: skip
    acquired = CounterMetricFamily(
        "spectacles_cluster_groups_acquired_total",
        "Groups this node acquired: at start (free), by handoff, by failover (their owner died, its sessions "
        "resumed), by takeover (run elsewhere before, no session: identified once its owner had certainly stopped).",
        labels=["how"],
    )
    for how in ("start", "handoff", "failover", "takeover"):
        acquired.add_metric([how], float((cluster.get("acquired") or {}).get(how, 0)))
    yield acquired
    yield CounterMetricFamily("spectacles_cluster_handoffs_total", "Groups this node handed over to another.",
                              value=float(cluster.get("handed_over") or 0))  # fmt: skip
    yield CounterMetricFamily("spectacles_cluster_fenced_total", "Groups this node stopped because it could not renew their lease.",
                              value=float(cluster.get("fenced") or 0))  # fmt: skip
    yield CounterMetricFamily("spectacles_cluster_redis_amnesias_total",
                              "Times this node found that Redis had forgotten the cluster (restarted empty, flushed).",
                              value=float(cluster.get("amnesias") or 0))  # fmt: skip


class SpectaclesCollector:
    """A prometheus-client collector over a :class:`MetricsState`."""

    def __init__(self, state: MetricsState) -> None:
        self.state = state

    def collect(self) -> Iterable[Metric]:
        return families(self.state.snapshot())


# -- the HTTP server --------------------------------------------------------------------------


def build_registry(state: MetricsState) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SpectaclesCollector(state))  # type: ignore[arg-type]
    ProcessCollector(namespace="spectacles_supervisor", registry=registry)
    return registry
