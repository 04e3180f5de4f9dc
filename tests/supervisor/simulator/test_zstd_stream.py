"""The simulator serves zstd-stream: one ZstdCompressor per connection, one never-ended frame,
each message flushed at a block boundary and sent as one websocket message."""

from __future__ import annotations

import asyncio
import json

from shard_worker.gateway import inflate
from shard_worker.gateway.inflate import zstd_module
from shard_worker.gateway.protocol import Close
from supervisor.simulator import Simulator
from tests.supervisor.simulator._client import TOKEN, RawClient, hello_identify

MAGIC = b"\x28\xb5\x2f\xfd"


def opts(**kw):
    base = dict(token=TOKEN, heartbeat_interval_ms=10000, identify_interval_s=0.0)
    base.update(kw)
    return base


def test_zstd_stream_session_one_context_one_frame() -> None:
    async def main():
        async with Simulator(**opts(events_per_shard=100, fragment=True)) as sim:
            c, hello, ready = await hello_identify(sim.url, compress="zstd-stream")
            assert hello["op"] == 10 and ready["t"] == "READY"
            msgs = [await c.recv() for _ in range(102)]
            assert [m["s"] for m in msgs] == list(range(2, 104))
            # One websocket message per gateway message (``fragment`` is for zlib-stream only).
            assert len(c.ws_messages) == 104 and all(isinstance(m, bytes) for m in c.ws_messages)
            assert c.ws_messages[0][:4] == MAGIC and not any(MAGIC in m for m in c.ws_messages[1:])
            assert not c.zstd.eof  # the frame is never ended
            # One context: a later message cannot be read on its own.
            try:
                zstd_module().ZstdDecompressor().decompress(c.ws_messages[50])
                independent = True
            except zstd_module().ZstdError:
                independent = False
            assert not independent
            record = sim.snapshot()["connections"][0]
            assert (record["compress"], record["compression"]) == (True, "zstd-stream")
            await c.close()

    asyncio.run(main())


def test_send_raw_goes_through_the_connection_stream() -> None:
    async def main():
        async with Simulator(**opts()) as sim:
            c, _, _ = await hello_identify(sim.url, compress="zstd-stream")
            big = json.dumps({"op": 0, "s": 99, "t": "BIG", "d": {"x": "y" * 3_000_000}})
            result = await sim.send_raw(0, big, compressed=True)
            assert result["bytes"] < 100_000  # compressed, one message
            assert await c.recv_until(lambda m: m.get("t") == "BIG") == json.loads(big)
            await sim.send_raw(0, '{"op":11}', compressed=True)
            assert await c.recv() == {"op": 11}
            await c.close()

    asyncio.run(main())


def test_resume_over_zstd_starts_a_new_frame() -> None:
    async def main():
        async with Simulator(**opts(events_per_shard=20)) as sim:
            a, _, ready = await hello_identify(sim.url, compress="zstd-stream")
            for _ in range(20):
                await a.recv()
            await a.close(4900)
            b = await RawClient.open(sim.url, path="/resume", compress="zstd-stream")
            assert (await b.recv())["op"] == 10  # a fresh decompressor reads the new connection
            assert b.ws_messages[0][:4] == MAGIC
            await b.resume(ready["d"]["session_id"], 10)
            replayed = [await b.recv() for _ in range(14)]
            # READY, 2 GUILD_CREATE and 20 events: 23 seqs, the ones after 10 replayed
            assert [m["s"] for m in replayed[:13]] == list(range(11, 24))
            assert replayed[-1]["t"] == "RESUMED"
            await b.close()

    asyncio.run(main())


def test_unknown_compress_is_refused_and_zstd_without_the_library(monkeypatch) -> None:
    async def main():
        async with Simulator(**opts()) as sim:
            c = await RawClient.open(sim.url, query="v=10&encoding=json&compress=gzip")
            code, reason = await c.closed()
            assert code == Close.DECODE_ERROR and "only zlib-stream or zstd-stream" in reason
            monkeypatch.setattr(inflate, "_zstd", None)
            c = await RawClient.open(sim.url, query="v=10&encoding=json&compress=zstd-stream")
            code, reason = await c.closed()
            assert code == Close.DECODE_ERROR
            assert reason.startswith("zstd-stream needs a zstd library")

    asyncio.run(main())


def _window_log(frame_start: bytes) -> int:
    """The window log a zstd frame header announces (RFC 8878 3.1.1.1: the header descriptor,
    then the window descriptor unless Single_Segment_flag is set)."""
    assert frame_start[:4] == MAGIC
    descriptor = frame_start[4]
    assert not descriptor & 0x20, "a streamed frame has no single segment"
    return 10 + (frame_start[5] >> 3)


def test_compressors_use_discords_windows_and_count_the_bytes() -> None:
    async def main():
        async with Simulator(**opts(events_per_shard=50)) as sim:
            z, _, _ = await hello_identify(sim.url, compress="zstd-stream")
            for _ in range(50):
                await z.recv()
            # Discord's 64 KiB window (window log 16), not zstd's default 2 MiB (level 3: 21).
            assert _window_log(z.ws_messages[0]) == 16
            await z.close()
            zl, _, _ = await hello_identify(sim.url, compress="zlib-stream")
            for _ in range(50):
                await zl.recv()
            first = zl.ws_messages[0]
            assert isinstance(first, bytes)
            # RFC 1950 header: CM 8 (deflate), CINFO 7 (a 32 KiB window)
            assert first[0] == 0x78 and (first[0] << 8 | first[1]) % 31 == 0
            await zl.close()
            stats = sim.stats()
            # every message's JSON was counted, and what was written (compressed) is smaller
            assert stats["payload_bytes"] > stats["wire_bytes"] > 0
            assert stats["wire_bytes"] >= sum(len(m) for m in z.ws_messages + zl.ws_messages)

    asyncio.run(main())


def test_zstd_compressor_parameters_are_discords() -> None:
    from supervisor.simulator import discord_facts as facts
    from supervisor.simulator.server import zstd_compressor

    comp = zstd_compressor()
    data = comp.compress(b'{"op":11}' * 100, comp.FLUSH_BLOCK)
    assert _window_log(data) == facts.ZSTD_WINDOW_LOG == 16
    assert inflate.ZstdStreamInflater().feed(data) == b'{"op":11}' * 100
