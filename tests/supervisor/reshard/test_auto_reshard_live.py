"""``--auto-reshard`` with a real supervisor, the reshardable simulator and RabbitMQ.

* Discord's recommended count rises (``set_recommended_shards``): within one check interval
  the supervisor reshards 4 -> 8 by itself, 0 events lost, identifies exactly 4 + 8, and
  ``/metrics`` counts the reshard.
* A 4011 on an old shard: that shard is held down, its group's other shard resumes at once, and
  the supervisor reshards to twice the count (Discord still recommends 4) instead of halting;
  the new set publishes the closed shard's guilds at once (0 lost).
* A 4011 whose reshard is refused (the identify budget cannot cover it): the supervisor halts
  with the 4011 exit code, as without the flag.
"""

from __future__ import annotations

import json
import signal
import time
import urllib.request

from shard_worker import exit_codes, spectacles
from shard_worker.reshard import shard_of_guild
from supervisor.simulator import SimulatorThread
from tests.helpers import TOKEN, free_port, wait_for
from tests.supervisor.reshard_watch import SessionWatcher
from tests.supervisor.supervisor_process import SupervisorProcess

AUTO = ("--auto-reshard", "--auto-reshard-interval", "5s")


def status(sup: SupervisorProcess) -> dict:
    done = sup.cli("status", "--json")
    return json.loads(done.stdout) if done.returncode == 0 else {}


def reshard_done(sup: SupervisorProcess, count: int) -> bool:
    now = status(sup)
    return now.get("shard_count") == count and (now.get("reshard") or {}).get("phase") == "done"


def streaming(seed: int) -> SimulatorThread:
    """4 shards that can be resharded, a live MESSAGE_CREATE stream."""
    return SimulatorThread(
        token=TOKEN, shard_count=4, reshardable=True, max_concurrency=4, guilds_per_shard=4,
        events_per_shard=-1, rate=10, heartbeat_interval_ms=20000, seed=seed,
    )  # fmt: skip


def bound_queue(rabbit, group: str) -> str:
    """The MESSAGE_CREATE queue, bound; the shard queues of up to 8 shards tracked."""
    queue = spectacles.queue_name(group, "MESSAGE_CREATE", "test")
    rabbit.bind(group, queue, "MESSAGE_CREATE")
    rabbit.track(*(spectacles.shard_queue(group, i) for i in range(8)))
    return queue


def published_ids(rabbit, queue: str) -> set[str]:
    return {json.loads(body)["id"] for _, _, body in rabbit.get_all(queue)}


def test_a_higher_recommendation_reshards_by_itself(amqp_url, rabbit, group, tmp_path):
    port = free_port()
    with streaming(seed=5) as sim:
        queue = bound_queue(rabbit, group)
        state = tmp_path / "state"
        sup = SupervisorProcess(
            sim, amqp_url, group, state, "--shards-per-process", "4", "--metrics-addr", f"127.0.0.1:{port}", *AUTO
        )
        watcher = SessionWatcher(sim)
        try:
            sim.wait_until(lambda s: s["ready"] == {0, 1, 2, 3}, timeout=60)
            # the first check comes once every shard is READY: Discord recommends 4, stay
            wait_for(lambda: "Discord recommends 4 shards; staying at 4" in sup.output(), 30, what="the first check")
            assert "auto-reshard: on, every 5s" in sup.cli("status").stdout
            sim.call("set_recommended_shards", 8)
            wait_for(lambda: reshard_done(sup, 8), 120, what="the reshard 4 -> 8")
            assert "auto-reshard: Discord recommends 8 shards, 4 run: resharding 4 -> 8" in sup.output()
            snap = sim.snapshot()
            assert snap["violations"] == []
            assert len([i for i in snap["identifies"] if i["accepted"]]) == 4 + 8
            assert snap["ready_sets"] == {8: list(range(8))}
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
                text = response.read().decode()
            assert 'spectacles_reshards_total{outcome="done"} 1.0' in text
            assert "spectacles_shards_configured 8.0" in text
            assert 'spectacles_reshard_phase{phase="done"} 1.0' in text
            # the next checks see 8 recommended and 8 running: no second reshard
            wait_for(lambda: "Discord recommends 8 shards; staying at 8" in sup.output(), 30, what="a later check")
            wait_for(lambda: rabbit.depth(queue) > 0, 10)
            time.sleep(1.5)  # the last events the sessions were sent are published
            due = watcher.stop()
            sup.signal(signal.SIGTERM)
            assert sup.wait(20) == 0
        finally:
            watcher.stop()
            sup.stop()
    lost = due - published_ids(rabbit, queue)
    assert len(due) > 200 and lost == set(), f"{len(lost)} lost of {len(due)}"
    print(f"\nauto-reshard 4 -> 8 on Discord's recommendation: {len(due)} logical events, 0 lost")


