"""The supervisor with real processes, the simulator and the real RabbitMQ."""

from __future__ import annotations

import json
import signal
import time
import urllib.request

import psutil
import pytest

from shard_worker import exit_codes, spectacles
from supervisor.simulator import SimulatorThread
from tests.helpers import TOKEN, free_port, wait_for
from tests.supervisor.observe.test_health import get as get_json
from tests.supervisor.supervisor_process import SupervisorProcess


def identifies(snap, shards=None):
    return [i for i in snap["identifies"] if i["accepted"] and (shards is None or i["shard"] in shards)]


def assert_buckets_respected(snap, max_concurrency):
    last: dict[int, float] = {}
    for ident in sorted(identifies(snap), key=lambda i: i["time"]):
        bucket = ident["shard"] % max_concurrency
        if bucket in last:
            assert ident["time"] - last[bucket] >= 5.0, f"bucket {bucket} identified twice within 5 s"
        last[bucket] = ident["time"]


def test_sixteen_shards_in_processes_kill_resume_status_and_graceful_stop(amqp_url, rabbit, group, tmp_path):
    state = tmp_path / "state"
    with SimulatorThread(
        token=TOKEN, shard_count=16, max_concurrency=4, heartbeat_interval_ms=2000, events_per_shard=-1, rate=20
    ) as sim:
        queue = spectacles.queue_name(group, "MESSAGE_CREATE", "t")
        rabbit.bind(group, queue, "MESSAGE_CREATE")
        sup = SupervisorProcess(sim, amqp_url, group, state, "--shards", "0-15", "--shards-per-process", "4")
        try:
            sup.wait_children(4)
            expected_titles = {f"spectacles-supervisor: shards {a}-{a + 3}" for a in (0, 4, 8, 12)}
            titles = lambda: {" ".join(c.cmdline()).strip() for c in sup.children()}  # noqa: E731
            wait_for(lambda: titles() == expected_titles, 15, what=f"child titles, last {titles()}")
            assert " ".join(psutil.Process(sup.pid).cmdline()).strip() == "spectacles-supervisor: master [0-15]"
            snap = sim.wait_until(lambda s: s["ready"] == set(range(16)), timeout=60)
            assert snap["violations"] == []
            assert len(identifies(snap)) == 16
            assert_buckets_respected(snap, 4)

            # the token is nowhere in ps: argv and titles of every process
            for proc in [psutil.Process(sup.pid), *sup.children()]:
                assert TOKEN not in " ".join(proc.cmdline())

            # status prints every shard
            wait_for(lambda: sup.cli("status", "--json").returncode == 0, 10)
            status = json.loads(sup.cli("status", "--json").stdout)
            assert [row["shard"] for row in status["shards"]] == list(range(16))
            wait_for(lambda: all(r["state"] == "ready" for r in json.loads(sup.cli("status", "--json").stdout)["shards"]), 10)
            table = sup.cli("status").stdout.splitlines()
            assert table[0].split()[:4] == ["SHARD", "GROUP", "PID", "STATE"]
            assert len([line for line in table if line.split()[3:4] == ["ready"]]) == 16

            # kill -9 of the child of shards 4-7: a new child RESUMEs them with the old sessions
            before = sim.snapshot()
            victim = next(c for c in sup.children() if " ".join(c.cmdline()).strip().endswith("shards 4-7"))
            killed_at = time.time()
            victim.kill()
            snap = sim.wait_until(
                lambda s: {r["shard"] for r in s["resumes"] if r["result"] == "ok" and r["time"] > killed_at} >= {4, 5, 6, 7}
                and s["ready"] == set(range(16)),
                timeout=40,
            )
            for shard in (4, 5, 6, 7):
                resume = [r for r in snap["resumes"] if r["shard"] == shard and r["result"] == "ok"][-1]
                assert resume["session_id"] == before["shards"][shard]["session_id"]
            assert len(identifies(snap)) == 16  # no new IDENTIFY
            assert victim.pid not in [c.pid for c in sup.children()]
            # events keep flowing for the resumed shards
            seq_after = snap["shards"][5]["seq"]
            sim.wait_until(lambda s: s["shards"][5]["seq"] > seq_after + 20, timeout=20)

            # SIGTERM: exit 0 in time, no process left behind
            kids = sup.children()
            started = time.monotonic()
            sup.signal(signal.SIGTERM)
            assert sup.wait(12) == 0
            assert time.monotonic() - started < 10.0
            for kid in kids:
                assert not kid.is_running() or kid.status() == psutil.STATUS_ZOMBIE
            output = sup.output()
            assert TOKEN not in output
            assert "died (killed by SIGKILL)" in output
        finally:
            sup.stop()

        # a second start resumes every shard (no identify)
        before = sim.snapshot()
        sup2 = SupervisorProcess(sim, amqp_url, group, state, "--shards", "0-15", "--shards-per-process", "4")
        try:
            snap = sim.wait_until(
                lambda s: s["ready"] == set(range(16)) and len([r for r in s["resumes"] if r["result"] == "ok"]) >= len([r for r in before["resumes"] if r["result"] == "ok"]) + 16,
                timeout=40,
            )
            assert len(identifies(snap)) == 16
            assert snap["violations"] == []
        finally:
            sup2.stop()
        # nothing lost across all of it: every MESSAGE_CREATE up to the seq each shard saved as
        # resumable arrived (what came after is replayed by Discord on the next start)
        final = sim.snapshot()
        saved = json.loads((state / "sessions.json").read_text())["sessions"]
        assert {int(k) for k in saved} == set(range(16))
        expected = set()
        for shard, items in final["dispatched"].items():
            mine = saved[str(shard)]
            assert mine["session_id"] == final["shards"][shard]["session_id"]
            assert mine["seq"] >= 3  # READY and the guilds at least
            expected |= {
                spectacles.message_id(shard, sid, seq)
                for sid, seq, t in items
                if t == "MESSAGE_CREATE" and seq <= mine["seq"]
            }
        got = {props.message_id for _, props, _ in rabbit.get_all(queue, expect=len(expected), timeout=30)}
        assert expected <= got


