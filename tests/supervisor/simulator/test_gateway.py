"""The gateway session flow against a raw client: HELLO, IDENTIFY, READY, GUILD_CREATE, stream,
zlib-stream, heartbeats, rate and concurrency."""

from __future__ import annotations

import asyncio
import json
import time
import zlib

from shard_worker.gateway.protocol import ZLIB_SUFFIX, Close, Op, shard_for_guild
from supervisor.simulator import Simulator
from tests.supervisor.simulator._client import TOKEN, RawClient, hello_identify


def opts(**kw):
    base = dict(token=TOKEN, heartbeat_interval_ms=10000, identify_interval_s=0.0)
    base.update(kw)
    return base


def test_identify_ready_guild_create_and_stream() -> None:
    async def main():
        async with Simulator(**opts(shard_count=2, guilds_per_shard=3, events_per_shard=40)) as sim:
            c = await RawClient.open(sim.url)
            hello = await c.recv()
            assert hello["op"] == Op.HELLO and hello["d"]["heartbeat_interval"] == 10000
            await c.identify([1, 2])
            ready = await c.recv()
            assert (ready["op"], ready["t"], ready["s"]) == (0, "READY", 1)
            d = ready["d"]
            assert d["v"] == 10 and d["shard"] == [1, 2] and d["user"]["bot"] is True
            assert d["resume_gateway_url"] == f"{sim.url}/resume"
            assert len(d["guilds"]) == 3 and all(g["unavailable"] for g in d["guilds"])
            assert d["application"]["id"] and len(d["session_id"]) >= 16
            creates = [await c.recv() for _ in range(3)]
            assert [m["t"] for m in creates] == ["GUILD_CREATE"] * 3
            assert {m["d"]["id"] for m in creates} == {g["id"] for g in d["guilds"]}
            assert all(shard_for_guild(int(m["d"]["id"]), 2) == 1 for m in creates)
            events = [await c.recv() for _ in range(40)]
            seqs = [m["s"] for m in [ready, *creates, *events]]
            assert seqs == list(range(1, 45))
            kinds = {m["t"] for m in events}
            assert "MESSAGE_CREATE" in kinds and kinds <= {
                "MESSAGE_CREATE", "TYPING_START", "PRESENCE_UPDATE", "GUILD_MEMBER_UPDATE"
            }
            # nothing more: the stream had 40 events
            try:
                extra = await c.recv(timeout=0.5)
            except asyncio.TimeoutError:
                extra = None
            assert extra is None
            snap = sim.snapshot()
            assert snap["ready"] == {1}
            assert snap["shards"][1]["session_id"] == d["session_id"]
            assert snap["shards"][1]["seq"] == 44
            assert [s for _, s, _ in snap["dispatched"][1]] == list(range(1, 45))
            assert snap["dispatched"][1][0] == (d["session_id"], 1, "READY")
            assert snap["identifies"][0]["shard"] == 1 and snap["identifies"][0]["accepted"]
            assert snap["sent"][0]["d"]["token"] == "<redacted>"
            assert snap["connections"][0]["shard"] == 1
            assert snap["violations"] == []
            await c.close(1000)

    asyncio.run(main())


def test_zlib_stream_one_inflate_context() -> None:
    async def main():
        async with Simulator(**opts(events_per_shard=100)) as sim:
            c, hello, ready = await hello_identify(sim.url, compress=True)
            assert hello["op"] == 10 and ready["t"] == "READY"
            msgs = [await c.recv() for _ in range(102)]
            assert [m["s"] for m in msgs] == list(range(2, 104))
            assert all(isinstance(m, bytes) and m.endswith(ZLIB_SUFFIX) for m in c.ws_messages)
            # The stream really is one zlib context: the first message has the zlib header and
            # later ones cannot be inflated on their own.
            assert c.ws_messages[0][:1] == b"\x78"
            try:
                zlib.decompressobj().decompress(c.ws_messages[50])
                independent = True
            except zlib.error:
                independent = False
            assert not independent
            await c.close()

    asyncio.run(main())


def test_zlib_stream_fragmented_messages() -> None:
    async def main():
        async with Simulator(**opts(events_per_shard=60, fragment=True)) as sim:
            c, hello, ready = await hello_identify(sim.url, compress=True)
            msgs = [await c.recv() for _ in range(62)]
            assert [m["s"] for m in [ready, *msgs]] == list(range(1, 64))
            # every payload came as two websocket messages, the first never a complete one
            assert len(c.ws_messages) == 2 * (len(msgs) + 2)
            firsts = c.ws_messages[0::2]
            assert not any(m.endswith(ZLIB_SUFFIX) for m in firsts)
            seconds = c.ws_messages[1::2]
            assert all((a + b).endswith(ZLIB_SUFFIX) for a, b in zip(firsts, seconds))
            await c.close()

    asyncio.run(main())


def test_heartbeat_ack_zombie_and_server_heartbeat_request() -> None:
    async def main():
        async with Simulator(**opts(heartbeat_interval_ms=5000)) as sim:
            c, _, ready = await hello_identify(sim.url)
            await c.recv()  # GUILD_CREATE x2
            await c.recv()
            await c.send({"op": 1, "d": 3})
            ack = await c.recv()
            assert ack["op"] == Op.HEARTBEAT_ACK
            await sim.request_heartbeat(0)
            req = await c.recv()
            assert req["op"] == Op.HEARTBEAT
            await sim.zombie(0)
            await c.send({"op": 1, "d": 3})
            try:
                got = await c.recv(timeout=1.0)
            except asyncio.TimeoutError:
                got = None
            assert got is None, "a zombie connection must not ACK"
            await sim.zombie(0, on=False)
            await c.send({"op": 1, "d": 3})
            assert (await c.recv())["op"] == Op.HEARTBEAT_ACK
            heartbeats = [r for r in sim.snapshot()["sent"] if r["op"] == 1]
            assert [r["d"] for r in heartbeats] == [3, 3, 3]
            assert all(r["shard"] == 0 for r in heartbeats)
            await c.close()

    asyncio.run(main())


