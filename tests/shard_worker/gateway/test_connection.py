"""The shard driver against the simulator: zombie, op 7, op 9, close-code classes, bad frames."""

from __future__ import annotations

import pytest

from shard_worker import exit_codes
from supervisor.simulator import SimulatorThread
from tests.helpers import TOKEN, WorkerThread, wait_for, worker_config


def resumes_of(snap, shard=0, result="ok"):
    return [r for r in snap["resumes"] if r["shard"] == shard and r["result"] == result]


def accepted_identifies(snap, shard=0):
    return [i for i in snap["identifies"] if i["shard"] == shard and i["accepted"]]


@pytest.fixture
def running(amqp_url, group):
    """A simulator with one shard and a worker connected to it (READY)."""
    with SimulatorThread(token=TOKEN, shard_count=1, heartbeat_interval_ms=1000, identify_interval_s=0.5) as sim:
        config = worker_config(sim, amqp_url, group, [0])
        with WorkerThread(config) as worker:
            sim.wait_until(lambda s: 0 in s["ready"], timeout=30)
            yield sim, worker


def test_heartbeats_carry_the_last_seq(running):
    sim, _ = running
    sim.call("emit", 0, 5)
    snap = sim.wait_until(
        lambda s: any(r["op"] == 1 and r["d"] is not None and r["d"] >= 2 + 5 for r in s["sent"]), timeout=20
    )
    beats = [r["d"] for r in snap["sent"] if r["op"] == 1]
    assert beats == sorted(beats, key=lambda d: -1 if d is None else d)  # never goes back


def test_zombie_connection_is_closed_and_resumed(running):
    sim, _ = running
    before = sim.snapshot()
    sim.call("zombie", 0)
    snap = sim.wait_until(lambda s: len(resumes_of(s)) >= 1 and 0 in s["ready"], timeout=30)
    zombie_conn = next(c for c in snap["connections"] if c["id"] == before["shards"][0]["connection"])
    assert zombie_conn["closed_by"] == "client"
    assert zombie_conn["close_code"] not in (1000, 1001)
    assert resumes_of(snap)[0]["session_id"] == before["shards"][0]["session_id"]
    assert len(accepted_identifies(snap)) == 1  # resumed, never re-identified


def test_server_heartbeat_request_is_answered_at_once(running):
    sim, _ = running
    count = lambda s: sum(1 for r in s["sent"] if r["op"] == 1)  # noqa: E731
    n = count(sim.snapshot())
    sim.call("request_heartbeat", 0)
    sim.wait_until(lambda s: count(s) > n, timeout=5)


def test_op7_reconnect_resumes(running):
    sim, _ = running
    session = sim.snapshot()["shards"][0]["session_id"]
    sim.call("reconnect", 0)
    snap = sim.wait_until(lambda s: resumes_of(s) and 0 in s["ready"], timeout=20)
    assert resumes_of(snap)[0]["session_id"] == session
    assert resumes_of(snap)[0]["path"] == "/resume"  # to resume_gateway_url
    assert len(accepted_identifies(snap)) == 1


def test_op9_resumable_resumes_and_not_resumable_identifies(running):
    sim, _ = running
    sim.call("invalidate_session", 0, resumable=True)
    sim.wait_until(lambda s: resumes_of(s) and 0 in s["ready"], timeout=20)
    sim.call("invalidate_session", 0, resumable=False)
    snap = sim.wait_until(lambda s: len(accepted_identifies(s)) == 2 and 0 in s["ready"], timeout=30)
    first, second = accepted_identifies(snap)
    assert second["time"] - first["time"] >= 1.0  # waited 1-5 s before identifying anew
    assert snap["violations"] == []


@pytest.mark.parametrize("code", [4000, 4001, 4002, 4003, 4005, 4008])
def test_resumable_close_codes_resume(running, code):
    sim, _ = running
    session = sim.snapshot()["shards"][0]["session_id"]
    sim.call("close", 0, code)
    snap = sim.wait_until(lambda s: resumes_of(s) and 0 in s["ready"], timeout=20)
    assert resumes_of(snap)[0]["session_id"] == session
    assert len(accepted_identifies(snap)) == 1


@pytest.mark.parametrize("code", [4007, 4009])
def test_session_ending_close_codes_identify_anew(running, code):
    sim, _ = running
    sim.call("close", 0, code)
    snap = sim.wait_until(lambda s: len(accepted_identifies(s)) == 2 and 0 in s["ready"], timeout=20)
    assert resumes_of(snap) == []


