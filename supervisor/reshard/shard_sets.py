"""Shard sets (generations) and the live reshard plan, as pure data and pure functions.

A supervisor runs one **shard set**: every shard id of one shard count, each with its own
Discord session. A live reshard (issue 13) runs a second set beside the first, with the new
count, and hands the traffic over without losing an event. Nothing here opens a socket, reads a
clock or logs: the arbiter feeds in the times and the facts, and acts on the answers. That keeps
the rules small enough to check exhaustively (``tests/supervisor/reshard/test_shard_sets.py``).

The pieces:

* :class:`ShardSet`: one generation, ``(shard_count, shard_ids, phase)``.
* :class:`Phase`, :data:`TRANSITIONS` and :class:`Reshard`: the plan of one reshard as a
  transition table (idle -> preparing -> cutover -> draining -> done, or aborted).
* :func:`advance` and :func:`next_due`: at each pass of the supervisor's loop, the plan's next
  value and the :class:`Order` s due (``supervisor/reshard/run.py`` carries them out).
* The refusals of ``spectacles-supervisor reshard`` (:func:`refusal` and the checks it runs),
  each one clear line or None.
* Routing: :func:`shard_of_guild` (Discord's formula, from :mod:`shard_worker.gateway.protocol`)
  and :func:`shard_of_packet` for outbound packets, always under the count that is current;
  :func:`queue_changes`, the shard queues a reshard declares and drains.
* ``--auto-reshard``'s targets: :func:`auto_target` (Discord's recommendation) and
  :func:`after_sharding_required` (a 4011).
* :class:`Handover`: which set publishes an event received at a given time, and which published
  copies are marked as possible duplicates (:data:`OVERLAP_HEADER`). It and the routing
  functions are defined in ``shard_worker/reshard.py`` (the workers apply them and never import
  the supervisor) and re-exported here.

The handover rule
-----------------
During a reshard Discord delivers every guild event to both sets: to the old shard that owns the
guild under the old count and to the new shard that owns it under the new count. A **cut-over
point** ``T`` is chosen (a ``time.monotonic()`` value, one clock for every process of the host,
as for the identify gate) far enough ahead that every child knows it before it comes. Then:

* the **old** set sends one extra heartbeat at ``T`` (a *probe*) on each shard and publishes
  everything it reads until that heartbeat's ACK, then nothing: it is **caught up**. Discord
  answers a heartbeat after everything it sent on that connection before it received it, and a
  websocket is ordered, so every event Discord sent the old session before ``T`` is read (and
  published) before the ACK, **however late the old shard reads**: an op 7 whose resume replay
  comes after ``T``, a paused reader, retransmits, a loaded host. A shard not connected at ``T``
  probes once it has resumed (the replay comes before RESUMED). The old set's copies read from
  ``T - 2 overlap`` on are marked. The supervisor ends the old set only once every old shard is
  caught up (at most :data:`DEFAULT_CATCH_UP_S` after ``T``), and each old worker waits for its
  catch-up and RabbitMQ's confirms before it ends its sessions;
* the **new** set holds back what it receives until ``T`` is known, drops what it received before
  ``T - overlap`` and publishes everything from ``T - overlap`` on. Its copies read in
  ``[T - overlap, T + overlap)`` are marked, and **all** of them stay marked until every old
  shard is caught up and the new shard's own probe, sent after that, is answered (then nothing
  it reads can have been published by the old set); at most ``MARK_LIMIT_S`` after ``T``.

Every event is published at least once: one Discord sent before the old probe arrived is
published by the old set (whatever its read lag); one sent after it is read by the new set after
``T`` (the probe is written at ``T``) and published. An event published by both sets was sent
before the old probe arrived and read by the new set from ``T - overlap`` on: the new copy is
marked (the new set marks until after the old set is caught up), and the old copy too as long as
the new set reads within ``overlap`` of Discord's send (the skew the rule tolerates: then the old
copy, read no earlier than it was sent, was read after ``T - 2 overlap``). Exactly the copies
inside their set's marking carry the AMQP header :data:`OVERLAP_HEADER`, whose value is the shard
count of the set that published it (an int). So both copies of a duplicate are marked, and **an
event without the header is never published twice by the two sets** (a crash still re-publishes
unconfirmed messages with their own message id, as always). The duplicates are the traffic from
``T - overlap`` to the old probe's arrival, about ``overlap`` plus a round trip.

Limits, stated: the new set must read within ``overlap`` (1 s) of Discord's send, or an old copy
read before ``T - 2 overlap`` may go unmarked beside a marked new one; an old shard that is not
caught up :data:`DEFAULT_CATCH_UP_S` after ``T`` (its process crashing in a loop, its session
lost) is ended anyway, and events Discord sent it before ``T`` that it has not read are lost.

**What is identical between two copies of one event**: the routing key (Discord's ``t``) and the
body (the ``d`` Discord sent; the simulator sends byte-identical bodies, and Discord sends the
same payload to every session). What differs: the ``shard_id`` header, the AMQP message id
(``<shard>:<session>:<seq>``, per session) and the overlap header's value. A consumer that must
not see a duplicate keeps, for a few seconds, the ``(t, body)`` digests of the marked events it
handled and drops a marked event whose digest it has seen; unmarked events need no check.

**The new set's READY and GUILD_CREATEs**: they are received while the new set prepares, long
before ``T - overlap``, so by the rule above they are not published. Consumers already know
those guilds from the old set; a guild that really joins during the reshard reaches the old set
too and is published by it. (Events without a guild, such as DMs, go to shard 0 of each set and
follow the same rule.)

**An old shard that no longer runs** (closed with 4011 under ``--auto-reshard``): its guilds'
events reach only the new set, so the new set publishes them at once, unmarked (the IPC order
``orphans``, ``ShardCutover.orphaned``); the rule applies to every other guild.

The old set's read lag needs no bound (issue 20, defect 1: the rule used to compare read times
with ``T`` on both sides, and an old shard reading 2.5 s late lost what Discord sent in
``[T - 2.5, T - 1)``).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

# The handover rule and the outbound routing are applied by the workers, which never import the
# supervisor: they live in the worker package and are part of this module's vocabulary.
from shard_worker.reshard import (
    DEFAULT_OVERLAP_S,
    OVERLAP_HEADER,
    Handover,
    Role,
    guild_of_packet,
    shard_of_guild,
    shard_of_packet,
)

#: What this module re-exports from ``shard_worker.reshard`` without using it itself.
REEXPORTED = (OVERLAP_HEADER, Role, guild_of_packet, shard_of_packet)

#: The cut-over point is chosen at least this far ahead, so every child of both sets has been
#: told before it matters: the old set marks its copies from ``T - 2 overlap`` on, so it must
#: know ``T`` before then (``Handover.late``); 3 s leaves a second for the orders (an IPC round
#: trip is milliseconds; a busy child may take longer).
DEFAULT_CUT_LEAD_S = 3.0
#: Identifies never spent by a reshard: left for the old set's reconnects and for a human.
RESHARD_RESERVE = 5


# -- generations ------------------------------------------------------------------------------


class SetPhase(str, enum.Enum):
    """What one shard set does now."""

    #: identifying (at the gate's pace); its events are held back, nothing is published
    PREPARING = "preparing"
    #: publishing: the only set outside a reshard
    SERVING = "serving"
    #: the old set after the cut-over point: publishes only what it received before it, then
    #: closes its sessions
    DRAINING = "draining"
    #: no session left
    CLOSED = "closed"


@dataclass(frozen=True)
class ShardSet:
    """One generation of shards: every id of ``shard_count`` that this supervisor runs."""

    generation: int
    shard_count: int
    shard_ids: tuple[int, ...]
    phase: SetPhase = SetPhase.SERVING

    @classmethod
    def full(cls, generation: int, shard_count: int, phase: SetPhase = SetPhase.SERVING) -> ShardSet:
        """The set of every shard of ``shard_count``."""
        return cls(generation, shard_count, tuple(range(shard_count)), phase)

    @property
    def complete(self) -> bool:
        """True when the set holds every shard id of its count (a reshard needs this)."""
        return set(self.shard_ids) == set(range(self.shard_count))

    def owner(self, guild_id: int | None) -> int:
        """The shard of this set that receives ``guild_id``'s events (None: a DM, shard 0)."""
        return shard_of_guild(guild_id, self.shard_count)

    def with_phase(self, phase: SetPhase) -> ShardSet:
        return replace(self, phase=phase)


