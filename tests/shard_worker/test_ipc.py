"""IPC framing: partial reads, many messages per read, garbage lines skipped."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from shard_worker.ipc import Decoder, Message, encode


def test_encode_is_one_spectacles_json_line():
    raw = encode("shard_ready", {"shard": 3, "session_id": "abc"})
    assert raw.endswith(b"\n") and raw.count(b"\n") == 1
    assert json.loads(raw) == {"event": "shard_ready", "data": {"shard": 3, "session_id": "abc"}}


def test_partial_reads_are_buffered_until_the_newline():
    raw = encode("heartbeat", {"n": 1})
    decoder = Decoder()
    assert decoder.feed(raw[:5]) == []
    assert decoder.feed(raw[5:-1]) == []
    assert decoder.feed(raw[-1:]) == [Message("heartbeat", {"n": 1})]


def test_many_messages_in_one_read():
    raw = b"".join(encode("e", i) for i in range(50))
    assert Decoder().feed(raw) == [Message("e", i) for i in range(50)]


def test_garbage_lines_are_skipped_and_counted():
    decoder = Decoder()
    raw = b"not json\n" + encode("a", 1) + b"[1,2]\n" + b'{"event": 5}\n' + b"\n" + encode("b", None)
    assert decoder.feed(raw) == [Message("a", 1), Message("b", None)]
    assert decoder.errors == 3


def test_overlong_line_is_dropped_and_the_next_one_survives():
    decoder = Decoder(max_line=100)
    assert decoder.feed(b"x" * 150) == []
    assert decoder.feed(b"y" * 50 + b"\n" + encode("ok", 1)) == [Message("ok", 1)]
    assert decoder.errors == 1


payload = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=10,
)


@given(
    st.lists(st.tuples(st.text(min_size=1, max_size=12), payload), max_size=20),
    st.lists(st.integers(1, 64), max_size=40),
)
def test_any_split_gives_back_the_same_messages(messages, cuts):
    raw = b"".join(encode(e, d) for e, d in messages)
    decoder = Decoder()
    out, pos = [], 0
    for cut in cuts:
        out += decoder.feed(raw[pos : pos + cut])
        pos += cut
    out += decoder.feed(raw[pos:])
    assert out == [Message(e, d) for e, d in messages]
    assert decoder.errors == 0


@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_raise(raw):
    decoder = Decoder()
    for message in decoder.feed(raw + b"\n"):
        assert isinstance(message.event, str)
