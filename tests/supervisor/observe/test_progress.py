"""The start's progress: the pure ETA from the identify gate, its line, and the arbiter's use."""

from __future__ import annotations

import io
import logging
import types

import pytest

from shard_worker.config import SavedSession, WorkerConfig
from supervisor.core.arbiter import Arbiter, ArbiterOptions
from supervisor.identify.gate import IdentifyGate
from supervisor.observe.progress import (
    LiveLine,
    estimate,
    format_elapsed,
    format_progress,
    gate_view,
)


def test_fresh_start_every_bucket_full_and_free():
    # 64 shards, max_concurrency 16: 4 identifies per bucket, one per 5 s
    p = estimate(0, 64, queued={b: 4 for b in range(16)}, free_at={}, interval=5.0, now=100.0)
    assert p.next_grant_in == 0.0
    assert p.eta == pytest.approx(15.0)  # grants at 0, 5, 10, 15 s
    assert p.to_identify == 64
    assert not p.done


def test_the_slowest_bucket_decides_and_the_soonest_grant_is_next():
    now = 1000.0
    p = estimate(
        37,
        64,
        queued={0: 2, 1: 1, 2: 0},
        free_at={0: now + 3.2, 1: now + 1.0, 2: now + 4.0, 3: now - 50.0},
        interval=5.0,
        now=now,
    )
    assert p.next_grant_in == pytest.approx(1.0)
    assert p.eta == pytest.approx(8.2)  # bucket 0: 3.2 s, then one interval more
    assert p.to_identify == 3
    assert format_progress(p) == "shards ready 37/64, next bucket in 1.0 s, ETA 8 s"


def test_expected_shards_count_for_the_eta_but_not_for_the_next_grant():
    p = estimate(0, 8, queued={0: 1}, free_at={0: 12.0}, interval=5.0, now=10.0, expected={0: 1, 1: 3})
    assert p.next_grant_in == pytest.approx(2.0)  # only a waiting request makes a next grant
    assert p.eta == pytest.approx(10.0)  # bucket 1: 3 shards from now, 0 + 5 + 10
    assert p.to_identify == 5


def test_a_past_free_time_means_now_and_settle_is_added():
    p = estimate(3, 4, queued={1: 1}, free_at={1: 0.0}, interval=5.0, now=50.0, settle=1.0)
    assert p.next_grant_in == 0.0
    assert p.eta == pytest.approx(1.0)


def test_a_spent_budget_holds_every_grant_until_the_reset():
    p = estimate(0, 4, queued={0: 2, 1: 2}, free_at={}, interval=5.0, now=0.0, hold_until=3600.0)
    assert p.next_grant_in == pytest.approx(3600.0)
    assert p.eta == pytest.approx(3605.0)
    assert "next bucket in 3600.0 s, ETA 3605 s" in format_progress(p)


def test_nothing_to_identify_no_eta():
    p = estimate(14, 16, queued={}, free_at={0: 5.0}, interval=5.0, now=10.0)
    assert (p.next_grant_in, p.eta, p.to_identify) == (None, None, 0)
    assert format_progress(p) == "shards ready 14/16, 2 connecting or resuming"
    done = estimate(16, 16, queued={}, free_at={}, interval=5.0, now=10.0)
    assert done.done and format_progress(done) == "shards ready 16/16"


def test_the_issue_example_line():
    now = 0.0
    p = estimate(37, 64, queued={0: 2, 1: 3}, free_at={0: 3.2, 1: 3.5}, interval=4.25, now=now)
    assert format_progress(p) == "shards ready 37/64, next bucket in 3.2 s, ETA 12 s"


def test_format_elapsed():
    assert format_elapsed(12.345) == "12.3 s"
    assert format_elapsed(185) == "3 min 05 s"


def test_gate_view_agrees_with_the_gate():
    gate = IdentifyGate(4, interval=5.0, lead=0.0)
    for shard in range(10):  # buckets 0, 1: 3 each; 2, 3: 2 each
        gate.request("child", shard)
    granted = gate.due(100.0)
    assert [g.shard_id for g in granted] == [0, 1, 2, 3]
    view = gate_view(gate, 101.0)
    assert view.queued == {0: 2, 1: 2, 2: 1, 3: 1}
    assert view.free_at == {b: 105.0 for b in range(4)}
    assert view.hold_until is None
    assert view.waiting_shards == frozenset(range(4, 10))
    p = estimate(4, 10, queued=view.queued, free_at=view.free_at, interval=gate.interval, now=101.0)
    assert p.next_grant_in == pytest.approx(gate.next_time(101.0) - 101.0)
    assert p.eta == pytest.approx(9.0)  # buckets 0 and 1: grants at 105 and 110
    # the gate's own future agrees (children that write each grant at its not_before):
    # the last grant happens at 110
    for grant in granted:
        gate.sent(grant.shard_id, grant.not_before)
    second = gate.due(105.0)
    for grant in second:
        gate.sent(grant.shard_id, grant.not_before)
    assert len(second) == 4 and len(gate.due(110.0)) == 2 and gate.waiting == 0


