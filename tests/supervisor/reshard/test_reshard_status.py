"""``status`` shows a reshard once the supervisor reports one (and nothing otherwise)."""

from __future__ import annotations

from supervisor.cli import format_status, reshard_line
from supervisor.reshard.shard_sets import Reshard, ShardSet

STATUS = {
    "shard_count": 4,
    "shards_label": "0-3",
    "uptime": 12.0,
    "groups": [{"group": 0, "shards": "0-3", "pid": 10, "restarts": 0, "rss": None, "cpu_percent": None}],
    "identify_budget_remaining": 990,
    "shards": [
        {"shard": s, "group": 0, "pid": 10, "state": "ready", "seq": 3, "latency_ms": 1.0, "published": 3,
         "reconnects": 0, "rss": None}
        for s in range(4)
    ],
}


def test_no_reshard_no_line():
    assert reshard_line({**STATUS, "reshard": None}) is None
    assert "reshard" not in format_status({**STATUS, "reshard": None})
    assert "reshard" not in format_status(STATUS)  # an older supervisor's answer


def test_a_running_and_an_aborted_reshard():
    plan = Reshard.plan(ShardSet.full(0, 4), 8).start()
    text = format_status({**STATUS, "reshard": plan.describe()})
    assert text.splitlines()[-1] == "reshard: 4 -> 8, preparing"
    running = {**STATUS, "reshard": {**plan.describe(), "new_ready": 3}}  # what the supervisor adds
    assert reshard_line(running) == "reshard: 4 -> 8, preparing, 3/8 new shards READY"
    with_eta = {**STATUS, "reshard": {**plan.describe(), "new_ready": 3, "eta_s": 9.6}}
    assert reshard_line(with_eta) == "reshard: 4 -> 8, preparing, 3/8 new shards READY, ETA 10 s"
    aborted = plan.abort("shard 2 of the new set: Discord closed with 4013")
    assert reshard_line({**STATUS, "reshard": aborted.describe()}) == (
        "reshard: 4 -> 8, aborted (shard 2 of the new set: Discord closed with 4013)"
    )


def test_draining_shows_the_old_shards_not_caught_up():
    plan = Reshard.plan(ShardSet.full(0, 4), 8).start().new_set_ready(0.0).cut_passed(3.0)
    behind = {**STATUS, "reshard": {**plan.describe(), "old_behind": [1, 2]}}
    assert reshard_line(behind) == "reshard: 4 -> 8, draining, old shards not caught up yet: 1-2"
    assert reshard_line({**STATUS, "reshard": {**plan.describe(), "old_behind": []}}) == "reshard: 4 -> 8, draining"