@pytest.mark.parametrize("code", [4004, 4010, 4011, 4012, 4013, 4014])
def test_fatal_close_codes_stop_the_worker_without_retry(running, code):
    sim, worker = running
    sim.call("close", 0, code)
    assert worker.wait_exit(20) == exit_codes.for_fatal_close(code)
    snap = sim.snapshot()
    assert len(snap["connections"]) == 1  # never reconnected
    assert len(accepted_identifies(snap)) == 1


def test_a_broken_zlib_stream_ends_in_a_resume(running):
    sim, worker = running
    session = sim.snapshot()["shards"][0]["session_id"]
    sim.call("send_raw", 0, b"\x78\x9c\xde\xad\xbe\xef\x00\x00\xff\xff", compressed=False)
    snap = sim.wait_until(lambda s: resumes_of(s) and 0 in s["ready"], timeout=20)
    assert resumes_of(snap)[0]["session_id"] == session
    assert worker.alive


@pytest.mark.parametrize(
    "data",
    [
        "{not json",  # bad JSON inside a good zlib stream
        '{"no_op": true}',
        '{"t":"MESSAGE_CREATE","s":999,"op":0,"d":{"content":"\\udc00 lone surrogate',  # a dispatch cut short
    ],
)
def test_a_message_that_is_no_payload_is_counted_and_skipped_without_a_resume(running, data):
    """A resume would only have Discord send the same frame again, forever: skip it instead."""
    sim, worker = running
    runner = worker.worker.runners[0]
    before = sim.snapshot()
    sim.call("send_raw", 0, data, compressed=True)
    wait_for(lambda: runner.machine.bad_frames == 1, 10, what="the frame counted")
    received = runner.received
    sim.call("emit", 0, 5, "MESSAGE_CREATE")
    wait_for(lambda: runner.received >= received + 5, 10, what="events after it")
    snap = sim.snapshot()
    assert resumes_of(snap) == [] and len(snap["connections"]) == len(before["connections"])
    assert 0 in snap["ready"] and worker.alive


def test_a_text_frame_on_a_compressed_connection_is_read_as_plain_json(running):
    """Discord may send a text frame beside the zlib-stream binary ones: it is JSON as it is,
    not a piece of the compressed stream (which would break the stream and cost a resume)."""
    sim, worker = running
    runner = worker.worker.runners[0]
    before = sim.snapshot()
    sim.call("send_raw", 0, '{"t":"TEXT_EVENT","s":900,"op":0,"d":{"k":"v"}}', compressed=False)  # a text frame
    wait_for(lambda: runner.received_by_type.get("TEXT_EVENT") == 1, 10, what="the text dispatch")
    sim.call("emit", 0, 5, "MESSAGE_CREATE")  # the compressed stream goes on unbroken
    wait_for(lambda: runner.received_by_type.get("MESSAGE_CREATE", 0) >= 5, 10, what="events after it")
    snap = sim.snapshot()
    assert resumes_of(snap) == [] and len(snap["connections"]) == len(before["connections"])
    assert runner.machine.bad_frames == 0 and runner.machine.seq >= 900


def test_dropped_tcp_connection_resumes_with_replay(running, amqp_url, rabbit, group):
    sim, worker = running
    rabbit.bind(group, f"{group}:t:MESSAGE_CREATE", "MESSAGE_CREATE")
    sim.call("emit", 0, 50, "MESSAGE_CREATE")
    sim.call("drop", 0)
    snap = sim.wait_until(lambda s: resumes_of(s) and 0 in s["ready"], timeout=20)
    assert resumes_of(snap)[0]["session_id"] == snap["shards"][0]["session_id"]
    got = rabbit.get_all(f"{group}:t:MESSAGE_CREATE", expect=50, timeout=20)
    ids = {props.message_id for _, props, _ in got}
    assert len(ids) == 50  # every event, none lost across the drop


def test_unreachable_resume_url_falls_back_to_the_gateway_and_still_resumes(amqp_url, group):
    from shard_worker.config import SavedSession

    with SimulatorThread(token=TOKEN, shard_count=1, heartbeat_interval_ms=1000) as sim:
        with WorkerThread(worker_config(sim, amqp_url, group, [0])) as first:
            snap = sim.wait_until(lambda s: 0 in s["ready"], timeout=30)
            assert first.stop() == 0
        session = snap["shards"][0]["session_id"]
        dead_url = "ws://127.0.0.1:9"  # nothing listens on the discard port
        config = worker_config(sim, amqp_url, group, [0], sessions={0: SavedSession(session, snap["shards"][0]["seq"], dead_url)})
        with WorkerThread(config):
            snap = sim.wait_until(lambda s: resumes_of(s) and 0 in s["ready"], timeout=30)
        assert resumes_of(snap)[0]["session_id"] == session and resumes_of(snap)[0]["path"] == "/"
        assert len(accepted_identifies(snap)) == 1
