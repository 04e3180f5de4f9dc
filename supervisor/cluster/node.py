"""A cluster node's rounds, on a thread of their own: heartbeat, lease renewals, the plan of
:func:`supervisor.cluster.rules.plan`, acquisitions (with the group's sessions from Redis) and the
releases the arbiter hands in. The arbiter's loop never waits for Redis: it reads
:class:`Event` s with :meth:`ClusterNode.events` and tells the facts with :meth:`ClusterNode.facts`.

Events: ``acquired`` (a group, its sessions, ``how``: start, handoff or failover, and the time
the lease was sent for), ``renewed`` (the groups renewed and refused, with the send time: the
arbiter's :class:`~supervisor.cluster.rules.Fence` times itself from it), ``release`` (hand this group
over: stop its process, then :meth:`ClusterNode.release` it with its sessions), ``released``,
``refused`` (the node name is taken, or the cluster has another shape: fatal), ``error`` (Redis
failed this round; logged at most once a minute by the arbiter).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from supervisor.cluster.rules import (
    AMNESIA_SETTLE_S,
    LEASE_TTL_S,
    LOOP_STALE_S,
    NODE_TTL_S,
    ROUND_S,
    SETTLE_S,
    LeaseMemory,
    group_shards,
    plan,
)
from supervisor.coord.offloop import Answers

log = logging.getLogger("supervisor.cluster.rules")

#: How long a node keeps the sessions of a group it handed over (the taker reads them within a
#: round or two of the release).
HANDED_KEPT_S = 60.0


@dataclass(frozen=True)
class Event:
    kind: str
    group: int | None = None
    sessions: dict[int, Any] = field(default_factory=dict)
    how: str = ""
    sent_at: float = 0.0
    renewed: tuple[int, ...] = ()
    lost: tuple[int, ...] = ()
    reason: str = ""


class ClusterNode:
    """The rounds of one node (see the module docstring)."""

    def __init__(
        self,
        store: Any,
        *,
        shard_count: int,
        per_group: int,
        groups: int,
        capacity: float = 1.0,
        wake: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
        round_s: float = ROUND_S,
    ) -> None:
        self.store = store
        self.shard_count = shard_count
        self.per_group = per_group
        self.groups = groups
        self.capacity = capacity
        self.wake = wake
        self.clock = clock
        self.round_s = round_s
        self._lock = threading.Lock()
        self._events: Answers[Event] = Answers(lambda: self.wake())  # self.wake may be set later
        #: groups this thread holds a lease on (renewed every round)
        self.held: set[int] = set()
        self._ready: set[int] = set()
        #: when the supervisor's loop last told the facts (every pass): a loop stuck for
        #: LOOP_STALE_S (a blocking call, a stalled disk) cannot ping its workers, which stop
        #: themselves after PARENT_TIMEOUT_S; the leases must then lapse too, so that another
        #: node takes the groups over (issue 20, defect 7)
        self._loop_seen = clock()
        self.stale_rounds = 0
        self._releasing: set[int] = set()
        self._to_release: dict[int, dict[int, Any]] = {}
        #: since when the rounds succeed without a break (None: the last one failed); nothing
        #: is acquired before SETTLE_S of it, so that after an outage every holder re-asserts
        #: its leases before anyone takes a free group
        self._ok_since: float | None = None
        #: how long the rounds must succeed before acquiring: SETTLE_S, or AMNESIA_SETTLE_S
        #: after Redis forgot everything (until every live node has re-asserted its leases)
        self._settle_s = SETTLE_S
        #: the cluster's epoch as this node knows it (``ClusterStore.check_meta``)
        self._epoch: str | None = None
        #: times Redis was found to have forgotten the cluster (a restart empty, a flush)
        self.amnesias = 0
        #: group -> (the sessions it was handed over with, when): kept HANDED_KEPT_S, to write
        #: them back if Redis forgets everything before the taker has read them
        self._handed: dict[int, tuple[dict[int, Any], float]] = {}
        #: who held each group, to tell a lease Redis lost from one given up (LeaseMemory)
        self.memory = LeaseMemory()
        self._stop = threading.Event()
        #: the supervisor is stopping: no more acquisitions or handoffs, only renewals
        self._quiet = False
        self._final: dict[int, dict[int, Any]] = {}
        self._closed = threading.Event()
        self.failing = False
        self.last_view: Any = None
        self._thread = threading.Thread(target=self._run, name="cluster", daemon=True)

    def start(self) -> None:
        self._thread.start()

    # -- the loop's side ----------------------------------------------------------------------
    def events(self) -> list[Event]:
        return self._events.take()

    def facts(self, ready: set[int]) -> None:
        """The held groups whose shards are all READY (only those may be handed over). Told at
        every pass of the loop: it is also the loop's sign of life."""
        with self._lock:
            self._ready = set(ready)
            self._loop_seen = self.clock()

    def release(self, group: int, sessions: dict[int, Any]) -> None:
        """The group's process has exited: write its sessions and drop its lease (next round)."""
        with self._lock:
            self._to_release[group] = dict(sessions)

    @property
    def settled(self) -> bool:
        """The rounds have succeeded for :data:`SETTLE_S` (what this node holds is its share)."""
        ok_since = self._ok_since
        return ok_since is not None and self.clock() - ok_since >= self._settle_s

    def quiesce(self) -> None:
        """The supervisor begins to stop: acquire and hand over nothing more (renew only)."""
        self._quiet = True

    def close(self, sessions: dict[int, dict[int, Any]], timeout: float) -> bool:
        """The supervisor has stopped its processes: release every held group (the thread
        decides which, after its last round) with ``sessions`` by group, leave, stop. True if
        done in time."""
        self._quiet = True
        with self._lock:
            self._final = {g: dict(v) for g, v in sessions.items()}
        self._stop.set()
        return self._closed.wait(timeout)

    # -- the thread ---------------------------------------------------------------------------
    def _emit(self, event: Event) -> None:
        self._events.put(event)

    def _info(self) -> dict[str, Any]:
        return {
            "capacity": self.capacity, "host": socket.gethostname(), "pid": os.getpid(),
            "groups": sorted(self.held), "shard_count": self.shard_count,
        }  # fmt: skip

    def _run(self) -> None:
        try:
            reason, self._epoch = self.store.check_meta(self.shard_count, self.per_group)
            if reason is None:
                taken = self.store.heartbeat(self._info(), NODE_TTL_S)
                if taken:
                    reason = f"a node named {self.store.name!r} is already running (its heartbeat lasts {taken:.1f} s more)"
            if reason is not None:
                self._emit(Event("refused", reason=reason))
                self._closed.set()
                return
        except Exception as exc:  # noqa: BLE001 - Redis unreachable at the start
            self._emit(Event("refused", reason=f"cannot register in Redis: {exc}"))
            self._closed.set()
            return
        while not self._stop.is_set():
            started = self.clock()
            try:
                self._round(started)
                self.failing = False
            except Exception as exc:  # noqa: BLE001 - redis errors and timeouts: the next round
                self.failing = True
                self._ok_since = None
                self._emit(Event("error", reason=str(exc) or type(exc).__name__))
            self._stop.wait(max(0.0, self.round_s - (self.clock() - started)))
        try:
            with self._lock:
                for group in self.held:  # the thread's own set, after its last round
                    self._to_release.setdefault(group, self._final.get(group, {}))
            self._releases()
            self.store.leave()
        except Exception as exc:  # noqa: BLE001
            log.warning("cluster: could not hand everything over in Redis at the end: %s", exc)
        self._closed.set()

    def _round(self, now: float) -> None:
        with self._lock:
            silent = now - self._loop_seen
        if silent >= LOOP_STALE_S and not self._quiet:
            # Renewing for a stuck loop would keep the groups here while its workers stop for
            # lack of pings: no heartbeat, no renewal, so the leases lapse and another node
            # resumes the groups. The first round after the loop is back re-asserts them.
            self.stale_rounds += 1
            if self.stale_rounds == 1 or self.stale_rounds % 60 == 0:
                log.error("cluster: the supervisor's loop has not run for %.1f s: not renewing its leases", silent)
            self._ok_since = None
            return
        self.stale_rounds = 0
        reason, epoch = self.store.check_meta(self.shard_count, self.per_group)
        if reason is not None:  # Redis forgot the cluster and a node of another shape came first
            self._emit(Event("refused", reason=reason))
            self._quiet = True
            return
        if epoch != self._epoch:
            # Issue 20, defect 5: Redis restarted empty (or was flushed, or evicted the keys).
            # The other nodes are not gone: every live node re-asserts its own leases and
            # sessions in its next round; nobody acquires before all have had the time.
            self._epoch = epoch
            self.amnesias += 1
            self._ok_since, self._settle_s = now, AMNESIA_SETTLE_S
            self._emit(Event("amnesia"))
        taken = self.store.heartbeat(self._info(), NODE_TTL_S)
        if taken:  # this node's heartbeat lapsed (frozen) and another process took the name
            self._emit(Event("refused", reason=f"another process registered as node {self.store.name!r} meanwhile"))
            self._quiet = True
            return
        held = sorted(self.held)
        if held:
            sent = self.clock()
            result = self.store.renew(self.shard_count, held, LEASE_TTL_S)
            for group, ok in list(result.items()):
                if not ok:  # expired (Redis was out of reach): still ours if nobody took it
                    result[group] = self.store.acquire(self.shard_count, group, LEASE_TTL_S)
            lost = tuple(g for g, ok in result.items() if not ok)
            self.held.difference_update(lost)
            with self._lock:  # a handoff under way for a lost group will never be released
                for group in lost:
                    self._releasing.discard(group)
                    self._to_release.pop(group, None)
            self._emit(Event("renewed", renewed=tuple(g for g, ok in result.items() if ok), lost=lost, sent_at=sent))
        self._releases()
        view = self.store.view(self.shard_count, self.groups)
        self.last_view = view
        self._restore_handed(view, now)
        vanished = self.memory.vanished(view, self.store.name, now)
        if self._ok_since is None:
            self._ok_since, self._settle_s = now, SETTLE_S
        if self._quiet:
            return
        with self._lock:
            ready, releasing = set(self._ready), set(self._releasing)
        decided = plan(
            view, self.store.name, held=self.held, ready=ready & self.held, releasing=releasing,
            settled=now - self._ok_since >= self._settle_s, vanished=vanished,
        )  # fmt: skip
        for group in decided.release:
            with self._lock:
                self._releasing.add(group)
            self._emit(Event("release", group=group))
        for group in decided.acquire:
            sent = self.clock()
            # the lease, the handoff mark and the sessions in one step (ClusterStore.take)
            taken = self.store.take(self.shard_count, group, LEASE_TTL_S, group_shards(group, self.shard_count, self.per_group))
            if taken is None:
                continue
            self.held.add(group)
            self._handed.pop(group, None)
            if taken.handed_by:
                how = "handoff"
            elif taken.sessions:
                how = "failover"
            elif (taken.before and taken.before != self.store.name) or self.amnesias:
                how = "takeover"  # run elsewhere before, and nothing to resume: wait, then identify
            else:
                how = "start"
            self._emit(Event("acquired", group=group, sessions=taken.sessions, how=how, sent_at=sent, reason=taken.handed_by or ""))

    def _restore_handed(self, view: Any, now: float) -> None:
        """The sessions of groups this node handed over lived only in Redis until a taker
        reads them (with the lease, in one step): while such a group's lease is free, write
        back any of them Redis lost (``SET NX``, never over a newer one). Redis may forget
        everything at once (a restart empty, a flush: nobody acquires before every live node
        has had AMNESIA_SETTLE_S to do this) or key by key (an eviction, a partial flush:
        found by the fault schedule with keys deleted 100 ms apart, which deleted the
        sessions written back at the first sign of amnesia), so it is done every round, for
        HANDED_KEPT_S."""
        recent: dict[int, Any] = {}
        for group, (sessions, at) in list(self._handed.items()):
            if now - at > HANDED_KEPT_S or view.owners.get(group) not in (None, self.store.name):
                del self._handed[group]  # taken (its sessions read with the lease), or too old
            elif group not in view.owners:
                recent.update(sessions)
        self.store.restore_sessions(self.shard_count, recent)

    def _releases(self) -> None:
        with self._lock:
            pending = dict(self._to_release)
        for group, sessions in pending.items():
            ok = self.store.release(self.shard_count, group, sessions)
            if ok:
                self._handed[group] = (dict(sessions), self.clock())
            self.held.discard(group)
            with self._lock:
                self._to_release.pop(group, None)
                self._releasing.discard(group)
            self._emit(Event("released", group=group, reason="" if ok else "the lease was not ours any more"))


__all__ = ["ClusterNode", "Event"]
