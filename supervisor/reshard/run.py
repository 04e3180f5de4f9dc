"""The live reshard's moving part: the new shard set's children beside the old set's.

The arbiter owns the loop, the identify gate and the old set; a :class:`ReshardRun` owns the
children of the new set while a reshard runs and tells the arbiter what to do at each pass
(:meth:`ReshardRun.step`). The decisions (phases, the cut-over point, what may be aborted, which
orders are due) are ``supervisor.reshard.shard_sets``' (:func:`~supervisor.reshard.shard_sets.advance`); the workers apply the handover rule themselves
(``shard_worker/reshard.py``). The steps:

1. **preparing**: the new set's children start with ``hold_events`` and ``standby`` (they publish
   nothing and consume no outbound queue) and identify through the same gate as the old set, so
   the buckets ``shard_id % max_concurrency`` are shared by both sets.
2. **cutover**: once every new shard is READY, ``Reshard.new_set_ready`` picks ``T``; every child
   of both sets gets the ``cutover`` order (``docs/ipc.md``).
3. **draining**: at ``T`` the new children get ``activate``; a moment later (:data:`DRAIN_S`, so
   the old set's last events before ``T`` are confirmed) the old children are stopped with their
   sessions **ended** (1000), not kept: nothing will resume them. Each first waits for RabbitMQ
   to confirm what it still holds, its connections open (an ended session cannot be replayed).
4. **done**: once the old children have exited the arbiter adopts the new set (its groups, its
   sessions, the count in the state dir).

A failure before ``T`` (a new child exits, a new shard is closed fatally, an order came too
late) aborts: the new children are stopped with their sessions ended, the old set never stopped
serving (if it was told ``T`` already, ``cutover_cancel`` takes it back: the cut-over order
comes 3 s ahead, far more than the IPC round trip), one log line says why. After ``T`` there is no going back (``Reshard.abort`` refuses):
a failure then is an ordinary one of the serving set.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from shard_worker.config import SavedSession, WorkerConfig
from shard_worker.ipc import Message
from shard_worker.ipc_vocabulary import NOT_READY, Event, ShardState
from shard_worker.ipc_vocabulary import Order as IpcOrder
from shard_worker.worker import CATCH_UP_TIMEOUT_S, END_FLUSH_TIMEOUT_S
from supervisor.core.child import Child
from supervisor.reshard.shard_sets import DEFAULT_DRAIN_S, Order, Reshard, advance, next_due

log = logging.getLogger("supervisor.reshard")

#: After ``T``, the old set's children are stopped this much later (``shard_sets``).
DRAIN_S = DEFAULT_DRAIN_S
#: A child ending its sessions may take its flush and this much more before it is killed
#: (closing its connections and the final reports).
END_GRACE_MARGIN_S = 10.0


def new_set_configs(template: WorkerConfig, new_count: int, per_process: int, old_count: int = 0) -> list[WorkerConfig]:
    """The new set's groups: every id of ``new_count`` in processes of ``per_process`` shards,
    configured like ``template`` (without sessions: every new shard identifies). These are the
    configs the groups keep after the reshard; a child started during it gets
    :func:`preparing` of its config. To fewer shards (``old_count`` above ``new_count``), the
    first group also drains the queues of the ids that no longer exist
    (``shard_sets.queue_changes``)."""
    per = max(1, per_process)
    configs = [
        replace(template, shard_ids=list(range(start, min(start + per, new_count))), shard_count=new_count, sessions={})
        for start in range(0, new_count, per)
    ]
    configs[0] = replace(configs[0], drain_shards=list(range(new_count, old_count)))
    return configs


def preparing(config: WorkerConfig) -> WorkerConfig:
    """A new set's child: holds its events back and consumes nothing until the cut-over."""
    return replace(config, hold_events=True, standby=True, sessions={})


