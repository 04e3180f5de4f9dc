"""A live reshard as the arbiter runs it: the request's checks, the new set's children beside the
old set, each step of the plan (:mod:`supervisor.reshard.shard_sets`, carried out by
:class:`~supervisor.reshard.run.ReshardRun`), the old set's retirement and the adoption of the new
one, and ``--auto-reshard`` (:mod:`supervisor.reshard.auto`).

The controller never reaches into the arbiter: it asks its :class:`ReshardHost` (the groups it
serves, the identify budget, registering a child's pipe, stopping, adopting the new set).
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from shard_worker.config import SavedSession
from shard_worker.ipc import Message
from shard_worker.ipc_vocabulary import Event
from shard_worker.ipc_vocabulary import Order as IpcOrder
from shard_worker.shard_ranges import format_shard_ids
from supervisor.core.child import Child
from supervisor.core.groups import Group
from supervisor.core.state_store import StateStore
from supervisor.identify.budget import IdentifyBudget
from supervisor.identify.refresh import BudgetRefresher
from supervisor.observe.progress import estimate, gate_view
from supervisor.reshard import shard_sets
from supervisor.reshard.auto import AutoReshard
from supervisor.reshard.run import ReshardRun, new_set_configs
from supervisor.reshard.shard_sets import Phase, Refusal, Reshard, ShardSet

log = logging.getLogger("supervisor.reshard.controller")


class ReshardHost(Protocol):
    """What the controller asks the arbiter."""

    shard_count: int
    all_shards: list[int]
    stopping: bool
    budget: IdentifyBudget

    def serving(self) -> list[Group]:
        """The groups of the serving (old) set this supervisor runs."""

    def register(self, child: Child) -> None:
        """Watch a new child's pipe."""

    def begin_stop(self, now: float, exit_code: int) -> None: ...

    def adopt(self, run: ReshardRun, new_count: int) -> None:
        """The old set has exited: the new set's groups, count and sessions are the supervisor's."""


