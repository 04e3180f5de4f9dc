"""The sans-I/O shard machine: literal frames in, actions out, a fake clock passed as ``now``."""

from __future__ import annotations

import json
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shard_worker.config import SavedSession
from shard_worker.gateway.protocol import Op
from shard_worker.gateway.state import (
    HELLO_TIMEOUT_S,
    IDENTIFY_PROPERTIES,
    CloseConnection,
    Dispatch,
    Fatal,
    Phase,
    Reconnect,
    RequestIdentify,
    Send,
    SessionReady,
    ShardMachine,
    SkippedFrame,
)

TOKEN = "MTA4NzY1NDMyMTA5ODc2NTQzMg.GhIjKl.s3cr3t-t0ken-VALUE_do-not-leak"
GATEWAY = "wss://gateway.discord.gg"
RESUME_URL = "wss://gateway-us-east1-b.discord.gg"
SESSION_ID = "9d4c1f0e2b7a4b65a1c0e3f2d1b0a999"

HELLO = '{"op":10,"d":{"heartbeat_interval":41250,"_trace":["gateway-prd-us-east1-b-0568"]}}'
ACK = '{"op":11}'
SERVER_HEARTBEAT = '{"op":1,"d":null}'
RECONNECT = '{"op":7,"d":null}'
INVALID_SESSION_RESUMABLE = '{"op":9,"d":true}'
INVALID_SESSION = '{"op":9,"d":false}'
READY = (
    '{"op":0,"s":1,"t":"READY","d":{"v":10,"user":{"id":"80351110224678912","username":"bot",'
    '"bot":true},"guilds":[{"id":"81384788765712384","unavailable":true}],'
    '"session_id":"' + SESSION_ID + '","resume_gateway_url":"' + RESUME_URL + '",'
    '"shard":[0,1],"application":{"id":"80351110224678912","flags":0}}}'
)
RESUMED = '{"op":0,"s":43,"t":"RESUMED","d":{"_trace":["x"]}}'

FATAL_CODES = [4004, 4010, 4011, 4012, 4013, 4014]
RESUME_CODES = [4000, 4001, 4002, 4003, 4005, 4008, None, 1006, 1011, 4900]


def D(t, seq, d):
    """A dispatch as ``view`` shows it: its name, seq and ``d`` decoded from the bytes it carries."""
    return ("dispatch", t, seq, d)


def view(actions):
    return [D(a.t, a.seq, a.d()) if isinstance(a, Dispatch) else a for a in actions]


def dispatch(seq, t="MESSAGE_CREATE", d=None) -> str:
    return json.dumps({"op": 0, "s": seq, "t": t, "d": d if d is not None else {"id": str(seq)}})


def machine(**kw) -> ShardMachine:
    kw.setdefault("compress", False)
    kw.setdefault("rng", lambda: 0.5)
    shard_id = kw.pop("shard_id", 0)
    shard_count = kw.pop("shard_count", 1)
    return ShardMachine(shard_id, shard_count, TOKEN, **kw)


def sends(actions) -> list[dict]:
    return [json.loads(a.text) for a in actions if isinstance(a, Send)]


def only_send(actions) -> dict:
    assert len(actions) == 1 and isinstance(actions[0], Send), actions
    payload = json.loads(actions[0].text)
    assert actions[0].op == payload["op"]
    return payload


def ready_machine(now: float = 0.0, **kw) -> ShardMachine:
    """Connected, identified and READY at ``now`` (HELLO with rng 0.5: first beat at now+20.625)."""
    m = machine(**kw)
    m.on_connect(now)
    assert m.receive(HELLO, now) == [RequestIdentify()]
    assert only_send(m.identify_granted(now))["op"] == 2
    acts = m.receive(READY, now)
    assert acts[-1] == SessionReady(False, SESSION_ID)
    return m


def resumed_machine(now: float = 0.0, seq: int | None = 42, **kw) -> ShardMachine:
    m = machine(session=SavedSession(SESSION_ID, seq, RESUME_URL), **kw)
    m.on_connect(now)
    assert only_send(m.receive(HELLO, now))["op"] == 6
    return m


def assert_resumable_close(actions) -> CloseConnection:
    assert len(actions) == 1 and isinstance(actions[0], CloseConnection), actions
    close = actions[0]
    assert close.code not in (1000, 1001)
    assert 4000 <= close.code <= 4999
    return close


# -- heartbeats -----------------------------------------------------------------------------------
def test_hello_schedules_first_heartbeat_at_interval_times_random():
    m = machine(rng=lambda: 0.5)
    m.on_connect(100.0)
    assert m.next_deadline == 100.0 + HELLO_TIMEOUT_S
    assert m.receive(HELLO, 100.0) == [RequestIdentify()]
    assert m.heartbeat_interval == 41.25
    assert m.next_deadline == 100.0 + 41.25 * 0.5  # 120.625
    assert m.on_timer(120.6) == []
    assert only_send(m.on_timer(120.625)) == {"op": 1, "d": None}
    assert m.next_deadline == 120.625 + 41.25


@pytest.mark.parametrize("r", [0.0, 0.25, 0.999])
def test_first_heartbeat_jitter_uses_rng(r):
    m = machine(rng=lambda: r)
    m.on_connect(0.0)
    m.receive('{"op":10,"d":{"heartbeat_interval":10000}}', 0.0)
    assert m.next_deadline == pytest.approx(10.0 * r)
    assert only_send(m.on_timer(10.0 * r))["op"] == 1


def test_heartbeats_every_interval_with_acks_and_latency():
    m = ready_machine(0.0)
    t = 20.625
    for i in range(5):
        assert m.next_deadline == pytest.approx(t)
        assert m.on_timer(t - 0.001) == []
        assert only_send(m.on_timer(t)) == {"op": 1, "d": 1}
        assert m.receive(ACK, t + 0.05 * (i + 1)) == []
        assert m.latency == pytest.approx(0.05 * (i + 1))
        t += 41.25


