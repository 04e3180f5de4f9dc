"""A live reshard end to end: a real supervisor process, the reshardable simulator (each guild's
events reach every session owning it under that session's count), RabbitMQ, a live stream, and
``spectacles-supervisor reshard --shard-count 8`` from 4 at max_concurrency 4.

Checked: the command prints its progress and returns 0; afterwards a SEND and a shard packet
with a ``guild_id`` (put in another id's queue) reach the guild's owner under the new count; 0 logical events lost (a MESSAGE_CREATE
is one logical event, unique by its id), every duplicate marked with ``x-spectacles-overlap`` on
both copies; identifies exactly 4 + 8 (one gate for both sets: no bucket broken); afterwards
only the new set is connected, the old sessions ended; the state dir holds 8 sessions of 8, and
a new ``start --shard-count 8`` resumes all of them. An abort (4011 on a new shard) leaves the old
set serving.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import psutil
import pytest

from shard_worker import spectacles
from shard_worker.reshard import OVERLAP_HEADER
from supervisor.simulator import SimulatorThread
from supervisor.simulator.payloads import guild_ids_for_shard
from tests.helpers import TOKEN, wait_for
from tests.supervisor.reshard_watch import SessionWatcher, ids_in, reshard_command, reshard_phase
from tests.supervisor.supervisor_process import SupervisorProcess


@pytest.mark.parametrize(
    ("old", "new", "concurrency", "per_process", "rate"),
    [(4, 8, 4, 4, 20), (16, 24, 8, 8, 4), (8, 4, 4, 4, 10)],
    ids=["4-to-8", "16-to-24", "8-to-4"],
)
def test_reshard_under_a_live_stream(amqp_url, rabbit, group, tmp_path, old, new, concurrency, per_process, rate):
    with SimulatorThread(
        token=TOKEN, shard_count=old, reshardable=True, max_concurrency=concurrency, guilds_per_shard=4,
        events_per_shard=-1, rate=rate, heartbeat_interval_ms=20000, seed=11,
    ) as sim:  # fmt: skip
        queues = {t: spectacles.queue_name(group, t, "test") for t in ("MESSAGE_CREATE", "READY", "GUILD_CREATE")}
        for t, queue in queues.items():
            rabbit.bind(group, queue, t)
        rabbit.track(spectacles.send_queue(group), *(spectacles.shard_queue(group, i) for i in range(max(old, new))))
        state = tmp_path / "state"
        sup = SupervisorProcess(sim, amqp_url, group, state, "--shards-per-process", str(per_process))
        try:
            sim.wait_until(lambda s: s["ready"] == set(range(old)), timeout=60)
            wait_for(lambda: sup.cli("status", "--json").returncode == 0, 10)

            # what the old sessions received, read while they exist (ended sessions are forgotten)
            watcher = SessionWatcher(sim, (old,))
            started = time.monotonic()
            done = subprocess.run(
                [sys.executable, "-m", "supervisor", "reshard", "--shard-count", str(new), "--state-dir", str(state)],
                capture_output=True, text=True, timeout=150,
            )  # fmt: skip
            took = time.monotonic() - started
            old_ids = watcher.stop()
            assert done.returncode == 0, done.stdout + done.stderr + sup.output()[-3000:]
            lines = done.stdout.splitlines()
            assert lines[0].startswith(f"reshard {old} -> {new} started") and lines[-1] == f"reshard {old} -> {new}: done"
            assert any("new shards READY" in line for line in lines)
            if new > concurrency:  # identifies wait for a second bucket round: the gate's estimate shows
                assert any("new shards READY, ETA " in line for line in lines)

            snap = sim.snapshot()
            assert snap["violations"] == []
            assert len([i for i in snap["identifies"] if i["accepted"]]) == old + new
            assert snap["ready_sets"] == {new: list(range(new))}  # only the new set is connected
            status = json.loads(sup.cli("status", "--json").stdout)
            if new < old:  # the queues of the ids gone are drained by the first group, and named
                assert f"the queues {group}:{new}, " in sup.output() and "delete them once empty" in sup.output()
            assert status["shard_count"] == new and status["reshard"]["phase"] == "done"
            # outbound after the reshard: SEND and a shard packet put in an old id's queue reach
            # the guild's owner under 8 shards (5 and 6 exist only in the new set)
            guild5, guild6 = guild_ids_for_shard(new - 3, new, 1)[0], guild_ids_for_shard(new - 2, new, 1)[0]
            members = {"op": 8, "d": {"guild_id": str(guild5), "query": "", "limit": 0}}
            rabbit.wait_consumed(spectacles.send_queue(group), spectacles.shard_queue(group, 1))
            rabbit.publish(group, "SEND", json.dumps({"guild_id": str(guild5), "packet": members}).encode())
            voice = {"op": 4, "d": {"guild_id": str(guild6), "channel_id": None, "self_mute": False, "self_deaf": False}}
            rabbit.publish(group, "1", json.dumps(voice).encode())
            sent = sim.wait_until(
                lambda s: any(r["op"] == 8 and r["shard"] == new - 3 for r in s["sent"])
                and any(r["op"] == 4 and r["shard"] == new - 2 for r in s["sent"]),
                timeout=20,
            )["sent"]
            assert not any(r["op"] == 4 and r["shard"] == 1 for r in sent)
            new_ids: set[str] = set()
            for state_ in snap["sets"][new].values():
                new_ids |= ids_in(sim, state_["session_id"])
            time.sleep(1.0)  # what the new sessions were sent has been read and published
            sup.signal(signal.SIGTERM)
            assert sup.wait(20) == 0
        finally:
            sup.stop()
        saved = json.loads((state / "sessions.json").read_text())
        # a new start with the new count resumes every new session: no identify
        again = SupervisorProcess(sim, amqp_url, group, state, "--shards-per-process", str(per_process), "--shard-count", str(new))
        try:
            sim.wait_until(lambda s: s["ready_sets"].get(new) == list(range(new)), timeout=60)
            snap = sim.snapshot()
            assert len([i for i in snap["identifies"] if i["accepted"]]) == old + new
            assert len([r for r in snap["resumes"] if r["result"] == "ok"]) == new
            again.signal(signal.SIGTERM)
            assert again.wait(20) == 0
        finally:
            again.stop()

    copies: dict[str, list[dict]] = {}
    for _, props, body in rabbit.get_all(queues["MESSAGE_CREATE"]):
        copies.setdefault(json.loads(body)["id"], []).append(props.headers or {})
    due = old_ids | new_ids
    lost = due - set(copies)
    duplicates = {key: c for key, c in copies.items() if len(c) > 1}
    assert len(due) > 300 and lost == set(), f"{len(lost)} lost of {len(due)}"
    assert all(len(c) == 2 and sorted(h.get(OVERLAP_HEADER) for h in c) == sorted([old, new]) for c in duplicates.values())
    # the new set's READYs and GUILD_CREATEs are not published: only the old set's
    assert len(rabbit.get_all(queues["READY"])) == old
    assert len(rabbit.get_all(queues["GUILD_CREATE"])) == 4 * old
    assert saved["shard_count"] == new and len(saved["sessions"]) == new
    print(
        f"\nreshard {old} -> {new}: command returned in {took:.1f} s; {len(due)} logical events, 0 lost, "
        f"{len(duplicates)} published twice (all marked); identifies {old} + {new}"
    )


def test_a_fatal_close_of_a_new_shard_aborts_and_the_old_set_keeps_serving(amqp_url, rabbit, group, tmp_path):
    """4011 on a new shard while the new set prepares: the reshard aborts before any cut-over
    order, the new sessions end, the old set never stopped; ``reshard`` exits 1 with the reason.
    The state dir still holds the old 4 sessions."""
    with SimulatorThread(
        token=TOKEN, shard_count=4, reshardable=True, max_concurrency=4, events_per_shard=-1, rate=10,
        heartbeat_interval_ms=20000,
    ) as sim:  # fmt: skip
        rabbit.bind(group, spectacles.queue_name(group, "MESSAGE_CREATE", "test"), "MESSAGE_CREATE")
        state = tmp_path / "state"
        sup = SupervisorProcess(sim, amqp_url, group, state, "--shards-per-process", "4")
        try:
            sim.wait_until(lambda s: s["ready"] == {0, 1, 2, 3}, timeout=40)
            wait_for(lambda: sup.cli("status", "--json").returncode == 0, 10)
            command = reshard_command(state, 8)
            # the first bucket round of the new set (0-3) is READY, the second (4-7) is not yet
            sim.wait_until(lambda s: 1 in s["ready_sets"].get(8, []), timeout=40)
            sim.call("sharding_required", 1, count=8)
            out, err = command.communicate(timeout=60)
            assert command.returncode == 1, out + err
            assert "reshard aborted: new shard 1 was closed by Discord with 4011" in err
            assert "the old set keeps serving" in err
            status = json.loads(sup.cli("status", "--json").stdout)
            assert status["shard_count"] == 4 and status["reshard"]["phase"] == "aborted"
            assert "reshard: 4 -> 8, aborted (new shard 1 was closed" in sup.cli("status").stdout
            wait_for(
                lambda: (r := sim.call("ready_sets"))[4] == [0, 1, 2, 3] and not r.get(8), 20, what="only the old set connected"
            )
            assert sup.proc.poll() is None
            assert "reshard 4 -> 8 aborted: new shard 1 was closed" in sup.output()
            # the old set publishes on, past the cut-over point if one had been chosen (the
            # abort took it back)
            queue = spectacles.queue_name(group, "MESSAGE_CREATE", "test")
            time.sleep(3.5)
            before = rabbit.depth(queue)
            time.sleep(1.5)
            assert rabbit.depth(queue) > before + 10
            sup.signal(signal.SIGTERM)
            assert sup.wait(20) == 0
        finally:
            sup.stop()
        saved = json.loads((state / "sessions.json").read_text())
        assert saved["shard_count"] == 4 and len(saved["sessions"]) == 4


@contextlib.contextmanager
def serving_four(amqp_url, rabbit, group, tmp_path, per_process: int = 4, **sim_kw) -> Iterator[tuple]:
    """A reshardable simulator of 4 shards and a supervisor serving them, READY and answering
    ``status``: yields ``(sim, sup, state_dir)``; the supervisor is stopped at the end (a test
    may stop it earlier and go on with the simulator)."""
    options = dict(token=TOKEN, shard_count=4, reshardable=True, max_concurrency=4, events_per_shard=-1, rate=5,
                   heartbeat_interval_ms=20000) | sim_kw  # fmt: skip
    with SimulatorThread(**options) as sim:
        rabbit.track(spectacles.send_queue(group), *(spectacles.shard_queue(group, i) for i in range(8)))
        state = tmp_path / "state"
        sup = SupervisorProcess(sim, amqp_url, group, state, "--shards-per-process", str(per_process))
        try:
            sim.wait_until(lambda s: s["ready"] == {0, 1, 2, 3}, timeout=40)
            wait_for(lambda: sup.cli("status", "--json").returncode == 0, 10)
            yield sim, sup, state
        finally:
            sup.stop()


def restart_resumes(sim, amqp_url, group, state, count: int, *args: str) -> dict:
    """Start a supervisor again on ``state`` (with ``args``), wait until the ``count`` shards of
    that count are READY, stop it; the simulator's snapshot then."""
    again = SupervisorProcess(sim, amqp_url, group, state, "--shards-per-process", "4", *args)
    try:
        sim.wait_until(lambda s: s["ready_sets"].get(count) == list(range(count)), timeout=40)
        snap = sim.snapshot()
        again.signal(signal.SIGTERM)
        assert again.wait(20) == 0
        return snap
    finally:
        again.stop()