# -- the plan ---------------------------------------------------------------------------------


class Phase(str, enum.Enum):
    """The phase of a reshard (``status`` and ``/metrics`` show it)."""

    IDLE = "idle"
    #: the new set identifies beside the old one, which keeps publishing
    PREPARING = "preparing"
    #: every new shard is READY; the cut-over point is chosen and being told to the children
    CUTOVER = "cutover"
    #: the cut-over point passed: the new set publishes, the old one drains and closes
    DRAINING = "draining"
    #: only the new set remains
    DONE = "done"
    #: given up before the cut-over point: the old set serves as before, the new one is closed
    ABORTED = "aborted"


class Step(str, enum.Enum):
    """What can happen to a reshard."""

    START = "start"
    NEW_SET_READY = "new_set_ready"
    CUT_PASSED = "cut_passed"
    OLD_DRAINED = "old_drained"
    ABORT = "abort"


#: (phase, step) -> next phase. Anything else is a bug of the caller (:class:`InvalidStep`).
#: ABORT is possible only before the cut-over point has passed: up to then the old set has
#: published everything, so going back loses nothing. After it the new set is the one serving
#: and a failure of either set is handled like any failure of a running set (it resumes).
TRANSITIONS: Mapping[tuple[Phase, Step], Phase] = {
    (Phase.IDLE, Step.START): Phase.PREPARING,
    (Phase.PREPARING, Step.NEW_SET_READY): Phase.CUTOVER,
    (Phase.PREPARING, Step.ABORT): Phase.ABORTED,
    (Phase.CUTOVER, Step.CUT_PASSED): Phase.DRAINING,
    (Phase.CUTOVER, Step.ABORT): Phase.ABORTED,
    (Phase.DRAINING, Step.OLD_DRAINED): Phase.DONE,
}
#: Phases in which a reshard is running (a second one is refused).
RUNNING = frozenset({Phase.PREPARING, Phase.CUTOVER, Phase.DRAINING})
#: Phases a reshard ends in.
FINAL = frozenset({Phase.DONE, Phase.ABORTED})


