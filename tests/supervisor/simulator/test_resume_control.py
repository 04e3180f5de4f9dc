"""RESUME (exact replay), session lifetime, and the control methods (op 7, op 9, close, drop,
send_raw)."""

from __future__ import annotations

import asyncio
import zlib

from shard_worker.gateway.protocol import Close, Op
from supervisor.simulator import Simulator
from tests.supervisor.simulator._client import TOKEN, RawClient, hello_identify


def sim(**kw):
    base = dict(token=TOKEN, heartbeat_interval_ms=10000, identify_interval_s=0.0)
    base.update(kw)
    return Simulator(**base)


def test_resume_after_drop_replays_exactly() -> None:
    async def main():
        async with sim(guilds_per_shard=2, events_per_shard=30) as s:
            a, _, ready = await hello_identify(s.url)
            sid = ready["d"]["session_id"]
            first = [await a.recv() for _ in range(32)]  # 2 GUILD_CREATE + 30 events
            assert first[-1]["s"] == 33
            original = dict(zip(range(2, 34), a.raw[2:]))  # seq -> exact text received
            await s.drop(0)
            code, _ = await a.closed()
            assert code == 1006  # no close frame
            # events emitted while disconnected wait for the session to come back
            await s.emit(0, 5)
            b = await RawClient.open(ready["d"]["resume_gateway_url"])
            assert (await b.recv())["op"] == Op.HELLO
            await b.resume(sid, 10)
            replay = [await b.recv() for _ in range(23)]
            assert [m["s"] for m in replay] == list(range(11, 34))
            assert b.raw[1:24] == [original[s] for s in range(11, 34)]  # byte for byte
            resumed = await b.recv()
            assert (resumed["t"], resumed["s"]) == ("RESUMED", 34)
            more = [await b.recv() for _ in range(5)]
            assert [m["s"] for m in more] == [35, 36, 37, 38, 39]
            snap = s.snapshot()
            assert snap["resumes"][0]["path"] == "/resume"
            assert snap["resumes"][0]["result"] == "ok" and snap["resumes"][0]["replayed"] == 23
            assert snap["resumes"][0]["session_id"] == sid and snap["resumes"][0]["seq"] == 10
            assert [c["path"] for c in snap["connections"]] == ["/", "/resume"]
            assert snap["connections"][0]["closed_by"] == "drop"
            # dispatched holds first-time dispatches only: no duplicates from the replay
            seqs = [q for _, q, _ in snap["dispatched"][0]]
            assert seqs == list(range(1, 40))
            assert snap["ready"] == {0} and snap["shards"][0]["session_id"] == sid
            await b.close()

    asyncio.run(main())


def test_resume_over_zlib_after_client_close() -> None:
    async def main():
        async with sim(events_per_shard=10) as s:
            a, _, ready = await hello_identify(s.url, compress=True)
            for _ in range(12):
                await a.recv()
            await a.close(4900)  # not 1000/1001: resumable
            b = await RawClient.open(s.url, path="/resume", compress=True)
            await b.recv()
            await b.resume(ready["d"]["session_id"], 13)
            resumed = await b.recv()
            assert (resumed["t"], resumed["s"]) == ("RESUMED", 14)
            assert s.snapshot()["connections"][0]["close_code"] == 4900
            await b.close()

    asyncio.run(main())


def test_resume_unknown_session_gets_op9_false() -> None:
    async def main():
        async with sim() as s:
            c = await RawClient.open(s.url)
            await c.recv()
            await c.resume("nope", 3)
            inv = await c.recv()
            assert inv["op"] == Op.INVALID_SESSION and inv["d"] is False
            # the connection stays usable: identify on it
            await c.identify()
            assert (await c.recv())["t"] == "READY"
            assert s.snapshot()["resumes"][0]["result"] == "invalid_session"
            await c.close()

    asyncio.run(main())


def test_client_close_1000_ends_the_session() -> None:
    async def main():
        async with sim() as s:
            a, _, ready = await hello_identify(s.url)
            await a.close(1000)
            await asyncio.sleep(0.1)
            assert s.snapshot()["shards"] == {}
            b = await RawClient.open(s.url)
            await b.recv()
            await b.resume(ready["d"]["session_id"], 1)
            inv = await b.recv()
            assert inv["op"] == Op.INVALID_SESSION and inv["d"] is False
            await b.close()

    asyncio.run(main())


def test_resume_window_expires() -> None:
    async def main():
        async with sim(resume_window_s=0.3) as s:
            a, _, ready = await hello_identify(s.url)
            await a.close(4900)
            await asyncio.sleep(1.0)
            b = await RawClient.open(s.url)
            await b.recv()
            await b.resume(ready["d"]["session_id"], 1)
            inv = await b.recv()
            assert inv["op"] == Op.INVALID_SESSION and inv["d"] is False
            await b.close()

    asyncio.run(main())


def test_resume_with_future_seq_closes_4007() -> None:
    async def main():
        async with sim(guilds_per_shard=0) as s:
            a, _, ready = await hello_identify(s.url)
            await a.close(4900)
            b = await RawClient.open(s.url)
            await b.recv()
            await b.resume(ready["d"]["session_id"], 50)
            code, _ = await b.closed()
            assert code == Close.INVALID_SEQ
            snap = s.snapshot()
            assert snap["resumes"][0]["result"] == "invalid_seq" and snap["shards"] == {}

    asyncio.run(main())