def saved_sessions(state) -> tuple[int, int]:
    """The shard count and the number of sessions in the state dir."""
    saved = json.loads((state / "sessions.json").read_text())
    return saved["shard_count"], len(saved["sessions"])


def accepted(snap) -> int:
    return len([i for i in snap["identifies"] if i["accepted"]])


def test_a_sigterm_after_the_cut_over_keeps_the_new_set(amqp_url, rabbit, group, tmp_path):
    """SIGTERM while the old set drains (past T): the new set is the one saved, and the next
    ``start --shard-count 8`` resumes all 8 new sessions (no identify)."""
    with serving_four(amqp_url, rabbit, group, tmp_path) as (sim, sup, state):
        command = reshard_command(state, 8)
        wait_for(lambda: reshard_phase(sup) in ("cutover", "draining"), 60, interval=0.02, what="the cut-over")
        wait_for(lambda: reshard_phase(sup) == "draining", 10, interval=0.02, what="past T")
        sup.signal(signal.SIGTERM)
        assert sup.wait(30) == 0
        command.communicate(timeout=30)
        assert saved_sessions(state) == (8, 8)
        snap = restart_resumes(sim, amqp_url, group, state, 8, "--shard-count", "8")
        assert accepted(snap) == 4 + 8
        assert "reshard 4 -> 8 done" in sup.log_path.read_text()  # adopted while stopping


