"""Raw passthrough with literal bytes: the body published is exactly Discord's ``d``, or nothing."""

from __future__ import annotations

import importlib
import itertools
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shard_worker import jsonlib
from shard_worker.gateway import frames
from shard_worker.gateway.state import Dispatch, Phase, ShardMachine

TOKEN = "tok"

#: ``d`` values whose spelling a re-encoding gateway would change, each one as Discord wrote it.
FAITHFUL = [
    rb'{"content":"caf\u00e9","literal":"caf' + "é".encode() + rb'"}',  # escaped and literal side by side
    rb'{"a":1.0,"b":2.50,"c":1E+2,"d":-0.0,"e":1e-7}',
    rb'{"url":"https:\/\/discord.com\/api","q":"\"quoted\"\\"}',
    rb'{"id":123456789012345678901234567890,"neg":-98765432109876543210}',  # past 64 bits
    rb'{"z":1,"a":2,"m":{"y":[3,{"b":null,"a":true}],"x":false}}',  # key order
    rb'{"emoji":"\ud83d\ude00","raw":"' + "😀".encode() + rb'"}',
    rb'[]',
    rb'"just a string"',
    rb'null',
    rb'{"nested":' + rb'[' * 50 + rb']' * 50 + rb'}',
]


CHECKS = list(itertools.product(["ujson", "orjson"], ["simdjson", "decode"]))


@pytest.fixture(params=CHECKS, ids=["-".join(c) for c in CHECKS])
def codec(request):
    """Every codec with every check: simdjson (the default), or a decode (orjson's, or the
    stdlib's strict one with ujson). simdjson and orjson refuse big integers, the stdlib settles."""
    name, check = request.param
    getattr(jsonlib, f"use_{name}")()
    jsonlib.use_check(check)
    yield name
    importlib.reload(jsonlib)  # back to the environment's choice


def dispatch_frame(d: bytes, seq: int = 5, t: bytes = b"MESSAGE_CREATE") -> bytes:
    return b'{"t":"' + t + b'","s":%d,"op":0,"d":' % seq + d + b"}"


def ready_machine() -> ShardMachine:
    m = ShardMachine(0, 1, TOKEN, compress=False)
    m.on_connect(0.0)
    m.receive(b'{"t":null,"s":null,"op":10,"d":{"heartbeat_interval":41250}}', 0.0)
    m.identify_granted(0.0)
    m.receive(dispatch_frame(b'{"session_id":"s1","resume_gateway_url":"wss://r.example","v":10}', 1, b"READY"), 0.1)
    assert m.phase is Phase.READY
    return m


def body_of(m: ShardMachine, frame: bytes | str) -> bytes | None:
    [action] = m.receive(frame, 1.0)
    assert isinstance(action, Dispatch)
    return action.body()


@pytest.mark.parametrize("d", FAITHFUL)
def test_the_body_is_discords_d_byte_for_byte_on_the_fast_path(d, codec):
    m = ready_machine()
    assert body_of(m, dispatch_frame(d)) == d
    assert m.seq == 5


@pytest.mark.parametrize("d", FAITHFUL)
def test_any_key_order_gives_the_same_bytes(d, codec):
    parts = {b"t": b'"MESSAGE_CREATE"', b"s": b"7", b"op": b"0", b"d": d}
    for order in itertools.permutations(parts):
        m = ready_machine()
        frame = b"{" + b",".join(b'"%s":%s' % (k, parts[k]) for k in order) + b"}"
        assert body_of(m, frame) == d, frame
        assert m.seq == 7


def test_d_not_last_extra_keys_and_whitespace_take_the_slow_path_and_stay_exact(codec):
    m = ready_machine()
    d = b'{"a":"x,}]","b":[1,{"c":"\\"}"}]}'
    assert body_of(m, dispatch_frame(d)[:-1] + b',"extra":{"d":1}}') == d  # d first, another key after
    assert body_of(m, b'{ "t" : "MESSAGE_CREATE" , "s" : 9 , "op" : 0 , "d" : ' + d + b" }") == d
    assert body_of(m, dispatch_frame(d) + b"\n") == d
    assert body_of(m, b'{"t":"X","s":10,"op":0,"\\u0064":' + d + b"}") == d  # the key escaped
    assert body_of(m, b'{"t":"X","s":11,"op":0}') == b"null"  # no d at all: null, as before
    assert body_of(m, b'{"t":"X","s":12,"op":0,"d":1,"d":' + d + b"}") == d  # duplicate: the last
    assert m.seq == 12


