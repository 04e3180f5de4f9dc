"""The worker's part of a live reshard: the handover rule and one shard's cut-over.

The rule itself (which set publishes an event received at a given time, and which copies carry
:data:`OVERLAP_HEADER`) is :class:`Handover`; ``supervisor/reshard/shard_sets.py`` explains it and
re-exports it with the rest of the reshard plan. It lives here, in the worker package, because
the workers apply it and a worker never imports the supervisor.

:class:`ShardCutover` is what one shard of either set does with its dispatches while a reshard
runs:

* a shard of the **new** set holds every dispatch back (with its receive time) until the
  supervisor tells it the cut-over point ``T``; it then publishes the held ones that
  :meth:`Handover.publishes` keeps, and every later one, with :meth:`Handover.headers`; once the
  receive time is past the overlap window it goes back to plain publishing (the runner drops the
  cut-over and the hot path has nothing to do again);
* a shard of the **old** set told ``T`` sends one extra heartbeat at ``T`` (a *probe*) and
  publishes everything it reads until that heartbeat's ACK (marked from ``T - 2 overlap`` on),
  then drops everything: it is **caught up**. A websocket is ordered and Discord answers a
  heartbeat after everything it sent before it, so whatever Discord sent before ``T`` is read
  before the ACK, however late this shard reads (issue 20, defect 1: the old rule compared
  *read* times with ``T``, and an old shard reading 2.5 s late lost what Discord sent in
  ``[T - 2.5, T - 1)``). A shard disconnected at ``T`` probes once it has resumed (the replay
  comes before RESUMED);
* once every old shard is caught up (the supervisor's ``old_caught_up`` order), a **new**
  shard probes too and marks what it publishes until its own ACK: whatever the old set may
  still have published, the new set's copy of it is marked (:meth:`ShardCutover.old_done`).

Times are ``time.monotonic()`` values: one clock for every process of a host (as for the
identify gate), so the supervisor's ``T`` means the same instant in every child.

Routing of outbound shard packets by ``guild_id`` (:func:`shard_of_packet`) is here too, for
the same reason: the broker applies it to every packet it consumes from a shard queue.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from shard_worker.gateway.protocol import shard_for_guild

#: The AMQP header on every event published inside the overlap window (value: the publishing
#: set's shard count). Two copies of one event both carry it.
OVERLAP_HEADER = "x-spectacles-overlap"
#: The overlap: the new set publishes from this long before the cut-over point, and this is also
#: the largest skew tolerated between the two sessions' copies of one event. Duplicates are at most
#: three times this much traffic (see ``supervisor/reshard/shard_sets.py``).
DEFAULT_OVERLAP_S = 1.0
#: How long a new set's shard keeps a dispatch it holds back. The supervisor chooses ``T`` at
#: least ``DEFAULT_CUT_LEAD_S`` (2 s) ahead and the new set publishes from ``T - overlap``: an
#: event held longer than this before the order arrives can never be published, so holding it
#: would only grow memory while the new set identifies (minutes for a large bot).
DEFAULT_HOLD_S = 10.0


#: A new set's copies stay marked past its window while the old set is not known to be caught
#: up, but no longer than this after ``T``: by then every old worker has stopped publishing
#: (it waits at most 20 s for its catch-up and 30 s for RabbitMQ, and is killed 10 s later).
MARK_LIMIT_S = 90.0


class Role(str, enum.Enum):
    OLD = "old"
    NEW = "new"


@dataclass(frozen=True)
class Handover:
    """Which set publishes an event it received at a given time (``supervisor/reshard/shard_sets.py``
    has the rule and why it loses nothing)."""

    cut_at: float
    overlap_s: float
    old_count: int
    new_count: int

    def role_window(self, role: Role) -> tuple[float, float]:
        """Where the copies published by ``role`` are marked, by read time: from
        ``T - 2 overlap`` on for the old set (until it is caught up: it publishes nothing
        after), ``[T - overlap, T + overlap)`` for the new set (longer while the old set is not
        known to be caught up, :meth:`ShardCutover.old_done`)."""
        if role is Role.OLD:
            return self.cut_at - 2 * self.overlap_s, math.inf
        return self.cut_at - self.overlap_s, self.cut_at + self.overlap_s

    def publishes(self, role: Role, received_at: float, caught_up: bool = False) -> bool:
        """Whether the set ``role`` publishes an event it read at ``received_at``: the old set
        until it is ``caught_up`` (its probe at ``T`` answered), the new set from
        ``T - overlap``."""
        if role is Role.OLD:
            return not caught_up
        return received_at >= self.cut_at - self.overlap_s

    def marked(self, role: Role, received_at: float, old_done: bool = True) -> bool:
        """Whether a copy ``role`` read at ``received_at`` (and publishes) is marked; a new
        set's copy stays marked past its window until the old set is known to be done."""
        start, end = self.role_window(role)
        return start <= received_at and (
            received_at < end or (not old_done and received_at < self.cut_at + MARK_LIMIT_S)
        )

    def headers(self, role: Role, received_at: float, old_done: bool = True) -> dict[str, int]:
        """The extra AMQP headers of a published copy: the overlap mark, or none."""
        if not self.marked(role, received_at, old_done):
            return {}
        return {OVERLAP_HEADER: self.old_count if role is Role.OLD else self.new_count}

    def settled(self, role: Role, received_at: float, old_done: bool = True) -> bool:
        """From ``received_at`` on, the rule no longer changes anything for the new set: it
        publishes everything, unmarked (past the end of its window, the old set done). Never
        for the old set, which drops everything once caught up."""
        if role is not Role.NEW:
            return False
        return received_at >= self.role_window(role)[1] and (old_done or received_at >= self.cut_at + MARK_LIMIT_S)

    def late(self, role: Role, told_at: float, hold_s: float = DEFAULT_HOLD_S) -> bool:
        """Whether a set told ``T`` at ``told_at`` was told too late for the rule to hold: the
        old set must know it before its marking window opens (``T - 2 overlap``: copies before
        the order went out unmarked); the new set holds its dispatches back, so it is late only
        if the held ones it needs (from ``T - overlap``) had already been dropped (``hold_s``)."""
        if role is Role.OLD:
            return told_at >= self.role_window(role)[0]
        return told_at - hold_s >= self.cut_at - self.overlap_s

    def to_dict(self) -> dict[str, float | int]:
        """The ``cutover`` IPC order's data (with ``role`` added by the sender)."""
        return {"cut_at": self.cut_at, "overlap_s": self.overlap_s, "old_count": self.old_count, "new_count": self.new_count}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Handover:
        return cls(float(data["cut_at"]), float(data["overlap_s"]), int(data["old_count"]), int(data["new_count"]))