def test_fatal_close_stops_everything_with_its_code_and_no_retry(amqp_url, group, tmp_path):
    with SimulatorThread(token=TOKEN, shard_count=4, max_concurrency=4, heartbeat_interval_ms=2000) as sim:
        sup = SupervisorProcess(sim, amqp_url, group, tmp_path / "state", "--shards-per-process", "2")
        try:
            sim.wait_until(lambda s: s["ready"] == {0, 1, 2, 3}, timeout=30)
            kids = sup.wait_children(2)
            sim.call("close", 2, 4004)
            assert sup.wait(15) == exit_codes.for_fatal_close(4004)
            snap = sim.snapshot()
            assert len(identifies(snap)) == 4  # no retry burnt an identify
            time.sleep(1.0)
            assert len(sim.snapshot()["connections"]) == len(snap["connections"])
            for kid in kids:
                assert not kid.is_running() or kid.status() == psutil.STATUS_ZOMBIE
            fatal_lines = [line for line in sup.output().splitlines() if "fatal" in line and "4004" in line]
            assert fatal_lines and "authentication failed" in fatal_lines[0]
        finally:
            sup.stop()


def test_sighup_rolls_one_group_at_a_time_and_each_resumes(amqp_url, group, tmp_path):
    with SimulatorThread(token=TOKEN, shard_count=4, max_concurrency=4, heartbeat_interval_ms=2000, events_per_shard=-1, rate=10) as sim:
        sup = SupervisorProcess(sim, amqp_url, group, tmp_path / "state", "--shards-per-process", "2")
        try:
            sim.wait_until(lambda s: s["ready"] == {0, 1, 2, 3}, timeout=30)
            old = {c.pid for c in sup.wait_children(2)}
            sup.signal(signal.SIGHUP)
            snap = sim.wait_until(
                lambda s: {r["shard"] for r in s["resumes"] if r["result"] == "ok"} == {0, 1, 2, 3} and s["ready"] == {0, 1, 2, 3},
                timeout=40,
            )
            wait_for(lambda: (kids := sup.children()) and len(kids) == 2 and not ({k.pid for k in kids} & old), 20)
            assert len(identifies(snap)) == 4
            first_group = max(r["time"] for r in snap["resumes"] if r["shard"] in (0, 1))
            second_group = min(r["time"] for r in snap["resumes"] if r["shard"] in (2, 3))
            assert first_group < second_group  # one group at a time
        finally:
            sup.stop()