def test_a_4011_reshards_instead_of_halting(amqp_url, rabbit, group, tmp_path):
    with streaming(seed=6) as sim:
        queue = bound_queue(rabbit, group)
        state = tmp_path / "state"
        sup = SupervisorProcess(sim, amqp_url, group, state, "--shards-per-process", "2", *AUTO)
        watcher = SessionWatcher(sim)
        try:
            sim.wait_until(lambda s: s["ready"] == {0, 1, 2, 3}, timeout=60)
            wait_for(lambda: "staying at 4" in sup.output(), 30, what="the first check")
            sim.call("sharding_required", 1)
            # shard 0 (same process as 1) resumes at once; 1 is held and shown so
            wait_for(lambda: any(r["result"] == "ok" and r["shard"] == 0 for r in sim.snapshot()["resumes"]), 30,
                     what="shard 0 resumed")  # fmt: skip
            wait_for(lambda: reshard_done(sup, 8), 120, what="the reshard 4 -> 8")
            out = sup.output()
            assert "shard 1 closed with 4011 (sharding required); --auto-reshard: holding it down" in out
            assert "shard 1 was closed with 4011 (sharding required); Discord recommends 4: resharding 4 -> 8" in out
            assert sup.proc.poll() is None
            snap = sim.snapshot()
            assert snap["violations"] == []
            # shard 1 never identified again under 4: its 4011 was not met twice
            assert len([i for i in snap["identifies"] if i["accepted"]]) == 4 + 8
            assert snap["ready_sets"] == {8: list(range(8))}
            time.sleep(1.5)
            due = watcher.stop()
            sup.signal(signal.SIGTERM)
            assert sup.wait(20) == 0
        finally:
            watcher.stop()
            sup.stop()
    lost = due - published_ids(rabbit, queue)
    # every event a session was sent is published: the closed shard's guilds too, by the new
    # set at once (their old shard will never publish them), not held for the cut-over
    assert len(due) > 200 and lost == set(), {shard_of_guild(watcher.guilds[i], 4) for i in lost}
    assert "the guilds of old shards [1] are published at once" in out
    print(f"\nauto-reshard 4 -> 8 after a 4011 on shard 1: {len(due)} logical events, 0 lost")


def test_a_4011_whose_reshard_is_refused_halts_as_without_the_flag(amqp_url, group, tmp_path):
    with SimulatorThread(
        token=TOKEN, shard_count=4, reshardable=True, max_concurrency=4, session_start_remaining=10,
        heartbeat_interval_ms=20000,
    ) as sim:  # fmt: skip
        sup = SupervisorProcess(sim, amqp_url, group, tmp_path / "state", "--shards-per-process", "2", *AUTO)
        try:
            sim.wait_until(lambda s: s["ready"] == {0, 1, 2, 3}, timeout=60)
            wait_for(lambda: "staying at 4" in sup.output(), 30, what="the first check")
            sim.call("sharding_required", 2)
            assert sup.wait(30) == exit_codes.for_fatal_close(4011)
            out = sup.output()
            assert "auto-reshard: the reshard to 8 was refused: " in out and "identif" in out
            assert "fatal: no reshard replaces the shards closed with 4011 (2)" in out
        finally:
            sup.stop()
