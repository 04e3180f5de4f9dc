"""The worker's garbage-collector settings, applied in a fresh interpreter (they are global)."""

from __future__ import annotations

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