class InvalidStep(ValueError):
    """A step the transition table does not allow from the current phase."""


def next_phase(phase: Phase, step: Step) -> Phase:
    """The phase after ``step`` (raises :class:`InvalidStep` if the table has no such edge)."""
    try:
        return TRANSITIONS[(phase, step)]
    except KeyError:
        raise InvalidStep(f"a reshard cannot {step.value} while {phase.value}") from None


@dataclass(frozen=True)
class Reshard:
    """One reshard from ``old`` to ``new``: its phase, and the cut-over point once chosen.

    Immutable: every step returns a new value, so the arbiter holds exactly one current plan and
    a test can walk every path of the table.
    """

    old: ShardSet
    new: ShardSet
    phase: Phase = Phase.IDLE
    #: the cut-over point (monotonic seconds), chosen on NEW_SET_READY
    cut_at: float | None = None
    overlap_s: float = DEFAULT_OVERLAP_S
    #: why it was aborted (one line), else None
    reason: str | None = None

    @classmethod
    def plan(cls, old: ShardSet, new_count: int, overlap_s: float = DEFAULT_OVERLAP_S) -> Reshard:
        """A reshard of ``old`` to ``new_count`` shards, not started yet."""
        new = ShardSet.full(old.generation + 1, new_count, SetPhase.PREPARING)
        return cls(old, new, Phase.IDLE, None, overlap_s)

    @property
    def running(self) -> bool:
        return self.phase in RUNNING

    def start(self) -> Reshard:
        return replace(self, phase=next_phase(self.phase, Step.START))

    def new_set_ready(self, now: float, lead_s: float = DEFAULT_CUT_LEAD_S) -> Reshard:
        """Every new shard is READY at ``now``: choose the cut-over point ``lead_s`` ahead."""
        return replace(self, phase=next_phase(self.phase, Step.NEW_SET_READY), cut_at=now + lead_s)

    def cut_passed(self, now: float) -> Reshard:
        """``now`` is at or past the cut-over point: the new set serves, the old one drains."""
        if self.cut_at is None or now < self.cut_at:
            raise InvalidStep("the cut-over point has not passed")
        return replace(
            self,
            phase=next_phase(self.phase, Step.CUT_PASSED),
            old=self.old.with_phase(SetPhase.DRAINING),
            new=self.new.with_phase(SetPhase.SERVING),
        )

    def old_drained(self) -> Reshard:
        return replace(
            self, phase=next_phase(self.phase, Step.OLD_DRAINED), old=self.old.with_phase(SetPhase.CLOSED)
        )

    def abort(self, reason: str, now: float | None = None) -> Reshard:
        """Give up (one line ``reason``): the old set keeps serving, the new one is closed.

        Refused (:class:`InvalidStep`) once the cut-over point has passed (``now`` given and at
        or past it), even if the arbiter has not taken the CUT_PASSED step yet: the old set
        has stopped publishing by then."""
        if self.cut_at is not None and now is not None and now >= self.cut_at:
            raise InvalidStep("the cut-over point has passed: the new set serves, there is no going back")
        return replace(
            self,
            phase=next_phase(self.phase, Step.ABORT),
            new=self.new.with_phase(SetPhase.CLOSED),
            reason=" ".join(reason.split()),
        )

    def handover(self) -> Handover:
        """The handover rule of this reshard (once the cut-over point is chosen)."""
        if self.cut_at is None:
            raise InvalidStep("no cut-over point yet")
        return Handover(self.cut_at, self.overlap_s, self.old.shard_count, self.new.shard_count)

    def serving(self) -> ShardSet:
        """The set whose count routes outbound packets now: the old one up to the cut-over
        point (and after an abort), the new one from then on."""
        return self.new if self.phase in (Phase.DRAINING, Phase.DONE) else self.old

    def describe(self) -> dict[str, Any]:
        """What ``status`` shows of the reshard."""
        return {
            "phase": self.phase.value,
            "old_count": self.old.shard_count,
            "new_count": self.new.shard_count,
            "cut_at": self.cut_at,
            "reason": self.reason,
        }


