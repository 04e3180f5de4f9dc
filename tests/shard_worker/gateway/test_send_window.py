"""The outbound limit: 120 payloads per 60 s, with a reserve that only control payloads may use."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shard_worker.gateway.send_window import SendWindow


def fill(win: SendWindow, now: float, n: int) -> None:
    for _ in range(n):
        win.record(now)


def test_defaults_match_discord():
    win = SendWindow()
    # Discord's 120 per 60 s, counted over 62 s: arrivals may come closer than the writes
    assert (win.limit, win.window, win.reserved) == (120, 62.0, 5)


@pytest.mark.parametrize(("limit", "reserved"), [(10, 10), (10, 11), (10, -1), (0, 0)])
def test_bad_reserve_rejected(limit, reserved):
    with pytest.raises(ValueError):
        SendWindow(limit=limit, reserved=reserved)


def test_zero_reserve_allowed():
    win = SendWindow(limit=3, window=60.0, reserved=0)
    fill(win, 0.0, 2)
    assert win.delay(0.0) == 0.0
    win.record(0.0)
    assert win.delay(0.0) == 60.0
    assert win.delay(0.0, control=True) == 60.0


def test_commands_stop_at_limit_minus_reserved():
    win = SendWindow(window=60.0)  # 120 / 60 s, 5 reserved
    for i in range(115):
        assert win.delay(float(i) * 0.1) == 0.0, i
        win.record(float(i) * 0.1)
    # The 116th command must wait until the first send (t=0) leaves the window at t=60.
    assert win.delay(11.5) == pytest.approx(48.5)
    # ...but control payloads may still use the 5 reserved slots.
    for _ in range(5):
        assert win.delay(11.5, control=True) == 0.0
        win.record(11.5)
    assert win.in_window(11.5) == 120
    # Now even a heartbeat waits: until 120 - 120 + 1 -> the oldest, t=0, expires at 60.
    assert win.delay(11.5, control=True) == pytest.approx(48.5)
    # A command now needs 6 sends to leave (120 in window, 115 allowed): the 6th oldest is t=0.5.
    assert win.delay(11.5) == pytest.approx(60.5 - 11.5)


def test_delay_exact_with_fake_clock():
    win = SendWindow(limit=4, window=60.0, reserved=1)
    win.record(0.0)
    win.record(10.0)
    win.record(20.0)
    # 3 in window: commands (allowed 3) wait for t=0 to leave at 60; control may go now.
    assert win.delay(30.0) == 30.0
    assert win.delay(30.0, control=True) == 0.0
    win.record(30.0)
    # 4 in window: control waits for the oldest (t=0); a command needs two to leave (t=10 -> 70).
    assert win.delay(30.0, control=True) == 30.0
    assert win.delay(30.0) == 40.0
    assert win.delay(59.0, control=True) == 1.0
    assert win.delay(60.0, control=True) == 0.0  # a send at t expires exactly at t + window
    assert win.in_window(60.0) == 3
    assert win.delay(60.0) == 10.0


def test_window_slides():
    win = SendWindow(limit=3, window=60.0, reserved=0)
    for t in (0.0, 20.0, 40.0):
        win.record(t)
    assert win.in_window(40.0) == 3
    assert win.in_window(59.999) == 3
    assert win.in_window(60.0) == 2
    assert win.in_window(80.0) == 1
    assert win.in_window(99.0) == 1
    assert win.in_window(100.0) == 0
    assert win.delay(100.0) == 0.0


def test_burst_then_wait_exactly_one_window():
    win = SendWindow(limit=120, window=60.0, reserved=5)
    fill(win, 5.0, 120)
    assert win.delay(5.0, control=True) == 60.0
    assert win.delay(5.0) == 60.0
    assert win.delay(64.0) == 1.0
    assert win.delay(65.0) == 0.0
    assert win.in_window(65.0) == 0


def test_delay_does_not_record():
    win = SendWindow(limit=2, window=60.0, reserved=0)
    for _ in range(10):
        assert win.delay(0.0) == 0.0
    assert win.in_window(0.0) == 0


# -- property: a caller that obeys delay() never breaks the limit ---------------------------------
# Times are multiples of 1/64 s so every sum and difference is exact in binary floating point.
steps = st.lists(
    st.tuples(st.integers(0, 64 * 90).map(lambda n: n / 64), st.booleans()),
    min_size=1,
    max_size=300,
)


def _run(win: SendWindow, plan) -> list[tuple[float, bool]]:
    now = 0.0
    sent = []
    for increment, control in plan:
        now += increment
        for _ in range(10):  # one wait must always be enough with exact times
            d = win.delay(now, control=control)
            assert d >= 0.0
            if d == 0.0:
                break
            now += d
        else:
            pytest.fail("delay() never reached 0")
        win.record(now)
        sent.append((now, control))
    return sent


def _check(win: SendWindow, sent) -> None:
    window = Fraction(win.window)
    times = [Fraction(t) for t, _ in sent]
    assert times == sorted(times)
    for i, (start, _) in enumerate(sent):
        start = Fraction(start)
        # Every send in [start, start + window): one window of Discord's.
        inside = [c for t, c in sent[i:] if Fraction(t) < start + window]
        assert len(inside) <= win.limit
        assert sum(1 for c in inside if not c) <= win.limit - win.reserved
        # A command is only admitted while fewer than limit - reserved are in its window.
    for j, (t, control) in enumerate(sent):
        if not control:
            t = Fraction(t)
            before = [s for s, _ in sent[:j] if Fraction(s) > t - window]
            assert len(before) < win.limit - win.reserved


@settings(max_examples=200, deadline=None)
@given(plan=steps, limit=st.integers(1, 8), reserved_frac=st.floats(0.0, 0.99))
def test_property_small_limits(plan, limit, reserved_frac):
    reserved = int(limit * reserved_frac)
    win = SendWindow(limit=limit, window=60.0, reserved=reserved)
    sent = _run(win, plan)
    assert len(sent) == len(plan)
    _check(win, sent)


@settings(max_examples=50, deadline=None)
@given(
    plan=st.lists(
        st.tuples(st.sampled_from([0.0, 0.0, 0.0, 0.125, 0.5, 1.0, 30.0]), st.booleans()),
        min_size=100,
        max_size=400,
    )
)
def test_property_discord_limits(plan):
    win = SendWindow()
    sent = _run(win, plan)
    _check(win, sent)


def test_control_is_never_starved_by_commands():
    """Commands flooding as fast as allowed still leave room for a heartbeat at once."""
    win = SendWindow()
    now = 0.0
    for _ in range(1000):
        d = win.delay(now)
        now += d
        win.record(now)
        assert win.delay(now, control=True) == 0.0
        now += 0.01


# -- the reserve follows the heartbeat interval (issue 22) -------------------------------------


def test_the_reserve_follows_the_hellos_interval():
    win = SendWindow(window=60.0)
    assert win.reserve(0.0) == 5  # before HELLO: the floor
    win.heartbeat_interval = 41.25
    assert win.reserve(0.0) == 2 + 1 + 4  # ceil(60 / 41.25) + 1 heartbeats, and the margin
    win.heartbeat_interval = 5.0
    assert win.reserve(0.0) == 12 + 1 + 4
    win.heartbeat_interval = 0.25  # absurd: one command per window still goes
    assert win.reserve(0.0) == 119


def test_heartbeats_discord_asks_for_grow_the_reserve():
    win = SendWindow(window=60.0)
    win.heartbeat_interval = 41.25
    for t in range(20):  # Discord asked for 20 heartbeats in the last minute
        win.record(float(t), control=True)
    assert win.reserve(20.0) == 20 + 4
    assert win.reserve(79.5) == 2 + 1 + 4  # they left the window


def test_a_burst_of_150_with_a_5_s_interval_never_exceeds_120():
    # Tried before the fix: a 5 s interval and 150 packets for one shard: Discord closed with 4008.
    sent = connection(interval=5.0, first=2.5, requested=[], commands=150, until=200.0)
    assert max_in_any_window(sent) <= 120
    assert sum(1 for _, control in sent if not control) == 150  # every packet went, in time


def connection(interval: float, first: float, requested: list[float], commands: int, until: float) -> list[tuple[float, bool]]:
    """A connection's sends in 1/64 s steps: the timer's heartbeats (first at ``first``, then
    every ``interval``), heartbeats Discord asks for at ``requested``, and ``commands`` queued
    at t=0, each sent as soon as ``delay`` allows (as the shard's sender does)."""
    win = SendWindow()
    win.heartbeat_interval = interval
    sent: list[tuple[float, bool]] = []
    beats = [first + k * interval for k in range(int((until - first) / interval) + 1)]
    controls = sorted(beats + requested)
    queued = commands
    step = 1 / 64
    t = 0.0
    while t < until:
        while controls and controls[0] <= t:  # never delayed
            controls.pop(0)
            win.record(t, control=True)
            sent.append((t, True))
        while queued and win.delay(t) == 0.0:
            win.record(t)
            sent.append((t, False))
            queued -= 1
        t += step
    return sent


def max_in_any_window(sent: list[tuple[float, bool]], window: float = 60.0) -> int:
    times = [t for t, _ in sent]
    return max((sum(1 for u in times[i:] if u < start + window) for i, start in enumerate(times)), default=0)


@settings(max_examples=40, deadline=None)
@given(
    interval=st.sampled_from([1.0, 2.5, 5.0, 10.0, 20.0, 41.25]),
    jitter=st.floats(0.0, 1.0),
    offset=st.integers(0, 64 * 30).map(lambda n: n / 64),
    gaps=st.lists(st.integers(64 * 30, 64 * 60).map(lambda n: n / 64), max_size=5),
    commands=st.integers(0, 300),
)
def test_no_window_ever_holds_more_than_120(interval, jitter, offset, gaps, commands):
    """Whatever the interval and the burst, with Discord asking for heartbeats at least 30 s
    apart (two in any 60 s: the margin), Discord never sees more than 120 payloads in 60 s (it
    would close with 4008)."""
    requested = [offset + sum(gaps[:i]) for i in range(len(gaps))]
    sent = connection(interval, jitter * interval, requested, commands, until=150.0)
    assert max_in_any_window(sent) <= 120
