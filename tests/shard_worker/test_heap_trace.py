"""SPECTACLES_TRACEMALLOC: off by default; when set, snapshots appear and heap_diff reads them."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from shard_worker import heap_trace

ROOT = Path(__file__).resolve().parents[2]


def test_off_unless_asked_for():
    assert heap_trace.start_from_env({}) is None


@pytest.mark.parametrize("every", ["0", "-5", "soon"])
def test_a_bad_interval_is_a_clear_error(tmp_path, every):
    with pytest.raises(ValueError, match="SPECTACLES_TRACEMALLOC_EVERY must be a positive number"):
        heap_trace.start_from_env({heap_trace.ENV: str(tmp_path), heap_trace.EVERY_ENV: every})


def test_snapshots_are_written_and_heap_diff_names_what_grew(tmp_path):
    trace = heap_trace.start_from_env({heap_trace.ENV: str(tmp_path / "snaps"), heap_trace.EVERY_ENV: "0.2"})
    assert trace is not None
    try:
        deadline = time.monotonic() + 30
        while len(list((tmp_path / "snaps").glob("*.snap"))) < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        grown = [bytearray(1000) for _ in range(3000)]  # 3 MB allocated on one line, kept
        n = len(list((tmp_path / "snaps").glob("*.snap")))
        while len(list((tmp_path / "snaps").glob("*.snap"))) < n + 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        trace.stop()
    first, *_, last = sorted((tmp_path / "snaps").glob("*.snap"))
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "heap_diff.py"), str(first), str(last), "--top", "3"],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert "test_heap_trace.py" in out.splitlines()[1], out  # the biggest growth is that line
    assert len(grown) == 3000
