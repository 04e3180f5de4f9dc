"""The state directory: atomic, private, and only sessions worth resuming come back."""

from __future__ import annotations

import json
import os
import stat

from shard_worker.config import SavedSession
from supervisor.core.state_store import MAX_SESSION_AGE_S, SESSIONS_FILE, StateStore


def test_round_trip_and_permissions(tmp_path):
    store = StateStore(tmp_path / "state", shard_count=4)
    sessions = {0: SavedSession("a", 10, "wss://r/0"), 3: SavedSession("b", None, "wss://r/3")}
    store.save_sessions(sessions, now=1000.0)
    assert store.load_sessions(now=1010.0) == sessions
    assert stat.S_IMODE(os.stat(tmp_path / "state").st_mode) == 0o700
    assert stat.S_IMODE(os.stat(tmp_path / "state" / SESSIONS_FILE).st_mode) == 0o600
    assert [p.name for p in (tmp_path / "state").iterdir()] == [SESSIONS_FILE]  # no temp left


def test_other_shard_count_or_old_sessions_are_ignored(tmp_path):
    StateStore(tmp_path, 4).save_sessions({0: SavedSession("a", 1, "u")}, now=0.0)
    assert StateStore(tmp_path, 8).load_sessions(now=1.0) == {}
    assert StateStore(tmp_path, 4).load_sessions(now=MAX_SESSION_AGE_S + 1) == {}


def test_corrupt_or_malformed_files_are_ignored(tmp_path):
    (tmp_path / SESSIONS_FILE).write_text("{not json")
    assert StateStore(tmp_path, 4).load_sessions() == {}
    data = {"shard_count": 4, "saved_at": 0, "sessions": {"1": {"session_id": "x"}, "2": {"session_id": "y", "seq": 3, "resume_gateway_url": "u"}}}
    (tmp_path / SESSIONS_FILE).write_text(json.dumps(data))
    assert StateStore(tmp_path, 4).load_sessions(now=1.0) == {2: SavedSession("y", 3, "u")}


def test_identify_log_keeps_the_last_24_hours(tmp_path):
    store = StateStore(tmp_path, 4)
    day = 24 * 3600
    assert store.identifies(now=0.0) == []
    assert store.record_identify(now=100.0) == 1
    assert store.record_identify(now=200.0) == 2
    assert store.identifies(now=300.0) == [100.0, 200.0]
    assert store.identifies(now=100.0 + day + 1) == [200.0]  # the first fell out of the window
    assert store.record_identify(now=200.0 + day + 1) == 1
    assert stat.S_IMODE(os.stat(tmp_path / "identifies.json").st_mode) == 0o600
