"""The composition root: every component of the arbiter, built once, in one place.

Each component gets what it needs here and nothing more (the state dir's writer, the Redis
thread, a wake-up callback); the arbiter's loop then asks them through their own interfaces.
"""

from __future__ import annotations

import sys
from typing import Any

from supervisor.cluster.member import ClusterMember
from supervisor.coord.log_every import LogEvery
from supervisor.coord.shared_state import SharedState
from supervisor.core.child_events import ChildEvents
from supervisor.core.exit_handler import ExitHandler
from supervisor.core.loop_io import LoopIO
from supervisor.core.options import ArbiterOptions
from supervisor.core.rolling import RollingRestart
from supervisor.core.sessions import SessionBook
from supervisor.core.state_writer import StateWriter
from supervisor.core.watchdog import Watchdog
from supervisor.identify.budget import make_budget
from supervisor.identify.hold import default_reserve
from supervisor.identify.refresh import BudgetRefresher
from supervisor.observe.metrics import MetricsState
from supervisor.observe.progress import LiveLine, StartWatch
from supervisor.observe.sd_notify import Notifier, ServiceNotes
from supervisor.reshard.auto import MIN_INTERVAL_S, AutoReshard
from supervisor.reshard.controller import ReshardController


def assemble(arbiter: Any, options: ArbiterOptions, now: float) -> None:
    """Build the arbiter's components (its groups, count and store are set already)."""
    a = arbiter
    a.io = LoopIO()
    a.logs = LogEvery()
    a.writer = StateWriter()
    a.shared = SharedState(a.coordinator, wake=a.io.wake) if a.coordinator is not None else None
    a.book = SessionBook(a.store, a.writer, a.shared, options.save_interval)
    # Before the loop exists (nothing to stall yet): Redis read once, at most the socket timeout.
    a.book.load(a.shard_count, a.all_shards, None if a.coordinator is None else (
        lambda count, shards: _redis_now(a.logs, a.coordinator.load_sessions, count, shards)))  # fmt: skip
    configured = sum(len(g.config.shard_ids) for g in a.groups)
    a.member = None
    if options.cluster is not None:
        # Cluster mode: runs only the groups it leases, with the sessions Redis holds for them.
        a.member = ClusterMember(options.cluster, a, a.book)
        if a.coordinator is not None:
            node = options.cluster
            # Sessions are written only under the group's lease (a stale save never overwrites
            # the session of the node that took the group over).
            a.coordinator.set_fence(
                lambda count, shard: node.store.lease_key(count, shard // node.per_group), node.store.owner
            )
        a.book.sessions = {}
        a.all_shards, a._my_shards = [], frozenset()
    a.budget = make_budget(
        max_concurrency=a.groups[0].config.max_concurrency,
        reserve=options.identify_reserve if options.identify_reserve is not None else default_reserve(configured),
        store=a.store, writer=a.writer, logs=a.logs,
        session_start_remaining=options.session_start_remaining,
        session_start_reset_after=options.session_start_reset_after,
        session_start_total=options.session_start_total,
        fetch_gateway_bot=options.fetch_gateway_bot,
        coordinator=a.coordinator, shared=a.shared, now=now, wake=a.io.wake,
    )  # fmt: skip
    a.gate = a.budget.gate
    a.rolling = RollingRestart()
    auto, recommender = None, None
    if options.auto_reshard_interval is not None and options.fetch_gateway_bot is not None:
        auto = AutoReshard(options.auto_reshard_interval, options.shard_count_multiple)
        recommender = BudgetRefresher(options.fetch_gateway_bot, wake=a.io.wake, min_interval=MIN_INTERVAL_S)
    a.reshard = ReshardController(a, multiple=options.shard_count_multiple, log_format=options.log_format,
                                  auto=auto, recommender=recommender)  # fmt: skip
    a.metrics = MetricsState({g.index: g.config.shard_ids for g in a.groups if a._runs(g)})
    live = options.live_progress
    if live is None:
        live = options.log_format != "json" and _isatty(sys.stderr)
    a.live = LiveLine(sys.stderr) if live else None
    a.start = StartWatch(a.live, now)
    a.notifier = Notifier()
    a.notes = ServiceNotes(a.notifier.watchdog_s)
    a.watchdog = Watchdog(heartbeat_timeout=options.heartbeat_timeout, stop_grace=options.stop_grace,
                          max_memory_mb=options.max_memory_mb, sample_interval=options.sample_interval,
                          metrics=a.metrics)  # fmt: skip
    a.events = ChildEvents(metrics=a.metrics, budget=a.budget, book=a.book, reshard=a.reshard, member=a.member,
                           start=a.start, live=a.live, granted=a._granted, stopping=lambda: a.stopping)  # fmt: skip
    a.exits = ExitHandler(metrics=a.metrics, book=a.book, reshard=a.reshard, begin_stop=a.begin_stop)


def _redis_now(logs: LogEvery, method: Any, *args: Any) -> Any:
    """Call Redis now (only before the loop runs); on failure log and return None."""
    try:
        return method(*args)
    except Exception as exc:  # noqa: BLE001 - redis errors, timeouts: never fatal here
        logs.redis_failed(exc)
        return None


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False