def test_a_sigterm_during_the_cut_over_keeps_the_old_set(amqp_url, rabbit, group, tmp_path):
    """SIGTERM while the cut-over point is being told (before T): the cut-over is taken back,
    the new sessions end, the old set's 4 sessions are the ones saved, and the next
    ``start --shard-count 4`` resumes all of them (no identify)."""
    with serving_four(amqp_url, rabbit, group, tmp_path) as (sim, sup, state):
        command = reshard_command(state, 8)
        # T is chosen 3 s ahead: the cutover phase lasts that long
        wait_for(lambda: reshard_phase(sup) == "cutover", 60, interval=0.02, what="the cut-over phase")
        sup.signal(signal.SIGTERM)
        assert sup.wait(30) == 0
        command.communicate(timeout=30)
        assert "reshard 4 -> 8 done" not in sup.log_path.read_text()
        assert saved_sessions(state) == (4, 4)
        snap = restart_resumes(sim, amqp_url, group, state, 4, "--shard-count", "4")
        assert accepted(snap) == 4 + 8  # the 4 resumed
        assert not snap["ready_sets"].get(8)  # the new sessions ended


def test_a_rolling_restart_after_a_reshard(amqp_url, group, tmp_path):
    """After a reshard the groups are numbered past the old ones: a rolling restart (SIGHUP,
    ``restart``) must still find each of them (it used to index the list by group number)."""
    with SimulatorThread(
        token=TOKEN, shard_count=2, reshardable=True, max_concurrency=2, heartbeat_interval_ms=20000,
    ) as sim:  # fmt: skip
        state = tmp_path / "state"
        sup = SupervisorProcess(sim, amqp_url, group, state, "--shards-per-process", "1")
        try:
            sim.wait_until(lambda s: s["ready"] == {0, 1}, timeout=40)
            wait_for(lambda: sup.cli("status", "--json").returncode == 0, 10)
            done = subprocess.run(
                [sys.executable, "-m", "supervisor", "reshard", "--shard-count", "4", "--state-dir", str(state)],
                capture_output=True, text=True, timeout=120,
            )  # fmt: skip
            assert done.returncode == 0, done.stdout + done.stderr
            groups = [g["group"] for g in json.loads(sup.cli("status", "--json").stdout)["groups"]]
            assert groups == [2, 3, 4, 5]
            resumed_before = len([r for r in sim.snapshot()["resumes"] if r["result"] == "ok"])
            assert sup.cli("restart").returncode == 0
            wait_for(lambda: all(f"rolling restart: group {g} ready" in sup.output() for g in groups), 90, what="every group")
            snap = sim.snapshot()
            assert len([r for r in snap["resumes"] if r["result"] == "ok"]) == resumed_before + 4
            assert sup.proc.poll() is None and snap["ready_sets"].get(4) == [0, 1, 2, 3]
            sup.signal(signal.SIGTERM)
            assert sup.wait(20) == 0
        finally:
            sup.stop()