def test_gate_view_of_a_spent_budget():
    gate = IdentifyGate(1, interval=5.0, remaining=5, reset_at=500.0, reserve=5)
    gate.request("child", 0)
    view = gate_view(gate, 10.0)
    assert view.hold_until == 500.0
    p = estimate(0, 1, queued=view.queued, free_at=view.free_at, interval=5.0, now=10.0, hold_until=view.hold_until)
    assert p.next_grant_in == pytest.approx(490.0) == gate.next_time(10.0) - 10.0


def test_live_line_rewrites_in_place_and_log_lines_wipe_it():
    stream = io.StringIO()
    line = LiveLine(stream)
    line.show("shards ready 1/4")
    line.show("shards ready 2/4")
    # the cursor stays at the start: a child's line written meanwhile overwrites the live one
    assert stream.getvalue() == "\r\x1b[Kshards ready 1/4\r\r\x1b[Kshards ready 2/4\r"
    handler = logging.StreamHandler(stream)
    handler.addFilter(line.log_filter())
    logger = logging.getLogger("test.progress.live")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.warning("something happened")
    assert stream.getvalue().endswith("shards ready 2/4\r\r\x1b[Ksomething happened\n")
    assert not line.shown
    logger.warning("again")  # nothing shown: nothing to wipe
    assert stream.getvalue().endswith("happened\nagain\n")


# -- the arbiter's progress (no processes: fake children) ---------------------------------------


def make_arbiter(tmp_path, shards=8, per_group=4, max_concurrency=2, **options):
    groups = [
        WorkerConfig(list(range(a, min(a + per_group, shards))), shards, "ws://127.0.0.1:1", token="t" * 20,
                     max_concurrency=max_concurrency)
        for a in range(0, shards, per_group)
    ]  # fmt: skip
    return Arbiter(groups, ArbiterOptions(state_dir=str(tmp_path / "state"), **options))


def fake_child(ready=()):
    return types.SimpleNamespace(ready=set(ready))


def test_arbiter_progress_counts_shards_that_will_need_an_identify(tmp_path):
    arbiter = make_arbiter(tmp_path, live_progress=False)
    now = 1000.0
    p = arbiter.progress(now)
    # nothing asked yet: 8 shards expected, 4 per bucket, the first now
    assert (p.ready, p.total, p.to_identify) == (0, 8, 8)
    assert p.eta == pytest.approx(3 * arbiter.gate.interval + 1.0)
    # shards with a saved session resume: they need no grant
    arbiter.book.sessions[6] = arbiter.book.sessions[7] = SavedSession("s", 5, "ws://x")
    arbiter.gate.request(1, 0)
    arbiter.gate.request(1, 1)
    arbiter.groups[0].child = fake_child()
    p = arbiter.progress(now)
    assert p.to_identify == 6 and p.next_grant_in == 0.0
    grants = arbiter.gate.due(now)
    arbiter._granted.update(g.shard_id for g in grants)
    arbiter.groups[0].child = fake_child(ready={0})
    p = arbiter.progress(now + 1)
    assert (p.ready, p.to_identify) == (1, 4)  # 2, 3, 4, 5 left; 1 granted and on its way
    assert p.next_grant_in is None  # no request waits in the gate yet
    assert p.eta == pytest.approx(now + arbiter.gate.interval * 2 - (now + 1) + 1.0)


def test_arbiter_live_line_and_summary(tmp_path, monkeypatch, caplog):
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    arbiter = make_arbiter(tmp_path, shards=4, per_group=2)  # auto: StringIO is no terminal
    assert arbiter.live is None
    arbiter = make_arbiter(tmp_path, shards=4, per_group=2, live_progress=True)
    arbiter.groups[0].child = fake_child(ready={0, 1})
    arbiter._progress(arbiter.started_at + 2)
    assert "shards ready 2/4, next" not in stream.getvalue()  # nothing in the gate
    assert stream.getvalue().startswith("\r\x1b[Kshards ready 2/4, ETA ")
    arbiter.groups[1].child = fake_child(ready={2, 3})
    with caplog.at_level(logging.INFO, logger="supervisor.core.arbiter"):
        arbiter._progress(arbiter.started_at + 12.5)
    assert stream.getvalue().endswith("\r\x1b[K")  # the line is gone
    assert [r.getMessage() for r in caplog.records] == ["all 4 shards ready in 12.5 s"]
    caplog.clear()
    # a later outage and recovery: again the summary, "again after"
    arbiter.groups[1].child = fake_child(ready={2})
    arbiter._progress(arbiter.started_at + 100)
    arbiter.groups[1].child = fake_child(ready={2, 3})
    with caplog.at_level(logging.INFO, logger="supervisor.core.arbiter"):
        arbiter._progress(arbiter.started_at + 103)
    assert [r.getMessage() for r in caplog.records] == ["all 4 shards ready again after 3.0 s"]
