"""Reconnect backoff: 0 first, then exponential with jitter in [d/2, d], capped."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from shard_worker.gateway.backoff import exponential_backoff


def take(gen, n):
    return list(itertools.islice(gen, n))


def test_first_delay_is_zero():
    assert next(exponential_backoff(rng=lambda: 0.99)) == 0.0


def test_growth_with_midpoint_jitter():
    # rng 0.5: each delay is 3/4 of the nominal d = 1, 2, 4, 8, ...
    assert take(exponential_backoff(base=1.0, factor=2.0, cap=1000.0, rng=lambda: 0.5), 6) == [
        0.0,
        0.75,
        1.5,
        3.0,
        6.0,
        12.0,
    ]


def test_jitter_extremes():
    low = take(exponential_backoff(base=2.0, factor=3.0, cap=1000.0, rng=lambda: 0.0), 5)
    assert low == [0.0, 1.0, 3.0, 9.0, 27.0]  # d/2 for d = 2, 6, 18, 54
    high = take(exponential_backoff(base=2.0, factor=3.0, cap=1000.0, rng=lambda: 1.0), 5)
    assert high == [0.0, 2.0, 6.0, 18.0, 54.0]  # d


def test_cap():
    delays = take(exponential_backoff(base=1.0, factor=2.0, cap=60.0, rng=lambda: 1.0), 20)
    assert delays[:8] == [0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0]
    assert all(d == 60.0 for d in delays[7:])
    capped_low = take(exponential_backoff(base=1.0, factor=2.0, cap=60.0, rng=lambda: 0.0), 20)
    assert all(d == 30.0 for d in capped_low[7:])


def test_defaults_are_capped_at_sixty():
    delays = take(exponential_backoff(rng=lambda: 0.999999), 50)
    assert delays[0] == 0.0
    assert max(delays) <= 60.0
    assert delays[-1] > 59.9


def test_uses_the_rng_once_per_delay_after_the_first():
    calls = []

    def rng():
        calls.append(1)
        return 0.5

    gen = exponential_backoff(rng=rng)
    next(gen)
    assert calls == []  # the immediate retry draws nothing
    take(gen, 4)
    assert len(calls) == 4


@given(
    base=st.floats(0.01, 10.0),
    factor=st.floats(1.0, 4.0),
    cap=st.floats(0.01, 120.0),
    draws=st.lists(st.floats(0.0, 1.0, exclude_max=True), min_size=1, max_size=30),
)
def test_jitter_bounds(base, factor, cap, draws):
    it = iter(draws)
    gen = exponential_backoff(base=base, factor=factor, cap=cap, rng=lambda: next(it))
    assert next(gen) == 0.0
    nominal = base
    for _ in draws:
        d = next(gen)
        assert nominal / 2 <= d <= nominal
        assert d <= max(base, cap)
        nominal = min(cap, nominal * factor)
