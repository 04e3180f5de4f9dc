"""zstd-stream: one zstd frame per connection, never ended; one websocket message per gateway
message, flushed at a block boundary. Socket-free: literal bytes and the library's compressor."""

from __future__ import annotations

import json
import os
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shard_worker.gateway import inflate
from shard_worker.gateway.inflate import (
    DEFAULT_MAX_MESSAGE_BYTES,
    InflateError,
    ZlibStreamInflater,
    ZstdStreamInflater,
    new_inflater,
    zstd_module,
    zstd_unavailable,
)
from shard_worker.gateway.protocol import compress_name, gateway_url
from shard_worker.gateway.state import (
    CloseConnection,
    Dispatch,
    RequestIdentify,
    Send,
    SessionReady,
    ShardMachine,
)

zstd = zstd_module()
MAGIC = b"\x28\xb5\x2f\xfd"
HELLO = b'{"op":10,"d":{"heartbeat_interval":41250}}'
READY = b'{"op":0,"s":1,"t":"READY","d":{"session_id":"abc","v":10}}'


class Server:
    """Discord's side: one ZstdCompressor per connection, each message flushed (FLUSH_BLOCK)."""

    def __init__(self, level: int | None = None) -> None:
        self._c = zstd.ZstdCompressor() if level is None else zstd.ZstdCompressor(level)

    def message(self, data: bytes) -> bytes:
        return self._c.compress(data, self._c.FLUSH_BLOCK)


def test_library_is_installed():
    # The test extra installs backports.zstd (Python < 3.14); 3.14 has compression.zstd.
    assert zstd_unavailable() is None
    assert zstd.__name__ in ("compression.zstd", "backports.zstd")


# -- literal bytes ------------------------------------------------------------------------------
def test_handwritten_frame_of_raw_blocks():
    # Magic 28 b5 2f fd; frame header descriptor 00 (no content size, no checksum, not single
    # segment) and window descriptor 00 (1 KiB); then blocks with a 3-byte little-endian header:
    # bit 0 last block (never set: the frame goes on), bits 1-2 type (0 raw, 1 RLE), size << 3.
    header = MAGIC + b"\x00\x00"
    first = b"\x10\x00\x00" + b"{}"  # raw, 2 bytes
    second = b"\x38\x00\x00" + b'{"a":1}'  # raw, 7 bytes
    third = b"\x1a\x00\x00" + b"x"  # RLE: "x" three times
    inflater = ZstdStreamInflater()
    assert inflater.feed(header + first) == b"{}"
    assert inflater.feed(second) == b'{"a":1}'
    assert inflater.feed(third) == b"xxx"


def test_literal_compressor_bytes_several_messages_in_one_frame():
    server, inflater = Server(), ZstdStreamInflater()
    frames = [server.message(m) for m in (HELLO, READY, READY, HELLO)]
    assert frames[0][:4] == MAGIC  # the frame header comes once, with the first message
    assert all(MAGIC not in f for f in frames[1:])
    assert len(frames[2]) < len(READY) // 2  # the shared window: READY again is a back-reference
    assert [inflater.feed(f) for f in frames] == [HELLO, READY, READY, HELLO]


def test_later_messages_need_the_connection_context():
    server = Server()
    first, second = server.message(READY), server.message(READY)
    shared = ZstdStreamInflater()
    assert shared.feed(first) == READY and shared.feed(second) == READY
    with pytest.raises(InflateError, match="broken zstd stream"):
        ZstdStreamInflater().feed(second)  # no frame header: a fresh context cannot read it


def test_many_messages_share_one_context():
    server, inflater = Server(), ZstdStreamInflater()
    msgs = [b'{"op":0,"s":%d,"t":"MESSAGE_CREATE","d":{"content":"hi %d"}}' % (i, i)
            for i in range(2000)]
    assert [inflater.feed(server.message(m)) for m in msgs] == msgs


def test_a_message_split_inside_a_compressed_block_comes_out_whole():
    # Not what Discord does (one websocket message per gateway message), but a websocket message
    # that completes no compressed block yields nothing: zstd keeps the input until it does.
    server, inflater = Server(), ZstdStreamInflater()
    payload = READY * 20
    frame = server.message(payload)
    assert len(frame) < len(payload) // 4  # a compressed block, not a raw one
    assert inflater.feed(frame[:5]) is None  # part of the frame header
    assert inflater.feed(frame[5:-3]) is None  # the block is not complete
    assert inflater.feed(frame[-3:]) == payload
    assert inflater.feed(server.message(HELLO)) == HELLO


