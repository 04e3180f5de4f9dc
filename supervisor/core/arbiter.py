"""The supervisor's main loop, in the manner of gunicorn's arbiter.

Signal handlers only enqueue the signal and wake the loop (:mod:`supervisor.core.loop_io`). Each
pass handles queued signals and the answers of the threads (Redis, Discord's REST, the cluster
rounds), reaps dead children, watches the live ones, grants identifies, steps the rolling restart
and the reshard, starts missing children when their restart time came, saves sessions, then waits
on the children's pipes, the control socket and the wake-up pipe. Everything else is a component
built by the composition root (:mod:`supervisor.core.compose`) and asked through its own interface;
the loop never waits on Redis, HTTP or the disk. Exit codes are a contract
(``shard_worker.exit_codes``): a fatal Discord close halts the whole supervisor with that code.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import time
from dataclasses import replace
from typing import Any

from shard_worker import exit_codes
from shard_worker.config import WorkerConfig
from shard_worker.ipc import Message
from supervisor.cluster.member import ClusterMember
from supervisor.coord.log_every import LogEvery
from supervisor.coord.shared_state import SharedState
from supervisor.core.child import Child
from supervisor.core.child_events import ChildEvents
from supervisor.core.compose import assemble
from supervisor.core.control import ControlServer
from supervisor.core.exit_handler import ExitHandler
from supervisor.core.exits import ExitContext, decide_exit
from supervisor.core.groups import Group, numbered
from supervisor.core.loop_io import LoopIO
from supervisor.core.options import ArbiterOptions
from supervisor.core.rolling import RollingRestart
from supervisor.core.sessions import SessionBook
from supervisor.core.state_store import StateStore
from supervisor.core.state_writer import StateWriter
from supervisor.core.watchdog import Watchdog
from supervisor.identify.budget import IdentifyBudget
from supervisor.identify.gate import IdentifyGate
from supervisor.observe import status
from supervisor.observe.metrics import MetricsState
from supervisor.observe.progress import LiveLine, Progress, StartWatch, start_progress
from supervisor.observe.sd_notify import Notifier, ServiceNotes
from supervisor.observe.serve import CannotServe, MetricsServer, showing
from supervisor.reshard.controller import ReshardController
from supervisor.reshard.run import ReshardRun

log = logging.getLogger("supervisor.core.arbiter")

#: At the end of a run, the last sessions get this long to reach Redis.
SHUTDOWN_FLUSH_S = 3.0


class Arbiter:
    SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD)

    # The components, built once by the composition root (supervisor/core/compose.py):
    io: LoopIO  # what the loop waits on: pipes, the control socket, signals, wake-ups
    logs: LogEvery  # lines that would repeat every pass, at most once a minute each
    writer: StateWriter  # the state dir's writes, off the loop
    shared: SharedState | None  # Redis off the loop (None without --redis-url)
    book: SessionBook  # every shard's last session (state dir, Redis)
    budget: IdentifyBudget  # who may IDENTIFY, and how many are left today
    gate: IdentifyGate  # the budget's gate (buckets, pacing)
    rolling: RollingRestart  # SIGHUP's one group at a time
    reshard: ReshardController  # live resharding and --auto-reshard
    member: ClusterMember | None  # cluster mode: the groups this node leases
    metrics: MetricsState  # /metrics, /healthz, /readyz
    live: LiveLine | None  # the live line on a terminal
    start: StartWatch  # until every shard is READY (again)
    notifier: Notifier  # systemd's notify socket
    notes: ServiceNotes  # what to tell it
    watchdog: Watchdog  # stop graces, silent children, memory
    events: ChildEvents  # what the children say, to whom (one dispatch table)
    exits: ExitHandler  # what a child's exit leads to

    def __init__(self, groups: list[WorkerConfig], options: ArbiterOptions) -> None:
        if not groups:
            raise ValueError("no shard groups to run")
        self.options = options
        self.coordinator = options.coordinator
        self.shard_count = groups[0].shard_count
        self.all_shards = [s for g in groups for s in g.shard_ids]
        self._my_shards = frozenset(self.all_shards)
        self.store = StateStore(options.state_dir, self.shard_count)
        self.groups = numbered(groups, 0, options.restart_policy)
        self.stopping = False
        self.exit_code = exit_codes.OK
        self.started_at = time.monotonic()
        self.control: ControlServer | None = None
        self.metrics_server: MetricsServer | None = None
        #: Shards granted an identify and not READY since (they need no other grant).
        self._granted: set[int] = set()
        assemble(self, options, self.started_at)

    def _take_answers(self, now: float) -> None:
        """Handle what Redis and Discord answered since the last pass (never waits)."""
        for answer in self.shared.answers() if self.shared is not None else ():
            if self.logs.redis_answered(answer):  # back after failing: it may have lost them
                self.book.dirty = True
            self.budget.on_answer(answer, now)
        self.budget.take_refreshes(now)

    # -- signals ------------------------------------------------------------------------------
    def _handle_signals(self, now: float) -> None:
        while self.io.signals:
            sig = self.io.signals.popleft()
            if sig in (signal.SIGTERM, signal.SIGINT):
                if not self.stopping:
                    log.info("%s: stopping every group (sessions kept)", signal.Signals(sig).name)
                    self.begin_stop(now)
            elif sig == signal.SIGHUP:
                self.begin_rolling_restart()
            # SIGCHLD: nothing to do here, the loop reaps on every pass

    # -- lifecycle ----------------------------------------------------------------------------
    def run(self) -> int:
        try:
            with showing(self.options.metrics_addr, self.metrics, self.live) as self.metrics_server:
                return self._run()
        except CannotServe:
            return exit_codes.ERROR

    def _run(self) -> int:
        self.io.install(self.SIGNALS)
        self.control = ControlServer(self.store.dir, self.io, {
            "status": lambda _: self.status(),
            "restart": lambda _: {"started": self.begin_rolling_restart()},
            "reshard": self.begin_reshard,
        })  # fmt: skip
        self.io.watch(self.control.sock, "control", None)
        if self.member is not None:
            self.member.node.wake = self.io.wake
            self.member.node.start()
        log.info("master: %d shards of %d in %d processes; state in %s",
                 len(self.all_shards), self.shard_count, len(self.groups), self.store.dir)  # fmt: skip
        try:
            while True:
                now = time.monotonic()
                self._handle_signals(now)
                self._take_answers(now)
                if self.member is not None:
                    self.member.step(now)
                self._reap(now)
                if self.stopping and not any(g.child for g in self.groups) and not self.reshard.live():
                    self._advance_reshard(now)  # stopped past T: the new set's sessions are the ones saved
                    break
                self.reshard.watch(now, self.options.stop_grace, self.options.heartbeat_timeout)
                self.watchdog.step(now, self.groups)
                self._grant_identifies(now)
                self._advance_rolling(now)
                self._advance_reshard(now)
                self.reshard.auto_step(now, self.start.all_ready_once)
                self._notify(now)
                if not self.stopping:
                    self._spawn_missing(now)
                self._maybe_save(now)
                self._progress(now)
                self._wait(self._timeout(now))
        finally:
            self._close()
        log.info("master: stopped (%s)", exit_codes.describe(self.exit_code))
        return self.exit_code

    def _close(self) -> None:
        """The last sessions to the state dir and Redis (a few seconds at most), every group
        handed over at once (cluster mode), the sockets closed."""
        self._save_sessions()
        if not self.writer.close(SHUTDOWN_FLUSH_S):
            log.error("the state dir did not take the last sessions in %.0f s", SHUTDOWN_FLUSH_S)
        if self.member is not None:
            self.member.close()
        if self.shared is not None and not self.shared.close(SHUTDOWN_FLUSH_S):
            log.warning("Redis did not take the last sessions in %.0f s (they are in the state dir)", SHUTDOWN_FLUSH_S)
        for closing in (self.control, self.notifier, self.io):
            if closing is not None:
                closing.close()

    def begin_stop(self, now: float, exit_code: int = exit_codes.OK) -> None:
        self.stopping = True
        self._notify(now)  # STOPPING=1 before anything else
        if self.member is not None:
            self.member.node.quiesce()  # nothing more acquired or handed over
        if exit_code != exit_codes.OK and self.exit_code == exit_codes.OK:
            self.exit_code = exit_code
        self.reshard.stop(now)
        for group in self.groups:
            if group.child is not None:
                group.child.stop(now)

    def begin_rolling_restart(self) -> bool:
        return self.rolling.begin([g.index for g in self.serving()], stopping=self.stopping, resharding=self.reshard.running)

    def begin_reshard(self, request: Any) -> dict[str, Any]:
        """A ``reshard`` request of the control socket: the controller's answer."""
        return self.reshard.request(request, stopping=self.stopping, clustered=self.member is not None,
                                    rolling=self.rolling.running)  # fmt: skip

    def _advance_reshard(self, now: float) -> None:
        self.reshard.step(now)
        if self.reshard.draining:
            self.book.dirty = True  # the new set's, saved under its count (_draining_sessions)

    # -- what the reshard controller asks (ReshardHost) -------------------------------------------
    def serving(self) -> list[Group]:
        return [g for g in self.groups if self._runs(g)]

    def register(self, child: Child) -> None:
        self.io.watch_child(child)

    def adopt(self, run: ReshardRun, new_count: int) -> None:
        """The old set has exited: the new one is the supervisor's set from now on."""
        old_count = self.shard_count
        self.groups = numbered(run.configs, run.first_group, self.options.restart_policy, run.children)
        self.metrics.set_groups({g.index: g.config.shard_ids for g in self.groups})
        for group in self.groups:
            if group.child is not None:
                self.metrics.child_started(group.index, group.child.pid, group.child.started_at)
        if self.shared is not None:  # the old sessions ended: no host may try to resume them
            self.shared.forget_sessions(old_count, self.all_shards)
        self.shard_count = new_count
        self.all_shards = list(range(new_count))
        self._my_shards = frozenset(self.all_shards)
        self.store = StateStore(self.options.state_dir, new_count)
        self.book.adopt(self.store, run.sessions)
        self._granted.clear()
        self._save_sessions()

    def _notify(self, now: float) -> None:
        """The loop passed: stamp ``/healthz`` and tell systemd what changed (``sd_notify``)."""
        self.metrics.tick(now)
        if self.notifier.enabled:
            settled = self.member is not None and self.member.node.settled  # a node may hold no group
            lines = self.notes.on_pass(
                now, self._ready_count(), len(self.all_shards), rolling=self.rolling.running, stopping=self.stopping, empty_ok=settled
            )
            self.notifier.send(lines)

    # -- the loop's steps ---------------------------------------------------------------------
    def _timeout(self, now: float) -> float:
        """Until the next thing due: systemd's watchdog, a grant, a group's restart, a reshard's
        step; at most 1 s (0.25 s while the live line counts down)."""
        timeout = 0.25 if self.start.drawing and not self.stopping else 1.0
        starts = [g.start_at for g in self.groups if g.child is None and not self.stopping and self._runs(g) and g.config.shard_ids]
        waits = [at - now for at in (self.notes.next_time(now), self.gate.next_time(now), *starts) if at is not None]
        reshard = self.reshard.timeout(now)  # relative
        return max(0.01, min([timeout, *waits, *([] if reshard is None else [reshard])]))

    def _wait(self, timeout: float) -> None:
        children = [g.child for g in self.groups if g.child is not None] + self.reshard.live()
        for kind, obj in self.io.wait(timeout, children):
            if kind == "control":
                self.control.accept()  # type: ignore[union-attr]
            elif kind == "control-conn":
                self.control.serve(obj)  # type: ignore[union-attr]
            elif (messages := obj.read()) is None:  # a child's pipe closed
                self.io.unwatch_child(obj)
            else:
                for message in messages:
                    self._on_message(obj, message)

    def _on_message(self, child: Child, message: Message) -> None:
        self.events.handle(child, message, time.monotonic())

    def _reap(self, now: float) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            except OSError as exc:
                if exc.errno == errno.EINTR:
                    continue
                raise
            if pid == 0:
                return
            code = os.waitstatus_to_exitcode(status)
            for group in self.groups:
                if group.child is not None and group.child.pid == pid:
                    self._on_exit(group, self._release(group.child, code, now), code, now)
            new = self.reshard.child_of(pid)
            if new is not None:
                self.reshard.exited(self._release(new, code, now), code)

    def _release(self, child: Child, code: int, now: float) -> Child:
        """A child exited: read what it said last (its final sessions), stop watching it, void
        its identify requests (a grant it held counts as written at its death)."""
        child.proc.returncode = code
        while leftover := child.read():
            for message in leftover:
                self._on_message(child, message)
        self.io.unwatch_child(child)
        child.close()
        self.budget.cancel(child.pid, now)
        return child

    def _on_exit(self, group: Group, child: Child, code: int, now: float) -> None:
        self.metrics.child_exited(group.index, child.pid)  # its counters carry over
        self._granted.difference_update(child.shard_ids)
        group.child = None
        decision = decide_exit(ExitContext(
            code=code,
            handed_over=self.member is not None and self.member.exited(group.index),
            retiring=self.reshard.retiring,
            rolling_clean=self.rolling.current == group.index and child.stopping_since is not None,
            auto_reshard=self.reshard.auto is not None,
            stopping=self.stopping,
        ))  # fmt: skip
        self.exits.carry_out(decision, group, child, code, now)

    def _grant_identifies(self, now: float) -> None:
        for grant in self.budget.step(now):
            self._granted.add(grant.shard_id)
            children = [g.child for g in self.groups] + self.reshard.live()
            for child in children:
                if child is not None and child.pid == grant.requester:
                    child.send(
                        "identify_grant",
                        {"shard": grant.shard_id, "not_before": grant.not_before, "expires": grant.expires},
                    )
        self.metrics.set_supervisor(**status.figures(self, self._ready_count(), now))

    def _advance_rolling(self, now: float) -> None:
        if self.stopping:
            self.rolling.cancel()
        else:
            self.rolling.step(now, self.group, self._runs)

    def _spawn_missing(self, now: float) -> None:
        if self.reshard.retiring:
            return  # the old set is leaving; the new one is adopted once it has
        for group in self.groups:
            if group.child is None and group.config.shard_ids and self._runs(group) and now >= group.start_at:
                self._spawn(group, now)

    def _child_config(self, group: Group) -> WorkerConfig:
        """What a (re)started child of ``group`` is given: its sessions, and during a reshard's
        cut-over the cut-over point (a child replacing one that crashed after the old set was
        told ``T`` must apply it from its start)."""
        sessions = self.book.of(group.config.shard_ids)
        return replace(group.config, sessions=sessions, cutover=self.reshard.restart_cutover())

    def _spawn(self, group: Group, now: float) -> None:
        config = self._child_config(group)
        sessions = config.sessions
        child = Child(group.index, config, log_format=self.options.log_format)
        group.child = child
        self.metrics.child_started(group.index, child.pid, child.started_at)
        self.io.watch_child(child)
        log.info("started %s: %d to resume, %d to identify", child.label, len(sessions),
                 len(config.shard_ids) - len(sessions), extra={"group": group.index})  # fmt: skip

    # -- the start's progress -------------------------------------------------------------------
    def _ready_count(self) -> int:
        return sum(len(g.child.ready) for g in self.groups if g.child is not None)

    def _progress(self, now: float) -> None:
        self.start.step(now, self._ready_count(), len(self.all_shards), self.stopping, lambda: self.progress(now))

    def progress(self, now: float) -> Progress:
        """The start's :class:`~supervisor.observe.progress.Progress`, from the gate."""
        ready = {s for g in self.groups if g.child is not None for s in g.child.ready}
        return start_progress(self.gate, ready, self.all_shards, self.book.sessions, self._granted, now)

    def _maybe_save(self, now: float) -> None:
        self.book.maybe_save(now, self.shard_count, self._my_shards, self.reshard.draining_sessions(self.options.state_dir))

    def _save_sessions(self) -> None:
        self.book.save(self.shard_count, self._my_shards, self.reshard.draining_sessions(self.options.state_dir))

    def every_group(self) -> list[Group]:
        return list(self.groups)

    def group(self, index: int) -> Group:
        """The group numbered ``index`` (after a reshard the numbers do not start at 0)."""
        return next(g for g in self.groups if g.index == index)

    # -- cluster mode (supervisor.cluster.member asks) ------------------------------------------
    def _runs(self, group: Group) -> bool:
        return self.member is None or self.member.runs(group.index)

    def cluster_groups_changed(self, now: float) -> None:
        """The leased groups changed: the shards this node runs, its metrics, its progress."""
        running = [g for g in self.groups if self._runs(g)]
        self.all_shards = [s for g in running for s in g.config.shard_ids]
        self._my_shards = frozenset(self.all_shards)
        self.metrics.set_groups({g.index: g.config.shard_ids for g in running})
        if self._ready_count() < len(self.all_shards):
            self.start.not_all_ready(now)

    # -- status -------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """The ``status`` document (``supervisor.observe.status``)."""
        return status.document(self, self.serving(), time.monotonic())