def test_heartbeat_d_is_last_seq_or_null():
    m = machine()
    m.on_connect(0.0)
    m.receive(HELLO, 0.0)
    assert only_send(m.on_timer(20.625)) == {"op": 1, "d": None}
    m.receive(ACK, 20.7)
    m.identify_granted(21.0)
    m.receive(READY, 21.0)
    for s in (2, 3, 4):
        m.receive(dispatch(s), 22.0)
    assert only_send(m.on_timer(61.875)) == {"op": 1, "d": 4}


def test_server_heartbeat_request_answered_at_once():
    m = ready_machine(0.0)
    m.receive(dispatch(7), 1.0)
    deadline = m.next_deadline
    assert only_send(m.receive(SERVER_HEARTBEAT, 5.0)) == {"op": 1, "d": 7}
    # The regular schedule is not disturbed, and the answer's ACK gives the latency.
    assert m.next_deadline == deadline
    m.receive(ACK, 5.25)
    assert m.latency == 0.25


def test_server_heartbeat_before_hello_still_answered():
    m = machine()
    m.on_connect(0.0)
    assert only_send(m.receive(SERVER_HEARTBEAT, 1.0)) == {"op": 1, "d": None}


def test_ack_without_heartbeat_leaves_latency_unset():
    m = ready_machine(0.0)
    assert m.receive(ACK, 3.0) == []
    assert m.latency is None


def test_zombie_connection_closes_then_resumes():
    m = ready_machine(0.0)
    assert only_send(m.on_timer(20.625))["op"] == 1
    # No ACK: at the next heartbeat the connection is a zombie.
    assert m.on_timer(61.874) == []
    close = assert_resumable_close(m.on_timer(61.875))
    assert "zombie" in close.reason
    assert m.phase is Phase.CLOSING
    assert m.next_deadline is None
    assert m.receive(dispatch(2), 61.9) == []  # frames after our close are ignored
    assert m.on_timer(200.0) == []
    decision = m.on_close(close.code)
    assert decision == Reconnect(resume=True, delay=0.0, reason=close.reason)
    assert m.phase is Phase.DISCONNECTED
    assert m.connect_url(GATEWAY) == RESUME_URL + "/?v=10&encoding=json"


def test_zombie_detected_even_if_server_close_code_is_normal():
    # Whatever code the socket reports after our close, our own decision (resume) stands.
    m = ready_machine(0.0)
    m.on_timer(20.625)
    assert_resumable_close(m.on_timer(61.875))
    assert m.on_close(1000).resume is True
    assert m.session_id == SESSION_ID


def test_late_ack_after_zombie_threshold_is_too_late():
    m = ready_machine(0.0)
    m.on_timer(20.625)
    assert_resumable_close(m.on_timer(61.875))
    assert m.receive(ACK, 61.9) == []
    assert m.phase is Phase.CLOSING


def test_hello_timeout():
    m = ready_machine(0.0)
    m.on_close(4000)
    m.on_connect(100.0)
    assert m.next_deadline == 100.0 + HELLO_TIMEOUT_S
    assert m.on_timer(119.99) == []
    close = assert_resumable_close(m.on_timer(120.0))
    assert "HELLO" in close.reason
    assert m.on_close(1006) == Reconnect(True, 0.0, close.reason)


def test_hello_timeout_cleared_by_hello():
    m = machine()
    m.on_connect(0.0)
    m.receive(HELLO, 19.0)
    assert m.next_deadline == 19.0 + 20.625
    assert m.on_timer(20.0) == []


@pytest.mark.parametrize(
    "frame",
    [
        '{"op":10,"d":{}}',
        '{"op":10,"d":null}',
        '{"op":10}',
        '{"op":10,"d":[41250]}',
        '{"op":10,"d":"41250"}',
        '{"op":10,"d":{"heartbeat_interval":0}}',
        '{"op":10,"d":{"heartbeat_interval":-5}}',
        '{"op":10,"d":{"heartbeat_interval":"soon"}}',
        '{"op":10,"d":{"heartbeat_interval":{}}}',
        '{"op":10,"d":{"heartbeat_interval":NaN}}',
        '{"op":10,"d":{"heartbeat_interval":Infinity}}',
        '{"op":10,"d":{"heartbeat_interval":1e999}}',
        '{"op":10,"d":{"heartbeat_interval":' + "9" * 400 + "}}",
    ],
)
def test_bad_hello_closes_and_resumes(frame):
    m = resumed_machine(0.0)
    m.on_close(4000)
    m.on_connect(10.0)
    actions = m.receive(frame, 10.0)
    if actions and type(actions[0]) is SkippedFrame:
        # JSON that does not decode (NaN, 1e999 for orjson) is no HELLO at all: skipped, and the
        # HELLO deadline closes the connection resumably
        actions = m.on_timer(10.0 + HELLO_TIMEOUT_S)
    close = assert_resumable_close(actions)
    assert m.on_close(close.code) == Reconnect(True, 0.0, close.reason)


def test_second_hello_on_same_connection_ignored():
    m = ready_machine(0.0)
    deadline = m.next_deadline
    assert m.receive('{"op":10,"d":{"heartbeat_interval":1000}}', 5.0) == []
    assert m.heartbeat_interval == 41.25
    assert m.next_deadline == deadline


