"""The soak's short version (issue 23): a real supervisor under Discord's churn for about two
minutes, 200 reconnects and more, a RabbitMQ cut; fds, threads and asyncio tasks of every process
come back to where they were, no child is replaced and no event is lost (``scripts/soak.py``;
the 2-hour run and its figures are in docs/RELIABILITY.md)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))

import soak  # noqa: E402

#: Faults that end a connection (and malformed frames between them).
RECONNECTING = "reconnect,close,invalidate_resumable,invalidate,zombie,malformed"


@pytest.mark.timeout(420)
def test_fds_threads_and_tasks_stay_flat_across_200_reconnects(amqp_url, tmp_path):
    args = soak.parse([
        "--shards", "8", "--per-process", "4", "--duration", "100s", "--sample", "20s", "--rate", "5",
        "--churn", "3.5", "--faults", RECONNECTING, "--heartbeat-ms", "5000", "--broker-cut-every", "45s",
        "--settle", "90s", "--account", "--seed", "2023", "--amqp-url", amqp_url, "--out", str(tmp_path / "soak.json"),
    ])  # fmt: skip
    report = soak.run(args)
    summary = {k: report[k] for k in ("faults", "reconnects", "restarts", "events_owed", "sessions_ended", "lost",
                                      "duplicates")}  # fmt: skip
    print(f"soak (seed {args.seed}): {summary}")
    assert report["reconnects"] >= 200, summary
    assert report["broker_cuts_at"], "the broker was never cut"
    assert report["restarts"] == 0
    assert len(report["processes"]) == 3  # the supervisor and its two children, sampled each time
    for pid, proc in report["processes"].items():
        assert proc["fds_ok"], (pid, proc)  # settled fds no more than the first sample's + 4
        assert proc["threads_ok"], (pid, proc)
        # where the RSS lives (smaps): glibc's heap and the anonymous mappings, parts of the RSS
        assert 0 < proc["heap_mb_last"] and 0 < proc["anon_mb_last"], (pid, proc)
        assert proc["heap_mb_last"] + proc["anon_mb_last"] <= proc["rss_mb_last"], (pid, proc)
    assert len(report["groups"]) == 2
    for group, sizes in report["groups"].items():
        tasks = sizes["sizes"]["asyncio_tasks"]
        assert sizes["tasks_ok"], (group, tasks)
        assert sizes["sizes"]["closing_tasks"]["last"] == 0
        assert sizes["sizes"]["outbox"]["last"] == 0
        assert sizes["sizes"]["malloc_free_kb"]["last"] is not None  # glibc >= 2.33 here and in CI
    assert all(s.get("metrics_bytes", 0) > 1000 for s in report["samples"]), "/metrics not scraped at a sample"
    assert report["sessions_ended"] > 0  # op 9s: what those sessions sent before them is owed too
    assert report["events_owed"] > 1000
    assert report["lost"] == 0, report["lost_examples"]
    assert (tmp_path / "soak.svg").read_text().startswith("<svg")
