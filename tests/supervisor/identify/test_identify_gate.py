"""The supervisor's identify gate: one identify per interval per bucket, budget respected."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from supervisor.identify.gate import (
    SHARED_ANSWER_SLACK_S,
    SHARED_REFUSED_RETRY_S,
    SHARED_RETRY_S,
    IdentifyGate,
)


def test_one_grant_per_bucket_per_interval_from_the_write_in_request_order():
    gate = IdentifyGate(max_concurrency=2, interval=5.0, lead=0.5)
    for shard in (0, 2, 4, 1, 3):
        gate.request("child", shard)
    first = gate.due(0.0)
    assert [g.shard_id for g in first] == [0, 1]  # buckets 0 and 1 open at once
    assert [g.not_before for g in first] == [0.0, 0.0]
    assert gate.due(1.0) == []  # in flight: not written yet
    gate.sent(0, 0.2)
    gate.sent(1, 1.0)  # a busy child wrote bucket 1's grant late
    assert gate.due(4.6) == []
    assert gate.next_time(4.6) == 4.7  # 0.5 s before bucket 0 is free
    second = gate.due(4.7)
    assert [(g.shard_id, g.not_before) for g in second] == [(2, 5.2)]
    assert [(g.shard_id, g.not_before) for g in gate.due(5.5)] == [(3, 6.0)]
    gate.sent(2, 5.2)
    assert [(g.shard_id, g.not_before) for g in gate.due(9.7)] == [(4, 10.2)]
    assert gate.next_time(9.7) is None and gate.waiting == 0


def test_a_grant_never_written_counts_as_written_when_it_expires():
    gate = IdentifyGate(1, interval=5.5, lead=0.5, validity=5.0)
    gate.request("a", 0)
    gate.request("a", 1)
    [grant] = gate.due(0.0)
    assert grant.expires == 5.0
    assert gate.next_time(1.0) == 5.0
    assert gate.due(4.9) == []
    assert gate.due(5.0) == []  # voided at 5.0; the next may leave at 5.0 + 5.5 - 0.5
    assert [(g.shard_id, g.not_before) for g in gate.due(10.0)] == [(1, 10.5)]
    assert gate.sent(0, 4.0) is False  # a report after the grant was voided changes nothing


def test_a_dead_childs_grant_counts_as_written_at_its_death():
    gate = IdentifyGate(1, interval=5.5, lead=0.5)
    gate.request("a", 0)
    gate.request("b", 1)
    gate.due(0.0)
    gate.cancel("a", now=2.0)
    assert gate.due(6.9) == []
    assert [(g.requester, g.not_before) for g in gate.due(7.0)] == [("b", 7.5)]


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
    gate.sent(0, 0.0)
    assert len(gate.due(5.0)) == 1 and gate.remaining == 5
    assert gate.budget_exhausted(10.0)
    assert gate.due(10.0) == [] and gate.next_time(10.0) == 1000.0
    assert len(gate.due(1000.0)) == 1  # reset passed: Discord refilled it


@given(
    st.integers(1, 16),
    st.lists(st.tuples(st.integers(0, 63), st.floats(0, 3), st.floats(0, 6)), min_size=1, max_size=80),
)
def test_no_two_writes_of_a_bucket_are_ever_closer_than_the_interval(max_concurrency, requests):
    """Whatever the delays between a grant and its write (within the grant's validity, or
    never written), two IDENTIFYs of one bucket are written at least ``interval`` apart."""
    gate = IdentifyGate(max_concurrency, interval=5.5, lead=0.5, validity=5.0)
    delays = {shard: delay for shard, _, delay in requests}
    now, writes, pending = 0.0, [], []

    def step(at):
        nonlocal pending
        for grant in gate.due(at):
            write_at = grant.not_before + delays[grant.shard_id]
            if write_at <= grant.expires:  # a child writes only a grant that has not expired
                pending.append((write_at, grant.shard_id))
        due_writes = [p for p in pending if p[0] <= at]
        pending = [p for p in pending if p[0] > at]
        for write_at, shard in due_writes:
            writes.append((write_at, shard))
            gate.sent(shard, write_at)

    for shard, gap, _ in requests:
        gate.request(shard, shard)
        now += gap
        step(now)
    for _ in range(10_000):
        if not gate.waiting and not pending and not gate.in_flight:
            break
        times = [t for t in (gate.next_time(now), *(p[0] for p in pending)) if t is not None]
        now = max(now, min(times)) if times else now + 1.0
        step(now)
    last: dict[int, float] = {}
    for at, shard in sorted(writes):
        bucket = shard % max_concurrency
        assert bucket not in last or at - last[bucket] >= 5.5 - 1e-9
        last[bucket] = at
    assert gate.waiting == 0


class SharedLock:
    """The Redis side of the gate as the arbiter presents it: questions now, answers later."""

    def __init__(self):
        self.asked: list[tuple[int, float]] = []
        self.accept = True

    def __call__(self, bucket, hold_s):
        self.asked.append((bucket, hold_s))
        return self.accept


def test_a_shared_lock_is_asked_for_and_the_grant_waits_for_the_answer():
    lock = SharedLock()
    gate = IdentifyGate(2, interval=5.0, lead=0.5, validity=5.0, shared_ask=lock)
    gate.request("a", 0)
    gate.request("a", 1)
    assert gate.due(0.0) == []  # nothing without the lock: asked, not granted
    assert [b for b, _ in lock.asked] == [0, 1] and gate.asking == 2
    assert gate.due(0.5) == [] and len(lock.asked) == 2  # one question per bucket at a time
    assert gate.next_time(0.5) is None  # the answers wake the loop
    gate.shared_answer(1, 0.0, now=0.6, started_at=0.55)
    gate.shared_answer(0, 2.0, now=0.6)  # bucket 0 is held by another host for 2 s
    [grant] = gate.due(0.6)
    assert grant.shard_id == 1 and grant.not_before == 0.6 and grant.expires == 5.6
    assert gate.next_time(0.6) == 2.6 and gate.due(1.0) == []  # not asked again before its time
    assert gate.due(2.6) == [] and [b for b, _ in lock.asked] == [0, 1, 0]
    gate.shared_answer(0, 0.0, now=2.7)
    assert [g.shard_id for g in gate.due(2.7)] == [0]


def test_the_shared_lock_is_held_until_the_write_plus_the_answers_way_back():
    lock, sent = SharedLock(), []
    gate = IdentifyGate(1, interval=5.5, lead=0.5, validity=5.0, shared_ask=lock, shared_sent=sent.append)
    gate.request("a", 0)
    gate.due(10.0)
    # a grant may be written until it expires, then the interval, plus the slack for the answer
    assert lock.asked == [(0, 5.0 + 5.5 + SHARED_ANSWER_SLACK_S)]
    gate.shared_answer(0, 0.0, now=10.1, started_at=10.05)
    [grant] = gate.due(10.1)
    assert grant.expires == 15.1  # the whole validity: the lease runs to 10.05 + 15.5 + slack
    gate.sent(0, 12.0)
    assert sent == [0]


def test_a_late_answer_gives_a_grant_that_still_fits_in_the_lease():
    lock = SharedLock()
    gate = IdentifyGate(1, interval=5.5, lead=0.5, validity=5.0, shared_ask=lock)
    gate.request("a", 0)
    gate.due(0.0)
    hold = lock.asked[0][1]  # 15.5 + slack: the lease ends at started + hold
    gate.shared_answer(0, 0.0, now=8.0, started_at=1.0)  # Redis took 1 s to start, the answer 7 s to arrive
    [grant] = gate.due(8.0)
    assert grant.not_before == 8.0 and grant.expires == 1.0 + hold - 5.5  # shortened, never past the lease
    assert grant.expires + 5.5 <= 1.0 + hold


def test_an_answer_too_late_to_use_lets_the_lease_run_out_and_asks_again():
    lock = SharedLock()
    gate = IdentifyGate(1, interval=5.5, lead=0.5, validity=5.0, shared_ask=lock)
    gate.request("a", 0)
    gate.due(0.0)
    hold = lock.asked[0][1]
    gate.shared_answer(0, 0.0, now=hold - 5.5 - 0.5, started_at=0.0)  # 0.5 s left to write: too little
    assert gate.due(hold - 6.0) == [] and gate.next_time(hold - 6.0) == hold
    assert gate.due(hold) == [] and len(lock.asked) == 2  # asked again once the lease ran out


def test_redis_not_answering_or_a_held_shared_budget_retry_later():
    lock = SharedLock()
    gate = IdentifyGate(1, interval=5.0, shared_ask=lock)
    gate.request("a", 0)
    gate.due(0.0)
    gate.shared_answer(0, float("inf"), now=0.1)  # the shared budget is down to its reserve
    assert gate.due(0.1) == [] and gate.next_time(0.1) == 0.1 + SHARED_RETRY_S
    gate.due(5.1)
    gate.shared_answer(0, 1.0, now=7.1)  # Redis timed out (the arbiter's retry: 1 s)
    assert gate.next_time(7.1) == 8.1 and gate.due(8.1) == [] and len(lock.asked) == 3
    assert gate.total_granted == 0  # never a grant without the lock


def test_a_question_that_cannot_be_queued_is_asked_again_a_second_later():
    lock = SharedLock()
    lock.accept = False
    gate = IdentifyGate(1, interval=5.0, shared_ask=lock)
    gate.request("a", 0)
    assert gate.due(0.0) == [] and gate.asking == 0
    assert gate.next_time(0.0) == SHARED_REFUSED_RETRY_S


def test_an_unused_lease_expires():
    lock = SharedLock()
    gate = IdentifyGate(1, interval=5.0, shared_ask=lock)
    gate.request("a", 0)
    gate.due(0.0)
    gate.cancel("a", 0.5)  # the child died while the question was out
    gate.shared_answer(0, 0.0, now=1.0, started_at=0.0)
    gate.request("b", 0)
    [grant] = gate.due(1.0)  # the lease serves the next request of the bucket
    assert grant.requester == "b"


def test_the_budget_guard_keeps_working_after_discord_resets_it():
    day = 24 * 3600.0
    gate = IdentifyGate(1, interval=5.0, remaining=6, reset_at=100.0, reserve=5, total=8, validity=1.0)
    gate.request("a", 0)
    assert len(gate.due(0.0)) == 1 and gate.budget_exhausted(1.0)
    assert not gate.budget_exhausted(100.0)  # reset: 8 again, next reset a day later
    assert gate.remaining == 8 and gate.reset_at == 100.0 + day
    for shard in range(1, 5):
        gate.request("a", shard)
    granted = [g for t in (100.0, 106.0, 112.0, 118.0) for g in gate.due(t)]
    assert len(granted) == 3 and gate.remaining == 5  # held again at the reserve, same day
    assert gate.budget_exhausted(200.0)
    assert gate.refills == 1  # the arbiter asks Discord after each refill


def test_discords_total_and_a_refreshed_budget_replace_the_defaults():
    gate = IdentifyGate(1, remaining=10, reset_at=50.0, reserve=5, total=2000)
    assert not gate.budget_exhausted(50.0) and gate.remaining == 2000  # refilled to Discord's total
    gate.set_budget(1500, 3600.0, total=2500)  # Discord, asked again
    assert (gate.remaining, gate.reset_at, gate.total) == (1500, 3600.0, 2500)
    assert not gate.budget_exhausted(3600.0) and gate.remaining == 2500


def test_public_view_of_queues_and_free_times():
    gate = IdentifyGate(2, interval=5.0, shared_ask=SharedLock())
    for shard in (0, 2, 1):
        gate.request("a", shard)
    assert gate.queued() == {0: [0, 2], 1: [1]}
    gate.due(10.0)
    gate.shared_answer(0, 0.0, now=10.0)
    gate.shared_answer(1, 3.0, now=10.0)
    assert [g.shard_id for g in gate.due(10.0)] == [0]  # bucket 1 is held elsewhere for 3 s
    assert gate.queued() == {0: [2], 1: [1]}
    assert gate.free_at() == {0: 15.0, 1: 13.0}  # bucket 0 in flight: counted from not_before