# -- identify -------------------------------------------------------------------------------------
def test_identify_only_after_grant_with_full_contents():
    presence = {"since": None, "activities": [{"name": "tests", "type": 0}], "status": "online", "afk": False}
    m = machine(shard_id=3, shard_count=16, intents=513, large_threshold=250, presence=presence)
    assert m.identify_granted(0.0) == []  # not connected
    m.on_connect(0.0)
    assert m.identify_granted(0.0) == []  # no HELLO yet
    actions = m.receive(HELLO, 0.0)
    assert actions == [RequestIdentify()]
    assert m.phase is Phase.IDENTIFYING
    payload = only_send(m.identify_granted(1.5))
    assert payload == {
        "op": 2,
        "d": {
            "token": TOKEN,
            "properties": IDENTIFY_PROPERTIES,
            "intents": 513,
            "shard": [3, 16],
            "large_threshold": 250,
            "presence": presence,
        },
    }
    props = payload["d"]["properties"]
    assert set(props) == {"os", "browser", "device"}
    assert all(isinstance(v, str) and v for v in props.values())


def test_identify_minimal_contents():
    m = machine(shard_id=0, shard_count=1)
    m.on_connect(0.0)
    m.receive(HELLO, 0.0)
    d = only_send(m.identify_granted(0.0))["d"]
    assert d == {"token": TOKEN, "properties": IDENTIFY_PROPERTIES, "intents": 0, "shard": [0, 1]}


def test_grant_after_the_connection_closed_sends_nothing():
    m = machine()
    m.on_connect(0.0)
    m.receive(HELLO, 0.0)
    assert m.on_close(1006) == Reconnect(False, 0.0, "closed by server: 1006")
    assert m.identify_granted(5.0) == []
    m.on_connect(6.0)
    assert m.identify_granted(6.0) == []  # new socket, no HELLO yet


def test_identify_payload_with_unicode_presence_is_utf8_text():
    presence = {"activities": [{"name": "café ☕ / ünïcode", "type": 0}], "status": "idle", "since": None, "afk": False}
    m = machine(presence=presence)
    m.on_connect(0.0)
    m.receive(HELLO, 0.0)
    (send,) = m.identify_granted(0.0)
    assert "café ☕ / ünïcode" in send.text
    assert json.loads(send.text)["d"]["presence"] == presence


def test_oversized_presence_rejected_at_construction():
    presence = {"activities": [{"name": "x" * 5000, "type": 0}], "status": "online", "since": None, "afk": False}
    with pytest.raises(ValueError, match="4096"):
        machine(presence=presence)


def test_presence_check_does_not_disturb_state():
    m = machine(presence={"status": "dnd", "activities": [], "since": None, "afk": False})
    assert m.phase is Phase.DISCONNECTED
    assert m.identify_granted(0.0) == []


# -- READY and sessions ---------------------------------------------------------------------------
def test_ready_stores_session_and_emits_dispatch_and_session_ready():
    m = machine()
    m.on_connect(0.0)
    m.receive(HELLO, 0.0)
    m.identify_granted(0.0)
    actions = m.receive(READY, 1.0)
    assert len(actions) == 2
    d, ready = actions
    assert isinstance(d, Dispatch)
    assert (d.t, d.seq) == ("READY", 1)
    assert d.d()["session_id"] == SESSION_ID and d.d()["v"] == 10
    assert ready == SessionReady(resumed=False, session_id=SESSION_ID)
    assert m.phase is Phase.READY
    assert (m.session_id, m.resume_url, m.seq) == (SESSION_ID, RESUME_URL, 1)
    assert m.resumable
    assert m.saved_session() == SavedSession(SESSION_ID, 1, RESUME_URL)


def test_saved_session_none_before_ready():
    m = machine()
    assert m.saved_session() is None
    assert not m.resumable


def test_connect_url_fresh_and_resume_compressed():
    m = machine(compress=True)
    assert m.connect_url(GATEWAY) == GATEWAY + "/?v=10&encoding=json&compress=zlib-stream"
    m2 = machine(compress=True, session=SavedSession(SESSION_ID, 5, RESUME_URL + "/?v=9&encoding=etf"))
    assert m2.connect_url(GATEWAY) == RESUME_URL + "/?v=10&encoding=json&compress=zlib-stream"


def test_connect_url_uses_resume_gateway_url_after_ready():
    m = ready_machine(0.0)
    assert m.connect_url(GATEWAY) == RESUME_URL + "/?v=10&encoding=json"
    assert "compress" not in m.connect_url(GATEWAY)
    m.on_close(4009)  # session gone: back to the main gateway
    assert m.connect_url(GATEWAY) == GATEWAY + "/?v=10&encoding=json"


def test_resume_on_hello_when_resumable():
    m = machine(session=SavedSession(SESSION_ID, 42, RESUME_URL))
    assert m.resumable
    m.on_connect(0.0)
    actions = m.receive(HELLO, 0.0)
    assert only_send(actions) == {"op": 6, "d": {"token": TOKEN, "session_id": SESSION_ID, "seq": 42}}
    assert m.phase is Phase.RESUMING
    assert m.identify_granted(0.0) == []  # resuming never identifies
    # Missed events are replayed, then RESUMED.
    for s in (43, 44, 45):
        assert view(m.receive(dispatch(s), 0.5)) == [D("MESSAGE_CREATE", s, {"id": str(s)})]
    actions = m.receive(RESUMED, 0.6)
    assert view(actions) == [D("RESUMED", 43, {"_trace": ["x"]}), SessionReady(resumed=True, session_id=SESSION_ID)]
    assert m.phase is Phase.READY
    assert m.seq == 45  # RESUMED's lower s does not move the counter back
    assert only_send(m.on_timer(20.625)) == {"op": 1, "d": 45}


def test_resume_with_null_seq():
    m = resumed_machine(0.0, seq=None)
    m.on_close(4000)
    m.on_connect(1.0)
    assert only_send(m.receive(HELLO, 1.0))["d"] == {"token": TOKEN, "session_id": SESSION_ID, "seq": None}


def test_reconnect_after_ready_resumes_with_latest_seq():
    m = ready_machine(0.0)
    for s in range(2, 11):
        m.receive(dispatch(s), 1.0)
    assert m.on_close(1006) == Reconnect(True, 0.0, "closed by server: 1006")
    m.on_connect(5.0)
    assert only_send(m.receive(HELLO, 5.0)) == {"op": 6, "d": {"token": TOKEN, "session_id": SESSION_ID, "seq": 10}}


