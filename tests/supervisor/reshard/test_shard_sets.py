"""The shard-set model and the reshard rules (pure: no socket, no clock)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shard_worker.gateway.protocol import shard_for_guild
from shard_worker.reshard import MARK_LIMIT_S
from supervisor.reshard import shard_sets
from supervisor.reshard.shard_sets import (
    FINAL,
    OVERLAP_HEADER,
    TRANSITIONS,
    Handover,
    InvalidStep,
    Phase,
    Reshard,
    Role,
    SetPhase,
    ShardSet,
    Step,
)

# -- generations and the plan -----------------------------------------------------------------


def test_a_full_set_and_its_owners():
    s = ShardSet.full(0, 4)
    assert s.shard_ids == (0, 1, 2, 3) and s.complete and s.phase is SetPhase.SERVING
    assert not ShardSet(0, 4, (0, 1)).complete
    guild = 81384788765712384
    assert s.owner(guild) == shard_for_guild(guild, 4)
    assert s.owner(None) == 0  # a DM


def test_the_happy_path_through_every_phase():
    plan = Reshard.plan(ShardSet.full(0, 4), 8)
    assert plan.phase is Phase.IDLE and plan.new.generation == 1 and plan.new.phase is SetPhase.PREPARING
    assert plan.serving() is plan.old
    plan = plan.start()
    assert plan.phase is Phase.PREPARING and plan.running
    plan = plan.new_set_ready(now=100.0, lead_s=2.0)
    assert plan.phase is Phase.CUTOVER and plan.cut_at == 102.0 and plan.serving() is plan.old
    with pytest.raises(InvalidStep):
        plan.cut_passed(101.9)
    plan = plan.cut_passed(102.0)
    assert plan.phase is Phase.DRAINING
    assert plan.old.phase is SetPhase.DRAINING and plan.new.phase is SetPhase.SERVING
    assert plan.serving().shard_count == 8
    plan = plan.old_drained()
    assert plan.phase is Phase.DONE and not plan.running and plan.old.phase is SetPhase.CLOSED
    assert plan.describe() == {"phase": "done", "old_count": 4, "new_count": 8, "cut_at": 102.0, "reason": None}


def test_abort_goes_back_to_the_old_set_until_the_cut_over_point():
    base = Reshard.plan(ShardSet.full(0, 16), 24).start()
    aborted = base.abort("shard 3 of the new set: Discord closed with 4013\n(invalid API version)")
    assert aborted.phase is Phase.ABORTED and aborted.serving().shard_count == 16
    assert aborted.new.phase is SetPhase.CLOSED and "\n" not in aborted.reason
    cutover = base.new_set_ready(now=10.0)
    assert cutover.abort("child crashed", now=11.0).phase is Phase.ABORTED
    with pytest.raises(InvalidStep, match="no going back"):
        cutover.abort("too late", now=cutover.cut_at)
    with pytest.raises(InvalidStep):
        cutover.cut_passed(cutover.cut_at).abort("after the cut")


def test_the_transition_table_is_closed_and_every_path_ends():
    for (phase, step), after in TRANSITIONS.items():
        assert shard_sets.next_phase(phase, step) is after
    for phase, step in itertools.product(Phase, Step):
        if (phase, step) not in TRANSITIONS:
            with pytest.raises(InvalidStep):
                shard_sets.next_phase(phase, step)
    # from IDLE, every path through the table reaches a final phase, which has no way out
    for phase in FINAL:
        assert not [key for key in TRANSITIONS if key[0] is phase]
    seen, todo = set(), [Phase.IDLE]
    while todo:
        phase = todo.pop()
        seen.add(phase)
        todo += [after for (p, _), after in TRANSITIONS.items() if p is phase and after not in seen]
    assert seen == set(Phase)


# -- refusals ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "multiple", "needle"),
    [
        (0, 1, "at least 1, not 0"),
        (-3, 1, "at least 1, not -3"),
        (4, 1, "already runs 4 shards"),
        (10, 4, "not a multiple of --shard-count-multiple 4 (Discord would close with 4010); use 12"),
    ],
)
def test_invalid_counts(target, multiple, needle):
    line = shard_sets.invalid_count(target, 4, multiple)
    assert needle in line and "\n" not in line


def test_valid_counts_and_rounding():
    assert shard_sets.invalid_count(8, 4) is None
    assert shard_sets.invalid_count(2, 4) is None  # fewer shards is allowed too
    assert shard_sets.invalid_count(16, 4, multiple=16) is None
    assert [shard_sets.round_up_to_multiple(n, 16) for n in (1, 16, 17)] == [16, 16, 32]
    with pytest.raises(ValueError):
        shard_sets.round_up_to_multiple(3, 0)


def test_budget_refusal():
    assert shard_sets.budget_refusal(8, 13, reserve=5) is None
    line = shard_sets.budget_refusal(8, 12, reserve=5)
    assert line == "not enough identify budget: 12 left, 8 new sessions need 13 (a reserve of 5 is kept)"
    assert "unknown" in shard_sets.budget_refusal(8, None)


def test_refusal_order_and_each_case():
    full = ShardSet.full(0, 4)

    def refused(*args, **kw):
        answer = shard_sets.refusal(*args, **kw)
        return None if answer is None else (answer.kind, str(answer))

    assert refused(8, full, remaining=1000) is None
    assert refused(4, full, remaining=0) == ("invalid", "the supervisor already runs 4 shards: nothing to do")
    running = Reshard.plan(full, 8).start()
    assert refused(16, full, remaining=1000, running=running) == (
        "running", "a reshard is already running (4 -> 8, preparing)"
    )
    done = running.new_set_ready(0.0).cut_passed(10.0).old_drained()
    assert refused(16, full, remaining=1000, running=done) is None
    part = ShardSet(0, 16, tuple(range(8)))
    assert refused(32, part, remaining=1000) == (
        "partial", "this supervisor runs only shards 0-7 of 16: resharding part of a bot is the cluster's job"
    )
    assert refused(8, full, remaining=10)[0] == "budget"
    assert "--shard-count-multiple" in refused(6, full, multiple=4, remaining=10)[1]


# -- routing ----------------------------------------------------------------------------------


def test_packet_routing_under_the_current_count():
    guild = (12345 << 22) | 7
    packet = {"op": 8, "d": {"guild_id": str(guild), "query": "", "limit": 0}}
    assert shard_sets.shard_of_packet(packet, 0, 8) == 12345 % 8
    assert shard_sets.shard_of_packet(packet, 3, 4) == 12345 % 4  # misaddressed: rerouted
    presence = {"op": 3, "d": {"status": "online"}}
    assert shard_sets.shard_of_packet(presence, 5, 8) == 5
    assert shard_sets.shard_of_packet(presence, 5, 4) is None  # shard 5 no longer exists
    assert shard_sets.guild_of_packet({"op": 8, "d": {"guild_id": True}}) is None
    assert shard_sets.guild_of_packet({"op": 8, "d": {"guild_id": "x"}}) is None
    assert shard_sets.shard_of_guild(None, 8) == 0


def test_auto_reshard_targets():
    assert shard_sets.auto_target(4, 4) is None and shard_sets.auto_target(8, 6) is None  # never fewer
    assert shard_sets.auto_target(4, 6) == 6
    assert shard_sets.auto_target(16, 17, multiple=16) == 32
    assert shard_sets.auto_target(32, 17, multiple=16) is None
    assert shard_sets.after_sharding_required(4, 6) == 6
    assert shard_sets.after_sharding_required(4, 4) == 8  # the recommendation lags: double
    assert shard_sets.after_sharding_required(16, 2, multiple=16) == 32


def test_queue_changes():
    assert shard_sets.queue_changes("gateway", 4, 6) == (["gateway:4", "gateway:5"], [])
    assert shard_sets.queue_changes("gw", 4, 2) == ([], ["gw:2", "gw:3"])
    assert shard_sets.queue_changes("gw", 4, 4) == ([], [])


# -- the handover -----------------------------------------------------------------------------


def test_the_handover_rule_and_headers():
    h = Handover(cut_at=100.0, overlap_s=1.0, old_count=4, new_count=8)
    # the old set publishes until it is caught up (its probe at T answered), whatever it read when
    assert h.publishes(Role.OLD, 99.99) and h.publishes(Role.OLD, 104.0)
    assert not h.publishes(Role.OLD, 99.0, caught_up=True)
    assert not h.publishes(Role.NEW, 98.99) and h.publishes(Role.NEW, 99.0)
    assert h.headers(Role.OLD, 98.0) == {OVERLAP_HEADER: 4} and h.headers(Role.OLD, 103.5) == {OVERLAP_HEADER: 4}
    assert h.headers(Role.OLD, 97.99) == {}
    assert h.headers(Role.NEW, 99.0) == {OVERLAP_HEADER: 8}
    assert h.headers(Role.NEW, 100.99) == {OVERLAP_HEADER: 8} and h.headers(Role.NEW, 101.0) == {}
    # while the old set is not known to be caught up, the new set's copies stay marked (for a bound)
    assert h.headers(Role.NEW, 130.0, old_done=False) == {OVERLAP_HEADER: 8}
    assert h.headers(Role.NEW, 100.0 + MARK_LIMIT_S, old_done=False) == {}
    assert not h.settled(Role.NEW, 130.0, old_done=False) and h.settled(Role.NEW, 101.0, old_done=True)
    assert h.settled(Role.NEW, 100.0 + MARK_LIMIT_S, old_done=False)
    assert not h.settled(Role.OLD, 1e9)


guild_ids = st.integers(min_value=0, max_value=(1 << 63) - 1)


@settings(max_examples=400, deadline=None)
@given(
    old_count=st.integers(1, 64),
    new_count=st.integers(1, 64),
    cut_at=st.floats(0, 1000, allow_nan=False),
    overlap=st.floats(0.05, 3.0),
    probe_latency=st.floats(0.0, 0.45),  # share of the overlap: the old probe's way to Discord
    new_probe_after=st.floats(0.0, 30.0),  # the new set's own probe, after the old one's
    events=st.lists(
        st.tuples(
            st.one_of(st.none(), guild_ids),  # the guild (None: a DM)
            st.floats(-50, 1050, allow_nan=False),  # when Discord sent it (to both sets)
            st.floats(0.0, 60.0),  # how late the old set read it: any lag
            st.floats(0.0, 0.5),  # how late the new set read it, as a share of the overlap
        ),
        max_size=60,
    ),
)
def test_every_event_is_published_at_least_once_and_every_duplicate_is_marked(
    old_count, new_count, cut_at, overlap, probe_latency, new_probe_after, events
):
    """Discord sends each event to the owner under each count. The old set reads with any lag
    (issue 20, defect 1); its probe, written at ``T``, reaches Discord a little later: what
    Discord sent before that comes before the ACK (the old set publishes it), what it sent
    after comes after (dropped). The new set reads within half the overlap and stops marking
    only after its own probe, sent once the old set is caught up. None is lost; a duplicate
    is marked on both copies; an unmarked copy is never a duplicate."""
    old_set, new_set = ShardSet.full(0, old_count), ShardSet.full(1, new_count)
    plan = Reshard.plan(old_set, new_count, overlap_s=overlap).start()
    plan = plan.new_set_ready(now=cut_at - shard_sets.DEFAULT_CUT_LEAD_S)
    rule = plan.handover()
    old_mark = cut_at + probe_latency * overlap  # Discord's time of the old probe
    new_mark = old_mark + new_probe_after  # ... and of the new set's own probe
    for guild, sent_at, old_lag, new_lag in events:
        copies = []
        old_at, new_at = sent_at + old_lag, sent_at + new_lag * overlap
        assert 0 <= old_set.owner(guild) < old_count and 0 <= new_set.owner(guild) < new_count
        if rule.publishes(Role.OLD, old_at, caught_up=sent_at >= old_mark):
            copies.append(rule.headers(Role.OLD, old_at))
        if rule.publishes(Role.NEW, new_at):
            copies.append(rule.headers(Role.NEW, new_at, old_done=sent_at >= new_mark))
        assert copies, f"lost: sent at {sent_at}, read at {old_at} (old) and {new_at} (new), cut {cut_at}"
        if len(copies) == 2:
            assert all(OVERLAP_HEADER in headers for headers in copies), (sent_at, old_at, new_at)


@settings(max_examples=100, deadline=None)
@given(
    old_count=st.integers(1, 64),
    new_count=st.integers(1, 64),
    guild=guild_ids,
    addressed=st.integers(0, 63),
)
def test_a_guild_packet_always_reaches_the_owner_under_the_serving_count(old_count, new_count, guild, addressed):
    plan = Reshard.plan(ShardSet.full(0, old_count), new_count).start().new_set_ready(0.0)
    packet = {"op": 8, "d": {"guild_id": str(guild)}}
    for state in (plan, plan.cut_passed(10.0)):
        count = state.serving().shard_count
        target = shard_sets.shard_of_packet(packet, addressed, count)
        assert target == state.serving().owner(guild) == (guild >> 22) % count


def test_advance_gives_the_orders_of_each_step():
    from supervisor.reshard.shard_sets import Order, advance, next_due

    plan = Reshard.plan(ShardSet.full(0, 4), 8).start()
    assert advance(plan, 1.0, new_ready=7, failure=None, old_ended=False) == (plan, [])
    assert next_due(plan, False) is None  # only a READY or a failure moves it
    plan, orders = advance(plan, 2.0, new_ready=8, failure=None, old_ended=False)
    assert plan.phase is Phase.CUTOVER and plan.cut_at == 5.0 and orders == [Order.CUTOVER]
    assert next_due(plan, False) == 5.0
    assert advance(plan, 4.9, new_ready=8, failure=None, old_ended=False) == (plan, [])
    plan, orders = advance(plan, 5.0, new_ready=8, failure=None, old_ended=False)
    assert plan.phase is Phase.DRAINING and orders == [Order.ACTIVATE] and next_due(plan, False) == 6.0
    # after T a failure is no longer the reshard's: no abort
    assert advance(plan, 5.5, new_ready=7, failure="late", old_ended=False) == (plan, [])
    assert advance(plan, 6.0, new_ready=8, failure=None, old_ended=False) == (plan, [Order.END_OLD])
    assert advance(plan, 7.0, new_ready=8, failure=None, old_ended=True) == (plan, [])
    assert next_due(plan, True) is None


def test_advance_aborts_before_t_and_takes_t_back_once_told():
    from supervisor.reshard.shard_sets import Order, advance

    preparing = Reshard.plan(ShardSet.full(0, 4), 8).start()
    aborted, orders = advance(preparing, 1.0, new_ready=3, failure="new shard 1: 4011", old_ended=False)
    assert aborted.phase is Phase.ABORTED and aborted.reason == "new shard 1: 4011" and orders == [Order.END_NEW]
    told, _ = advance(preparing, 2.0, new_ready=8, failure=None, old_ended=False)
    aborted, orders = advance(told, 4.0, new_ready=8, failure="child exited", old_ended=False)
    assert aborted.phase is Phase.ABORTED and orders == [Order.CANCEL, Order.END_NEW]