def test_reconnect_op7_then_server_closes_if_client_does_not() -> None:
    async def main():
        async with sim(reconnect_grace_s=0.5) as s:
            a, _, ready = await hello_identify(s.url)
            await a.recv()
            await a.recv()
            await s.reconnect(0)
            msg = await a.recv()
            assert msg["op"] == Op.RECONNECT
            code, _ = await a.closed(timeout=10)
            assert code == Close.UNKNOWN_ERROR
            # the session survived: resume works
            b = await RawClient.open(s.url, path="/resume")
            await b.recv()
            await b.resume(ready["d"]["session_id"], 3)
            assert (await b.recv())["t"] == "RESUMED"
            await b.close()

    asyncio.run(main())


def test_invalidate_session_not_resumable() -> None:
    async def main():
        async with sim(guilds_per_shard=1) as s:
            a, _, ready = await hello_identify(s.url)
            await a.recv()
            await s.invalidate_session(0, resumable=False)
            inv = await a.recv()
            assert inv["op"] == Op.INVALID_SESSION and inv["d"] is False
            assert s.snapshot()["shards"] == {}
            # remembered with its last seq (READY and the GUILD_CREATE): what a soak owes of it
            assert s.ended_sessions == {ready["d"]["session_id"]: (0, 2)}
            await a.identify()  # a fresh identify on the same connection is allowed
            ready2 = await a.recv()
            assert ready2["t"] == "READY" and ready2["s"] == 1
            assert ready2["d"]["session_id"] != ready["d"]["session_id"]
            await a.close()

    asyncio.run(main())


def test_invalidate_session_resumable() -> None:
    async def main():
        async with sim(guilds_per_shard=1) as s:
            a, _, ready = await hello_identify(s.url)
            await a.recv()
            await s.invalidate_session(0, resumable=True)
            inv = await a.recv()
            assert inv["op"] == Op.INVALID_SESSION and inv["d"] is True
            await a.resume(ready["d"]["session_id"], 2)
            resumed = await a.recv()
            assert (resumed["t"], resumed["s"]) == ("RESUMED", 3)
            await a.close()

    asyncio.run(main())


def test_close_command_codes_and_session_fate() -> None:
    async def main():
        async with sim(shard_count=2, max_concurrency=2) as s:
            a, _, ra = await hello_identify(s.url, [0, 2])
            b, _, rb = await hello_identify(s.url, [1, 2])
            await s.close(0, 4009, "timed out")
            await s.close(1, 4000)
            assert (await a.closed())[0] == 4009
            assert (await b.closed())[0] == 4000
            snap = s.snapshot()
            assert 0 not in snap["shards"]  # 4009 forgot the session
            assert snap["shards"][1]["session_id"] == rb["d"]["session_id"]
            assert {c["close_code"] for c in snap["connections"]} == {4000, 4009}

    asyncio.run(main())


def test_send_raw_invalid_json_and_broken_zlib() -> None:
    async def main():
        async with sim(guilds_per_shard=0) as s:
            a, _, _ = await hello_identify(s.url)
            await s.send_raw(0, "{not json", compressed=False)
            assert await a.ws.recv() == "{not json"
            z, _, _ = await hello_identify(s.url, compress=True)
            # through the connection's compressobj: the client's inflater reads it
            await s.send_raw(0, '{"op":11,"d":null}')
            raw = await z.ws.recv()
            assert z.inflate.decompress(raw) == b'{"op":11,"d":null}'
            # raw garbage bytes: a broken zlib stream
            await s.send_raw(0, b"\x00garbage\x00\x00\xff\xff", compressed=False)
            raw = await z.ws.recv()
            try:
                z.inflate.decompress(raw)
                broken = False
            except zlib.error:
                broken = True
            assert broken
            await a.close()
            await z.close()

    asyncio.run(main())


def test_duplicate_shard_is_a_violation() -> None:
    async def main():
        async with sim() as s:
            a, _, _ = await hello_identify(s.url)
            b, _, _ = await hello_identify(s.url)
            assert any("duplicate" in v for v in s.snapshot()["violations"])
            await a.close()
            await b.close()

    asyncio.run(main())


def test_control_without_connection_raises_lookup_error() -> None:
    async def main():
        async with sim() as s:
            for coro in (s.reconnect(3), s.drop(0), s.emit(0, 1), s.close(0, 4000)):
                try:
                    await coro
                    raised = False
                except LookupError:
                    raised = True
                assert raised

    asyncio.run(main())


def test_resume_during_an_endless_stream_keeps_seq_contiguous() -> None:
    async def main():
        async with sim(events_per_shard=-1, rate=500.0, guilds_per_shard=1) as s:
            a, _, ready = await hello_identify(s.url, compress=True)
            seen = [ready["s"]] + [(await a.recv())["s"] for _ in range(50)]
            await s.drop(0)
            await a.closed()
            b = await RawClient.open(s.url, path="/resume", compress=True)
            await b.recv()
            await b.resume(ready["d"]["session_id"], seen[-1])
            while True:
                m = await b.recv()
                if m.get("t") == "RESUMED":
                    seen.append(m["s"])
                    break
                seen.append(m["s"])
            seen += [(await b.recv())["s"] for _ in range(50)]
            assert seen == list(range(1, len(seen) + 1))
            await b.close()

    asyncio.run(main())


def test_resume_older_than_the_replay_buffer_is_invalid() -> None:
    async def main():
        async with sim(events_per_shard=20, replay_buffer=5, guilds_per_shard=0) as s:
            a, _, ready = await hello_identify(s.url)
            for _ in range(20):
                await a.recv()
            await a.close(4900)
            b = await RawClient.open(s.url, path="/resume")
            await b.recv()
            await b.resume(ready["d"]["session_id"], 3)
            inv = await b.recv()
            assert inv["op"] == Op.INVALID_SESSION and inv["d"] is False
            assert s.snapshot()["resumes"][0]["result"] == "too_old"
            await b.close()

    asyncio.run(main())
