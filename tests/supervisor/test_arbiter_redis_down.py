"""The arbiter with Redis unreachable: no identify without the shared lock, never a crash."""

from __future__ import annotations

import logging

from shard_worker.config import SavedSession, WorkerConfig
from supervisor.arbiter import Arbiter, ArbiterOptions


class DownCoordinator:
    """Every call fails like redis-py does when the server is gone."""

    def __getattr__(self, name):
        def fail(*args, **kwargs):
            raise ConnectionError("Error 111 connecting to 127.0.0.1:6399. Connection refused.")

        return fail


def test_redis_down_holds_identifies_keeps_sessions_local_and_logs(tmp_path, caplog):
    config = WorkerConfig(shard_ids=[0, 1], shard_count=2, gateway_url="ws://127.0.0.1:1", token="t" * 20, max_concurrency=2)
    arbiter = Arbiter([config], ArbiterOptions(state_dir=str(tmp_path / "state"), coordinator=DownCoordinator()))
    assert arbiter.sessions == {}  # loading from Redis failed: nothing invented
    arbiter.gate.request(1234, 0)
    with caplog.at_level(logging.ERROR, logger="supervisor.arbiter"):
        arbiter._grant_identifies(0.0)
        arbiter._grant_identifies(0.5)
    assert arbiter.gate.total_granted == 0 and arbiter.gate.waiting == 1
    assert sum("Redis unavailable" in r.message for r in caplog.records) == 1  # once, not per pass
    # sessions still go to the state dir
    arbiter.sessions = {0: SavedSession("s", 5, "ws://r")}
    arbiter._save_sessions()
    assert (tmp_path / "state" / "sessions.json").exists()
    assert arbiter.status()["identify_budget_remaining"] is None