@pytest.mark.parametrize("args", [["--shards", "0-3,x"], ["--shards", "9", "--shard-count", "4"]])
def test_bad_values_are_one_line_and_exit_2(amqp_url, group, tmp_path, args):
    with SimulatorThread(token=TOKEN, shard_count=4) as sim:
        sup = SupervisorProcess(sim, amqp_url, group, tmp_path / "state", *args)
        assert sup.wait(20) == 2
        lines = sup.output().strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("spectacles-supervisor: error:")


def test_unresponsive_child_is_killed_and_replaced_with_a_resume(amqp_url, group, tmp_path):
    with SimulatorThread(token=TOKEN, shard_count=2, max_concurrency=2, heartbeat_interval_ms=2000) as sim:
        sup = SupervisorProcess(sim, amqp_url, group, tmp_path / "state", "--shards-per-process", "1", "--child-timeout", "3")
        try:
            sim.wait_until(lambda s: s["ready"] == {0, 1}, timeout=30)
            wait_for(lambda: (tmp_path / "state" / "sessions.json").exists(), 10)
            frozen = next(c for c in sup.wait_children(2) if " ".join(c.cmdline()).strip().endswith("shards 1"))
            frozen.suspend()  # alive but silent: no IPC heartbeat, no gateway heartbeat
            session = sim.snapshot()["shards"][1]["session_id"]
            wait_for(lambda: not frozen.is_running() or frozen.status() == psutil.STATUS_ZOMBIE, 30, what="the frozen child killed")
            snap = sim.wait_until(
                lambda s: any(r["shard"] == 1 and r["result"] == "ok" and r["session_id"] == session for r in s["resumes"])
                and 1 in s["ready"],
                timeout=30,
            )
            assert len(identifies(snap)) == 2
            assert "sent no heartbeat" in sup.output()
        finally:
            sup.stop()


def test_child_over_the_memory_limit_is_recycled_and_resumes(amqp_url, group, tmp_path):
    with SimulatorThread(token=TOKEN, shard_count=1, heartbeat_interval_ms=2000) as sim:
        sup = SupervisorProcess(sim, amqp_url, group, tmp_path / "state", "--max-memory-mb", "16")
        try:
            sim.wait_until(lambda s: s["ready"] == {0}, timeout=30)
            session = sim.snapshot()["shards"][0]["session_id"]
            snap = sim.wait_until(
                lambda s: any(r["result"] == "ok" and r["session_id"] == session for r in s["resumes"]) and s["ready"] == {0},
                timeout=40,
            )
            assert len(identifies(snap)) == 1  # a resume, not a new identify
            assert "recycling it" in sup.output()
        finally:
            sup.stop()


def test_children_exit_when_the_supervisor_is_killed(amqp_url, group, tmp_path):
    with SimulatorThread(token=TOKEN, shard_count=2, max_concurrency=2, heartbeat_interval_ms=2000) as sim:
        sup = SupervisorProcess(sim, amqp_url, group, tmp_path / "state", "--shards-per-process", "1")
        try:
            sim.wait_until(lambda s: s["ready"] == {0, 1}, timeout=30)
            kids = sup.wait_children(2)
            sup.signal(signal.SIGKILL)
            sup.wait(10)
            gone, alive = psutil.wait_procs(kids, timeout=15)
            assert alive == []
        finally:
            sup.stop()