#: ``publish(session_id, t, seq, body, headers)``: publish one dispatch with extra headers.
Publish = Callable[[str | None, str, int | None, bytes, dict[str, int]], None]


class ShardCutover:
    """One shard's dispatches during a reshard (see the module docstring).

    ``offer`` is called for each dispatch the shard would publish; it publishes, holds or drops
    it by the rule. ``cut`` hands it the cut-over point. Counters: ``held`` (held now),
    ``dropped`` (never published: before ``T - overlap`` for the new set, at or after ``T`` for the
    old, or held longer than ``hold_s``), ``marked`` (published with the overlap header).
    """

    __slots__ = (
        "role", "handover", "hold_s", "_publish", "_held", "dropped", "marked", "published", "orphaned",
        "caught_up", "old_done",
    )  # fmt: skip

    def __init__(self, role: Role, publish: Publish, *, handover: Handover | None = None, hold_s: float = DEFAULT_HOLD_S) -> None:
        if role is Role.OLD and handover is None:
            raise ValueError("an old set's cut-over starts with its handover")
        self.role = role
        self.handover = handover
        self.hold_s = hold_s
        self._publish = publish
        self._held: deque[tuple[float, str | None, str, int | None, bytes]] = deque()
        self.dropped = 0
        self.marked = 0
        self.published = 0
        #: A new set's predicate: the event's guild belongs to an old shard that no longer runs
        #: (Discord closed it with 4011), so the old set will never publish it: published at
        #: once, unmarked, whatever the rule says. None: no such shard.
        self.orphaned: Callable[[bytes], bool] | None = None
        #: An old set's shard: its probe sent at ``T`` is answered; it publishes nothing more.
        self.caught_up = False
        #: A new set's shard: every old shard is caught up and this shard's own probe after
        #: that is answered: nothing it reads from now on can have been published by the old
        #: set, so past its window it publishes unmarked. Until then its copies stay marked.
        self.old_done = False

    @property
    def held(self) -> int:
        return len(self._held)

    @property
    def holding(self) -> bool:
        """True while the cut-over point is not known (a new set's shard)."""
        return self.handover is None

    def offer(self, received_at: float, session_id: str | None, t: str, seq: int | None, body: bytes) -> bool:
        """One dispatch received at ``received_at``; returns True once the rule is settled for
        this shard (the caller then publishes plainly and forgets this object)."""
        handover = self.handover
        orphaned = self.orphaned
        if orphaned is not None and self.role is Role.NEW and orphaned(body):
            self.published += 1
            self._publish(session_id, t, seq, body, {})
            return handover is not None and handover.settled(self.role, received_at, self.old_done)
        if handover is None:
            held = self._held
            held.append((received_at, session_id, t, seq, body))
            horizon = received_at - self.hold_s
            while held[0][0] < horizon:
                held.popleft()
                self.dropped += 1
            return False
        self._apply(handover, received_at, session_id, t, seq, body)
        return handover.settled(self.role, received_at, self.old_done)

    def cut(self, handover: Handover) -> None:
        """The cut-over point is known: apply the rule to what was held back."""
        self.handover = handover
        held, self._held = self._held, deque()
        for item in held:
            self._apply(handover, *item)

    def catch_up(self) -> None:
        """An old set's shard: the probe it sent at ``T`` is answered; from now on it drops
        everything (all Discord sent before ``T`` has been read, and published)."""
        self.caught_up = True

    def _apply(self, handover: Handover, received_at: float, session_id: str | None, t: str, seq: int | None, body: bytes) -> None:
        role = self.role
        if not handover.publishes(role, received_at, self.caught_up):
            self.dropped += 1
            return
        headers = handover.headers(role, received_at, self.old_done)
        if headers:
            self.marked += 1
        self.published += 1
        self._publish(session_id, t, seq, body, headers)

    def counters(self) -> dict[str, int]:
        return {"held": self.held, "dropped": self.dropped, "marked": self.marked, "published": self.published}


