"""zlib-stream: one inflate context per connection, a message ends with 00 00 ff ff."""

from __future__ import annotations

import json
import os
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shard_worker.gateway.inflate import DEFAULT_MAX_MESSAGE_BYTES, InflateError, ZlibStreamInflater

SUFFIX = b"\x00\x00\xff\xff"


class Server:
    """Discord's side: one compressobj per connection, Z_SYNC_FLUSH after each message."""

    def __init__(self) -> None:
        self._c = zlib.compressobj()

    def message(self, data: bytes) -> bytes:
        out = self._c.compress(data) + self._c.flush(zlib.Z_SYNC_FLUSH)
        assert out.endswith(SUFFIX)
        return out


HELLO = b'{"op":10,"d":{"heartbeat_interval":41250}}'
READY = b'{"op":0,"s":1,"t":"READY","d":{"session_id":"abc","v":10}}'


def test_literal_zlib_bytes():
    # zlib.compressobj() default level, HELLO, Z_SYNC_FLUSH: header 78 9c, ends in 00 00 ff ff.
    frame = Server().message(HELLO)
    assert frame[:2] == b"\x78\x9c"
    assert ZlibStreamInflater().feed(frame) == HELLO


def test_handwritten_stored_block():
    # A zlib header (78 01) then one final-less stored block holding "{}": 00 | len 02 00 | nlen fd ff,
    # then the sync flush marker: an empty stored block 00 00 00 ff ff.
    frame = b"\x78\x01" + b"\x00\x02\x00\xfd\xff{}" + b"\x00\x00\x00\xff\xff"
    assert ZlibStreamInflater().feed(frame) == b"{}"


def test_one_message_one_frame():
    assert ZlibStreamInflater().feed(Server().message(READY)) == READY


def test_many_messages_share_one_context():
    server, inflater = Server(), ZlibStreamInflater()
    msgs = [HELLO, READY] + [b'{"op":0,"s":%d,"t":"MESSAGE_CREATE","d":{"content":"hi"}}' % i for i in range(2, 500)]
    for m in msgs:
        assert inflater.feed(server.message(m)) == m


def test_later_messages_depend_on_the_shared_context():
    # The second message is encoded with back-references into the first: a fresh context fails.
    server = Server()
    first = server.message(READY)
    second = server.message(READY)
    assert len(second) < len(first)
    shared = ZlibStreamInflater()
    assert shared.feed(first) == READY
    assert shared.feed(second) == READY
    with pytest.raises(InflateError):
        ZlibStreamInflater().feed(second)


def test_message_split_into_frames():
    frame = Server().message(READY)
    inflater = ZlibStreamInflater()
    a, b, c = frame[:5], frame[5:-2], frame[-2:]
    assert inflater.feed(a) is None
    assert inflater.feed(b) is None
    assert inflater.feed(c) == READY


def test_split_inside_the_suffix():
    server, inflater = Server(), ZlibStreamInflater()
    frame = server.message(HELLO)
    assert inflater.feed(frame[:-3]) is None  # ends with 00: not complete
    assert inflater.feed(frame[-3:]) == HELLO
    frame2 = server.message(READY)
    assert inflater.feed(frame2[:-1]) is None
    assert inflater.feed(frame2[-1:]) == READY


def test_empty_frames_and_byte_by_byte():
    server, inflater = Server(), ZlibStreamInflater()
    frame = server.message(READY)
    assert inflater.feed(b"") is None
    outs = [inflater.feed(frame[i : i + 1]) for i in range(len(frame))]
    assert outs[:-1] == [None] * (len(frame) - 1)
    assert outs[-1] == READY
    assert inflater.feed(server.message(HELLO)) == HELLO


def test_empty_message():
    server, inflater = Server(), ZlibStreamInflater()
    assert inflater.feed(server.message(b"")) == b""
    assert inflater.feed(server.message(HELLO)) == HELLO


def test_large_incompressible_message_in_many_frames():
    payload = os.urandom(300_000)
    frame = Server().message(payload)
    inflater = ZlibStreamInflater()
    pieces = [frame[i : i + 4096] for i in range(0, len(frame), 4096)]
    results = [inflater.feed(p) for p in pieces]
    assert results[:-1] == [None] * (len(pieces) - 1)
    assert results[-1] == payload


def test_accepts_bytearray_frames():
    server, inflater = Server(), ZlibStreamInflater()
    frame = server.message(HELLO)
    assert inflater.feed(bytearray(frame)) == HELLO
    frame = server.message(READY)
    assert inflater.feed(bytearray(frame[:10])) is None
    assert inflater.feed(bytearray(frame[10:])) == READY


# -- broken streams -----------------------------------------------------------------------------
def test_garbage_raises():
    with pytest.raises(InflateError):
        ZlibStreamInflater().feed(b"this is not zlib" + SUFFIX)