class ReshardRun:
    """The new set's children during one reshard (see the module docstring)."""

    def __init__(
        self, configs: list[WorkerConfig], *, log_format: str | None = None, first_group: int = 0,
        old_shards: list[int] | None = None,
    ) -> None:  # fmt: skip
        self.configs = configs
        #: The old set's shards not caught up yet at the cut-over (their probe at ``T`` not
        #: answered); once none is left the new set is told (``old_caught_up``).
        self.behind: set[int] = set(old_shards or ())
        self.old_done_told = False
        self.log_format = log_format
        self.first_group = first_group
        #: group index -> its child (None once it exited)
        self.children: dict[int, Child | None] = {}
        self.sessions: dict[int, SavedSession] = {}
        #: why the reshard must be aborted (the first reason), else None
        self.failure: str | None = None
        self.old_stopped = False
        self.new_stopped = False
        #: groups of the new set whose child answered ``activate`` (``activated``)
        self.activated: set[int] = set()

    # -- the children -------------------------------------------------------------------------
    def spawn(self) -> list[Child]:
        """Start every child of the new set."""
        for i, config in enumerate(self.configs):
            index = self.first_group + i
            self.children[index] = Child(index, preparing(config), log_format=self.log_format)
            log.info("reshard: started %s of the new set (%d shards to identify)", self.children[index].label, len(config.shard_ids))
        return [c for c in self.children.values() if c is not None]

    def live(self) -> list[Child]:
        return [c for c in self.children.values() if c is not None]

    def owns(self, child: Child) -> bool:
        return self.children.get(child.group) is child

    def child_of(self, pid: int) -> Child | None:
        return next((c for c in self.live() if c.pid == pid), None)

    def ready_count(self) -> int:
        return sum(len(c.ready) for c in self.live())

    def exited(self, child: Child, code: int) -> None:
        """A new child exited: before the cut-over that aborts the reshard."""
        self.children[child.group] = None
        if not self.new_stopped:
            self.fail(f"{child.label} of the new set exited ({code})")

    def fail(self, reason: str) -> None:
        if self.failure is None:
            self.failure = reason

    # -- IPC of a new child (the arbiter hands over what is not about identifies) --------------
    def on_message(self, child: Child, message: Message, now: float) -> None:
        data = message.data if isinstance(message.data, dict) else {}
        event = message.event
        if event in (Event.HEARTBEAT, Event.HELLO):
            child.last_heartbeat = now
            if event == Event.HEARTBEAT:
                child.report = data
        elif event == Event.SHARD_STATE:
            shard, state = data.get("shard"), data.get("state")
            if shard not in child.shard_set:
                return
            if state == ShardState.READY:
                child.ready.add(shard)
                self._session(shard, data.get("session"))
            elif state in NOT_READY:
                child.ready.discard(shard)
            if state == ShardState.FATAL:
                self.fail(f"new shard {shard} was closed by Discord with {data.get('code')} ({data.get('reason')})")
        elif event == Event.SHARDS:
            reports = data.get("shards")
            if isinstance(reports, dict):
                child.shard_reports.update({k: v for k, v in reports.items() if isinstance(v, dict)})
                for key, report in reports.items():
                    if isinstance(report, dict) and str(key).isdigit():
                        self._session(int(key), report.get("session"))
        elif event == Event.PROBE_ANSWERED:
            pass  # a new shard stopped marking (counted in its cut-over counters)
        elif event == Event.CUTOVER_ACK and data.get("late"):
            self.fail(f"{child.label} was told the cut-over point too late")
        elif event == Event.ACTIVATED:
            # the answer to ``activate``: this child consumes its shard queues and SEND now
            self.activated.add(child.group)
            log.info("reshard: %s of the new set consumes its queues now", child.label)
        elif event == Event.STOPPED:
            child.report = data.get("report") or child.report

    def _session(self, shard: int, session: Any) -> None:
        if isinstance(session, dict):
            try:
                self.sessions[shard] = SavedSession(
                    str(session["session_id"]), session.get("seq"), str(session["resume_gateway_url"])
                )
            except (KeyError, TypeError):
                pass

    def old_caught_up(self, shard: int) -> None:
        """An old shard's probe at ``T`` was answered: it has read (and published) everything
        Discord sent it before ``T``, and publishes nothing more. Once every old shard is, the
        new set is told: its shards probe too and stop marking their copies after the ACK
        (``shard_worker/reshard.py``)."""
        self.behind.discard(shard)
        if not self.behind and not self.old_done_told:
            self.old_done_told = True
            for child in self.live():
                child.send(IpcOrder.OLD_CAUGHT_UP)
            log.info("reshard: every old shard is caught up at the cut-over; the new set stops marking")

    # -- the steps ----------------------------------------------------------------------------
    def step(self, plan: Reshard, old_children: list[Child], now: float) -> Reshard:
        """One pass of the arbiter's loop: ``shard_sets.advance`` says what is due; this only
        carries the orders out. Returns the plan's next value."""
        before = plan
        plan, orders = advance(
            plan, now, new_ready=self.ready_count(), failure=self.failure, old_ended=self.old_stopped,
            old_caught_up=not self.behind,
        )  # fmt: skip
        for order in orders:
            if order is Order.CUTOVER:
                rule = plan.handover()
                for role, children in (("old", old_children), ("new", self.live())):
                    for child in children:
                        child.send(IpcOrder.CUTOVER, {"role": role, **rule.to_dict()})
                log.info("reshard: every new shard READY; cut-over in %.1f s", rule.cut_at - now)
            elif order is Order.CANCEL:
                for child in old_children:  # the old set was told T: it publishes on after it
                    child.send(IpcOrder.CUTOVER_CANCEL)
            elif order is Order.END_NEW:
                log.error("reshard %d -> %d aborted: %s; the old set keeps serving",
                          before.old.shard_count, before.new.shard_count, self.failure)  # fmt: skip
                self.stop_new(now)
            elif order is Order.ACTIVATE:
                for child in self.live():
                    child.send(IpcOrder.ACTIVATE)
                log.info("reshard: cut-over passed; the new set of %d serves", plan.new.shard_count)
            elif order is Order.END_OLD:
                self.old_stopped = True
                for child in old_children:
                    end(child, now)
                log.info("reshard: stopping the old set of %d (its sessions end)", plan.old.shard_count)
        return plan

    def stop_new(self, now: float) -> None:
        self.new_stopped = True
        for child in self.live():
            end(child, now)

    def timeout(self, plan: Reshard, now: float) -> float | None:
        """How long the loop may sleep before the next step is due (``shard_sets.next_due``)."""
        due = next_due(plan, self.old_stopped, now=now)
        return None if due is None else max(0.0, due - now)


def end(child: Child, now: float) -> None:
    """Stop ``child`` gracefully with its sessions ended (1000): nothing resumes them. No
    SIGTERM: the order carries the flag. The child first waits until its shards are caught up
    at the cut-over (``CATCH_UP_TIMEOUT_S``) and RabbitMQ has confirmed what it still holds
    (``END_FLUSH_TIMEOUT_S``), its connections open: the arbiter kills it only after both and
    :data:`END_GRACE_MARGIN_S` more."""
    if child.stopping_since is None:
        child.stopping_since = now
        child.grace = CATCH_UP_TIMEOUT_S + END_FLUSH_TIMEOUT_S + END_GRACE_MARGIN_S
        child.send(IpcOrder.STOP, {"end_sessions": True})


__all__ = ["DRAIN_S", "ReshardRun", "new_set_configs", "preparing", "end"]
