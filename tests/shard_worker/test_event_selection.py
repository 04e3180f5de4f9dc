"""``--events auto`` without sockets: returns and confirms in, verdicts out, on a fake clock.

A small model of RabbitMQ stands in for the broker: it routes each publish (in publish order)
to the queues bound at that moment, returns it (``basic.return``) when none is, and acks it
after. The real ``PublishLedger`` settles the acks, so the tests also show that a returned
message is settled like any other.
"""

from __future__ import annotations

from collections import Counter, defaultdict, deque

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shard_worker.amqp.ledger import Entry, PublishLedger
from shard_worker.event_selection import (
    MAX_TRACKED_TYPES,
    EventSelection,
    FixedEvents,
    as_filter,
)

INTERVAL = 5.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Model:
    """The hot path, the bridge's wiring of the selection, and a RabbitMQ that routes in order."""

    def __init__(self, *, max_types: int = MAX_TRACKED_TYPES, interval: float = INTERVAL) -> None:
        self.clock = Clock()
        self.ledger = PublishLedger(10**9, 10**12)
        self.selection = EventSelection(interval=interval, stats=self.ledger.stats, clock=self.clock, max_types=max_types)
        self.add = self.selection.watch(self.ledger.add)
        self.pending: deque[Entry] = deque()  # published, not yet routed by the broker
        self.ledger.open(self.pending.append)
        self.bound: set[str] = set()
        self.seq = 0
        self.dispatched: dict[str, list[int]] = defaultdict(list)  # seqs by type, in order
        self.published: dict[str, list[int]] = defaultdict(list)
        self.delivered: dict[str, list[int]] = defaultdict(list)  # what bound queues got
        self.returns: Counter[str] = Counter()
        self.first_return_at: dict[str, int] = {}  # publishes of the type before its first return

    def dispatch(self, t: str) -> bool:
        """One dispatch through the hot path's test (``events[t]``); True if it was published."""
        self.seq += 1
        self.dispatched[t].append(self.seq)
        if self.selection[t]:
            return False
        self.add(Entry(0, "s", self.seq, t, b"{}", f"0:s:{self.seq}"))
        self.published[t].append(self.seq)
        return True

    def step(self, n: int = 1) -> None:
        """The broker routes the ``n`` oldest publishes: a return (if unroutable), then the ack."""
        for _ in range(min(n, len(self.pending))):
            entry = self.pending.popleft()
            t = entry.routing_key
            if t in self.bound:
                self.delivered[t].append(entry.seq)
            else:
                self.returns[t] += 1
                self.first_return_at.setdefault(t, len(self.published[t]))
                self.selection.returned(t, entry.message_id)
            self.ledger.confirm(entry.tag, False, False)
            self.selection.settled()

    def drain(self) -> None:
        self.step(len(self.pending))


# -- deterministic cases ------------------------------------------------------------------------


def test_an_unbound_type_is_suppressed_after_its_first_return_and_probed_once_per_interval():
    m = Model()
    assert m.dispatch("TYPING_START") and m.dispatch("TYPING_START")  # nothing known yet
    m.step(2)
    assert m.selection.suppressed_types() == ["TYPING_START"]
    assert not any(m.dispatch("TYPING_START") for _ in range(100))  # suppressed, counted
    assert m.ledger.stats["suppressed"] == 100
    m.clock.now += INTERVAL
    assert m.dispatch("TYPING_START")  # the probe
    m.step()
    assert not any(m.dispatch("TYPING_START") for _ in range(100))  # returned: suppressed again
    stats = m.selection.types["TYPING_START"]
    assert (stats.probes, stats.probe_events, stats.returned, stats.suppressed) == (1, 1, 3, 200)
    # the returned messages were acked and settled like any other
    assert m.ledger.buffered == 0 and m.ledger.confirmed == 3 and m.ledger.stats["refused"] == 0


def test_a_routed_probe_publishes_the_type_again_until_the_next_return():
    m = Model()
    m.dispatch("TYPING_START")
    m.step()
    m.bound.add("TYPING_START")
    m.clock.now += INTERVAL
    assert m.dispatch("TYPING_START")  # the probe: its fate is not known yet...
    assert m.dispatch("TYPING_START")  # ...so the window publishes the type meanwhile
    m.step()  # the probe is acked with no return before the ack: a queue took it
    assert m.selection.suppressed_types() == []
    assert all(m.dispatch("TYPING_START") for _ in range(50))
    m.drain()
    assert m.delivered["TYPING_START"] == m.dispatched["TYPING_START"][1:]  # from the probe on, all
    assert m.ledger.stats["types_resumed"] == 1
    m.bound.clear()  # the consumer goes away: publication stops at the next return
    m.dispatch("TYPING_START")
    m.step()
    assert not m.dispatch("TYPING_START")
    assert m.ledger.stats["types_suppressed"] == 2


