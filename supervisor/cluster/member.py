"""The arbiter's side of cluster mode: it turns the node thread's events
(:mod:`supervisor.cluster.node`) into what the arbiter runs, and fences what it can no longer
renew. The arbiter asks :meth:`ClusterMember.runs` before it starts a group's process, calls
:meth:`ClusterMember.step` at every pass and :meth:`ClusterMember.exited` when a group's
process has exited; everything else (restarts, identifies, sessions) is the arbiter's as
without a cluster.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import replace
from typing import Any, Protocol

from shard_worker import exit_codes
from shard_worker.ipc_vocabulary import NOT_READY, Order
from supervisor.cluster.node import ClusterNode, Event
from supervisor.cluster.rules import (
    AMNESIA_SETTLE_S,
    GUARD_LIMIT_S,
    PARENT_TIMEOUT_S,
    STOP_GRACE_S,
    TAKEOVER_WAIT_S,
    Fence,
)

log = logging.getLogger("supervisor.cluster.rules")

#: A Redis error of the rounds is logged at most this often.
LOG_EVERY_S = 60.0
#: At SIGTERM, the releases and the leave get this long.
CLOSE_S = 5.0


class ClusterHost(Protocol):
    """What the member asks of the arbiter."""

    def every_group(self) -> list[Any]:
        """Every group of the bot's shards, run here or not (cluster mode knows them all)."""

    def group(self, index: int) -> Any: ...

    def begin_stop(self, now: float, exit_code: int) -> None: ...

    def cluster_groups_changed(self, now: float) -> None:
        """The leased groups changed: the shards run here, their metrics, the progress."""