# -- server requests ------------------------------------------------------------------------------
def test_op7_reconnect_closes_and_resumes():
    m = ready_machine(0.0)
    m.receive(dispatch(5), 1.0)
    close = assert_resumable_close(m.receive(RECONNECT, 2.0))
    assert m.on_close(close.code) == Reconnect(True, 0.0, close.reason, asked=True)
    assert (m.session_id, m.seq) == (SESSION_ID, 5)


def test_op9_resumable_resumes():
    m = resumed_machine(0.0)
    close = assert_resumable_close(m.receive(INVALID_SESSION_RESUMABLE, 1.0))
    decision = m.on_close(close.code)
    assert decision.resume is True and decision.delay == 0.0
    assert m.session_id == SESSION_ID


def test_op9_true_without_a_session_identifies():
    m = machine()
    m.on_connect(0.0)
    m.receive(HELLO, 0.0)
    close = assert_resumable_close(m.receive(INVALID_SESSION_RESUMABLE, 1.0))
    decision = m.on_close(close.code)
    assert isinstance(decision, Reconnect) and decision.resume is False


@pytest.mark.parametrize(("r", "delay"), [(0.0, 1.0), (0.5, 3.0), (0.75, 4.0), (0.999999, 4.999996)])
def test_op9_false_forgets_session_and_waits_1_to_5_s(r, delay):
    m = resumed_machine(0.0, rng=lambda: r)
    close = assert_resumable_close(m.receive(INVALID_SESSION, 1.0))
    assert (m.session_id, m.resume_url, m.seq) == (None, None, None)
    decision = m.on_close(close.code)
    assert isinstance(decision, Reconnect)
    assert decision.resume is False
    assert 1.0 <= decision.delay <= 5.0
    assert decision.delay == pytest.approx(delay)
    assert m.saved_session() is None
    assert m.connect_url(GATEWAY) == GATEWAY + "/?v=10&encoding=json"
    m.on_connect(10.0)
    assert m.receive(HELLO, 10.0) == [RequestIdentify()]


def test_unknown_op_ignored():
    m = ready_machine(0.0)
    assert m.receive('{"op":42,"d":{"x":1}}', 1.0) == []
    assert m.receive('{"op":"10","d":{}}', 1.0) == []
    assert m.phase is Phase.READY


# -- close codes ----------------------------------------------------------------------------------
@pytest.mark.parametrize("code", FATAL_CODES)
def test_fatal_close_codes(code):
    m = ready_machine(0.0)
    decision = m.on_close(code)
    assert isinstance(decision, Fatal)
    assert decision.code == code
    assert str(code) in decision.reason
    assert m.phase is Phase.FATAL
    assert m.stop() == []
    assert m.receive(HELLO, 1.0) == []


@pytest.mark.parametrize("code", FATAL_CODES)
def test_fatal_close_codes_during_identify(code):
    m = machine()
    m.on_connect(0.0)
    m.receive(HELLO, 0.0)
    m.identify_granted(0.0)
    decision = m.on_close(code)
    assert isinstance(decision, Fatal) and decision.code == code
    assert m.phase is Phase.FATAL
    assert m.on_timer(1000.0) == []


@pytest.mark.parametrize("code", [4007, 4009])
def test_reidentify_close_codes_forget_the_session(code):
    m = ready_machine(0.0)
    decision = m.on_close(code)
    assert isinstance(decision, Reconnect)
    assert decision.resume is False
    assert (m.session_id, m.resume_url, m.seq) == (None, None, None)
    m.on_connect(1.0)
    assert m.receive(HELLO, 1.0) == [RequestIdentify()]


@pytest.mark.parametrize("code", RESUME_CODES)
def test_other_close_codes_resume(code):
    m = ready_machine(0.0)
    m.receive(dispatch(9), 1.0)
    decision = m.on_close(code)
    assert isinstance(decision, Reconnect)
    assert decision.resume is True
    assert decision.delay == 0.0
    assert m.saved_session() == SavedSession(SESSION_ID, 9, RESUME_URL)


@pytest.mark.parametrize("code", [1000, 1001])
def test_normal_close_by_server_tries_a_resume_first(code):
    # A node going away (1001) must not cost an identify; if the session is really gone,
    # Discord answers the RESUME with op 9 false and the shard identifies then.
    m = ready_machine(0.0)
    decision = m.on_close(code)
    assert isinstance(decision, Reconnect) and decision.resume is True
    assert m.saved_session() is not None


@pytest.mark.parametrize("code", RESUME_CODES)
def test_resume_codes_without_session_identify(code):
    m = machine()
    m.on_connect(0.0)
    m.receive(HELLO, 0.0)
    decision = m.on_close(code)
    assert isinstance(decision, Reconnect) and decision.resume is False


def test_reasons_describe_the_code():
    m = ready_machine(0.0)
    assert m.on_close(4004).reason == "closed by server: 4004 authentication failed (bad token)"
    m2 = ready_machine(0.0)
    assert m2.on_close(4008).reason == "closed by server: 4008 rate limited"
    m3 = ready_machine(0.0)
    assert m3.on_close(None).reason == "closed by server: connection lost"


# -- bad frames -----------------------------------------------------------------------------------
def zlib_messages(*msgs: bytes) -> list[bytes]:
    c = zlib.compressobj()
    return [c.compress(m) + c.flush(zlib.Z_SYNC_FLUSH) for m in msgs]


BAD_TEXT_FRAMES = [
    "",
    "{",
    "not json",
    '{"op":0,"d":',
    "[]",
    "[1,2]",
    "1",
    "null",
    '"op"',
    "true",
    '{"d":{"heartbeat_interval":41250}}',
    '{"t":"READY","s":1}',
    "[" * 100000,
]
BAD_BYTES_FRAMES = [b"\xff\xfe\x00", b'{"op":1', b"[]", b"\x80"]


