"""Which dispatches are published: every one, a fixed list (``--events A,B``), or ``--events auto``.

The Spectacles spec asks that "the gateway only publishes events that will be consumed". A fixed
list does that by hand; ``auto`` learns it from RabbitMQ (pure: no sockets, no loop, a clock
passed in, so the tests drive it with a fake one).

The hot path (``ShardRunner._read``) asks one thing per dispatch: ``if events is not None and
events[t]:`` (skip it). ``events`` is an :class:`EventFilter`, a ``dict`` of ``t`` to "skip?":
a type seen before costs one dict lookup in C; only a type the dict does not hold calls
:meth:`dict.__missing__`, where the rules below run.

``auto``, per event type, in one worker process:

==============================  =========================================================
what comes in                   what happens
==============================  =========================================================
a type never seen               published (every publish carries AMQP ``mandatory``)
``basic.return`` of a type      RabbitMQ routed it to no queue: **suppressed**, its
                                dispatches are counted (``suppressed``), not published
a suppressed type's first       a **probe**: published, and so is every dispatch of that
dispatch :data:`PROBE_INTERVAL_S`  type until the probe's fate is known (one publish round
after it was suppressed         trip, milliseconds: the *probe window*)
(or after its last probe)
the probe's ``basic.return``    suppressed again; the next probe one interval later
(returns of other messages      ignored: older ones are late news, and a newer one means
while the probe is pending)     the probe was routed (see :meth:`EventSelection.returned`)
the probe's ack, no return      a queue took it: the type is **published again**, and stays
before it                       published until a ``basic.return`` of that type
a probe without any answer      the window closes after one interval (suppressed again);
for :data:`PROBE_INTERVAL_S`    a late ack still publishes the type again
==============================  =========================================================

The decision is per message because RabbitMQ sends ``basic.return`` *before* the ``basic.ack``
of the same publish, on the same channel: an ack that finds no return for its message means a
queue took it. A returned message is still acked, and the publish ledger settles it as usual
(no queue wanted it: nothing is lost).

What a consumer that binds a queue later sees: nothing from before its binding; its first event
is the probe of the next window, at most one interval (plus the wait for the next dispatch of
that type) after the binding, and from that one on every dispatch of the type, in order, until
no queue is bound any more: then publication stops at the next ``basic.return``. One race
remains: a queue bound within one publish round trip after RabbitMQ returned a message of its
type (milliseconds: the return is news from just before the binding) may get the few events
published meanwhile, then nothing until the next probe, and every event from that one on.
Closing it would mean holding events back instead of dropping them.

Each worker process learns on its own (one AMQP bridge, one :class:`EventSelection` per
process): with ``P`` processes an unbound type costs ``P`` probe windows per interval, and a late
queue gets each process's shards from that process's next probe on.

Memory is bounded: at most :data:`MAX_TRACKED_TYPES` event types are tracked per process
(Discord has about 80); a type beyond that is always published and its returns are only counted.
Open probes are at most one per tracked type.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any, Protocol

#: ``--events auto``: learn from ``basic.return`` which types no queue is bound to.
AUTO = "auto"
#: Seconds between two probes of a suppressed type. A queue bound later gets its first event
#: at most this long (plus the wait for the next dispatch of its type) after its binding.
PROBE_INTERVAL_S = 5.0
#: Event types tracked per process; beyond this, a new type is always published (Discord has
#: about 80, so only garbage could get here).
MAX_TRACKED_TYPES = 256


class Message(Protocol):
    """What :class:`EventSelection` reads of a publish (``publish_ledger.Entry`` has it)."""

    routing_key: str
    message_id: str
    acked: bool  # RabbitMQ answered (ack or nack)
    nacked: bool


class EventFilter(dict):
    """The hot path's filter: ``filter[t]`` is True when a dispatch of type ``t`` is *not* to be
    published. Subclasses decide a type the dict does not hold in ``__missing__``."""

    __slots__ = ()


class FixedEvents(EventFilter):
    """``--events A,B``: publish only the types in ``allowed``. Decisions are remembered for
    at most :data:`MAX_TRACKED_TYPES` types; others are decided again each time."""

    __slots__ = ("allowed",)

    def __init__(self, allowed: Iterable[str]) -> None:
        super().__init__()
        self.allowed = frozenset(allowed)

    def __missing__(self, t: str) -> bool:
        skip = t not in self.allowed
        if len(self) < MAX_TRACKED_TYPES:
            self[t] = skip
        return skip


def as_filter(events: frozenset[str] | EventFilter | None) -> EventFilter | None:
    """What ``ShardRunner`` consults: ``None`` (publish every dispatch), or an :class:`EventFilter`
    (a set of names becomes :class:`FixedEvents`)."""
    if events is None or isinstance(events, EventFilter):
        return events
    if isinstance(events, str):
        raise TypeError(f"events must be a set of names or an EventFilter, not {events!r}")
    return FixedEvents(events)


class TypeState:
    """What :class:`EventSelection` knows of one event type, and its counters."""

    __slots__ = ("published", "window", "window_until", "due", "returned", "probes", "probe_events", "suppressed")

    def __init__(self) -> None:
        self.published = True
        #: A probe window is open: dispatches are published until the probe's fate is known.
        self.window = False
        self.window_until = 0.0
        #: Suppressed: the first dispatch at or after this time opens a probe window.
        self.due = 0.0
        self.returned = 0  # basic.return received for this type
        self.probes = 0  # probe windows opened
        self.probe_events = 0  # dispatches published in probe windows (the probes included)
        self.suppressed = 0  # dispatches not published

    def snapshot(self) -> dict[str, Any]:
        return {
            "published": self.published,
            "window": self.window,
            "returned": self.returned,
            "probes": self.probes,
            "probe_events": self.probe_events,
            "suppressed": self.suppressed,
        }


class EventSelection(EventFilter):
    """``--events auto`` for one worker process (see the module docstring for the rules).

    The driver (``broker.AmqpBridge``) wires it in three places: every buffered publish goes
    through :meth:`watch` (to catch each window's probe), every ``basic.return`` calls
    :meth:`returned`, and every confirm frame calls :meth:`settled` once the ledger saw it.

    Counters go to ``stats`` (the bridge's, so they reach ``spectacles_broker_messages_total``):
    ``returned``, ``suppressed`` (dispatches not published), ``probes``, ``probe_events``,
    ``types_suppressed`` and ``types_resumed`` (a type stopped, or started again).
    """

    __slots__ = ("interval", "max_types", "stats", "types", "_clock", "_capture", "_probes")

    def __init__(
        self,
        *,
        interval: float = PROBE_INTERVAL_S,
        stats: Counter[str] | None = None,
        clock: Callable[[], float] = time.monotonic,
        max_types: int = MAX_TRACKED_TYPES,
    ) -> None:
        super().__init__()
        if interval <= 0:
            raise ValueError(f"the probe interval must be positive, not {interval!r}")
        self.interval = interval
        self.max_types = max_types
        self.stats: Counter[str] = Counter() if stats is None else stats
        #: Every tracked type (at most ``max_types``).
        self.types: dict[str, TypeState] = {}
        self._clock = clock
        #: Types whose window just opened: their next publish is the probe.
        self._capture: set[str] = set()
        #: Each window's probe, until its fate (return, or ack without one) is known.
        self._probes: dict[str, Message] = {}

    # -- the hot path's question, for types the dict does not hold -----------------------------
    def __missing__(self, t: str) -> bool:
        state = self.types.get(t)
        if state is None:
            if len(self.types) < self.max_types:
                self.types[t] = TypeState()
                self[t] = False  # published: from now on a plain dict hit
            return False  # beyond the bound: always published
        # Suppressed (or in a probe window): not in the dict, so every dispatch comes here.
        now = self._clock()
        if state.window:
            if now < state.window_until:
                state.probe_events += 1
                self.stats["probe_events"] += 1
                return False
            # No answer to the probe in a whole interval (RabbitMQ unreachable or overloaded):
            # suppressed again. Its ack, if it comes, still publishes the type again.
            state.window = False
            self._capture.discard(t)
            state.due = now + self.interval
        if now >= state.due:
            state.window = True
            state.window_until = now + self.interval
            state.probes += 1
            state.probe_events += 1
            self._capture.add(t)
            self.stats["probes"] += 1
            self.stats["probe_events"] += 1
            return False
        state.suppressed += 1
        self.stats["suppressed"] += 1
        return True

    # -- the driver's side --------------------------------------------------------------------
    def watch(self, add: Callable[[Any], object]) -> Callable[[Any], None]:
        """Wrap the ledger's ``add``: the first publish of a type whose window just opened is
        that window's probe. (The hot path publishes right after asking, in the same loop turn,
        so the probe is the dispatch that opened the window.)"""
        capture = self._capture
        probes = self._probes

        def add_watched(message: Any) -> None:
            if capture and message.routing_key in capture:
                capture.discard(message.routing_key)
                probes[message.routing_key] = message
            add(message)

        return add_watched

    def returned(self, routing_key: str, message_id: str | None = None) -> None:
        """RabbitMQ returned a mandatory publish: no queue was bound to ``routing_key`` when it
        routed that message (``message_id``; ``None`` stands for the open probe, if any).

        While a probe's fate is unknown, only the probe's own return counts: RabbitMQ returns
        in publish order and a message's return precedes its ack, but the ack of a routed
        (persisted) probe may come after the return of a message published after it. So a
        return of another message then is either older than the probe (late news) or newer
        (the probe was routed, and the type is suppressed again at the next return after its
        ack): the probe decides either way."""
        self.stats["returned"] += 1
        state = self.types.get(routing_key)
        if state is None:
            return  # not a dispatch type (a forwarded packet), or beyond the bound
        state.returned += 1
        probe = self._probes.get(routing_key)
        if probe is not None:
            if message_id is not None and message_id != probe.message_id:
                return
            del self._probes[routing_key]
        if state.published:
            state.published = False
            del self[routing_key]  # every dispatch of it now asks __missing__
            state.due = self._clock() + self.interval
            self.stats["types_suppressed"] += 1
        elif state.window:
            state.window = False
            self._capture.discard(routing_key)
            state.due = self._clock() + self.interval
        # else: already suppressed (a message published before, returned now): nothing new.

    def settled(self) -> None:
        """A confirm frame was handed to the ledger: a probe acked without a return before its
        ack was routed to a queue, so its type is published again."""
        if not self._probes:
            return
        for t, message in list(self._probes.items()):
            if message.acked and not message.nacked:
                del self._probes[t]
                state = self.types[t]
                if not state.published:
                    state.published = True
                    state.window = False
                    self._capture.discard(t)
                    self[t] = False
                    self.stats["types_resumed"] += 1

    def after_confirms(self, on_confirm: Callable[[Any], object]) -> Callable[[Any], None]:
        """``on_confirm`` (the ledger's), then :meth:`settled`: the confirm callback to register."""

        def on_confirm_then_settle(frame: Any) -> None:
            on_confirm(frame)
            self.settled()

        return on_confirm_then_settle

    # -- reading ------------------------------------------------------------------------------
    def suppressed_types(self) -> list[str]:
        """The types not published now (a probe window open counts as suppressed)."""
        return sorted(t for t, state in self.types.items() if not state.published)

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Every tracked type's state and counters (bounded by ``max_types``)."""
        return {t: state.snapshot() for t, state in self.types.items()}
