"""The orders a :class:`supervisor.reshard.run.ReshardRun` gives at each step, with stand-ins for
the children (only their ``send``, ``ready`` and stop fields are used): the plan's phases come
from ``shard_sets.Reshard``; this checks who is told what, and when."""

from __future__ import annotations

from dataclasses import dataclass, field

from shard_worker.config import WorkerConfig
from supervisor.reshard.run import DRAIN_S, ReshardRun, new_set_configs, preparing
from supervisor.reshard.shard_sets import Phase, Reshard, ShardSet


@dataclass
class StandIn:
    group: int
    shard_ids: list[int]
    ready: set[int] = field(default_factory=set)
    sent: list = field(default_factory=list)
    stopping_since: float | None = None
    label: str = "child"

    def send(self, event, data=None):
        self.sent.append((event, data))
        return True


def make(ready_new: bool = True):
    template = WorkerConfig([0, 1, 2, 3], 4, "ws://x", token="t")
    configs = new_set_configs(template, 8, 4)
    assert [c.shard_ids for c in configs] == [[0, 1, 2, 3], [4, 5, 6, 7]] and configs[0].shard_count == 8
    assert preparing(configs[0]).hold_events and preparing(configs[0]).standby and not configs[0].hold_events
    run = ReshardRun(configs, first_group=1)
    new = [StandIn(1, [0, 1, 2, 3]), StandIn(2, [4, 5, 6, 7])]
    run.children = {c.group: c for c in new}  # type: ignore[misc]
    if ready_new:
        for c in new:
            c.ready = set(c.shard_ids)
    old = [StandIn(0, [0, 1, 2, 3])]
    plan = Reshard.plan(ShardSet.full(0, 4), 8).start()
    return run, new, old, plan


def events(child):
    return [e for e, _ in child.sent]


def test_the_orders_in_order():
    run, new, old, plan = make(ready_new=False)
    assert run.step(plan, old, 10.0) == plan and old[0].sent == []  # not READY yet: nothing
    for c in new:
        c.ready = set(c.shard_ids)
    plan = run.step(plan, old, 11.0)
    assert plan.phase is Phase.CUTOVER and plan.cut_at == 14.0
    assert old[0].sent == [("cutover", {"role": "old", "cut_at": 14.0, "overlap_s": 1.0, "old_count": 4, "new_count": 8})]
    assert all(c.sent[0][1]["role"] == "new" for c in new)
    assert run.timeout(plan, 12.0) == 2.0
    plan = run.step(plan, old, 14.0)
    assert plan.phase is Phase.DRAINING and all(events(c) == ["cutover", "activate"] for c in new)
    assert events(old[0]) == ["cutover"]  # the old set publishes what came before T
    plan = run.step(plan, old, 14.0 + DRAIN_S)
    assert old[0].sent[-1] == ("stop", {"end_sessions": True}) and run.old_stopped


def test_a_failure_before_t_aborts_and_takes_the_cut_over_back():
    run, new, old, plan = make()
    plan = run.step(plan, old, 11.0)
    run.fail("child 2 of the new set exited (1)")
    plan = run.step(plan, old, 12.0)
    assert plan.phase is Phase.ABORTED and plan.reason == "child 2 of the new set exited (1)"
    assert events(old[0]) == ["cutover", "cutover_cancel"]
    assert all(c.sent[-1] == ("stop", {"end_sessions": True}) for c in new)


def test_a_failure_while_preparing_tells_the_old_set_nothing():
    run, new, old, plan = make(ready_new=False)
    run.fail("new shard 1 was closed by Discord with 4011")
    plan = run.step(plan, old, 5.0)
    assert plan.phase is Phase.ABORTED and old[0].sent == []


def test_after_t_there_is_no_abort():
    run, new, old, plan = make()
    plan = run.step(run.step(plan, old, 11.0), old, 14.0)
    run.fail("too late")
    assert run.step(plan, old, 14.5).phase is Phase.DRAINING


def test_the_new_set_is_told_once_every_old_shard_is_caught_up():
    # Issue 20, defect 1: the new set marks its copies until the old set cannot publish any more
    # (every old shard's probe at T answered), then probes itself and stops marking.
    template = WorkerConfig([0, 1, 2, 3], 4, "ws://x", token="t")
    run = ReshardRun(new_set_configs(template, 8, 4), first_group=1, old_shards=[0, 1, 2, 3])
    new = [StandIn(1, [0, 1, 2, 3]), StandIn(2, [4, 5, 6, 7])]
    run.children = {c.group: c for c in new}  # type: ignore[misc]
    for shard in (0, 1, 3):
        run.old_caught_up(shard)
    assert all("old_caught_up" not in events(c) for c in new)  # shard 2 still reads
    run.old_caught_up(2)
    run.old_caught_up(2)  # a second report (after a reconnect) tells nobody twice
    assert all(events(c) == ["old_caught_up"] for c in new)


def test_the_new_sets_answer_to_activate_is_recorded_and_logged(caplog):
    from shard_worker.ipc import Message

    run, new, old, plan = make()
    plan = run.step(run.step(plan, old, 11.0), old, 14.0)
    assert all(events(c)[-1] == "activate" for c in new)
    with caplog.at_level("INFO", logger="supervisor.reshard"):
        run.on_message(new[0], Message("activated", {"standby": False}), 14.1)
    assert run.activated == {1}
    assert "child of the new set consumes its queues now" in caplog.text