def test_a_supervisor_killed_after_the_cut_over_comes_back_with_the_new_set(amqp_url, rabbit, group, tmp_path):
    """Issue 20, defect 4: a supervisor killed with -9 between T and the adoption of the new
    set (its children die with it) left only the old count's sessions on disk: the restart
    (which takes the saved count) identified everything again. Past T the new set's sessions
    are saved under its count: the restart, without --shard-count, resumes all 8."""
    with serving_four(amqp_url, rabbit, group, tmp_path) as (sim, sup, state):
        old_children = sup.children()
        command = reshard_command(state, 8)
        wait_for(lambda: reshard_phase(sup) == "draining", 90, interval=0.02, what="past T")
        for child in old_children:  # the old set takes its time to stop: the adoption waits
            child.send_signal(signal.SIGSTOP)
        try:
            time.sleep(2.0)  # save passes (every second) ran
            assert reshard_phase(sup) == "draining"
            sup.signal(signal.SIGKILL)  # its children are sent SIGTERM (the parent-death signal)
            sup.wait(10)
        finally:
            # a stopped process keeps that SIGTERM pending until it is continued: continue them,
            # or they stay behind, stopped, after the test
            for child in old_children:
                with contextlib.suppress(psutil.NoSuchProcess):
                    child.send_signal(signal.SIGCONT)
            gone, alive = psutil.wait_procs(old_children, timeout=15)
            for child in alive:
                child.kill()
        assert alive == [], "the old set's workers outlived their supervisor once continued"
        command.communicate(timeout=30)
        assert saved_sessions(state) == (8, 8)
        snap = restart_resumes(sim, amqp_url, group, state, 8)
        assert accepted(snap) == 4 + 8  # none after the kill
        assert len([r for r in snap["resumes"] if r["result"] == "ok"]) >= 8