def test_missing_heartbeats_close_4000_with_violation() -> None:
    async def main():
        async with Simulator(**opts(heartbeat_interval_ms=500, heartbeat_timeout_s=1.0)) as sim:
            c, _, _ = await hello_identify(sim.url)
            start = time.monotonic()
            code, reason = await c.closed(timeout=10)
            assert code == Close.UNKNOWN_ERROR and "heartbeat" in reason.lower()
            assert time.monotonic() - start >= 0.5
            snap = sim.snapshot()
            assert any("no heartbeat" in v for v in snap["violations"])
            assert snap["connections"][0]["closed_by"] == "server"
            # 4000 keeps the session resumable
            assert 0 in snap["shards"] and not snap["shards"][0]["connected"]

    asyncio.run(main())


def test_rate_paces_the_stream() -> None:
    async def main():
        async with Simulator(**opts(events_per_shard=12, rate=20.0)) as sim:
            c, _, _ = await hello_identify(sim.url, compress=True)
            await c.recv()
            await c.recv()
            start = time.monotonic()
            events = [await c.recv() for _ in range(12)]
            elapsed = time.monotonic() - start
            assert [e["s"] for e in events] == list(range(4, 16))
            assert elapsed >= 0.4, elapsed  # 12 events at 20/s take about 0.55 s
            await c.close()

    asyncio.run(main())


def test_emit_adds_events_of_a_type() -> None:
    async def main():
        async with Simulator(**opts(guilds_per_shard=1)) as sim:
            c, _, ready = await hello_identify(sim.url)
            await c.recv()  # GUILD_CREATE
            result = await sim.emit(0, 5, "TYPING_START")
            assert result["session_id"] == ready["d"]["session_id"]
            events = [await c.recv() for _ in range(5)]
            assert [e["t"] for e in events] == ["TYPING_START"] * 5
            assert [e["s"] for e in events] == [3, 4, 5, 6, 7]
            await c.close()

    asyncio.run(main())


def test_request_guild_members_gets_a_chunk() -> None:
    async def main():
        async with Simulator(**opts(guilds_per_shard=1)) as sim:
            c, _, ready = await hello_identify(sim.url)
            gid = ready["d"]["guilds"][0]["id"]
            await c.recv()
            await c.send({"op": 8, "d": {"guild_id": gid, "query": "", "limit": 0, "nonce": "n1"}})
            chunk = await c.recv()
            assert chunk["t"] == "GUILD_MEMBERS_CHUNK" and chunk["s"] == 3
            assert chunk["d"]["guild_id"] == gid and chunk["d"]["nonce"] == "n1"
            assert chunk["d"]["members"]
            await c.close()

    asyncio.run(main())


def test_64_shards_concurrently() -> None:
    n, events = 64, 50

    async def main():
        async with Simulator(
            **opts(shard_count=n, max_concurrency=n, events_per_shard=events, guilds_per_shard=1)
        ) as sim:

            async def shard(i: int) -> list[int]:
                c, _, ready = await hello_identify(sim.url, [i, n], compress=i % 2 == 0)
                assert ready["d"]["shard"] == [i, n]
                seqs = [ready["s"]] + [(await c.recv(timeout=30))["s"] for _ in range(1 + events)]
                await c.close(1000)
                return seqs

            results = await asyncio.gather(*(shard(i) for i in range(n)))
            assert all(r == list(range(1, events + 3)) for r in results)
            snap = sim.snapshot()
            assert snap["counters"]["identifies"] == n
            assert snap["counters"]["dispatched"] == n * (events + 2)
            assert snap["violations"] == []

    asyncio.run(main())


def test_sent_records_redact_tokens_everywhere() -> None:
    async def main():
        async with Simulator(**opts()) as sim:
            c, _, ready = await hello_identify(sim.url)
            await c.close(4900)
            c2 = await RawClient.open(sim.url, path="/resume")
            await c2.recv()
            await c2.resume(ready["d"]["session_id"], 1)
            resumed = await c2.recv_until(lambda m: m.get("t") == "RESUMED")
            assert resumed["op"] == 0
            dump = json.dumps(sim.snapshot(), default=list)
            assert TOKEN not in dump and dump.count("<redacted>") == 2
            await c2.close()

    asyncio.run(main())


def test_stamp_puts_the_send_time_in_message_create_nonces() -> None:
    async def main():
        async with Simulator(**opts(events_per_shard=50, stamp=True, seed=3)) as sim:
            c, _, _ = await hello_identify(sim.url, compress=True)
            msgs = [await c.recv() for _ in range(52)]  # 2 GUILD_CREATEs, then the stream
            received = time.time_ns() // 1000
            creates = [m["d"] for m in msgs if m["t"] == "MESSAGE_CREATE"]
            assert creates
            for d in creates:
                assert d["nonce"] != d["id"]
                # made within the last few seconds, before it was read
                assert received - 10_000_000 < int(d["nonce"]) <= received
            await c.close()

    asyncio.run(main())
