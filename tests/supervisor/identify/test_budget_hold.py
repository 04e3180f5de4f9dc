"""``supervisor/identify/hold.py``: when identifies are held at the reserve, and the lines it says."""

from __future__ import annotations

from supervisor.identify.hold import BudgetHold, default_reserve
from supervisor.observe.health import readiness
from supervisor.observe.metrics import MetricsState, families


def test_the_default_reserve_is_one_full_restart():
    assert default_reserve(16) == 16
    assert default_reserve(2000) == 2000
    assert default_reserve(0) == 1


def test_held_only_while_a_shard_waits_and_the_budget_is_at_its_reserve():
    hold = BudgetHold(reserve=16)
    assert hold.update(waiting=0, remaining=16, spent=True, now=0.0) is None  # nobody waits
    assert hold.update(waiting=3, remaining=40, spent=False, now=1.0) is None
    line, loud = hold.update(waiting=3, remaining=16, spent=True, now=2.0, reset_in=3600.0)
    assert loud and hold.held and hold.since == 2.0
    assert "IDENTIFIES HELD" in line and "16 left, reserve 16" in line and "3 shard(s) wait" in line
    assert "resets it in 3600 s" in line
    # the same state again: nothing more is said (one loud line, not one per pass)
    assert hold.update(waiting=2, remaining=16, spent=True, now=3.0) is None
    line, loud = hold.update(waiting=2, remaining=1000, spent=False, now=62.0)
    assert not loud and line == "identifies no longer held (held 60 s)" and not hold.held
    assert hold.describe(1000) == {"held": False, "reserve": 16, "remaining": 1000}


def test_an_unknown_remaining_is_said_so():
    line, _ = BudgetHold(reserve=5).update(waiting=1, remaining=None, spent=True, now=0.0)
    assert "unknown left" in line and "resets" not in line


def test_readyz_and_metrics_say_identifies_are_held():
    state = MetricsState({0: [0, 1]})
    state.child_started(0, 7, 0.0)
    state.shard_reports(0, 7, {"0": {"state": "ready"}, "1": {"state": "identifying"}})
    state.set_supervisor(identify_budget_remaining=4, identify_budget_reserve=4, identify_held=True)
    status, body = readiness(state.snapshot())
    assert status == 503 and body["identify_held"] == {"remaining": 4, "reserve": 4}
    by_name = {f.name: f for f in families(state.snapshot())}
    assert by_name["spectacles_identify_held"].samples[0].value == 1.0
    assert by_name["spectacles_identify_budget_reserve"].samples[0].value == 4.0
    state.set_supervisor(identify_held=False)
    assert "identify_held" not in readiness(state.snapshot())[1]
    assert {f.name: f for f in families(state.snapshot())}["spectacles_identify_held"].samples[0].value == 0.0