# -- what to do now ---------------------------------------------------------------------------

#: After the cut-over point the old set is stopped this much later, once every old shard is
#: caught up (its probe at ``T`` answered: all Discord sent it before ``T`` read). Its stop also
#: waits for the catch-up and for RabbitMQ's confirms.
DEFAULT_DRAIN_S = 1.0
#: ... but no later than this after ``T``: an old shard that cannot catch up (its process keeps
#: crashing, its session is lost) does not hold the reshard forever.
DEFAULT_CATCH_UP_S = 30.0


class Order(str, enum.Enum):
    """What the arbiter does to the children at a step of a reshard (``supervisor/resharding``)."""

    #: tell every child of both sets the cut-over point (IPC ``cutover``)
    CUTOVER = "cutover"
    #: take the cut-over point back from the old set (an abort after CUTOVER, before ``T``)
    CANCEL = "cutover_cancel"
    #: the new set consumes its shard queues and SEND from now on (IPC ``activate``)
    ACTIVATE = "activate"
    #: stop the old set's children, their sessions ended (1000)
    END_OLD = "end_old"
    #: stop the new set's children, their sessions ended (an abort)
    END_NEW = "end_new"


def advance(
    plan: Reshard, now: float, *, new_ready: int, failure: str | None, old_ended: bool, drain_s: float = DEFAULT_DRAIN_S,
    old_caught_up: bool = True, catch_up_s: float = DEFAULT_CATCH_UP_S,
) -> tuple[Reshard, list[Order]]:
    """The next value of ``plan`` at ``now`` and the orders due, given what the arbiter saw:
    ``new_ready`` new shards READY, the first ``failure`` of the new set (None: none), whether
    the old set was already told to end. Called on every pass of the loop; most passes: no
    change, no order.

    * a failure before ``T``: abort (and take ``T`` back from the old set if it was told);
      after ``T`` a failure is not the reshard's to handle (there is no going back);
    * every new shard READY while preparing: choose ``T`` and tell both sets;
    * ``T`` reached: the new set serves (it consumes the outbound queues);
    * ``drain_s`` after ``T`` and every old shard ``old_caught_up`` (at the latest
      ``catch_up_s`` after ``T``): end the old set (its sessions are not resumed). A crashed old
      child restarted meanwhile resumes and catches up first (issue 20, defects 1 and 3)."""
    cut_at = plan.cut_at
    if plan.phase in (Phase.PREPARING, Phase.CUTOVER) and failure is not None and (cut_at is None or now < cut_at):
        return plan.abort(failure, now), ([Order.CANCEL] if cut_at is not None else []) + [Order.END_NEW]
    if plan.phase is Phase.PREPARING and new_ready >= plan.new.shard_count:
        return plan.new_set_ready(now), [Order.CUTOVER]
    if plan.phase is Phase.CUTOVER and cut_at is not None and now >= cut_at:
        return plan.cut_passed(now), [Order.ACTIVATE]
    if plan.phase is Phase.DRAINING and not old_ended and cut_at is not None and now >= cut_at + drain_s:
        if old_caught_up or now >= cut_at + catch_up_s:
            return plan, [Order.END_OLD]
    return plan, []