def test_a_text_frame_is_published_as_its_utf8_bytes():
    m = ready_machine()
    d = '{"content":"é😀"}'
    assert body_of(m, '{"t":"MESSAGE_CREATE","s":5,"op":0,"d":' + d + "}") == d.encode()


@pytest.mark.parametrize(
    "d",
    [b'{"a":NaN}', b'{"a":Infinity}', b'{"a":-Infinity}', b'{"a":1', b'{"a":"\xff"}', b'{"a":1}}', b"", b"tru",
     b'{"a":01}', b'{"a":1.}', b'{"a":.5}', b'{"a":+1}', b"[1] [2]", b"{'a':1}", b'{"a":"\\x"}',
     b'\xef\xbb\xbf{"a":1}'],
)
def test_a_d_that_is_not_one_whole_json_value_is_never_published(d, codec):
    m = ready_machine()
    [action] = m.receive(dispatch_frame(d, seq=30), 1.0)
    # Either the frame is a bad frame outright, or its dispatch has no body to publish.
    assert not isinstance(action, Dispatch) or action.body() is None
    assert m.seq == 30  # the seq moves past it either way: a resume would replay it forever


def test_nan_inside_a_string_is_fine(codec):
    m = ready_machine()
    d = b'{"a":"NaN and Infinity"}'
    assert body_of(m, dispatch_frame(d)) == d


def test_d_span_ignores_brackets_and_keys_inside_strings():
    frame = b'{"x":"\\"d\\":{","d":[1,"]",{"d":2}],"y":"}"}'
    start, end = frames.d_span(frame)
    assert frame[start:end] == b'[1,"]",{"d":2}]'


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**30), 10**30) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=20,
)  # fmt: skip


@given(json_values, st.booleans(), st.permutations(["t", "s", "op", "d"]), st.sampled_from([(",", ":"), (", ", ": ")]))
def test_any_d_in_any_order_and_spelling_comes_out_exactly(value, ascii_only, order, separators):
    d = json.dumps(value, ensure_ascii=ascii_only, separators=separators).encode()
    parts = {"t": b'"MESSAGE_CREATE"', "s": b"8", "op": b"0", "d": d}
    frame = b"{" + b",".join(b'"%s":%s' % (k.encode(), parts[k]) for k in order) + b"}"
    m = ready_machine()
    assert body_of(m, frame) == d


def stdlib_says(body: bytes) -> bool:
    try:
        json.loads(body.decode("utf-8"), parse_constant=lambda name: 1 / 0)
    except (ValueError, ZeroDivisionError, RecursionError):
        return False
    return True


json_pieces = st.sampled_from([
    b"{", b"}", b"[", b"]", b",", b":", b'"a"', b'"\\u00e9"', b'"\\ud800"', b"1", b"01", b"-0", b"1.5", b"1e400",
    b"123456789012345678901234567890", b"NaN", b"Infinity", b"true", b"null", b" ", b"\xff", b'"',
    b"\xef\xbb\xbf",  # a byte order mark: simdjson skips one at the start, JSON forbids it
])  # fmt: skip


@given(st.lists(json_pieces, max_size=12), st.sampled_from(CHECKS))
def test_is_json_value_agrees_with_the_stdlib_for_any_bytes(pieces, check):
    """Whatever the codec and the check: exactly the bodies RFC 8259 (the stdlib, NaN refused)
    accepts, among valid ones that simdjson refuses (big integers, lone surrogates)."""
    body = b"".join(pieces)
    getattr(jsonlib, f"use_{check[0]}")()
    jsonlib.use_check(check[1])
    try:
        assert frames.is_json_value(body) == stdlib_says(body), body
    finally:
        importlib.reload(jsonlib)


def test_a_body_past_the_simdjson_bound_is_checked_by_a_decode(monkeypatch):
    jsonlib.use_check("simdjson")
    monkeypatch.setattr(jsonlib, "CHECK_SIMDJSON_MAX_BYTES", 64)
    big = b'{"pad":"' + b"x" * 100 + b'"}'
    assert frames.is_json_value(big)
    assert not frames.is_json_value(big[:-1])
    assert not frames.is_json_value(b'{"pad":"' + b"x" * 100 + b'","n":NaN}')
    importlib.reload(jsonlib)
