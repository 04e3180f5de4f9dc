"""``spectacles-supervisor reshard`` against a real supervisor process, the simulator and RabbitMQ:
every refusal is one line from the supervisor, and nothing changes (a reshard that runs:
``test_reshard_live.py``)."""

from __future__ import annotations

import json
import signal

from supervisor.simulator import SimulatorThread
from tests.helpers import TOKEN, wait_for
from tests.supervisor.supervisor_process import SupervisorProcess

PROG = "spectacles-supervisor: error: "


def accepted_identifies(snap) -> int:
    return len([i for i in snap["identifies"] if i["accepted"]])


def refused(sup: SupervisorProcess, count: str) -> tuple[int, str]:
    done = sup.cli("reshard", "--shard-count", count)
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(PROG), done.stderr
    return done.returncode, lines[0][len(PROG):]


def test_reshard_refusals_come_from_the_running_supervisor(amqp_url, rabbit, group, tmp_path):
    with SimulatorThread(
        token=TOKEN, shard_count=4, max_concurrency=4, heartbeat_interval_ms=2000, reshardable=True,
        session_start_remaining=14,
    ) as sim:
        sup = SupervisorProcess(
            sim, amqp_url, group, tmp_path / "state", "--shards-per-process", "4", "--shard-count-multiple", "2",
            "--identify-reserve", "5",
        )
        try:
            sim.wait_until(lambda s: s["ready"] == {0, 1, 2, 3}, timeout=40)
            wait_for(lambda: sup.cli("status", "--json").returncode == 0, 10)
            all_ready = lambda: all(  # noqa: E731
                row["state"] == "ready" for row in json.loads(sup.cli("status", "--json").stdout)["shards"]
            )
            wait_for(all_ready, 10, what="every shard ready in status")

            assert refused(sup, "4") == (2, "the supervisor already runs 4 shards: nothing to do")
            assert refused(sup, "0") == (2, "--shard-count must be at least 1, not 0")
            assert refused(sup, "3") == (
                2, "--shard-count 3 is not a multiple of --shard-count-multiple 2 (Discord would close with 4010); use 4"
            )
            # 14 identifies at the start, 4 spent: 8 new sessions and the reserve of 5 do not fit
            assert refused(sup, "8") == (
                1, "not enough identify budget: 10 left, 8 new sessions need 13 (a reserve of 5 is kept)"
            )
            # (a request that passes every check starts a reshard: test_reshard_live.py)
            # nothing changed: the same sessions, no identify, no reshard in the status
            status = json.loads(sup.cli("status", "--json").stdout)
            assert status["shard_count"] == 4 and status["reshard"] is None
            assert all_ready()
            snap = sim.snapshot()
            assert accepted_identifies(snap) == 4 and snap["violations"] == []
            assert snap["ready_sets"] == {4: [0, 1, 2, 3]}
            assert sup.proc.poll() is None
            assert "reshard refused: not enough identify budget" in sup.output()
            sup.signal(signal.SIGTERM)
            assert sup.wait(15) == 0
        finally:
            sup.stop()

        # a supervisor of part of the shards cannot reshard alone
        part = SupervisorProcess(
            sim, amqp_url, group, tmp_path / "part", "--shards", "0-1", "--shard-count", "4",
            "--shards-per-process", "2",
        )
        try:
            sim.wait_until(lambda s: accepted_identifies(s) >= 6 and {0, 1} <= s["ready"], timeout=40)
            wait_for(lambda: part.cli("status", "--json").returncode == 0, 10)
            assert refused(part, "8") == (
                1, "this supervisor runs only shards 0-1 of 4: resharding part of a bot is the cluster's job"
            )
        finally:
            part.stop()