def next_due(
    plan: Reshard, old_ended: bool, drain_s: float = DEFAULT_DRAIN_S, now: float | None = None,
    catch_up_s: float = DEFAULT_CATCH_UP_S,
) -> float | None:  # fmt: skip
    """When :func:`advance` next has something to do by the clock alone (None: only an event,
    a READY, a catch-up or a failure, can move the plan): the loop sleeps no longer than this."""
    if plan.cut_at is None:
        return None
    if plan.phase is Phase.CUTOVER:
        return plan.cut_at
    if plan.phase is Phase.DRAINING and not old_ended:
        drained = plan.cut_at + drain_s
        return drained if now is None or now < drained else plan.cut_at + catch_up_s
    return None


# -- refusals ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Refusal:
    """Why a reshard is refused: ``kind`` (``invalid``: a bad ``--shard-count``, exit 2 at the
    command line; ``running``, ``partial``, ``budget``, or the arbiter's own ``stopping`` and
    ``unimplemented``) and the one line to print."""

    kind: str
    line: str

    def __str__(self) -> str:
        return self.line



def round_up_to_multiple(count: int, multiple: int) -> int:
    """``count`` rounded up to a multiple of ``multiple`` (Discord's rule for large bots)."""
    if multiple < 1:
        raise ValueError(f"the shard count multiple must be at least 1, not {multiple}")
    return -(-count // multiple) * multiple


def invalid_count(target: int, current: int, multiple: int = 1) -> str | None:
    """Why ``target`` is not a shard count to reshard ``current`` to, else None."""
    if target < 1:
        return f"--shard-count must be at least 1, not {target}"
    if target == current:
        return f"the supervisor already runs {current} shards: nothing to do"
    if multiple > 1 and target % multiple:
        return (
            f"--shard-count {target} is not a multiple of --shard-count-multiple {multiple} "
            f"(Discord would close with 4010); use {round_up_to_multiple(target, multiple)}"
        )
    return None


def budget_refusal(target: int, remaining: int | None, reserve: int = RESHARD_RESERVE) -> str | None:
    """Why the identify budget cannot pay for ``target`` new sessions, else None."""
    if remaining is None:
        return "the identify budget is unknown (Discord's session_start_limit not read yet): try again later"
    if remaining < target + reserve:
        return (
            f"not enough identify budget: {remaining} left, {target} new sessions need "
            f"{target + reserve} (a reserve of {reserve} is kept)"
        )
    return None


def already_running(current: Reshard | None) -> str | None:
    """Why a second reshard cannot start now, else None."""
    if current is not None and current.running:
        return (
            f"a reshard is already running ({current.old.shard_count} -> "
            f"{current.new.shard_count}, {current.phase.value})"
        )
    return None


def partial_refusal(shard_ids: Iterable[int], shard_count: int) -> str | None:
    """Why this supervisor cannot reshard alone (it runs only part of the shards), else None."""
    mine = set(shard_ids)
    if mine != set(range(shard_count)):
        from shard_worker.shard_ranges import format_shard_ids

        return (
            f"this supervisor runs only shards {format_shard_ids(sorted(mine))} of {shard_count}: "
            "resharding part of a bot is the cluster's job"
        )
    return None


def refusal(
    target: int,
    current: ShardSet,
    *,
    multiple: int = 1,
    remaining: int | None,
    reserve: int = RESHARD_RESERVE,
    running: Reshard | None = None,
) -> Refusal | None:
    """The first reason to refuse ``reshard --shard-count target``, or None to go ahead.

    The order is the operator's: a bad number first, then what is going on (a reshard running,
    a partial supervisor), then the budget (which may change by itself)."""
    checks = (
        ("invalid", lambda: invalid_count(target, current.shard_count, multiple)),
        ("running", lambda: already_running(running)),
        ("partial", lambda: partial_refusal(current.shard_ids, current.shard_count)),
        ("budget", lambda: budget_refusal(target, remaining, reserve)),
    )
    for kind, check in checks:
        line = check()
        if line is not None:
            return Refusal(kind, line)
    return None


def auto_target(current: int, recommended: int, multiple: int = 1) -> int | None:
    """What ``--auto-reshard`` moves to when Discord recommends ``recommended`` shards: that
    count rounded up to ``multiple``, only when it exceeds ``current`` (never fewer shards by
    itself); None: stay."""
    target = round_up_to_multiple(max(1, recommended), multiple)
    return target if target > current else None


def after_sharding_required(current: int, recommended: int, multiple: int = 1) -> int:
    """The target of the reshard a 4011 (sharding required) starts with ``--auto-reshard``:
    Discord's recommendation if it is above ``current``, else twice ``current`` (a shard holds
    too many guilds now, so more shards are needed whatever an older recommendation says),
    rounded up to ``multiple``."""
    return auto_target(current, recommended, multiple) or round_up_to_multiple(2 * current, multiple)


# -- routing ----------------------------------------------------------------------------------


def queue_changes(group: str, old_count: int, new_count: int) -> tuple[list[str], list[str]]:
    """The shard queues a reshard changes: ``(to declare, to drain)``. Every new id needs its
    ``<group>:<id>`` queue before the new set consumes it; the ids that no longer exist (a
    smaller count) keep their queues, which are drained (their packets re-routed by guild id or
    refused) and left for the operator to delete."""
    from shard_worker import spectacles

    declare = [spectacles.shard_queue(group, s) for s in range(old_count, new_count)]
    drain = [spectacles.shard_queue(group, s) for s in range(new_count, old_count)]
    return declare, drain


# -- the handover -----------------------------------------------------------------------------
# Role and Handover (the rule of the module docstring) are imported from shard_worker.reshard
# above: the workers apply them, and ShardCutover there is what one shard does with them.