@pytest.mark.parametrize("frame", BAD_TEXT_FRAMES + BAD_BYTES_FRAMES)
def test_a_message_that_is_not_a_gateway_payload_is_counted_and_skipped(frame):
    """Resuming would only have Discord send it again (and again): skip it, stay connected."""
    m = ready_machine(0.0)
    [skipped] = m.receive(frame, 1.0)
    assert type(skipped) is SkippedFrame and skipped.reason.startswith("not a gateway payload")
    assert m.phase is Phase.READY and m.bad_frames == 1
    assert view(m.receive(dispatch(3), 1.1)) == [D("MESSAGE_CREATE", 3, {"id": "3"})]  # and on it goes


def test_a_dispatch_that_does_not_decode_moves_the_seq_past_it():
    m = ready_machine(0.0)
    before = m.seq
    [skipped] = m.receive('{"t":"MESSAGE_CREATE","s":57,"op":0,"d":{"content":"\\ud8', 1.0)
    assert skipped.seq == 57 and m.seq == 57 > before  # a RESUME will not ask for it again
    [skipped] = m.receive('{"s": 12, "op": 0, "d": [', 1.1)
    assert skipped.seq == 12 and m.seq == 57  # never backwards
    [skipped] = m.receive('{"op":11,"s":99', 1.2)
    assert skipped.seq is None and m.seq == 57  # not a dispatch: its "s" means nothing


@pytest.mark.parametrize(
    "frame",
    [
        b"garbage\x00\x00\xff\xff",
        b"\x00\x00\xff\xff",
        b"\x78\x01\x00\x10\x00\x00\x00\xff\xff",
    ],
)
def test_a_broken_zlib_stream_closes_and_resumes(frame):
    m = resumed_machine(0.0, compress=True)
    close = assert_resumable_close(m.receive(frame, 1.0))
    assert close.reason.startswith("bad frame")
    assert m.on_close(close.code).resume is True


@pytest.mark.parametrize(
    "frame",
    zlib_messages(b"not json") + zlib_messages(b"[1]") + zlib_messages(b'{"no":"op"}') + zlib_messages(b"\xff\xfe"),
)
def test_a_bad_payload_in_a_good_zlib_stream_is_skipped(frame):
    m = resumed_machine(0.0, compress=True)
    phase = m.phase
    [skipped] = m.receive(frame, 1.0)
    assert type(skipped) is SkippedFrame and m.bad_frames == 1 and m.phase is phase


