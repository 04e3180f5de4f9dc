"""Prometheus' own linter on our metrics: ``promtool check metrics`` on a live supervisor's
``/metrics`` (names, types, HELP, unit suffixes: what a dashboard or a recording rule relies on).

promtool comes from ``scripts/tools.sh`` (``.tools/bin/promtool``, run by ``scripts/test.sh``) or
from PATH. Without it the tests skip, and fail when ``CI=true``: CI must run them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from supervisor.observe.metrics import MetricsState, build_registry
from supervisor.simulator import SimulatorThread
from tests.helpers import TOKEN, free_port, wait_for
from tests.supervisor.supervisor_process import SupervisorProcess

ROOT = Path(__file__).resolve().parents[3]


def find_promtool() -> str | None:
    local = ROOT / ".tools" / "bin" / "promtool"
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    return shutil.which("promtool")


@pytest.fixture(scope="module")
def promtool() -> str:
    path = find_promtool()
    if path is None:
        message = "promtool not found (.tools/bin/promtool nor PATH): run scripts/tools.sh"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message + " (CI=true: a missing promtool is a failure, not a skip)")
        pytest.skip(message)
    return path


def check_metrics(promtool: str, text: str) -> tuple[int, str]:
    """``promtool check metrics`` on ``text``: its exit code and what it said (stdout + stderr)."""
    done = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    return done.returncode, (done.stdout + done.stderr).strip()


def test_promtool_flags_a_gauge_with_a_histograms_suffix(promtool):
    # The check below can fail: the very finding spectacles_shard_count once had.
    bad = "# HELP x_count A gauge named like a histogram's count.\n# TYPE x_count gauge\nx_count 1\n"
    code, output = check_metrics(promtool, bad)
    assert code != 0 and "x_count" in output and "_count" in output, output
    good = "# HELP x_shards A gauge.\n# TYPE x_shards gauge\nx_shards 1\n"
    assert check_metrics(promtool, good) == (0, "")


def test_every_family_passes_promtool_even_those_a_live_run_leaves_out(promtool):
    # Cluster mode, a reshard and an identify budget are absent from the live run below.
    state = MetricsState({0: [0, 1]})
    state.child_started(0, 7, 0.0)
    state.child_sampled(0, 7, 2**20, 1.5)
    state.shard_reports(0, 7, {"0": {"state": "ready", "seq": 3, "latency_ms": 40.0, "outbox": 0, "received": 2}})
    state.child_report(0, 7, {
        "buffered": 1, "buffered_bytes": 100, "broker_connected": True, "rejected": {"too_large": 1},
        "broker": {"published": 2}, "received_by_type": {"READY": 1}, "published_by_type": {"READY": 1},
        "rate_limited_by_opcode": {"8": 1}, "bad_frames": 1,
        "confirm_latency": {"bounds": [0.01, 0.1], "counts": [1, 1, 0], "sum": 0.05, "count": 2},
    })  # fmt: skip
    state.set_supervisor(
        identify_budget_remaining=900, identify_budget_reserve=4, identify_held=False, identifies_granted=2,
        identify_waiting=0, shards_ready=1, shard_count=2, reshards={"done": 1},
        reshard={"phase": "preparing", "old_count": 2, "new_count": 4, "new_ready": 1},
        cluster={"groups": [0], "nodes": 2, "acquired": {"start": 1}, "handed_over": 0, "fenced": 0, "amnesias": 0},
    )  # fmt: skip
    text = generate_latest(build_registry(state)).decode()
    assert "spectacles_cluster_nodes" in text and "spectacles_identify_budget_remaining" in text
    code, output = check_metrics(promtool, text)
    assert (code, output) == (0, ""), f"promtool check metrics exited {code}:\n{output}"


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return response.read().decode()


def flowed(text: str) -> bool:
    """Both shards published a few dispatches, and the confirm latency histogram has samples."""
    published: dict[str, float] = {}
    confirms = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "spectacles_shard_events_published_total":
                published[sample.labels["shard"]] = sample.value
            elif sample.name == "spectacles_publish_confirm_latency_seconds_count":
                confirms += sample.value
    return len(published) == 2 and all(n >= 5 for n in published.values()) and confirms >= 10


def test_a_live_supervisors_metrics_pass_promtool(promtool, amqp_url, group, tmp_path):
    port = free_port()
    with SimulatorThread(
        token=TOKEN, shard_count=2, max_concurrency=2, heartbeat_interval_ms=1000, events_per_shard=-1, rate=5
    ) as sim:
        sup = SupervisorProcess(
            sim, amqp_url, group, tmp_path / "state", "--shards-per-process", "1", "--metrics-addr", f"127.0.0.1:{port}"
        )
        try:
            sim.wait_until(lambda s: s["ready"] == {0, 1}, timeout=30)
            text = wait_for(lambda: (t := scrape(port)) and flowed(t) and t, 30, interval=0.5, what="events in /metrics")
        finally:
            sup.stop()
    code, output = check_metrics(promtool, text)
    assert (code, output) == (0, ""), f"promtool check metrics exited {code}:\n{output}"
