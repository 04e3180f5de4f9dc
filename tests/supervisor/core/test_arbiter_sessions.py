"""Sessions the arbiter keeps: an invalidated session is forgotten on disk and in Redis, so a
restart does not try to RESUME it in vain (the arbiter's handlers, the real Redis, no processes)."""

from __future__ import annotations

import json
import time
import uuid

import redis

from shard_worker.config import WorkerConfig
from shard_worker.ipc import Message
from supervisor.coord.coordinator import RedisCoordinator
from supervisor.core.arbiter import Arbiter, ArbiterOptions


class FakeChild:
    def __init__(self, pid: int, shard_ids: list[int]) -> None:
        self.pid, self.group, self.shard_ids = pid, 0, shard_ids
        self.shard_set = frozenset(shard_ids)
        self.shard_reports: dict = {}
        self.report: dict = {}
        self.ready: set = set()
        self.label = f"group 0 (pid {pid})"
        self.last_heartbeat = time.monotonic()


def report(session):
    return {"state": "ready" if session else "identifying", "seq": 7, "session": session, "latency_ms": None,
            "received": 0, "published": 0, "reconnects": 0, "identifies": 1, "resumes": 0, "sent": 0, "outbox": 0}  # fmt: skip


def test_a_session_discord_invalidated_is_forgotten_on_disk_and_in_redis(tmp_path, redis_url):
    client = redis.Redis.from_url(redis_url)
    prefix = f"test-{uuid.uuid4().hex[:8]}"
    try:
        coordinator = RedisCoordinator(client, prefix, host_id="h")
        config = WorkerConfig([0, 1], 2, "ws://127.0.0.1:1", token="t" * 20)
        arbiter = Arbiter([config], ArbiterOptions(state_dir=str(tmp_path / "state"), coordinator=coordinator))
        child = FakeChild(5, [0, 1])
        a = {"session_id": "a" * 32, "seq": 7, "resume_gateway_url": "ws://r"}
        b = {"session_id": "b" * 32, "seq": 9, "resume_gateway_url": "ws://r"}
        arbiter._on_message(child, Message("shards", {"shards": {"0": report(a), "1": report(b)}}))
        arbiter._save_sessions()
        assert arbiter.writer.flush(10)  # the state dir is written off the loop
        assert arbiter.shared.flush(10)  # Redis is written off the loop
        saved = json.loads((tmp_path / "state" / "sessions.json").read_text())["sessions"]
        assert set(saved) == {"0", "1"}
        assert set(coordinator.load_sessions(2, [0, 1])) == {0, 1}

        # op 9 (not resumable): the child reports shard 0 without a session while it identifies anew
        arbiter._on_message(child, Message("shards", {"shards": {"0": report(None)}}))
        arbiter._save_sessions()
        assert arbiter.writer.flush(10)  # the state dir is written off the loop
        assert arbiter.shared.flush(10)  # Redis is written off the loop
        saved = json.loads((tmp_path / "state" / "sessions.json").read_text())["sessions"]
        assert set(saved) == {"1"}
        assert set(coordinator.load_sessions(2, [0, 1])) == {1}
        # a restart resumes only what is still valid
        again = Arbiter([config], ArbiterOptions(state_dir=str(tmp_path / "state"), coordinator=coordinator))
        assert set(again.book.sessions) == {1}
    finally:
        for key in client.scan_iter(f"{prefix}:*"):
            client.delete(key)


def test_a_restarted_supervisor_keeps_the_pace_of_its_predecessors_buckets(tmp_path):
    # Issue 20, defect 11: without Redis, a supervisor killed just after a grant and started
    # again forgot when the bucket last identified and granted it again at once (Discord: op 9,
    # and an identify spent). The state dir keeps each bucket's last grant.
    config = WorkerConfig([0, 1, 2], 3, "ws://127.0.0.1:1", token="t" * 20, max_concurrency=2)
    options = ArbiterOptions(state_dir=str(tmp_path / "state"))
    first = Arbiter([config], options)
    first.gate.request(5, 0)
    now = time.monotonic()
    first._grant_identifies(now)
    assert first.gate.in_flight == 1  # shard 0 (bucket 0) granted; then the supervisor is killed
    assert first.writer.flush(10)  # recorded off the loop
    again = Arbiter([config], options)
    again.gate.request(6, 2)  # bucket 0 again
    again.gate.request(6, 1)  # bucket 1: never granted, free
    restart = time.monotonic()
    assert [g.shard_id for g in again.gate.due(restart)] == [1]
    # bucket 0 opens only an interval after the latest its grant could be written
    opens = again.gate.free_at()[0]
    assert opens >= now + again.gate.interval
    assert [g.shard_id for g in again.gate.due(opens + 0.01)] == [2]