class ClusterMember:
    """Which groups this node runs (a lease held), and the handoffs and fences under way."""

    def __init__(self, node: ClusterNode, arbiter: ClusterHost, book: Any) -> None:
        """``arbiter``: what the member asks of it (:class:`ClusterHost`); ``book``: the
        session book (:class:`~supervisor.core.sessions.SessionBook`)."""
        self.node = node
        self.arbiter = arbiter
        self.book = book
        self.fence = Fence()
        #: groups leased to this node, and those being handed over (their process stopping)
        self.leased: set[int] = set()
        self.releasing: set[int] = set()
        #: leased groups not renewed for FENCE_S (Redis out of reach): they run on, guarded
        #: (:meth:`shard_state`); and those of them stopped by the guard, until renewed again
        self.guarded: set[int] = set()
        self.parked: set[int] = set()
        #: acquisitions by how (start, handoff, failover), handoffs given, groups fenced
        self.acquired: Counter[str] = Counter()
        self.handed_over = 0
        self.fenced = 0
        self._logged_error_at = float("-inf")
        self._next_ping = float("-inf")
        for group in arbiter.every_group():  # a worker of a silent supervisor stops by itself
            group.config = replace(group.config, parent_timeout_s=PARENT_TIMEOUT_S)

    def runs(self, group: int) -> bool:
        """Whether the arbiter may (re)start ``group``'s process."""
        return group in self.leased and group not in self.releasing and group not in self.parked

    # -- at every pass -------------------------------------------------------------------------
    def step(self, now: float) -> None:
        for event in self.node.events():
            self._on_event(event, now)
        for group in self.fence.must_stop(now):
            if group not in self.guarded:
                self.guarded.add(group)
                log.warning(
                    "cluster: group %d: its lease could not be renewed for %.0f s (Redis out of reach); it runs on, "
                    "but stops if a shard loses its connection (another node may have resumed it)",
                    group, self.fence.fence_s,
                )  # fmt: skip
                child = self._group(group).child
                if child is not None:
                    child.send(Order.GUARD)  # the workers reopen no lost connection meanwhile
                    if not set(child.ready) >= set(child.shard_ids):
                        self._park(group, now, "a shard was not READY when its lease went unconfirmed")
        for group in self.fence.must_park(now):
            if group in self.guarded and group not in self.parked:
                self._park(group, now, f"its lease could not be renewed for {GUARD_LIMIT_S:.0f} s (another node may "
                           "take it over and identify)")  # fmt: skip
        groups = {g.index: g for g in self.arbiter.every_group()}
        ready = {
            g for g in self.leased
            if (child := groups[g].child) is not None and set(child.ready) >= set(child.shard_ids)
        }  # fmt: skip
        self.node.facts(ready)
        if now >= self._next_ping:
            self._next_ping = now + 1.0
            for group in self.arbiter.every_group():
                if group.child is not None and group.child.stopping_since is None:
                    group.child.send(Order.PING)

    def _on_event(self, event: Event, now: float) -> None:
        arbiter = self.arbiter
        if event.kind == "acquired":
            group = event.group
            assert group is not None
            self.leased.add(group)
            self.fence.acquired(group, event.sent_at)
            self.acquired[event.how] += 1
            # Redis' sessions for its shards are the ones to resume
            self.book.replace(arbiter.group(group).config.shard_ids, event.sessions)
            arbiter.group(group).start_at = time.monotonic()
            if event.how == "takeover":
                # Issue 20, defect 6: its last node may still run it, guarded, until it parks the
                # group (GUARD_LIMIT_S after its last renewal); an IDENTIFY now would make a second
                # session that publishes beside the first.
                self._group(group).start_at = now + TAKEOVER_WAIT_S
                log.warning(
                    "cluster: acquired group %d, run by another node before, with no session to resume: "
                    "identifying in %.0f s, once that node has certainly stopped it", group, TAKEOVER_WAIT_S,
                )  # fmt: skip
            else:
                how = {"handoff": f"handed over by {event.reason}", "failover": "its owner is gone"}.get(event.how, "free")
                log.info("cluster: acquired group %d (%s): %d sessions to resume", group, how, len(event.sessions))
            arbiter.cluster_groups_changed(now)
        elif event.kind == "renewed":
            for group in event.renewed:
                self.fence.renewal(group, event.sent_at, True)
                if group in self.guarded:
                    self.guarded.discard(group)
                    log.info("cluster: group %d: its lease is renewed again", group)
                    child = self._group(group).child
                    if child is not None and group not in self.parked:
                        child.send(Order.UNGUARD)
                if group in self.parked:
                    self.parked.discard(group)
                    self._group(group).start_at = now
                    arbiter.cluster_groups_changed(now)
            for group in event.lost:
                self._drop(group, now, "another node holds its lease now")
        elif event.kind == "release":
            group = event.group
            assert group is not None
            self.releasing.add(group)
            child = self._group(group).child
            log.info("cluster: handing group %d over (this node holds more than its share)", group)
            if child is not None:
                child.stop(now)  # sessions kept; released once it has exited
            else:
                self.exited(group)
        elif event.kind == "released":
            group = event.group
            self.leased.discard(group)  # type: ignore[arg-type]
            self.releasing.discard(group)  # type: ignore[arg-type]
            self.fence.released(group)  # type: ignore[arg-type]
            self.handed_over += 1
            if event.reason:
                log.warning("cluster: group %s: %s", group, event.reason)
            else:
                log.info("cluster: group %s handed over (sessions in Redis)", group)
            arbiter.cluster_groups_changed(now)
        elif event.kind == "amnesia":
            log.error(
                "cluster: Redis lost the cluster's state (restarted empty, flushed or evicted): re-asserting "
                "this node's leases and sessions; nothing is acquired for %.0f s", AMNESIA_SETTLE_S,
            )  # fmt: skip
            # Redis forgot everything: write every session again (the leases are re-asserted in
            # the same round, so the fenced writes go through)
            self.book.dirty = True
        elif event.kind == "refused":
            log.critical("cluster: %s", event.reason)
            arbiter.begin_stop(now, exit_codes.USAGE)
        elif event.kind == "error" and now >= self._logged_error_at:
            self._logged_error_at = now + LOG_EVERY_S
            log.error("cluster: Redis failed a round (%s); leases not renewed are stopped after %.0f s",
                      event.reason, self.fence.fence_s)  # fmt: skip

    def _group(self, index: int) -> Any:
        return self.arbiter.group(index)

    def shard_state(self, group: int, state: str, now: float) -> None:
        """A shard of ``group`` changed state. In a guarded group, a lost connection may be
        Discord closing it because another node RESUMEd the session: stop the group rather
        than reconnect (which would take the session back), until the lease is renewed."""
        if group in self.guarded and group not in self.parked and state in NOT_READY:
            self._park(group, now, "a shard lost its connection while its lease is unconfirmed")

    def _park(self, group: int, now: float, why: str) -> None:
        """Stop a guarded group until its lease is renewed (it stays leased)."""
        self.parked.add(group)
        self._stop_group(group, now, why)

    def _drop(self, group: int, now: float, why: str) -> None:
        """The lease is another node's: stop ``group`` and forget it."""
        self.fence.released(group)
        for held in (self.leased, self.releasing, self.guarded, self.parked):
            held.discard(group)
        self._stop_group(group, now, why)

    def _stop_group(self, group: int, now: float, why: str) -> None:
        """Fence: stop ``group``'s process at once (killed after :data:`STOP_GRACE_S`)."""
        self.fenced += 1
        child = self._group(group).child
        log.error("cluster: stopping group %d: %s", group, why)
        if child is not None:
            child.grace = STOP_GRACE_S
            child.stop(now)
        self.arbiter.cluster_groups_changed(now)

    def exited(self, group: int) -> bool:
        """A group's process exited; True when that was a handoff (then it is released with
        its sessions and not restarted here)."""
        if group in self.guarded and group not in self.parked:
            self.parked.add(group)  # no restart until the lease is confirmed again
            self.arbiter.cluster_groups_changed(time.monotonic())
        if group not in self.releasing:
            return False
        self.node.release(group, self.book.of(self.arbiter.group(group).config.shard_ids))
        return True

    def close(self) -> None:
        """The supervisor stops (every process has exited): release every group with its
        sessions at once, leave the membership."""
        sessions = {g: self.book.of(self.arbiter.group(g).config.shard_ids) for g in self.leased}
        if not self.node.close(sessions, CLOSE_S):
            log.warning("cluster: Redis did not take the handover in %.0f s: the leases expire in their TTL", CLOSE_S)

    def describe(self) -> dict[str, Any]:
        view = self.node.last_view
        return {
            "node": self.node.store.name,
            "groups": sorted(self.leased),
            "releasing": sorted(self.releasing),
            "guarded": sorted(self.guarded),
            "parked": sorted(self.parked),
            "nodes": len(view.nodes) if view is not None else None,
            "acquired": dict(self.acquired),
            "handed_over": self.handed_over,
            "fenced": self.fenced,
            "redis_answering": not self.node.failing,
            "amnesias": self.node.amnesias,
        }


__all__ = ["ClusterMember"]
