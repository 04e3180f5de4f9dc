"""The worker's garbage-collector settings, applied in a fresh interpreter (they are global)."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys

import pytest

from shard_worker import gc_tuning

PROBE = (
    "import gc, json; from shard_worker import gc_tuning; "
    "before = gc.get_threshold(); choice = gc_tuning.tune(); "
    "print(json.dumps({'choice': choice, 'before': before, 'after': gc.get_threshold(), 'frozen': gc.get_freeze_count()}))"
)


def probe(value: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "SPECTACLES_GC"}
    if value is not None:
        env["SPECTACLES_GC"] = value
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=60, check=True)
    return json.loads(out.stdout)


def test_tuned_by_default_freezes_what_is_set_up_and_raises_the_young_threshold():
    result = probe(None)
    assert result["choice"] == "tuned"
    assert result["after"] == [gc_tuning.YOUNG_THRESHOLD, *gc_tuning.OLDER_THRESHOLDS]
    assert result["after"] != result["before"]
    assert result["frozen"] > 1000  # the imported modules, classes and functions


def test_default_keeps_pythons_settings():
    result = probe("default")
    assert result["choice"] == "default" and result["after"] == result["before"] and result["frozen"] == 0


def test_an_unknown_choice_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("SPECTACLES_GC", "fast")
    with pytest.raises(ValueError, match="SPECTACLES_GC must be one of tuned, default, not 'fast'"):
        gc_tuning.choice()


def test_a_full_collection_follows_closed_connections_at_most_once_a_minute():
    """Connections count once they closed 10 s ago (their closing handshake is over)."""
    runs: list[int] = []
    full = gc_tuning.FullCollections(lambda: runs.append(1) or 7, every_s=60, settle_s=10)
    assert full.observe(0, 0.0) == 0  # nothing closed yet
    assert full.observe(3, 1.0) == 0  # three just closed: still being closed
    assert full.observe(3, 10.0) == 0
    assert full.observe(3, 11.0) == 7  # settled: one collection
    assert full.observe(3, 100.0) == 0  # none closed since
    assert full.observe(9, 120.0) == 0
    assert full.observe(9, 130.0) == 7
    assert full.observe(12, 150.0) == 0
    assert full.observe(12, 170.0) == 0  # settled, but a minute has not passed
    assert full.observe(12, 190.0) == 7
    assert (full.runs, full.freed, len(runs)) == (3, 21, 3)


def test_steady_churn_still_collects_what_closed_long_enough_ago():
    runs: list[float] = []
    full = gc_tuning.FullCollections(lambda: runs.append(1) or 1, every_s=60, settle_s=10)
    for second in range(0, 300):  # a connection closes every second, for five minutes
        full.observe(second, float(second))
    assert len(runs) == 5  # once a minute, each time for what had closed 10 s before


def test_a_closed_connection_s_cycle_is_freed_by_the_full_collection():
    """What the soak found: a cycle promoted past the young generation waits for a full
    collection, which the tuned thresholds make rare; FullCollections runs one."""
    import weakref

    class Conn:
        pass

    gc.collect()
    a, b = Conn(), Conn()
    a.peer, b.peer = b, a  # a connection and its protocol point at each other
    gone = weakref.ref(a)
    gc.collect(0)
    gc.collect(1)  # promoted to the oldest generation, as a live connection would be
    del a, b
    gc.collect(0)
    assert gone() is not None  # young collections do not see it
    assert gc_tuning.FullCollections(settle_s=0).observe(1, 0.0) >= 2
    assert gone() is None