def test_truncated_zlib_message_then_garbage():
    m = machine(compress=True, session=SavedSession(SESSION_ID, 3, RESUME_URL))
    m.on_connect(0.0)
    hello, ready = zlib_messages(HELLO.encode(), READY.encode())
    assert m.receive(hello[:7], 0.0) == []
    assert m.receive(hello[7:], 0.0)[0].op == 6
    assert m.receive(ready[: len(ready) // 2], 0.1) == []
    actions = m.receive(b"\xde\xad\xbe\xef\xff\xff\xff\xff\xff\x00\x00\xff\xff", 0.2)
    # zlib took the garbage without an error: what came out is no payload, so it is skipped; a
    # stream that stays garbled gets no heartbeat ACK, and the zombie check resumes it
    assert [type(a) for a in actions] == [SkippedFrame] and m.bad_frames == 1
    assert [type(a) for a in m.on_timer(200.0)] == [Send]  # a heartbeat, never acknowledged
    close = assert_resumable_close(m.on_timer(400.0))
    assert m.on_close(close.code).resume is True


def test_compressed_session_with_split_frames():
    m = machine(compress=True)
    m.on_connect(0.0)
    msgs = zlib_messages(HELLO.encode(), READY.encode(), dispatch(2).encode(), b'{"op":11}')
    hello, ready, ev, ack = msgs
    assert m.receive(hello, 0.0) == [RequestIdentify()]
    m.identify_granted(0.0)
    assert m.receive(ready[:3], 0.5) == []
    assert m.receive(ready[3:-2], 0.5) == []
    assert m.receive(ready[-2:], 0.5)[-1] == SessionReady(False, SESSION_ID)
    assert view(m.receive(ev, 0.6)) == [D("MESSAGE_CREATE", 2, {"id": "2"})]
    m.on_timer(20.625)
    assert m.receive(ack, 20.75) == []
    assert m.latency == 0.125


def test_each_connection_gets_a_fresh_inflate_context():
    m = machine(compress=True)
    m.on_connect(0.0)
    hello, _ready = zlib_messages(HELLO.encode(), READY.encode())
    m.receive(hello, 0.0)
    m.on_close(1006)
    m.on_connect(1.0)
    # The new connection's server starts a new zlib stream (with its own header).
    (hello2,) = zlib_messages(HELLO.encode())
    assert m.receive(hello2, 1.0) == [RequestIdentify()]


def test_uncompressed_binary_json_frame_accepted():
    m = machine(compress=False)
    m.on_connect(0.0)
    assert m.receive(HELLO.encode(), 0.0) == [RequestIdentify()]


def test_text_frame_accepted_with_compress_on():
    m = machine(compress=True)
    m.on_connect(0.0)
    assert m.receive(HELLO, 0.0) == [RequestIdentify()]


def test_frames_before_connect_ignored():
    m = machine()
    assert m.receive(HELLO, 0.0) == []
    assert m.receive("garbage", 0.0) == []
    assert m.phase is Phase.DISCONNECTED


@pytest.mark.parametrize(
    ("session_id", "url"),
    [
        (123, RESUME_URL),
        (None, RESUME_URL),
        (["x"], RESUME_URL),
        (SESSION_ID, 5),
        (SESSION_ID, None),
        (SESSION_ID, {"url": RESUME_URL}),
        (SESSION_ID, "wss://["),  # urlsplit raises on it
        (SESSION_ID, ""),
        (SESSION_ID, "gateway.discord.gg"),
        (SESSION_ID, "https://gateway.discord.gg"),
    ],
)
def test_ready_with_malformed_fields_is_not_resumable(session_id, url):
    m = machine()
    m.on_connect(0.0)
    m.receive(HELLO, 0.0)
    m.identify_granted(0.0)
    frame = json.dumps({"op": 0, "s": 1, "t": "READY", "d": {"session_id": session_id, "resume_gateway_url": url}})
    acts = m.receive(frame, 0.0)
    assert isinstance(acts[0], Dispatch) and isinstance(acts[1], SessionReady)
    assert not m.resumable
    assert m.saved_session() is None
    assert m.on_close(4000).resume is False
    # The next connection goes to the main gateway and identifies.
    assert m.connect_url(GATEWAY) == GATEWAY + "/?v=10&encoding=json"
    m.on_connect(1.0)
    assert m.receive(HELLO, 1.0) == [RequestIdentify()]


def test_ready_with_a_plain_ws_resume_url_is_resumable():
    m = machine()
    m.on_connect(0.0)
    m.receive(HELLO, 0.0)
    m.identify_granted(0.0)
    m.receive(json.dumps({"op": 0, "s": 1, "t": "READY", "d": {"session_id": "s", "resume_gateway_url": "ws://127.0.0.1:8765/resume"}}), 0.0)
    assert m.saved_session() == SavedSession("s", 1, "ws://127.0.0.1:8765/resume")
    assert m.connect_url(GATEWAY) == "ws://127.0.0.1:8765/resume?v=10&encoding=json"


# -- seq tracking ---------------------------------------------------------------------------------
def test_seq_tracking_keeps_the_max_and_ignores_null():
    m = ready_machine(0.0)
    expected = [
        (dispatch(5), 5),
        (dispatch(3), 5),  # an older seq never moves it back
        ('{"op":0,"s":null,"t":"X","d":{}}', 5),
        ('{"op":0,"t":"X","d":{}}', 5),
        ('{"op":0,"s":true,"t":"X","d":{}}', 5),
        ('{"op":0,"s":6.0,"t":"X","d":{}}', 5),
        ('{"op":0,"s":"7","t":"X","d":{}}', 5),
        (dispatch(8), 8),
        ('{"op":0,"s":9,"d":{}}', 9),  # no t: not routed, still counted
        ('{"op":0,"s":10,"t":null,"d":{}}', 10),
    ]
    for frame, seq in expected:
        m.receive(frame, 1.0)
        assert m.seq == seq, frame
    assert only_send(m.receive(SERVER_HEARTBEAT, 2.0)) == {"op": 1, "d": 10}


def test_dispatch_without_name_is_not_emitted():
    m = ready_machine(0.0)
    assert m.receive('{"op":0,"s":9,"d":{}}', 1.0) == []
    assert m.receive('{"op":0,"s":10,"t":5,"d":{}}', 1.0) == []


def test_dispatch_action_carries_the_frame():
    m = ready_machine(0.0)
    acts = m.receive('{"op":0,"s":2,"t":"GUILD_CREATE","d":{"id":"81384788765712384","name":"Discord API"}}', 1.0)
    assert view(acts) == [D("GUILD_CREATE", 2, {"id": "81384788765712384", "name": "Discord API"})]
    assert view(m.receive('{"op":0,"s":null,"t":"PRESENCE_UPDATE","d":null}', 1.0)) == [
        D("PRESENCE_UPDATE", None, None)
    ]


def test_new_identify_starts_seq_afresh():
    # A READY without resume_gateway_url (older gateways) leaves the session unresumable; the
    # next connection identifies anew, and the new session's seq must not inherit the old one.
    m = machine()
    m.on_connect(0.0)
    m.receive(HELLO, 0.0)
    m.identify_granted(0.0)
    m.receive('{"op":0,"s":1,"t":"READY","d":{"session_id":"old"}}', 0.0)
    for s in range(2, 51):
        m.receive(dispatch(s), 1.0)
    assert m.seq == 50
    assert m.on_close(4000).resume is False
    m.on_connect(2.0)
    assert m.receive(HELLO, 2.0) == [RequestIdentify()]
    m.identify_granted(2.0)
    m.receive(READY, 3.0)
    assert m.seq == 1
    assert only_send(m.on_timer(22.625)) == {"op": 1, "d": 1}


def test_huge_seq_never_breaks_heartbeats():
    m = ready_machine(0.0)
    big = "9" * 4200  # ujson parses it as a Python int; orjson refuses the frame (a resume)
    first = m.receive('{"op":0,"s":' + big + ',"t":"X","d":{}}', 1.0)
    if any(isinstance(a, CloseConnection) for a in first):
        assert m.phase is Phase.CLOSING and m.receive(SERVER_HEARTBEAT, 2.0) == []
        return
    acts = m.receive(SERVER_HEARTBEAT, 2.0)
    assert len(acts) == 1
    assert isinstance(acts[0], (Send, CloseConnection))
    for a in acts + m.on_timer(20.625):
        if isinstance(a, Send):
            assert len(a.text.encode()) <= 4096


# -- stop -----------------------------------------------------------------------------------------
def test_stop_closes_with_a_resumable_code():
    m = ready_machine(0.0)
    m.receive(dispatch(12), 1.0)
    close = assert_resumable_close(m.stop())
    assert m.stop() == []  # already closing
    assert m.on_close(close.code) == Reconnect(True, 0.0, close.reason)
    assert m.saved_session() == SavedSession(SESSION_ID, 12, RESUME_URL)


def test_stop_when_disconnected_does_nothing():
    m = machine()
    assert m.stop() == []
    m2 = ready_machine(0.0)
    m2.on_close(1006)
    assert m2.stop() == []


def test_stop_while_awaiting_hello():
    m = machine()
    m.on_connect(0.0)
    assert_resumable_close(m.stop())
    assert m.next_deadline is None


# -- the token never leaks ------------------------------------------------------------------------
def test_token_never_in_reasons_or_repr():
    texts: list[str] = []

    def collect(actions):
        for a in actions if isinstance(actions, list) else [actions]:
            if not isinstance(a, Send):  # IDENTIFY/RESUME carry the token by necessity
                texts.append(repr(a))
            if isinstance(a, (CloseConnection, Reconnect, Fatal)):
                texts.append(a.reason)
            if isinstance(a, Send) and a.op not in (Op.IDENTIFY, Op.RESUME):
                texts.append(a.text)

    m = ready_machine(0.0)
    texts += [repr(m), str(m)]
    collect(m.on_timer(20.625))
    collect(m.on_timer(61.875))  # zombie
    collect(m.on_close(4900))
    m.on_connect(70.0)
    collect(m.receive(HELLO, 70.0))
    collect(m.receive("not json", 71.0))
    collect(m.on_close(None))
    m.on_connect(80.0)
    collect(m.on_timer(100.0))  # no HELLO
    collect(m.on_close(1006))
    m.on_connect(110.0)
    collect(m.receive(HELLO, 110.0))
    collect(m.receive(RECONNECT, 111.0))
    collect(m.on_close(4900))
    m.on_connect(120.0)
    collect(m.receive(HELLO, 120.0))
    collect(m.receive(INVALID_SESSION, 121.0))
    collect(m.on_close(4900))
    m.on_connect(130.0)
    collect(m.receive(HELLO, 130.0))
    collect(m.stop())
    collect(m.on_close(4900))
    for code in [4004, 4014, 4007, 1000, 4000]:
        m2 = ready_machine(0.0)
        collect(m2.on_close(code))
    texts += [repr(m), str(m), repr(vars(m).get("phase"))]
    assert texts
    for t in texts:
        assert TOKEN not in t
        assert "s3cr3t" not in t


# -- fuzzing --------------------------------------------------------------------------------------
KNOWN_ACTIONS = (Send, Dispatch, RequestIdentify, CloseConnection, SessionReady, SkippedFrame)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
ops = st.one_of(st.sampled_from([0, 1, 7, 9, 10, 11, 2, 6, 42]), json_values)
payloads = st.fixed_dictionaries(
    {"op": ops},
    optional={
        "d": st.one_of(
            json_values,
            st.fixed_dictionaries({"heartbeat_interval": json_values}),
            st.fixed_dictionaries(
                {},
                optional={
                    "session_id": json_values,
                    "resume_gateway_url": json_values,
                    "heartbeat_interval": st.integers(-10, 10**400),
                },
            ),
        ),
        "s": st.one_of(st.none(), st.integers(-5, 10**4200), json_values),
        "t": st.one_of(st.sampled_from(["READY", "RESUMED", "MESSAGE_CREATE"]), json_values),
    },
)


urls = st.one_of(
    st.sampled_from([RESUME_URL, "ws://127.0.0.1:1/resume", "wss://[", "", "x://", "wss://"]), json_values
)
numbers = st.one_of(
    st.integers(-10, 10**400),
    st.integers(-10, 10**4200),
    st.floats(allow_nan=True, allow_infinity=True),
    json_values,
)
semantic = st.one_of(
    st.builds(lambda v: {"op": 10, "d": {"heartbeat_interval": v}}, numbers),
    st.builds(lambda s, t: {"op": 0, "s": s, "t": t, "d": {}}, numbers, st.sampled_from(["X", "RESUMED"])),
    st.builds(
        lambda s, sid, url: {"op": 0, "s": s, "t": "READY", "d": {"session_id": sid, "resume_gateway_url": url}},
        numbers,
        st.one_of(st.just(SESSION_ID), json_values),
        urls,
    ),
    st.builds(lambda op, d: {"op": op, "d": d}, st.sampled_from([1, 7, 9, 11]), json_values),
)


def _json_any(p) -> str:
    # json.dumps writes NaN/Infinity (ujson reads them) and, unlimited, any int.
    import sys

    old = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(0)
    try:
        return json.dumps(p)
    finally:
        sys.set_int_max_str_digits(old)


frames = st.one_of(
    semantic.map(_json_any),
    st.binary(max_size=64),
    st.binary(max_size=60).map(lambda b: b + b"\x00\x00\xff\xff"),
    st.text(alphabet=st.characters(blacklist_categories=()), max_size=64),
    payloads.map(_json_any),
    payloads.map(lambda p: _json_any(p).encode()),
)


def _drive(m: ShardMachine, steps) -> None:
    now = 0.0
    m.on_connect(now)
    for frame, dt in steps:
        now += dt
        acts = m.receive(frame, now) + m.on_timer(now)
        for a in acts:
            assert isinstance(a, KNOWN_ACTIONS), a
            if isinstance(a, Send):
                assert len(a.text.encode()) <= 4096
                json.loads(a.text)
            if isinstance(a, CloseConnection):
                assert a.code not in (1000, 1001)
                assert TOKEN not in a.reason
        if m.phase is Phase.IDENTIFYING:
            for a in m.identify_granted(now):
                assert isinstance(a, Send) and a.op == 2
        if m.phase is Phase.CLOSING:
            decision = m.on_close(None)
            assert isinstance(decision, Reconnect)
            assert 0.0 <= decision.delay <= 5.0
            assert TOKEN not in decision.reason
            # The next connection can always be built.
            assert m.connect_url(GATEWAY).startswith(("ws://", "wss://"))
            m.saved_session()
            m.on_connect(now)
    assert TOKEN not in repr(m)


step = st.tuples(frames, st.floats(0.0, 30.0))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(step, max_size=25), compress=st.booleans())
def test_fuzz_receive_never_raises(steps, compress):
    _drive(machine(compress=compress), steps)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(step, max_size=25), compress=st.booleans())
