"""Cluster mode's rules (``supervisor/cluster/rules.py``), without Redis or clocks."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from supervisor.cluster.rules import (
    FENCE_MARGIN_S,
    FENCE_S,
    LEASE_TTL_S,
    STOP_GRACE_S,
    Fence,
    LeaseMemory,
    Node,
    View,
    fair_shares,
    group_count,
    group_shards,
    plan,
)


def nodes(*names: str, **capacity: float) -> tuple[Node, ...]:
    return tuple(Node(n, capacity.get(n.replace("-", "_"), 1.0)) for n in names)


def test_groups_of_k_consecutive_shards():
    assert group_count(12, 1) == 12 and group_count(10, 4) == 3
    assert group_shards(2, 10, 4) == [8, 9] and group_shards(0, 10, 4) == [0, 1, 2, 3]


def test_fair_shares_equal_and_weighted():
    assert fair_shares(nodes("a", "b", "c"), 12) == {"a": 4, "b": 4, "c": 4}
    assert fair_shares(nodes("c", "a", "b"), 13) == {"a": 5, "b": 4, "c": 4}  # the extra one by name
    assert fair_shares(nodes("a", "b", b=3.0), 12) == {"a": 3, "b": 9}
    assert fair_shares((), 12) == {}


@given(st.lists(st.integers(1, 10), min_size=1, max_size=30), st.integers(0, 400))
def test_shares_sum_to_the_groups_and_equal_ones_differ_by_at_most_one(weights, groups):
    live = tuple(Node(f"n{i}", float(w)) for i, w in enumerate(weights))
    shares = fair_shares(live, groups)
    assert sum(shares.values()) == groups
    total = sum(weights)
    for node in live:
        assert abs(shares[node.name] - groups * node.capacity / total) < 1.0
    if len(set(weights)) == 1:
        assert max(shares.values()) - min(shares.values()) <= 1


def test_a_node_acquires_free_groups_up_to_its_share_once_settled():
    view = View(nodes("a", "b", "c"), {0: "b", 1: "b"}, 12)
    assert plan(view, "a", held=(), ready=(), settled=False).acquire == ()
    decided = plan(view, "a", held=(), ready=(), settled=True, acquire_per_round=10)
    assert decided.share == 4 and decided.acquire == (2, 3, 4, 5)
    assert plan(view, "a", held=(), ready=(), acquire_per_round=2).acquire == (2, 3)


def test_a_node_over_its_share_hands_over_one_ready_group_at_a_time():
    owners = {g: "a" for g in range(6)} | {g: "b" for g in range(6, 12)}
    view = View(nodes("a", "b", "c"), owners, 12)  # c joined
    decided = plan(view, "a", held=range(6), ready={0, 1, 2, 3})
    assert decided.release == (3,)  # READY only; the highest first
    assert plan(view, "a", held=range(6), ready={0, 1, 2, 3}, releasing={3}).release == ()  # one at a time
    assert plan(view, "a", held=range(6), ready=()).release == ()  # never a group still identifying
    assert plan(view, "c", held=(), ready=()).acquire == ()  # nothing free yet: it waits for the handoffs


def test_after_a_failover_the_survivors_take_the_free_groups():
    owners = {g: "a" for g in range(4)} | {g: "c" for g in range(8, 12)}  # b's leases expired
    view = View(nodes("a", "c"), owners, 12)
    assert plan(view, "a", held=range(4), ready=range(4)).acquire == (4, 5)
    assert plan(view, "c", held=range(8, 12), ready=range(8, 12)).acquire == (4, 5)  # a race: SET NX decides


def test_the_fence_stops_what_was_not_renewed_in_time():
    assert FENCE_MARGIN_S > 0 and FENCE_S < LEASE_TTL_S
    fence = Fence()
    fence.acquired(1, sent_at=100.0)
    fence.acquired(2, sent_at=100.0)
    fence.renewal(1, 103.0, ok=True)
    assert fence.must_stop(105.9) == []
    assert fence.must_stop(106.0) == [2]  # 6 s since its lease was sent for
    fence.renewal(1, 101.0, ok=True)  # an older answer arriving late never extends it
    assert fence.must_stop(109.0) == [1, 2]
    fence.renewal(2, 104.0, ok=False)  # refused: not ours any more
    assert not fence.holds(2)
    fence.released(1)
    assert fence.must_stop(200.0) == []


def test_a_guarded_group_is_parked_at_the_guard_limit_before_a_takeover_may_identify():
    # Issue 20, defect 6: a guarded group ran on for as long as Redis was out of reach, while
    # another node could take it over by IDENTIFY (no session to resume): two sessions.
    from supervisor.cluster.rules import GUARD_LIMIT_S, TAKEOVER_WAIT_S

    fence = Fence()
    fence.acquired(3, sent_at=100.0)
    assert fence.must_stop(106.0) == [3] and fence.must_park(106.0) == []  # guarded, runs on
    assert fence.must_park(100.0 + GUARD_LIMIT_S) == [3]  # parked: it cannot renew
    # the earliest a taker can hold the lease is LEASE_TTL_S after the last renewal; it waits
    # until the owner has parked the group and its process is killed
    assert LEASE_TTL_S + TAKEOVER_WAIT_S >= GUARD_LIMIT_S + STOP_GRACE_S + 1.0


def test_a_lease_that_vanished_while_its_owner_lives_is_not_taken_for_a_while():
    # Found by the fault schedule (seed 6, Redis' keys deleted one by one): b's lease on group 1
    # was gone while the meta was not, so no node saw Redis forget; a took group 1 at once and b
    # stopped it (a running group, identified again 24 s later).
    from supervisor.cluster.rules import LOST_LEASE_WAIT_S

    memory = LeaseMemory()
    both = nodes("a", "b")
    assert memory.vanished(View(both, {0: "a", 1: "b"}, 3), "a", now=0.0) == set()
    lost = View(both, {0: "a"}, 3, ran={1: "b"})  # group 2: nobody ever ran it
    assert memory.vanished(lost, "a", now=1.0) == {1}
    assert plan(lost, "a", held={0}, ready={0}, vanished={1}).acquire == (2,)
    assert memory.vanished(View(both, {0: "a"}, 3), "a", now=2.0) == {1}  # the ran mark lost too: memory
    assert memory.vanished(lost, "b", now=2.0) == set()  # the owner itself takes it back
    assert memory.vanished(lost, "a", now=1.0 + LOST_LEASE_WAIT_S) == set()  # given up after all: taken
    # the membership lost too: b counts as alive until the expiry last seen
    memory = LeaseMemory()
    memory.vanished(View(both, {0: "a", 1: "b"}, 2, expiries={"a": 9.0, "b": 9.5}), "a", now=0.0)
    assert memory.vanished(View(nodes("a"), {0: "a"}, 2), "a", now=1.0) == {1}
    assert memory.vanished(View(nodes("a"), {0: "a"}, 2), "a", now=9.6) == set()  # b's heartbeat ran out
    # not vanished: a handoff (its mark), an owner that is gone (a failover), a lease held again
    memory = LeaseMemory()
    memory.vanished(View(both, {0: "a", 1: "b"}, 2), "a", now=0.0)
    assert memory.vanished(View(both, {0: "a"}, 2, ran={1: "b"}, handed=frozenset({1})), "a", now=1.0) == set()
    assert memory.vanished(View(nodes("a"), {0: "a"}, 2, ran={1: "b"}), "a", now=1.0) == set()
    memory.vanished(View(both, {0: "a", 1: "b"}, 2), "a", now=2.0)
    assert memory.vanished(View(both, {0: "a"}, 2), "a", now=30.0) == {1}  # free since 30, not since 1