def test_while_the_probe_is_pending_only_its_own_return_counts():
    m = Model()
    for _ in range(3):
        m.dispatch("A")
    m.step(1)  # the first of three is returned: suppressed; two older ones still in flight
    m.clock.now += INTERVAL
    m.bound.add("A")
    assert m.dispatch("A")  # the probe, behind the two older messages
    m.bound.discard("A")
    m.step(2)  # the older two come back returned (late news): the window stays open
    assert m.selection.types["A"].window
    m.bound.add("A")
    m.step()  # the probe is routed
    assert m.selection.suppressed_types() == []
    # and the other order: a newer message's return before the (persisted, slow) probe's ack
    m2 = Model()
    m2.dispatch("B")
    m2.step()
    m2.clock.now += INTERVAL
    probe = m2.pending[-1] if m2.dispatch("B") and m2.pending else None
    assert probe is not None and m2.dispatch("B")
    newer = m2.pending.pop()
    m2.selection.returned("B", newer.message_id)  # the queue went away right after the probe
    assert m2.selection.types["B"].window  # still the probe's to decide
    m2.ledger.confirm(newer.tag, False, False)
    m2.bound.add("B")
    m2.step()  # the probe: routed (it was, before the queue went away)
    m2.bound.discard("B")
    assert m2.selection.types["B"].published
    assert m2.dispatch("B")
    m2.step()  # returned: suppressed again at the next return after the probe
    assert not m2.dispatch("B")


def test_a_probe_without_any_answer_closes_its_window_after_one_interval():
    m = Model()
    m.dispatch("A")
    m.step()
    m.clock.now += INTERVAL
    assert m.dispatch("A")  # the probe, never answered (the broker is stuck)
    m.clock.now += INTERVAL / 2
    assert m.dispatch("A")  # inside its window
    m.clock.now += INTERVAL / 2
    assert not m.dispatch("A")  # the window closed; suppressed until the next probe
    m.bound.add("A")
    m.step(2)  # the late ack of the probe still publishes the type again
    assert m.dispatch("A")


def test_a_probe_in_flight_when_the_connection_drops_decides_once_republished():
    """The AMQP connection is lost with the probe unconfirmed: the ledger puts it back in the
    backlog and publishes it again on the next channel, where its return or ack decides."""
    for bound_meanwhile, published_after in ((False, False), (True, True)):
        m = Model()
        m.dispatch("A")
        m.step()  # returned: A is suppressed
        m.clock.now += INTERVAL
        assert m.dispatch("A")  # the probe
        m.pending.clear()  # the connection drops before the broker routed it
        m.ledger.lost()
        if bound_meanwhile:
            m.bound.add("A")  # a consumer bound A while the worker was reconnecting
        m.ledger.open(m.pending.append)  # the new channel: the probe is published again
        assert [e.routing_key for e in m.pending] == ["A"]
        m.step()
        assert m.dispatch("A") is published_after, bound_meanwhile
        assert m.ledger.empty or m.pending  # everything settled but the last publish


def test_a_nacked_probe_decides_nothing_until_its_retry_is_acked():
    m = Model()
    retries: list[Entry] = []
    m.ledger._schedule = lambda delay, entry: retries.append(entry)
    m.dispatch("A")
    m.step()
    m.clock.now += INTERVAL
    m.bound.update({"A", "B"})
    m.dispatch("B")  # older, still unconfirmed: the probe's nack is not settled at once
    assert m.dispatch("A")
    probe = m.pending.pop()
    m.ledger.confirm(probe.tag, False, True)  # RabbitMQ nacked it
    m.selection.settled()
    assert not m.selection.types["A"].published
    m.step()  # B is acked: the ledger settles the nack (a retry later)
    assert not m.selection.types["A"].published and retries == [probe]
    m.ledger.retry_due(probe)
    m.step()  # the retry is routed and acked
    assert m.selection.types["A"].published


def test_types_beyond_the_bound_are_always_published_and_their_returns_only_counted():
    m = Model(max_types=3)
    for t in "ABCDE":
        m.dispatch(t)
    m.drain()
    assert sorted(m.selection.types) == ["A", "B", "C"] and len(m.selection) == 0
    assert m.dispatch("D") and m.dispatch("E") and not m.dispatch("A")
    assert m.ledger.stats["returned"] == 5


def test_a_return_of_a_key_that_is_no_dispatch_type_is_only_counted():
    m = Model()
    m.selection.returned("3", "send:abc")  # a forwarded packet for a shard queue nobody declared
    assert m.ledger.stats["returned"] == 1 and m.selection.types == {}


def test_the_interval_must_be_positive():
    with pytest.raises(ValueError, match="positive"):
        EventSelection(interval=0)


def test_a_fixed_list_filters_with_one_lookup_and_a_bounded_memory():
    f = as_filter(frozenset({"MESSAGE_CREATE"}))
    assert isinstance(f, FixedEvents)
    assert not f["MESSAGE_CREATE"] and f["TYPING_START"]
    assert f == {"MESSAGE_CREATE": False, "TYPING_START": True}  # remembered: dict hits next time
    for i in range(MAX_TRACKED_TYPES + 10):
        assert f[f"T{i}"]
    assert len(f) == MAX_TRACKED_TYPES
    assert as_filter(None) is None and as_filter(f) is f
    with pytest.raises(TypeError):
        as_filter("auto")  # the worker turns "auto" into an EventSelection, never a set of letters