def test_a_split_raw_block_streams_what_it_has():
    # A raw (stored) block is copied out as it arrives: a split message then comes out in two
    # parts, which is why only whole websocket messages (Discord's behaviour) make messages.
    server, inflater = Server(), ZstdStreamInflater()
    frame = server.message(READY)  # too short to compress: a raw block
    first, second = inflater.feed(frame[:-3]), inflater.feed(frame[-3:])
    assert first is not None and first + second == READY


def test_empty_frames_and_empty_message():
    server, inflater = Server(), ZstdStreamInflater()
    assert inflater.feed(b"") is None
    assert inflater.feed(server.message(HELLO)) == HELLO
    assert inflater.feed(server.message(b"")) is None  # nothing to flush: nothing to deliver
    assert inflater.feed(server.message(READY)) == READY


def test_accepts_bytearray_and_memoryview():
    server, inflater = Server(), ZstdStreamInflater()
    assert inflater.feed(bytearray(server.message(HELLO))) == HELLO
    assert inflater.feed(memoryview(server.message(READY))) == READY


def test_a_large_message_of_many_blocks_in_one_websocket_message():
    # 6 MB of JSON: zstd blocks hold at most 128 KiB, so this is ~50 blocks in one message.
    members = [{"user": {"id": str(10**17 + i), "username": f"user{i}"}, "roles": [str(i % 7)]}
               for i in range(60_000)]
    payload = json.dumps({"op": 0, "s": 2, "t": "GUILD_CREATE", "d": {"members": members}}).encode()
    payload += b" " * max(0, 6_000_000 - len(payload))
    server, inflater = Server(), ZstdStreamInflater()
    assert inflater.feed(server.message(HELLO)) == HELLO
    assert inflater.feed(server.message(payload)) == payload
    assert inflater.feed(server.message(HELLO)) == HELLO


def test_incompressible_message():
    payload = os.urandom(300_000)
    server, inflater = Server(), ZstdStreamInflater()
    assert inflater.feed(server.message(payload)) == payload


def test_a_server_that_ends_the_frame_and_starts_another():
    # Discord never ends the frame; a server that does may start a new one in the same stream.
    inflater = ZstdStreamInflater()
    c = zstd.ZstdCompressor()
    assert inflater.feed(c.compress(HELLO, c.FLUSH_FRAME)) == HELLO
    c2 = zstd.ZstdCompressor()
    assert inflater.feed(c2.compress(READY, c2.FLUSH_BLOCK)) == READY
    # ...even within one websocket message: the end of one frame and the start of the next
    c3 = zstd.ZstdCompressor()
    tail = c2.compress(b"a", c2.FLUSH_FRAME) + c3.compress(b"b", c3.FLUSH_BLOCK)
    assert inflater.feed(tail) == b"ab"
    assert inflater.feed(c3.compress(HELLO, c3.FLUSH_BLOCK)) == HELLO


# -- broken streams -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "frame",
    [
        b"this is not zstd",
        b"\x78\x9c" + b"\x00" * 20,  # a zlib header: the wrong --compress
        MAGIC + b"\x00\x00" + b"\x16\x00\x00" + b"xx",  # block type 3: reserved
        MAGIC + b"\x00\x00" + b"\x10\x00\x08" + b"x" * 16,  # a raw block bigger than 1 KiB window
    ],
)
def test_broken_stream_raises(frame):
    with pytest.raises(InflateError, match="broken zstd stream"):
        ZstdStreamInflater().feed(frame)


def test_corrupted_later_message_raises():
    server, inflater = Server(), ZstdStreamInflater()
    assert inflater.feed(server.message(HELLO)) == HELLO
    frame = bytearray(server.message(READY * 3))
    frame[0] |= 0x06  # the block header's type bits: 3, reserved
    with pytest.raises(InflateError):
        inflater.feed(bytes(frame))


def test_inflate_error_is_a_value_error():
    assert issubclass(InflateError, ValueError)