def test_an_old_child_killed_at_the_cut_over_restarts_with_it(amqp_url, rabbit, group, tmp_path):
    """Issue 20, defect 3: an old child killed with -9 while the cut-over point was being told
    was restarted without it, and published past T unmarked (duplicates consumers cannot
    drop). The restarted child is given the cut-over in its config: it resumes, catches up,
    publishes nothing after; 0 lost, every duplicate marked on both copies."""
    queue = spectacles.queue_name(group, "MESSAGE_CREATE", "test")
    rabbit.bind(group, queue, "MESSAGE_CREATE")
    with serving_four(amqp_url, rabbit, group, tmp_path, 2, guilds_per_shard=4, rate=20, seed=21) as (sim, sup, state):
        old_children = sup.children()
        assert len(old_children) == 2
        watcher = SessionWatcher(sim, (4,))
        command = reshard_command(state, 8)
        wait_for(lambda: reshard_phase(sup) == "cutover", 90, interval=0.02, what="the cut-over phase")
        old_children[0].send_signal(signal.SIGKILL)
        out, err = command.communicate(timeout=120)
        old_ids = watcher.stop()
        assert command.returncode == 0, out + err + sup.output()[-3000:]
        new_ids: set[str] = set()
        for state_ in sim.snapshot()["sets"][8].values():
            new_ids |= ids_in(sim, state_["session_id"])
        time.sleep(1.0)
        log = sup.output()
        sup.signal(signal.SIGTERM)
        assert sup.wait(30) == 0
    assert "caught up" in log or "every old shard is caught up" in log
    # A crash re-publishes what was not confirmed with the same message id (consumers drop
    # those by id, as after any crash); the reshard's duplicates come from two sessions, with
    # two message ids: those must be marked on both copies.
    copies: dict[str, dict[str, int | None]] = {}
    for _, props, body in rabbit.get_all(queue):
        copies.setdefault(json.loads(body)["id"], {})[props.message_id] = (props.headers or {}).get(OVERLAP_HEADER)
    due = old_ids | new_ids
    lost = due - set(copies)
    assert len(due) > 300 and lost == set(), f"{len(lost)} lost of {len(due)}"
    twice = [c for c in copies.values() if len(c) > 1]
    assert twice, "the stream ran through the cut-over"
    for c in twice:
        assert len(c) == 2 and set(c.values()) == {4, 8}, c  # one copy per set, both marked
