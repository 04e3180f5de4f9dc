"""``--auto-reshard``'s policy (``supervisor/reshard/auto.py``), without sockets or clocks."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from supervisor.reshard.auto import AutoReshard


def test_nothing_is_asked_before_every_shard_was_ready_once():
    auto = AutoReshard(interval_s=100.0)
    assert not auto.due(0.0) and not auto.due(1e9)
    auto.all_ready(50.0)
    assert auto.due(50.0)  # the first check at once: the start's count may already be short
    auto.asked(50.0)
    assert not auto.due(50.0)  # waiting for the answer
    assert auto.answer(4, 4).target is None
    assert not auto.due(149.9) and auto.due(150.0)
    auto.all_ready(200.0)  # READY again later changes nothing
    assert auto.next_check == 150.0


def test_a_higher_recommendation_reshards_rounded_up_to_the_multiple():
    auto = AutoReshard(interval_s=10.0, multiple=16)
    auto.all_ready(0.0)
    auto.asked(0.0)
    decision = auto.answer(16, 20)
    assert decision.target == 32
    assert decision.why == "Discord recommends 20 shards, 16 run"


def test_a_lower_or_equal_recommendation_stays():
    auto = AutoReshard(interval_s=10.0)
    for recommended in (1, 3, 8):
        auto.asked(0.0)
        decision = auto.answer(8, recommended)
        assert decision.target is None and "staying at 8" in decision.why


def test_an_unreachable_discord_is_asked_again_at_the_next_interval():
    auto = AutoReshard(interval_s=10.0)
    auto.all_ready(0.0)
    auto.asked(0.0)
    decision = auto.answer(4, None, "timed out")
    assert decision.target is None and "timed out" in decision.why
    assert not auto.due(9.0) and auto.due(10.0)


def test_a_4011_asks_at_once_and_reshards_even_if_discord_recommends_no_more():
    auto = AutoReshard(interval_s=3600.0)
    auto.all_ready(0.0)
    auto.asked(0.0)
    auto.answer(4, 4)
    assert not auto.due(1.0)
    auto.on_sharding_required(2)
    auto.on_sharding_required(3)  # the first one is the one named
    assert auto.due(1.0)
    auto.asked(1.0)
    decision = auto.answer(4, 4)
    assert decision.target == 8  # twice the count: a shard holds too many guilds now
    assert decision.why == "shard 2 was closed with 4011 (sharding required); Discord recommends 4"
    assert auto.sharding_required is None and not auto.due(2.0)


def test_a_4011_follows_a_higher_recommendation_and_survives_an_unreachable_discord():
    auto = AutoReshard(interval_s=3600.0, multiple=4)
    auto.on_sharding_required(0)  # before the first READY of all: still asked at once
    assert auto.due(0.0)
    auto.asked(0.0)
    assert auto.answer(4, 13).target == 16
    auto.on_sharding_required(1)
    auto.asked(1.0)
    decision = auto.answer(16, None, "503")
    assert decision.target == 32 and "Discord not reachable: 503" in decision.why


@given(
    current=st.integers(1, 5000),
    recommended=st.one_of(st.none(), st.integers(0, 10000)),
    multiple=st.integers(1, 64),
    after_4011=st.booleans(),
)
def test_never_fewer_shards_and_always_a_multiple(current, recommended, multiple, after_4011):
    auto = AutoReshard(interval_s=60.0, multiple=multiple)
    if after_4011:
        auto.on_sharding_required(0)
    auto.asked(0.0)
    target = auto.answer(current, recommended, "down").target
    if after_4011:
        assert target is not None
    if target is not None:
        assert target > current and target % multiple == 0
        if recommended is not None and recommended > current and not after_4011:
            assert target - multiple < recommended <= target