def test_fuzz_receive_never_raises_with_a_session(steps, compress):
    _drive(machine(compress=compress, session=SavedSession(SESSION_ID, 3, RESUME_URL)), steps)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.lists(st.binary(min_size=0, max_size=40), max_size=20))
def test_fuzz_compressed_garbage_after_a_valid_prefix(data):
    m = machine(compress=True)
    m.on_connect(0.0)
    hello, ready = zlib_messages(HELLO.encode(), READY.encode())
    assert m.receive(hello, 0.0) == [RequestIdentify()]
    m.identify_granted(0.0)
    m.receive(ready[: len(ready) // 2], 0.0)
    for chunk in data:
        for a in m.receive(chunk + b"\x00\x00\xff\xff", 1.0):
            assert isinstance(a, KNOWN_ACTIONS)


def test_no_zombie_verdict_while_the_driver_stopped_reading_on_purpose():
    m = ready_machine(0.0)
    assert only_send(m.on_timer(20.625))["op"] == 1
    m.reading_paused = True  # the broker buffer is full: ACKs wait unread in the socket
    assert only_send(m.on_timer(61.875))["op"] == 1  # keep heartbeating, no close
    assert only_send(m.on_timer(103.125))["op"] == 1
    m.reading_paused = False
    assert m.receive(json.dumps({"op": 11, "d": None}), 104.0) == []
    assert only_send(m.on_timer(144.375))["op"] == 1  # healthy again


def test_stop_with_a_reason_keeps_the_session():
    m = ready_machine(0.0)
    close = assert_resumable_close(m.stop("broker stalled for 30 s (session kept)"))
    assert "broker stalled" in close.reason
    assert m.on_close(close.code).resume is True


def test_resume_goes_to_the_main_gateway_once_the_resume_url_failed():
    m = resumed_machine(0.0)
    assert m.connect_url(GATEWAY).startswith(RESUME_URL)
    m.resume_via_gateway = True  # the driver saw the resume URL fail
    assert m.connect_url(GATEWAY).startswith(GATEWAY)
    m.on_connect(1.0)
    assert only_send(m.receive(HELLO, 1.0))["op"] == 6  # still a RESUME, not an identify


# -- the cut-over probe (issue 20, defect 1) ------------------------------------------------


def test_a_probe_is_answered_by_the_ack_after_everything_sent_before_it():
    m = ready_machine()
    assert only_send(m.on_timer(20.625)) == {"op": 1, "d": 1}  # a regular heartbeat, not answered yet
    assert only_send(m.probe(21.0)) == {"op": 1, "d": 1}  # the probe: a heartbeat like any other
    assert m.probing and not m.probe_answered
    assert m.receive(dispatch(2), 21.1)  # sent by Discord before it got the probe
    assert m.receive('{"op":11}', 21.2) == []  # the regular heartbeat's ACK: not yet
    assert m.probing and not m.probe_answered
    assert m.receive(dispatch(3), 21.3)
    assert m.receive('{"op":11}', 21.4) == []  # the probe's ACK: everything before it was read
    assert m.probe_answered and not m.probing
    assert m.heartbeats_sent == 2 and m.acks == 2


def test_a_probe_needs_a_ready_connection_and_a_new_connection_forgets_it():
    m = machine()
    m.on_connect(0.0)
    assert m.probe(0.1) == []  # no session yet: nothing sent, nothing awaited
    assert not m.probing
    m = ready_machine()
    m.probe(1.0)
    m.on_close(4000)
    m.on_connect(2.0)
    assert not m.probing and not m.probe_answered  # the runner probes again once RESUMED


def test_a_server_requested_heartbeat_counts_before_the_probe():
    m = ready_machine()
    assert only_send(m.receive('{"op":1,"d":null}', 1.0))["op"] == 1  # Discord asked for one
    m.probe(1.1)
    assert m.receive('{"op":11}', 1.2) == [] and not m.probe_answered  # the ACK of the asked one
    assert m.receive('{"op":11}', 1.3) == [] and m.probe_answered


# -- op 7 at any time (issue 22, item 3) ------------------------------------------------------


@pytest.mark.parametrize("phase", ["before HELLO", "after HELLO, before READY", "READY"])
def test_op_7_at_any_time_closes_resumably_and_is_not_a_failure(phase):
    m = resumed_machine() if phase != "READY" else ready_machine()
    if phase == "before HELLO":
        m = machine(session=SavedSession(SESSION_ID, 42, RESUME_URL))
        m.on_connect(0.0)  # Discord sends op 7 instead of HELLO
    close = assert_resumable_close(m.receive('{"op":7,"d":null}', 1.0))
    decision = m.on_close(close.code)
    assert decision == Reconnect(True, 0.0, close.reason, asked=True)
    assert m.saved_session() is not None and m.saved_session().session_id == SESSION_ID


def test_identify_options_a_large_bot_sets():
    # Issue 22, item 5: presence, large_threshold and further fields Discord adds.
    presence = {"since": None, "activities": [{"name": "shards", "type": 3}], "status": "idle", "afk": False}
    m = machine(large_threshold=100, presence=presence, identify_extra={"capabilities": 16381, "shard": [9, 9]})
    m.on_connect(0.0)
    m.receive(HELLO, 0.0)
    d = only_send(m.identify_granted(0.0))["d"]
    assert d["large_threshold"] == 100 and d["presence"] == presence and d["capabilities"] == 16381
    assert d["shard"] == [0, 1]  # the machine's own fields are never replaced


def test_an_identify_over_4096_bytes_is_refused_at_construction():
    with pytest.raises(ValueError):
        machine(identify_extra={"padding": "x" * 4096})