class ReshardController:
    def __init__(self, host: ReshardHost, *, multiple: int, log_format: str | None,
                 auto: AutoReshard | None = None, recommender: BudgetRefresher | None = None) -> None:
        self.host = host
        self.multiple = multiple
        self.log_format = log_format
        #: ``--auto-reshard``'s policy and its own ``GET /gateway/bot`` thread (None: off)
        self.auto = auto
        self.recommender = recommender
        #: The running (or last) reshard's plan; None: never asked.
        self.plan: Reshard | None = None
        #: The new set's children while a reshard runs.
        self.run: ReshardRun | None = None
        #: The old set is being stopped after the cut-over: its groups are not restarted.
        self.retiring = False
        #: Reshards ended, by outcome (``/metrics``), and the last one counted.
        self._ends: dict[str, int] = {}
        self._counted: Reshard | None = None

    # -- requests -------------------------------------------------------------------------------
    def request(self, request: Any, *, stopping: bool = False, clustered: bool = False,
                rolling: bool = False) -> dict[str, Any]:
        """A ``reshard`` request (``{"shard_count": N}``): the answer ``{"ok", "kind", "message"}``,
        given whether the supervisor is ``stopping``, runs a cluster node, or a ``rolling``
        restart. The other checks are :func:`supervisor.reshard.shard_sets.refusal`'s; one that
        passes them starts the reshard and is answered ``started``; ``status`` then shows its phase."""
        host = self.host
        target = request.get("shard_count") if isinstance(request, dict) else None
        refused = None
        if not isinstance(target, int) or isinstance(target, bool):
            refused = Refusal("invalid", f"--shard-count must be an integer, not {target!r}")
        elif stopping:
            refused = Refusal("stopping", "the supervisor is stopping")
        elif clustered:
            refused = Refusal("partial", "resharding a cluster is not supported yet: stop every node, then start "
                                         "them with the new --shard-count")  # fmt: skip
        else:
            refused = shard_sets.refusal(
                target, ShardSet(0, host.shard_count, tuple(host.all_shards)), multiple=self.multiple,
                remaining=host.budget.remaining(), reserve=host.budget.reserve, running=self.plan,
            )  # fmt: skip
            if refused is None and rolling:
                refused = Refusal("running", "a rolling restart is running: try again once it is done")
        if refused is None:
            return self._start(target)
        log.warning("reshard refused: %s", refused.line)
        return {"ok": False, "kind": refused.kind, "message": refused.line}

    @property
    def running(self) -> bool:
        return self.plan is not None and self.plan.running

    def _start(self, target: int) -> dict[str, Any]:
        """Start the new set beside the old one (the checks passed)."""
        host = self.host
        serving = host.serving()
        self.plan = Reshard.plan(ShardSet(0, host.shard_count, tuple(host.all_shards)), target).start()
        template = serving[0].config
        configs = new_set_configs(template, target, len(template.shard_ids), host.shard_count)
        self.run = ReshardRun(
            configs, log_format=self.log_format, first_group=max(g.index for g in serving) + 1,
            old_shards=[s for g in serving for s in g.config.shard_ids if s not in g.held],
        )  # fmt: skip
        for child in self.run.spawn():
            host.register(child)
        self.tell_orphans()
        line = f"reshard {host.shard_count} -> {target} started: {len(configs)} new processes identify beside the old set"
        log.info("%s", line)
        return {"ok": True, "kind": "started", "message": line}

    # -- once a pass --------------------------------------------------------------------------
    def step(self, now: float) -> None:
        """One step of the running reshard: the run says what to do (see :mod:`~supervisor.reshard.run`)."""
        run, plan, host = self.run, self.plan, self.host
        if run is None or plan is None:
            return
        if host.stopping and plan.phase is not Phase.DRAINING:
            if plan.running:  # stopped before T: the old set's sessions are the ones kept
                self.plan = plan.abort(run.failure or "the supervisor is stopping")
            if not run.live():
                self.run = None
            return
        if plan.phase is Phase.PREPARING and host.budget.waiting and host.budget.spent(now):
            # the new set cannot finish identifying before Discord's reset: give up now, while
            # the old set serves, rather than wait hours with two sets connected
            run.fail(f"the identify budget ran out ({host.budget.remaining()} left, the reserve)")
        if plan.running:
            old = [g.child for g in host.serving() if g.child is not None]
            self.plan = plan = run.step(plan, old, now)
            if run.old_stopped:
                self.retiring = True
        if plan.phase is Phase.DRAINING and self.retiring and not any(g.child for g in host.serving()):
            new_count = plan.new.shard_count
            old_count = host.shard_count
            self.retiring, self.run, self.plan = False, None, plan.old_drained()
            host.adopt(run, new_count)
            self._adopted(old_count, new_count, len(run.sessions))
        elif plan.phase is Phase.ABORTED and not run.live():
            self.run = None  # its children are gone

    def _adopted(self, old_count: int, new_count: int, sessions: int) -> None:
        log.info("reshard %d -> %d done: only the new set runs; %d sessions saved", old_count, new_count, sessions)
        serving = self.host.serving()
        _, drained = shard_sets.queue_changes(serving[0].config.group, old_count, new_count)
        if drained:
            first = serving[0].child
            log.warning(
                "reshard: the queues %s belong to no shard now; %s drains them (packets re-routed by guild_id, "
                "the others refused); delete them once empty",
                ", ".join(drained), first.label if first else "the first group",
            )  # fmt: skip

    def draining_sessions(self, state_dir: str) -> tuple[StateStore, dict[int, SavedSession]] | None:
        """Past the cut-over point the new set serves and the old one's sessions are about to
        end: a supervisor killed now must come back with the new set's sessions (its store),
        not identify everything (issue 20, defect 4). None before."""
        if not self.draining:
            return None
        assert self.run is not None and self.plan is not None
        return StateStore(state_dir, self.plan.new.shard_count), self.run.sessions

    @property
    def draining(self) -> bool:
        """Past the cut-over point: the new set serves, its sessions are the ones to keep."""
        return self.run is not None and self.plan is not None and self.plan.phase is Phase.DRAINING

    def stop(self, now: float) -> None:
        """The supervisor stops: past T the new set stops like any serving set (sessions kept),
        the old one is not restarted and the new set is adopted once the old one exited; before
        T the reshard fails and the new set goes."""
        run, plan = self.run, self.plan
        if run is None:
            return
        if plan is not None and plan.phase is Phase.DRAINING:
            self.retiring = True
            for child in run.live():
                child.stop(now)
            return
        if plan is not None and plan.phase is Phase.CUTOVER:
            for group in self.host.serving():  # told T: it must not drop what comes after it
                if group.child is not None:
                    group.child.send(IpcOrder.CUTOVER_CANCEL)
        run.fail("the supervisor is stopping")
        run.stop_new(now)

    def auto_step(self, now: float, all_ready_once: bool) -> None:
        """``--auto-reshard``: ask Discord when due, reshard on its answer; halt as without the
        flag when a group held for a 4011 has no reshard coming to replace it."""
        auto, asker, host = self.auto, self.recommender, self.host
        if auto is None or asker is None or host.stopping:
            return
        if all_ready_once:
            auto.all_ready(now)
        for answer in asker.answers():
            decision = auto.answer(host.shard_count, answer.recommended, str(answer.error) if answer.error else None)
            if decision.target is None:
                log.info("auto-reshard: %s", decision.why)
                continue
            log.warning("auto-reshard: %s: resharding %d -> %d", decision.why, host.shard_count, decision.target)
            started = self.request({"shard_count": decision.target})
            if not started["ok"]:
                log.error("auto-reshard: the reshard to %d was refused: %s", decision.target, started["message"])
        if auto.due(now) and asker.request(now):
            auto.asked(now)
        held = {shard: code for g in host.serving() for shard, code in g.held.items()}
        coming = auto.asking or auto.sharding_required is not None or self.running
        if held and not coming:
            log.critical("fatal: no reshard replaces the shards closed with 4011 (%s); stopping everything, no restart",
                         format_shard_ids(sorted(held)))  # fmt: skip
            host.begin_stop(now, next(iter(held.values())))

    def sharding_required(self, shard: int) -> None:
        """A shard closed with 4011 under ``--auto-reshard`` is held down: ask for the count."""
        assert self.auto is not None
        self.auto.on_sharding_required(shard)
        self.tell_orphans()

    def tell_orphans(self) -> None:
        """The new set of a running reshard publishes at once the events of guilds whose old
        shard is held (closed with 4011): the old set will never publish them."""
        held = sorted(shard for g in self.host.serving() for shard in g.held)
        if held and self.run is not None:
            for child in self.run.live():
                child.send(IpcOrder.ORPHANS, {"old_count": self.host.shard_count, "shards": held})

    # -- the new set's children -----------------------------------------------------------------
    def live(self) -> list[Child]:
        return self.run.live() if self.run is not None else []

    def takes(self, child: Child, message: Message, now: float) -> bool:
        """A new-set child's message goes to the run (not the serving set's view), but for its
        identify requests and writes, which the shared gate handles."""
        if self.run is None or not self.run.owns(child) or message.event in (Event.IDENTIFY_REQUEST, Event.IDENTIFY_SENT):
            return False
        self.run.on_message(child, message, now)
        return True

    def cutover_ack(self, child: Child, data: dict) -> None:
        """An old child's answer to the cut-over order (the new set's go to the run)."""
        if data.get("late") and self.run is not None:
            self.run.fail(f"{child.label} of the old set was told the cut-over point too late")

    def old_caught_up(self, child: Child, shard: Any) -> None:
        """An old shard is caught up at the cut-over (it publishes nothing more)."""
        if self.run is not None and shard in child.shard_set:
            self.run.old_caught_up(shard)

    def child_of(self, pid: int) -> Child | None:
        return self.run.child_of(pid) if self.run is not None else None

    def exited(self, child: Child, code: int) -> None:
        if self.run is not None:
            self.run.exited(child, code)

    def watch(self, now: float, stop_grace: float, heartbeat_timeout: float) -> None:
        """The new set's children: only the grace of a stop (a silent one fails the reshard)."""
        for child in self.live():
            if child.stopping_since is not None and not child.killed and now - child.stopping_since > stop_grace:
                child.kill()
            elif child.stopping_since is None and now - child.last_heartbeat > heartbeat_timeout:
                assert self.run is not None
                self.run.fail(f"{child.label} of the new set sent no heartbeat")

    def timeout(self, now: float) -> float | None:
        if self.run is not None and self.plan is not None:
            return self.run.timeout(self.plan, now)
        return None

    def restart_cutover(self) -> dict[str, Any] | None:
        """What a restarted old child is told: during the cut-over, the cut-over point (a child
        replacing one that crashed after the old set was told T must apply it from its start)."""
        plan = self.plan
        if self.run is not None and plan is not None and plan.phase in (Phase.CUTOVER, Phase.DRAINING):
            return {"role": "old", **plan.handover().to_dict()}
        return None

    # -- what it shows ----------------------------------------------------------------------------
    def status(self, now: float) -> dict[str, Any] | None:
        """The running (or last) reshard as ``status`` and ``/metrics`` show it."""
        plan, run = self.plan, self.run
        if plan is None:
            return None
        ready = run.ready_count() if run is not None else None
        eta = None
        if run is not None and plan.phase is Phase.PREPARING:
            # the gate holds both sets' requests (they share the buckets): when the last is done
            gate = self.host.budget.gate
            view = gate_view(gate, now)
            eta = estimate(ready or 0, plan.new.shard_count, queued=view.queued, free_at=view.free_at,
                           interval=gate.interval, now=now, hold_until=view.hold_until, settle=1.0).eta  # fmt: skip
        behind = sorted(run.behind) if run is not None and plan.phase is Phase.DRAINING else []
        return {
            **plan.describe(), "new_ready": ready, "eta_s": None if eta is None else round(max(0.0, eta), 1),
            "old_behind": behind,  # old shards not caught up at the cut-over yet (draining)
        }  # fmt: skip

    def ended(self) -> dict[str, int]:
        """Reshards ended so far, by outcome (each counted once, when first seen ended)."""
        plan = self.plan
        if plan is not None and plan.phase in shard_sets.FINAL and plan is not self._counted:
            self._counted = plan
            self._ends[plan.phase.value] = self._ends.get(plan.phase.value, 0) + 1
        return dict(self._ends)