# -- size cap -----------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [100, 5000, 200_000])
def test_decompressed_cap_boundary(size):
    payload = os.urandom(size // 2) + b"a" * (size - size // 2)
    frame = Server().message(payload)
    assert ZstdStreamInflater(max_message_bytes=size).feed(frame) == payload  # exactly the cap
    assert ZstdStreamInflater(max_message_bytes=size + 1).feed(frame) == payload
    with pytest.raises(InflateError, match="decompressed message over"):
        ZstdStreamInflater(max_message_bytes=size - 1).feed(frame)


def test_zstd_bomb_refused_without_decompressing_it_all():
    # 50 MB of zeros compress to a few kB: the decompressed size is what the cap guards, and
    # zstd stops at the cap (+1) instead of producing the 50 MB.
    frame = Server().message(b"\x00" * 50_000_000)
    assert len(frame) < 20_000
    with pytest.raises(InflateError, match="decompressed message over 1000000 bytes"):
        ZstdStreamInflater(max_message_bytes=1_000_000).feed(frame)


def test_compressed_cap():
    with pytest.raises(InflateError, match="compressed message over 1000 bytes"):
        ZstdStreamInflater(max_message_bytes=1000).feed(os.urandom(1001))


def test_cap_is_per_message_not_per_stream():
    server, inflater = Server(), ZstdStreamInflater(max_message_bytes=1000)
    for i in range(50):
        msg = (b"%04d" % i) * 250  # exactly 1000 bytes each, 50 kB in total
        assert inflater.feed(server.message(msg)) == msg


def test_default_cap_is_zlibs():
    assert ZstdStreamInflater()._max == DEFAULT_MAX_MESSAGE_BYTES == 64 * 1024 * 1024


# -- properties -----------------------------------------------------------------------------------
@settings(max_examples=150, deadline=None)
@given(
    msgs=st.lists(st.binary(max_size=3000) | st.text(max_size=800).map(str.encode),
                  min_size=1, max_size=25),
    level=st.sampled_from([None, 1, 3, 9, 19, -5]),
)
def test_arbitrary_message_sequences_round_trip(msgs, level):
    server, inflater = Server(level), ZstdStreamInflater()
    for m in msgs:
        assert inflater.feed(server.message(m)) == (m or None)


@settings(max_examples=150, deadline=None)
@given(msgs=st.lists(st.binary(min_size=1, max_size=3000), min_size=1, max_size=8), data=st.data())
def test_split_messages_lose_and_duplicate_nothing(msgs, data):
    # Discord sends one message per websocket message; split anyway, zstd still gives every byte
    # exactly once, in order (a split inside a block yields nothing until the block completes).
    server, inflater = Server(), ZstdStreamInflater()
    for m in msgs:
        frame = server.message(m)
        cuts = data.draw(
            st.lists(st.integers(1, max(1, len(frame) - 1)), max_size=5, unique=True).map(sorted)
        )
        bounds = [0, *cuts, len(frame)]
        outs = [inflater.feed(frame[a:b]) for a, b in zip(bounds, bounds[1:])]
        assert b"".join(o for o in outs if o is not None) == m


# -- choosing the inflater, and the machine -------------------------------------------------------
def test_new_inflater_by_name():
    assert type(new_inflater("zlib-stream")) is ZlibStreamInflater
    assert type(new_inflater("zstd-stream")) is ZstdStreamInflater
    assert new_inflater("none") is None
    with pytest.raises(ValueError):
        new_inflater("gzip")


@pytest.mark.parametrize(
    ("value", "name"),
    [(True, "zlib-stream"), (False, "none"), (None, "none"), ("zlib-stream", "zlib-stream"),
     ("zstd-stream", "zstd-stream"), ("none", "none")],
)
def test_compress_names(value, name):
    assert compress_name(value) == name


@pytest.mark.parametrize("value", ["gzip", "ZSTD-STREAM", 1, ""])
def test_bad_compress_names(value):
    with pytest.raises(ValueError, match="expected zlib-stream, zstd-stream or none"):
        compress_name(value)


def test_gateway_url_with_each_compression():
    base = "wss://gateway.discord.gg"
    zstd_url = base + "/?v=10&encoding=json&compress=zstd-stream"
    assert gateway_url(base, compress="zstd-stream") == zstd_url
    assert gateway_url(base, compress="zlib-stream") == gateway_url(base, compress=True)
    assert gateway_url(base, compress="none") == gateway_url(base, compress=False)
    assert "compress" not in gateway_url(base, compress="none")


def test_without_a_zstd_library(monkeypatch):
    monkeypatch.setattr(inflate, "_zstd", None)
    assert zstd_unavailable() == inflate.ZSTD_MISSING
    assert "pip install 'spectacles-supervisor[zstd]'" in inflate.ZSTD_MISSING
    with pytest.raises(RuntimeError, match="zstd-stream needs a zstd library"):
        ZstdStreamInflater()
    with pytest.raises(RuntimeError, match="zstd-stream needs a zstd library"):
        zstd_module()
    assert type(new_inflater("zlib-stream")) is ZlibStreamInflater  # zlib is unaffected


# -- the window bound ---------------------------------------------------------------------------
def _windowed(window_log: int) -> bytes:
    p = zstd.CompressionParameter
    comp = zstd.ZstdCompressor(options={p.window_log: window_log})
    return comp.compress(HELLO, comp.FLUSH_BLOCK)


def test_window_bound_is_rfc8878s_8_mib():
    assert inflate.ZSTD_WINDOW_LOG_MAX == 23


@pytest.mark.parametrize("window_log", [10, 16, 21, 23])
def test_windows_up_to_the_bound_are_accepted(window_log):
    # 16: Discord's (as far as is known); 21: zstd's default at level 3; 23: the bound
    assert _windowed(window_log)[5] >> 3 == window_log - 10  # what the frame header announces
    assert ZstdStreamInflater().feed(_windowed(window_log)) == HELLO


@pytest.mark.parametrize("window_log", [24, 27])
def test_a_window_over_the_bound_is_refused_with_a_clear_error(window_log):
    # libzstd's own default would take up to window log 27 (128 MiB per connection)
    with pytest.raises(InflateError, match=r"window is over 8388608 bytes \(window log 23"):
        ZstdStreamInflater().feed(_windowed(window_log))


def test_the_bound_holds_after_a_frame_ends():
    # a server that ends its frame and starts another with a larger window is refused too
    p = zstd.CompressionParameter
    first = zstd.ZstdCompressor(options={p.window_log: 16})
    data = first.compress(HELLO, first.FLUSH_FRAME)
    inflater = ZstdStreamInflater()
    assert inflater.feed(data) == HELLO
    with pytest.raises(InflateError, match="window is over"):
        inflater.feed(_windowed(24))


def test_zlib_window_is_32_kib():
    assert inflate.ZLIB_WBITS == 15
    comp = zlib.compressobj(6, zlib.DEFLATED, 15)
    data = comp.compress(READY) + comp.flush(zlib.Z_SYNC_FLUSH)
    assert data[0] == 0x78  # CINFO 7: the 32 KiB window announced
    assert ZlibStreamInflater().feed(data) == READY


def _machine(**kw) -> ShardMachine:
    return ShardMachine(0, 1, "token", compress="zstd-stream", rng=lambda: 0.5, **kw)


def test_a_machine_on_zstd_stream_connects_and_reads():
    m = _machine()
    assert m.compress == "zstd-stream"
    assert m.connect_url("wss://g").endswith("compress=zstd-stream")
    m.on_connect(0.0)
    server = Server()
    hello = b'{"op":10,"d":{"heartbeat_interval":41250}}'
    assert m.receive(server.message(hello), 0.0) == [RequestIdentify()]
    m.identify_granted(0.0)
    ready = (b'{"op":0,"s":1,"t":"READY","d":{"session_id":"s1","resume_gateway_url":"wss://r",'
             b'"user":{"id":"1"},"guilds":[]}}')
    assert m.receive(server.message(ready), 0.1)[-1] == SessionReady(False, "s1")
    [d] = m.receive(server.message(b'{"op":0,"s":2,"t":"MESSAGE_CREATE","d":{"id":"2"}}'), 0.2)
    assert type(d) is Dispatch and (d.t, d.seq) == ("MESSAGE_CREATE", 2)
    # A broken stream closes resumably; the next connection has a new context (a new frame).
    [close] = m.receive(b"garbage", 0.3)
    assert type(close) is CloseConnection and m.on_close(close.code).resume is True
    m.on_connect(1.0)
    url = m.connect_url("wss://g")
    assert url.startswith("wss://r/") and url.endswith("compress=zstd-stream")  # resume URL
    server2 = Server()
    [resume] = m.receive(server2.message(hello), 1.0)
    assert type(resume) is Send and json.loads(resume.text)["op"] == 6
    [d] = m.receive(server2.message(b'{"op":0,"s":3,"t":"MESSAGE_CREATE","d":{"id":"3"}}'), 1.1)
    assert (d.t, d.seq) == ("MESSAGE_CREATE", 3)
