"""The arbiter with Redis unreachable: no identify without the shared lock, never a crash."""

from __future__ import annotations

import logging
import time

import pytest

from shard_worker.config import SavedSession, WorkerConfig
from supervisor.core.arbiter import Arbiter, ArbiterOptions


class DownCoordinator:
    """Every call fails like redis-py does when the server is gone."""

    def __getattr__(self, name):
        def fail(*args, **kwargs):
            raise ConnectionError("Error 111 connecting to 127.0.0.1:6399. Connection refused.")

        return fail


def pump(arbiter: Arbiter, seconds: float) -> None:
    """The loop's identify steps, for real time: answers taken, grants due."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        now = time.monotonic()
        arbiter._take_answers(now)
        arbiter._grant_identifies(now)
        time.sleep(0.05)


def test_redis_down_holds_identifies_keeps_sessions_local_and_logs(tmp_path, caplog):
    config = WorkerConfig(shard_ids=[0, 1], shard_count=2, gateway_url="ws://127.0.0.1:1", token="t" * 20, max_concurrency=2)
    arbiter = Arbiter([config], ArbiterOptions(state_dir=str(tmp_path / "state"), coordinator=DownCoordinator()))
    assert arbiter.book.sessions == {}  # loading from Redis failed: nothing invented
    arbiter.gate.request(1234, 0)
    with caplog.at_level(logging.ERROR, logger="supervisor.core.arbiter"):
        pump(arbiter, 2.5)  # the bucket is tried about once a second, every try fails
    assert arbiter.gate.total_granted == 0 and arbiter.gate.waiting == 1
    assert sum("Redis unavailable" in r.message for r in caplog.records) == 1  # once, not per try
    # sessions still go to the state dir
    arbiter.book.sessions = {0: SavedSession("s", 5, "ws://r")}
    arbiter._save_sessions()
    assert arbiter.writer.flush(10)  # the state dir is written off the loop
    assert (tmp_path / "state" / "sessions.json").exists()
    status = arbiter.status()
    assert status["identify_budget_remaining"] is None
    assert status["redis"]["answering"] is False
    arbiter.shared.close()


class FakeChild:
    def __init__(self, pid: int, stopping: bool) -> None:
        self.pid, self.shard_ids, self.label = pid, [0, 1], f"group 0 (pid {pid})"
        self.stopping_since = 1.0 if stopping else None
        self.read_fd = -1
        self.write_watched = False
        self.report: dict = {}
        self.ready: set = set()

    def read(self):
        return []

    def close(self) -> None:
        pass

    def uptime(self, now: float) -> float:
        return 1.0


def test_a_fatal_exit_during_a_rolling_restart_still_halts_everything(tmp_path):
    config = WorkerConfig(shard_ids=[0, 1], shard_count=2, gateway_url="ws://127.0.0.1:1", token="t" * 20)
    arbiter = Arbiter([config], ArbiterOptions(state_dir=str(tmp_path / "state")))
    group = arbiter.groups[0]
    arbiter.rolling.current = 0
    # the clean exit we asked for: restarted at once
    group.child = FakeChild(11, stopping=True)
    arbiter._on_exit(group, group.child, 0, now=5.0)
    assert group.start_at == 5.0 and not arbiter.stopping
    # the new child then dies with 44 (token reset): no respawn, the supervisor stops with 44
    group.child = FakeChild(12, stopping=False)
    arbiter._on_exit(group, group.child, 44, now=6.0)
    assert arbiter.stopping and arbiter.exit_code == 44


def test_the_loops_wait_is_until_the_next_thing_due(tmp_path):
    config = WorkerConfig(shard_ids=[0, 1], shard_count=2, gateway_url="ws://127.0.0.1:1", token="t" * 20)
    arbiter = Arbiter([config], ArbiterOptions(state_dir=str(tmp_path / "state"), live_progress=False))
    now = 1000.0
    arbiter.groups[0].start_at = now + 0.4  # a restart due in 0.4 s
    assert arbiter._timeout(now) == pytest.approx(0.4)
    arbiter.groups[0].child = FakeChild(7, stopping=False)  # nothing due: at most 1 s
    arbiter.start.since = None
    assert arbiter._timeout(now) == 1.0
    arbiter.gate.request(7, 0)  # a grant due now: the shortest wait
    assert arbiter._timeout(now) == 0.01