# -- outbound routing -------------------------------------------------------------------------


def shard_of_guild(guild_id: int | str | None, shard_count: int) -> int:
    """The shard that owns ``guild_id`` under ``shard_count`` (None: no guild, shard 0)."""
    if guild_id is None:
        return 0
    return shard_for_guild(int(guild_id), shard_count)


def guild_of_packet(packet: Any) -> int | None:
    """The ``guild_id`` in a shard packet's ``d``, if it has a valid one."""
    d = packet.get("d") if isinstance(packet, dict) else None
    guild = d.get("guild_id") if isinstance(d, dict) else None
    if isinstance(guild, bool):
        return None
    try:
        return int(guild) if guild is not None else None
    except (TypeError, ValueError):
        return None


def shard_of_packet(packet: Any, addressed_to: int, shard_count: int) -> int | None:
    """Where a shard packet goes under the current ``shard_count``.

    A packet whose ``d`` has a ``guild_id`` goes to that guild's owner, whatever shard it was
    addressed to (packets queued for an old shard id during a swap are not misdelivered). One
    without goes to ``addressed_to`` if that id exists under the count, else None (refused)."""
    guild = guild_of_packet(packet)
    if guild is not None:
        return shard_of_guild(guild, shard_count)
    return addressed_to if 0 <= addressed_to < shard_count else None