# -- arbitrary interleavings --------------------------------------------------------------------

TYPES = ("A", "B", "C", "D", "E", "F")
ops = st.lists(
    st.one_of(
        st.tuples(st.just("dispatch"), st.sampled_from(TYPES), st.integers(1, 5)),
        st.tuples(st.just("bind"), st.sampled_from(TYPES), st.just(0)),
        st.tuples(st.just("unbind"), st.sampled_from(TYPES), st.just(0)),
        st.tuples(st.just("step"), st.just(""), st.integers(0, 20)),
        st.tuples(st.just("tick"), st.just(""), st.integers(0, 7000)),  # milliseconds
    ),
    max_size=120,
)


@given(ops=ops, max_types=st.integers(1, 8))
def test_any_interleaving_keeps_the_bounds_paces_probes_and_settles_every_message(ops, max_types):
    m = Model(max_types=max_types)
    openings: dict[str, list[float]] = defaultdict(list)
    ever_bound: set[str] = set()
    for op, t, n in ops:
        if op == "dispatch":
            for _ in range(n):
                before = m.selection.types[t].probes if t in m.selection.types else 0
                m.dispatch(t)
                if t in m.selection.types and m.selection.types[t].probes > before:
                    openings[t].append(m.clock.now)
        elif op == "bind":
            m.bound.add(t)
            ever_bound.add(t)
        elif op == "unbind":
            m.bound.discard(t)
        elif op == "step":
            m.step(n)
        else:
            m.clock.now += n / 1000
        sel = m.selection
        assert len(sel.types) <= max_types and len(sel) <= max_types
        assert len(sel._probes) <= len(sel.types) and sel._capture <= set(sel.types)
        for name, state in sel.types.items():  # the dict holds exactly the published types
            assert (name in sel) == state.published
            assert not (state.published and (state.window or name in sel._probes))
    for t, times in openings.items():  # at most one probe window per interval and type
        assert all(b - a >= INTERVAL for a, b in zip(times, times[1:])), (t, times)
    for t in set(TYPES) - ever_bound:
        if t in m.selection.types and t in m.first_return_at:
            # never consumed: published only until its first return came back, then in probes
            assert len(m.published[t]) == m.first_return_at[t] + m.selection.types[t].probe_events
    m.drain()
    assert m.ledger.buffered == 0 and m.ledger.stats["refused"] == 0
    assert m.ledger.confirmed == sum(len(v) for v in m.published.values())
    assert m.ledger.stats["returned"] == sum(m.returns.values())
    # Whatever happened before, once nothing is in flight it converges within one interval:
    # a bound type is published from its next probe on, an unbound one is probed once.
    m.clock.now += INTERVAL
    tracked = sorted(m.selection.types)
    for t in tracked:
        (m.bound.add if t in TYPES[::2] else m.bound.discard)(t)
        m.dispatch(t)
        m.drain()
    for t in tracked:
        probes = m.selection.types[t].probes
        results = [m.dispatch(t) for _ in range(3)]
        m.drain()
        assert results == ([True] * 3 if t in m.bound else [False] * 3), (t, results)
        assert m.selection.types[t].probes == probes


@given(ops=st.lists(
    st.one_of(
        st.tuples(st.just("dispatch"), st.sampled_from(TYPES[:3]), st.integers(1, 5)),
        st.tuples(st.just("bind"), st.sampled_from(TYPES[:3]), st.just(0)),
        st.tuples(st.just("unbind"), st.sampled_from(TYPES[:3]), st.just(0)),
        st.tuples(st.just("tick"), st.just(""), st.integers(0, 7000)),
    ),
    max_size=150,
))
def test_a_queue_bound_later_gets_every_event_from_one_interval_after_its_binding(ops):
    """With a broker that answers at once: every dispatch at least one interval after the
    binding is published, and after the queue's first event it misses none until unbound."""
    m = Model()
    bound_at: dict[str, float] = {}
    got_first: set[str] = set()
    probes_at_first: dict[str, int] = {}
    for op, t, n in ops:
        if op == "dispatch":
            for _ in range(n):
                published = m.dispatch(t)
                m.drain()
                if t in bound_at:
                    if m.clock.now >= bound_at[t] + INTERVAL or t in got_first:
                        assert published, (t, m.clock.now, bound_at[t])
                    if t in got_first:  # published for good: no more probes
                        assert m.selection.types[t].probes == probes_at_first[t]
                    elif published:
                        got_first.add(t)
                        probes_at_first[t] = m.selection.types[t].probes
        elif op == "bind":
            if t not in m.bound:
                m.bound.add(t)
                bound_at[t] = m.clock.now
        elif op == "unbind":
            m.bound.discard(t)
            bound_at.pop(t, None)
            got_first.discard(t)
        else:
            m.clock.now += n / 1000
