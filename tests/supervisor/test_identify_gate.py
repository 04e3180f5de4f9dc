"""The supervisor's identify gate: one identify per interval per bucket, budget respected."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from supervisor.identify_gate import IdentifyGate


def test_one_grant_per_bucket_per_interval_in_request_order():
    gate = IdentifyGate(max_concurrency=2, interval=5.0)
    for shard in (0, 2, 4, 1, 3):
        gate.request("child", shard)
    assert [g.shard_id for g in gate.due(0.0)] == [0, 1]  # buckets 0 and 1 open at once
    assert gate.due(4.9) == []
    assert gate.next_time(4.9) == 5.0
    assert [g.shard_id for g in gate.due(5.0)] == [2, 3]
    assert [g.shard_id for g in gate.due(10.0)] == [4]
    assert gate.next_time(10.0) is None and gate.waiting == 0


def test_cancel_forgets_a_dead_child():
    gate = IdentifyGate(1, interval=5.0)
    gate.request("a", 0)
    gate.request("b", 1)
    gate.cancel("a")
    assert [(g.requester, g.shard_id) for g in gate.due(0.0)] == [("b", 1)]


def test_duplicate_requests_are_granted_once():
    gate = IdentifyGate(1, interval=5.0)
    gate.request("a", 0)
    gate.request("a", 0)
    assert len(gate.due(0.0)) == 1
    assert gate.due(100.0) == []


def test_budget_holds_grants_until_reset():
    gate = IdentifyGate(1, interval=5.0, remaining=7, reset_at=1000.0, reserve=5)
    for shard in range(4):
        gate.request("a", shard)
    assert len(gate.due(0.0)) == 1 and gate.remaining == 6
    assert len(gate.due(5.0)) == 1 and gate.remaining == 5
    assert gate.budget_exhausted(10.0)
    assert gate.due(10.0) == [] and gate.next_time(10.0) == 1000.0
    assert len(gate.due(1000.0)) == 1  # reset passed: Discord refilled it


@given(
    st.integers(1, 16),
    st.lists(st.tuples(st.integers(0, 63), st.floats(0, 3)), min_size=1, max_size=80),
)
def test_no_bucket_is_ever_granted_twice_within_the_interval(max_concurrency, requests):
    gate = IdentifyGate(max_concurrency, interval=5.0)
    now, granted = 0.0, []
    for shard, step in requests:
        gate.request(shard, shard)
        now += step
        granted += [(now, g.shard_id) for g in gate.due(now)]
    while gate.waiting:
        now = gate.next_time(now)
        granted += [(now, g.shard_id) for g in gate.due(now)]
    last: dict[int, float] = {}
    for at, shard in granted:
        bucket = shard % max_concurrency
        assert bucket not in last or at - last[bucket] >= 5.0 - 1e-9  # float rounding only
        last[bucket] = at
    assert {shard for _, shard in granted} == {shard for shard, _ in requests}
    assert len(granted) == gate.total_granted


def test_a_shared_lock_held_elsewhere_delays_the_bucket():
    answers = {0: [2.0, 0.0], 1: [0.0]}
    asked = []

    def shared(bucket):
        asked.append(bucket)
        return answers[bucket].pop(0)

    gate = IdentifyGate(2, interval=5.0, shared_lock=shared)
    gate.request("a", 0)
    gate.request("a", 1)
    assert [g.shard_id for g in gate.due(0.0)] == [1]  # bucket 0 is held by another host
    assert gate.next_time(0.0) == 2.0
    assert gate.due(1.0) == [] and asked == [0, 1]  # not asked again before its time
    assert [g.shard_id for g in gate.due(2.0)] == [0]


def test_a_held_shared_budget_retries_later():
    gate = IdentifyGate(1, interval=5.0, shared_lock=lambda bucket: float("inf"))
    gate.request("a", 0)
    assert gate.due(0.0) == []
    assert gate.next_time(0.0) == 5.0


def test_the_budget_guard_keeps_working_after_discord_resets_it():
    day = 24 * 3600.0
    gate = IdentifyGate(1, interval=5.0, remaining=6, reset_at=100.0, reserve=5, total=8)
    gate.request("a", 0)
    assert len(gate.due(0.0)) == 1 and gate.budget_exhausted(1.0)
    assert not gate.budget_exhausted(100.0)  # reset: 8 again, next reset a day later
    assert gate.remaining == 8 and gate.reset_at == 100.0 + day
    for shard in range(1, 5):
        gate.request("a", shard)
    granted = [g for t in (100.0, 106.0, 112.0, 118.0) for g in gate.due(t)]
    assert len(granted) == 3 and gate.remaining == 5  # held again at the reserve, same day
    assert gate.budget_exhausted(200.0)


def test_public_view_of_queues_and_free_times():
    gate = IdentifyGate(2, interval=5.0, shared_lock=lambda bucket: 3.0 if bucket == 1 else 0.0)
    for shard in (0, 2, 1):
        gate.request("a", shard)
    assert gate.queued() == {0: [0, 2], 1: [1]}
    assert [g.shard_id for g in gate.due(10.0)] == [0]  # bucket 1 is held elsewhere for 3 s
    assert gate.queued() == {0: [2], 1: [1]}
    assert gate.free_at() == {0: 15.0, 1: 13.0}