def test_bad_header_raises():
    frame = bytearray(Server().message(HELLO))
    frame[0] = 0x00
    with pytest.raises(InflateError):
        ZlibStreamInflater().feed(bytes(frame))


def test_truncated_message_then_garbage_raises():
    frame = Server().message(READY)
    inflater = ZlibStreamInflater()
    assert inflater.feed(frame[: len(frame) // 2]) is None
    # Depending on the bits, inflate either fails or yields junk: never the message, never JSON.
    try:
        out = inflater.feed(b"\xde\xad\xbe\xef\xff\xff\xff\xff\xff" + SUFFIX)
    except InflateError:
        return
    assert out is not None and out != READY
    with pytest.raises(ValueError):
        json.loads(out)


def test_truncated_message_then_invalid_block_type_raises():
    # Header 78 01, then a stored block (first bits 000), then LEN = 0x0010 and NLEN = 0x0000 read
    # from "10 00 00 00": NLEN is not ~LEN -> "invalid stored block lengths".
    inflater = ZlibStreamInflater()
    assert inflater.feed(b"\x78\x01\x00") is None
    with pytest.raises(InflateError, match="broken zlib stream"):
        inflater.feed(b"\x10\x00" + SUFFIX)


def test_corrupted_byte_in_later_message_raises():
    server, inflater = Server(), ZlibStreamInflater()
    assert inflater.feed(server.message(HELLO)) == HELLO
    frame = bytearray(server.message(os.urandom(2000)))  # a stored block: length fields to break
    frame[1] ^= 0xFF
    frame[2] ^= 0xFF
    with pytest.raises(InflateError):
        inflater.feed(bytes(frame))


def test_inflate_error_is_a_value_error():
    assert issubclass(InflateError, ValueError)


# -- size cap -----------------------------------------------------------------------------------
def test_default_cap():
    assert DEFAULT_MAX_MESSAGE_BYTES == 64 * 1024 * 1024


@pytest.mark.parametrize("size", [2, 100, 5000, 70_000])
def test_inflated_cap_boundary(size):
    payload = os.urandom(size // 2) + b"a" * (size - size // 2)
    frame = Server().message(payload)
    assert ZlibStreamInflater(max_message_bytes=size).feed(frame) == payload  # exactly the cap
    assert ZlibStreamInflater(max_message_bytes=size + 1).feed(frame) == payload
    with pytest.raises(InflateError, match="over"):
        ZlibStreamInflater(max_message_bytes=size - 1).feed(frame)


def test_zip_bomb_refused():
    # 10 MB of zeros compress to about 10 kB: the inflated size is what the cap guards.
    frame = Server().message(b"\x00" * 10_000_000)
    assert len(frame) < 20_000
    with pytest.raises(InflateError, match="inflated message over 1000000 bytes"):
        ZlibStreamInflater(max_message_bytes=1_000_000).feed(frame)


def test_buffered_compressed_cap():
    inflater = ZlibStreamInflater(max_message_bytes=1000)
    assert inflater.feed(b"x" * 600) is None
    with pytest.raises(InflateError, match="compressed message over 1000 bytes"):
        inflater.feed(b"x" * 600)


def test_cap_is_per_message_not_per_stream():
    server, inflater = Server(), ZlibStreamInflater(max_message_bytes=1000)
    for i in range(50):
        msg = (b"%04d" % i) * 200  # 800 bytes each, 40 kB in total
        assert inflater.feed(server.message(msg)) == msg


# -- property: any messages, split anywhere ------------------------------------------------------
messages = st.lists(st.binary(max_size=3000), min_size=1, max_size=12)


@settings(max_examples=200, deadline=None)
@given(msgs=messages, data=st.data())
def test_arbitrary_messages_and_splits(msgs, data):
    server, inflater = Server(), ZlibStreamInflater()
    for msg in msgs:
        frame = server.message(msg)
        cuts = data.draw(
            st.lists(st.integers(1, len(frame) - 1), max_size=6, unique=True).map(sorted), label="cuts"
        )
        bounds = [0, *cuts, len(frame)]
        pieces = [frame[a:b] for a, b in zip(bounds, bounds[1:])]
        results = [inflater.feed(p) for p in pieces]
        assert results[-1] is not None
        coincidental = False
        for piece_end, r in zip(bounds[1:-1], results[:-1]):
            if frame[:piece_end].endswith(SUFFIX):
                # The marker bytes occurring inside the deflate data (e.g. a stored block copying
                # them from the message): the stream then yields the message in two parts.
                coincidental = True
                continue
            assert r is None
        if not coincidental:
            assert results[-1] == msg
        assert b"".join(r for r in results if r is not None) == msg


@settings(max_examples=100, deadline=None)
@given(msgs=st.lists(st.text(max_size=500).map(str.encode), min_size=1, max_size=30))
def test_arbitrary_text_messages_whole_frames(msgs):
    server, inflater = Server(), ZlibStreamInflater()
    assert [inflater.feed(server.message(m)) for m in msgs] == msgs
