"""One shard's cut-over in a live reshard (``shard_worker.reshard``), pure: what is held back,
dropped, published and marked, by the handover rule of ``supervisor/reshard/shard_sets.py``."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shard_worker import outbound
from shard_worker.reshard import OVERLAP_HEADER, Handover, Role, ShardCutover
from supervisor.reshard import shard_sets

RULE = Handover(cut_at=100.0, overlap_s=1.0, old_count=4, new_count=8)


def recorder():
    out: list = []
    return out, lambda session, t, seq, body, headers: out.append((seq, headers))


def test_the_rule_is_the_one_shard_sets_exports():
    assert shard_sets.Handover is Handover and shard_sets.Role is Role
    assert shard_sets.OVERLAP_HEADER == OVERLAP_HEADER == "x-spectacles-overlap"


def test_new_set_holds_until_told_then_publishes_from_t_minus_overlap_marked_in_its_window():
    out, publish = recorder()
    cut = ShardCutover(Role.NEW, publish)
    times = [95.0, 98.9, 99.0, 99.5]  # READY and GUILD_CREATEs early, then the stream
    for seq, at in enumerate(times):
        assert cut.offer(at, "s", "MESSAGE_CREATE", seq, b"{}") is False
    assert out == [] and cut.held == 4 and cut.holding
    cut.cut(RULE)
    assert out == [(2, {OVERLAP_HEADER: 8}), (3, {OVERLAP_HEADER: 8})]
    assert cut.dropped == 2 and cut.held == 0 and cut.marked == 2
    assert cut.offer(100.5, "s", "T", 4, b"{}") is False  # still in the window: marked
    # past the window, but the old set is not known to be caught up: still marked
    assert cut.offer(101.0, "s", "T", 5, b"{}") is False
    cut.old_done = True  # every old shard caught up, and this shard's own probe answered
    assert cut.offer(101.2, "s", "T", 6, b"{}") is True  # settled: the runner publishes plainly now
    assert out[-3:] == [(4, {OVERLAP_HEADER: 8}), (5, {OVERLAP_HEADER: 8}), (6, {})]
    assert cut.counters() == {"held": 0, "dropped": 2, "marked": 4, "published": 5}


def test_old_set_publishes_until_caught_up_marks_from_its_window_and_drops_after():
    out, publish = recorder()
    cut = ShardCutover(Role.OLD, publish, handover=RULE)
    # read late (after T) is not dropped: Discord may have sent it long before T
    for seq, at in enumerate([97.9, 98.0, 99.99, 100.0, 103.0]):
        assert cut.offer(at, "s", "T", seq, b"{}") is False  # never settled
    cut.catch_up()  # the probe sent at T is answered: everything sent before T was read
    for seq, at in enumerate([103.1, 130.0], start=5):
        assert cut.offer(at, "s", "T", seq, b"{}") is False
    assert out == [(0, {}), (1, {OVERLAP_HEADER: 4}), (2, {OVERLAP_HEADER: 4}), (3, {OVERLAP_HEADER: 4}), (4, {OVERLAP_HEADER: 4})]
    assert cut.dropped == 2
    with pytest.raises(ValueError):
        ShardCutover(Role.OLD, publish)


def test_held_dispatches_older_than_hold_s_are_dropped_while_holding():
    out, publish = recorder()
    cut = ShardCutover(Role.NEW, publish, hold_s=10.0)
    for at in range(100):
        cut.offer(float(at), "s", "T", at, b"{}")
    assert cut.held == 11 and cut.dropped == 89  # memory stays bounded while the set identifies


@given(
    sent=st.lists(st.floats(90, 110, allow_nan=False), max_size=60),
    old_lag=st.floats(0.0, 10.0),  # the old set reads late: any lag
    new_lag=st.floats(0.0, 0.5),  # the new set within half the overlap
    probe_latency=st.floats(0.0, 0.45),  # the old probe's way to Discord, written at T
    new_probe_after=st.floats(0.0, 5.0),  # the new set's probe, after the old set caught up
    told=st.floats(90, 110, allow_nan=False),
)
def test_both_sets_together_lose_nothing_and_mark_every_duplicate(sent, old_lag, new_lag, probe_latency, new_probe_after, told):
    """Each logical event is sent to both sets at ``sent``; each connection reads in order
    with its own lag. The old set probes at T and catches up at the ACK (read after all it
    was sent before Discord got the probe); the new set, told at any time (it holds back),
    probes once the old set is caught up and stops marking at its own ACK."""
    old_out, old_publish = recorder()
    new_out, new_publish = recorder()
    old = ShardCutover(Role.OLD, old_publish, handover=RULE)
    new = ShardCutover(Role.NEW, new_publish, hold_s=1e9)
    old_mark = RULE.cut_at + probe_latency  # Discord's time of the old probe
    old_ack = old_mark + old_lag  # read by the old set
    new_ack = old_ack + new_probe_after + new_lag  # the new probe, sent after that, answered
    stream = [(at + old_lag, 1, "old", i) for i, at in enumerate(sent) if at < old_mark]
    stream += [(at + old_lag, 2, "old-late", i) for i, at in enumerate(sent) if at >= old_mark]
    stream += [(at + new_lag, 1, "new", i) for i, at in enumerate(sent)]
    stream += [(old_ack, 1.5, "old-ack", -1), (new_ack, 0, "new-ack", -1), (told, -1, "told", -1)]
    for at, _, what, i in sorted(stream):
        if what == "told":
            new.cut(RULE)
        elif what == "old-ack":
            old.catch_up()
        elif what == "new-ack":
            new.old_done = True
        elif what.startswith("old"):
            assert old.caught_up == (what == "old-late")  # a websocket is ordered
            old.offer(at, None, "T", i, b"")
        else:
            new.offer(at, None, "T", i, b"")
    if new.holding:
        new.cut(RULE)
    copies: dict[int, list[dict]] = {}
    for seq, headers in old_out + new_out:
        copies.setdefault(seq, []).append(headers)
    assert set(copies) == set(range(len(sent)))  # 0 lost
    for headers in copies.values():
        assert len(headers) <= 2
        if len(headers) == 2:
            assert all(OVERLAP_HEADER in h for h in headers)  # every duplicate is marked


def test_late_orders():
    assert not RULE.late(Role.OLD, 97.99) and RULE.late(Role.OLD, 98.0)
    assert not RULE.late(Role.NEW, 100.5, hold_s=10.0) and RULE.late(Role.NEW, 109.0, hold_s=10.0)
    assert Handover.from_dict({**RULE.to_dict(), "role": "new"}) == RULE


def test_shard_packets_are_routed_by_guild_id_under_the_count():
    guild = 5 << 22  # shard 5 of 8, shard 1 of 4
    body = json.dumps({"op": 8, "d": {"guild_id": str(guild), "query": "", "limit": 0}}).encode()
    assert [r.shard_id for r in outbound.parse_shard_packet_routed(body, 0, 8)] == [5]
    assert [r.shard_id for r in outbound.parse_shard_packet_routed(body, 0, 4)] == [1]
    presence = json.dumps({"op": 3, "d": {"since": None, "activities": [], "status": "idle", "afk": False}}).encode()
    assert [r.shard_id for r in outbound.parse_shard_packet_routed(presence, 3, 4)] == [3]
    with pytest.raises(outbound.Rejected) as refused:
        outbound.parse_shard_packet_routed(presence, 6, 4)  # a queue of an id that no longer exists
    assert refused.value.reason == "no_such_shard"


def test_an_aborted_reshard_gives_the_old_set_plain_publishing_back():
    from shard_worker.config import WorkerConfig
    from shard_worker.worker import Worker

    async def main() -> None:  # the cut-over schedules the probe at T on the worker's loop
        worker = Worker(WorkerConfig([0, 1], 2, "ws://x", token="t"))
        assert worker.cutover(Role.OLD, Handover(time.monotonic() + 0.05, 1.0, 2, 4)) == 2
        assert all(r.cutover is not None for r in worker.runners.values())
        assert worker.cancel_cutover() == 2
        assert all(r.cutover is None for r in worker.runners.values()) and worker.reshard_counters() is None
        await asyncio.sleep(0.1)  # T passes: no probe for a cancelled cut-over
        assert not any(r._probing for r in worker.runners.values())

    asyncio.run(main())


def test_a_new_set_worker_holds_from_the_start():
    from shard_worker.config import WorkerConfig
    from shard_worker.worker import Worker

    worker = Worker(WorkerConfig([0, 1], 4, "ws://x", token="t", hold_events=True, standby=True))
    assert all(r.cutover is not None and r.cutover.holding for r in worker.runners.values())
    assert worker.bridge.standby and worker.reshard_counters() == {"held": 0, "dropped": 0, "marked": 0, "published": 0}
    assert worker.cancel_cutover() == 0  # a new set's shards are not cancelled: it is stopped instead


def test_events_of_an_orphaned_old_shard_are_published_at_once_unmarked():
    """Old shard 1 was closed with 4011: the old set never publishes its guilds' events, so the
    new set publishes them as they come (held ones for other guilds wait for the rule)."""
    from shard_worker.config import WorkerConfig
    from shard_worker.reshard import shard_of_guild
    from shard_worker.worker import Worker
    from supervisor.simulator.payloads import guild_ids_for_shard

    orphan_guild, other_guild = guild_ids_for_shard(1, 4, 1)[0], guild_ids_for_shard(2, 4, 1)[0]
    assert shard_of_guild(orphan_guild, 4) == 1
    worker = Worker(WorkerConfig(shard_ids=[0, 1], shard_count=8, gateway_url="ws://x", token="t", hold_events=True))
    assert worker.set_orphans(4, [1]) == 2
    cut = worker.cutovers[0]
    published: list = []
    cut._publish = lambda session, t, seq, body, headers: published.append((seq, headers))
    orphan = json.dumps({"guild_id": str(orphan_guild), "id": "1"}).encode()
    other = json.dumps({"guild_id": str(other_guild), "id": "2"}).encode()
    assert cut.offer(90.0, "s", "MESSAGE_CREATE", 1, orphan) is False
    assert cut.offer(90.1, "s", "MESSAGE_CREATE", 2, other) is False
    assert cut.offer(90.2, "s", "MESSAGE_CREATE", 3, b"not json") is False  # no guild known: the rule
    assert published == [(1, {})] and cut.held == 2
    cut.cut(RULE)  # the held ones came before T - overlap: dropped, as the old set has them
    assert published == [(1, {})] and cut.dropped == 2
    assert cut.offer(99.5, "s", "MESSAGE_CREATE", 4, orphan) is False  # in the window: still unmarked
    assert published[-1] == (4, {})
