"""Redis off the loop: the pure mailbox, then the worker thread on the real Redis and a hung one."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
import redis

from shard_worker.config import SavedSession
from supervisor.coord.coordinator import RedisCoordinator
from supervisor.coord.shared_state import (
    BUDGET,
    IDENTIFY,
    SENT,
    SESSION_RETRY_S,
    SESSIONS,
    Mailbox,
    SharedState,
)
from tests.helpers import wait_for
from tests.redis_faults import HungServer


def s(n: int) -> SavedSession:
    return SavedSession(f"session-{n}", n, "ws://r")


# -- the mailbox (pure) -------------------------------------------------------------------------
def test_one_identify_try_per_bucket_until_its_answer():
    box = Mailbox()
    assert box.ask_identify(0, 10.0, 5) and box.ask_identify(1, 10.0, 5)
    assert not box.ask_identify(0, 10.0, 5)  # pending
    job = box.take(0.0)
    assert (job.kind, job.key) == (IDENTIFY, 0)
    assert not box.ask_identify(0, 10.0, 5)  # running
    box.done(job, ok=False, now=1.0)
    assert box.ask_identify(0, 10.0, 5)  # answered (even with an error): may ask again


def test_write_reports_coalesce_and_come_first():
    box = Mailbox()
    box.ask_identify(1, 10.0, 5)
    box.identify_sent(0, 5.0)
    box.identify_sent(0, 5.5)
    box.save_sessions(4, {0: s(0)})
    box.read_budget()
    assert len(box) == 4
    kinds = []
    while (job := box.take(0.0)) is not None:
        kinds.append((job.kind, job.args if job.kind == SENT else None))
        box.done(job, True, 0.0)
    assert kinds == [(SENT, (5.5,)), (IDENTIFY, None), (SESSIONS, None), (BUDGET, None)]
    assert box.idle


def test_the_latest_session_snapshot_wins_and_forgotten_sessions_are_merged():
    box = Mailbox()
    box.save_sessions(4, {0: s(0), 1: s(1)}, forget=[2])
    box.save_sessions(4, {0: s(10)}, forget=[3, 1])
    box.save_sessions(4, {0: s(11), 3: s(3)})  # shard 3 has a session again: not deleted
    job = box.take(0.0)
    assert job.args == (4, {0: s(11), 3: s(3)}, [(4, 1), (4, 2)])
    assert box.take(0.0) is None  # one save at a time


def test_sessions_of_another_count_are_forgotten_under_their_count():
    """After a reshard 4 -> 8 the old set's sessions are deleted under 4, and a snapshot under
    8 never cancels them (shard 0 of 8 is not shard 0 of 4)."""
    box = Mailbox()
    box.forget_sessions(4, [0, 1, 2, 3])
    box.save_sessions(8, {0: s(0), 5: s(5)}, forget=[7])
    job = box.take(0.0)
    assert job.args == (8, {0: s(0), 5: s(5)}, [(4, 0), (4, 1), (4, 2), (4, 3), (8, 7)])


def test_a_failed_save_is_retried_later_unless_a_newer_one_came():
    box = Mailbox()
    box.save_sessions(4, {0: s(0)}, forget=[2])
    job = box.take(0.0)
    box.done(job, ok=False, now=10.0)
    assert box.take(10.0) is None and box.next_time(10.0) == 10.0 + SESSION_RETRY_S
    again = box.take(10.0 + SESSION_RETRY_S)
    assert again.args == (4, {0: s(0)}, [(4, 2)])
    box.save_sessions(4, {0: s(1), 2: s(2)})  # newer, while the retry runs
    box.done(again, ok=False, now=13.0)
    assert box.take(13.0 + SESSION_RETRY_S).args == (4, {0: s(1), 2: s(2)}, [])  # the newer one, 2 kept


def test_the_mailbox_stays_bounded_whatever_the_loop_asks():
    box = Mailbox()
    for _ in range(1000):
        for bucket in range(16):
            box.ask_identify(bucket, 10.0, 5)
            box.identify_sent(bucket, 5.5)
        box.save_sessions(4, {0: s(0)}, forget=[1])
        box.read_budget()
    assert len(box) == 2 * 16 + 2
    small = Mailbox(max_pending=3)
    assert [small.ask_identify(b, 1.0, 5) for b in range(5)] == [True, True, True, False, False]


# -- the thread, for real -----------------------------------------------------------------------
@pytest.fixture
def prefix(redis_url):
    name = f"test-{uuid.uuid4().hex[:8]}"
    yield name
    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter(f"{name}:*"):
        client.delete(key)


def test_answers_come_back_and_wake_the_loop(redis_url, prefix):
    coordinator = RedisCoordinator(redis.Redis.from_url(redis_url), prefix, host_id="h")
    coordinator.set_budget(100, 60, total=1000)
    woken = threading.Event()
    shared = SharedState(coordinator, wake=woken.set)
    try:
        assert shared.ask_identify(0, 5.0, 5)
        assert woken.wait(5)
        [answer] = wait_for(lambda: shared.answers() or None, 5)
        assert (answer.kind, answer.key, answer.value, answer.error) == (IDENTIFY, 0, 0.0, None)
        shared.save_sessions(4, {0: s(0), 1: s(1)})
        shared.save_sessions(4, {0: s(2)}, forget=[1])
        assert shared.flush(5)
        assert coordinator.load_sessions(4, [0, 1]) == {0: s(2)}
        assert shared.read_budget()
        assert shared.flush(5)
        assert [a.value for a in shared.answers() if a.kind == BUDGET] == [99]
    finally:
        shared.close()


def test_a_hung_redis_never_blocks_the_caller_and_every_question_is_answered(prefix):
    with HungServer() as hung:
        client = redis.Redis.from_url(hung.url, socket_timeout=1.0, socket_connect_timeout=1.0)
        shared = SharedState(RedisCoordinator(client, prefix, host_id="h"))
        try:
            started = time.monotonic()
            for round_ in range(50):
                for bucket in range(4):
                    shared.ask_identify(bucket, 5.0, 5)
                    shared.identify_sent(bucket, 5.5)
                shared.save_sessions(4, {0: s(round_)})
                shared.read_budget()
            assert time.monotonic() - started < 0.5  # 500 calls handed over, none waited for Redis
            assert shared.pending <= 2 * 4 + 2
            answers = []
            wait_for(lambda: answers.extend(shared.answers()) or {a.key for a in answers if a.kind == IDENTIFY} == {0, 1, 2, 3}, 30)
            assert all(isinstance(a.error, redis.exceptions.TimeoutError) for a in answers)
            assert 0.8 < answers[0].finished - answers[0].started < 3.0  # the socket timeout, per call
            assert shared.failing
        finally:
            shared.close()