def test_identify_budget_nearly_spent_holds_identifies_and_says_so(amqp_url, group, tmp_path):
    # Discord says 7 identifies are left; the default reserve is one full restart of the 4
    # shards run here: only 3 of 4 shards may identify, and every channel says the 4th waits.
    port = free_port()
    with SimulatorThread(token=TOKEN, shard_count=4, max_concurrency=4, heartbeat_interval_ms=2000, session_start_remaining=7) as sim:
        sup = SupervisorProcess(
            sim, amqp_url, group, tmp_path / "state", "--shards-per-process", "2", "--metrics-addr", f"127.0.0.1:{port}"
        )
        try:
            sim.wait_until(lambda s: len(s["ready"]) == 3, timeout=30)
            wait_for(lambda: "IDENTIFIES HELD" in sup.output(), 15, what="the budget's loud line")
            time.sleep(2.0)
            snap = sim.snapshot()
            assert len(identifies(snap)) == 3 and len(snap["ready"]) == 3
            log = json.loads((tmp_path / "state" / "identifies.json").read_text())
            assert len(log["granted"]) == 3
            status = json.loads(sup.cli("status", "--json").stdout)
            assert status["identify_budget_remaining"] == 4
            assert status["identify_hold"] == {"held": True, "reserve": 4, "remaining": 4}
            assert "IDENTIFIES HELD at the reserve" in sup.cli("status").stdout
            code, body = get_json(f"http://127.0.0.1:{port}/readyz")
            assert code == 503 and body["identify_held"] == {"remaining": 4, "reserve": 4}
            metrics = get_text(f"http://127.0.0.1:{port}/metrics")
            assert "spectacles_identify_held 1.0" in metrics
            assert "spectacles_identify_budget_reserve 4.0" in metrics
            # one loud line, not one per pass
            lines = [line for line in sup.output().splitlines() if "IDENTIFIES HELD" in line]
            assert len(lines) == 1 and "4 left, reserve 4" in lines[0] and "ERROR" in lines[0]
        finally:
            sup.stop()


def test_the_identify_reserve_is_an_option(amqp_url, group, tmp_path):
    with SimulatorThread(token=TOKEN, shard_count=4, max_concurrency=4, heartbeat_interval_ms=2000, session_start_remaining=7) as sim:
        sup = SupervisorProcess(sim, amqp_url, group, tmp_path / "state", "--shards-per-process", "4", "--identify-reserve", "6")
        try:
            sim.wait_until(lambda s: len(s["ready"]) == 1, timeout=30)
            wait_for(lambda: "IDENTIFIES HELD" in sup.output(), 15, what="the budget's loud line")
            time.sleep(2.0)
            assert len(identifies(sim.snapshot())) == 1
            assert json.loads(sup.cli("status", "--json").stdout)["identify_hold"] == {"held": True, "reserve": 6, "remaining": 6}
        finally:
            sup.stop()


def test_token_never_reaches_logs_even_at_trace_nor_ps(amqp_url, group, tmp_path):
    with SimulatorThread(token=TOKEN, shard_count=2, max_concurrency=2, heartbeat_interval_ms=1000) as sim:
        sup = SupervisorProcess(sim, amqp_url, group, tmp_path / "state", "--log-level", "TRACE", "--shards-per-process", "1")
        try:
            sim.wait_until(lambda s: s["ready"] == {0, 1}, timeout=30)
            kids = sup.wait_children(2)
            sim.call("reconnect", 0)  # a RESUME carries the token too
            sim.wait_until(lambda s: any(r["result"] == "ok" for r in s["resumes"]) and s["ready"] == {0, 1}, timeout=20)
            wait_for(lambda: '"op":6' in sup.output(), 10, what="the RESUME payload logged at TRACE")
            for proc in [psutil.Process(sup.pid), *kids]:
                assert TOKEN not in " ".join(proc.cmdline())
            sup.signal(signal.SIGTERM)
            assert sup.wait(15) == 0
            output = sup.output()
            assert '"op":2' in output and "<redacted>" in output  # the IDENTIFY, redacted
            assert TOKEN not in output
            for path in (tmp_path / "state").iterdir():
                assert TOKEN not in path.read_text()
        finally:
            sup.stop()


def get_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()
