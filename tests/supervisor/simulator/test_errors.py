"""Protocol violations and the close codes the simulator answers them with."""

from __future__ import annotations

import asyncio

import pytest

from shard_worker.gateway.protocol import Close, Op
from supervisor.simulator import Simulator
from tests.supervisor.simulator._client import TOKEN, RawClient, hello_identify

PROPS = {"os": "linux", "browser": "t", "device": "t"}


def run_close_case(sim_kw: dict, steps, query: str | None = None):
    """Connect, read HELLO (unless the query is rejected), send ``steps``; return
    (close code, reason, snapshot)."""

    async def main():
        kw = dict(token=TOKEN, heartbeat_interval_ms=10000, identify_interval_s=0.0)
        kw.update(sim_kw)
        async with Simulator(**kw) as sim:
            c = await RawClient.open(sim.url, query=query)
            if query is None:
                assert (await c.recv())["op"] == Op.HELLO
            for step in steps:
                await c.send(step)
            code, reason = await c.closed(timeout=10)
            await asyncio.sleep(0.05)
            return code, reason, sim.snapshot()

    return asyncio.run(main())


def identify(**over):
    d = {"token": TOKEN, "intents": 1, "properties": PROPS}
    d.update(over)
    return {"op": 2, "d": d}


@pytest.mark.parametrize(
    ("sim_kw", "steps", "code"),
    [
        ({}, [identify(token="wrong")], Close.AUTHENTICATION_FAILED),
        ({"shard_count": 2}, [identify(shard=[2, 2])], Close.INVALID_SHARD),
        ({"shard_count": 2}, [identify(shard=[0, 3])], Close.INVALID_SHARD),
        ({"shard_count": 2}, [identify(shard="0")], Close.INVALID_SHARD),
        ({"shard_count": 2}, [identify()], Close.SHARDING_REQUIRED),
        ({}, [identify(intents="513")], Close.INVALID_INTENTS),
        ({}, [identify(properties=None)], Close.DECODE_ERROR),
        ({}, [{"op": 99, "d": None}], Close.UNKNOWN_OPCODE),
        ({}, [{"op": 3, "d": {"status": "online"}}], Close.NOT_AUTHENTICATED),
        ({}, ["{not json"], Close.DECODE_ERROR),
        ({}, [{"d": None}], Close.DECODE_ERROR),
        ({}, [identify(), identify()], Close.ALREADY_AUTHENTICATED),
    ],
    ids=[
        "bad-token", "shard-id-too-big", "shard-count-mismatch", "shard-malformed",
        "sharding-required", "intents-not-int", "properties-missing", "unknown-op",
        "not-authenticated", "not-json", "no-op", "identify-twice",
    ],
)
def test_close_codes(sim_kw, steps, code) -> None:
    got, reason, snap = run_close_case(sim_kw, steps)
    assert got == code, (got, reason)
    assert reason
    conn = snap["connections"][0]
    assert conn["closed_by"] == "server" and conn["close_code"] == code


def test_wrong_api_version_closes_4012() -> None:
    code, reason, snap = run_close_case({}, [], query="v=9&encoding=json")
    assert code == Close.INVALID_API_VERSION
    assert snap["connections"][0]["query"] == {"v": "9", "encoding": "json"}


def test_wrong_encoding_closes_4002_with_a_reason() -> None:
    code, reason, _ = run_close_case({}, [], query="v=10&encoding=etf")
    assert code == Close.DECODE_ERROR and "etf" in reason


def test_oversize_payload_is_a_violation_and_closes_4002() -> None:
    big = {"op": 1, "d": None, "pad": "x" * 5000}
    code, reason, snap = run_close_case({}, [big])
    assert code == Close.DECODE_ERROR and "large" in reason.lower()
    assert len(snap["violations"]) == 1 and "4096" in snap["violations"][0]


def test_send_limit_is_a_violation_and_closes_4008() -> None:
    beats = [{"op": 1, "d": None}] * 6
    code, reason, snap = run_close_case({"send_limit": 5, "send_window_s": 30.0}, beats)
    assert code == Close.RATE_LIMITED
    assert len(snap["violations"]) == 1 and "limit 5" in snap["violations"][0]
    assert len([r for r in snap["sent"] if r["op"] == 1]) == 6


def test_send_limit_window_slides() -> None:
    async def main():
        async with Simulator(
            token=TOKEN, heartbeat_interval_ms=10000, send_limit=3, send_window_s=0.6
        ) as sim:
            c = await RawClient.open(sim.url)
            await c.recv()
            for _ in range(3):
                await c.send({"op": 1, "d": None})
                assert (await c.recv())["op"] == Op.HEARTBEAT_ACK
            await asyncio.sleep(1.0)  # the window has slid past the first three
            for _ in range(3):
                await c.send({"op": 1, "d": None})
                assert (await c.recv())["op"] == Op.HEARTBEAT_ACK
            assert sim.snapshot()["violations"] == []
            await c.close()

    asyncio.run(main())


def test_identify_bucket_rule() -> None:
    async def main():
        async with Simulator(
            token=TOKEN, shard_count=4, max_concurrency=2, identify_interval_s=3.0,
            heartbeat_interval_ms=10000,
        ) as sim:
            # shards 0 and 1 are different buckets: both fine at once
            a, _, ra = await hello_identify(sim.url, [0, 4])
            b, _, rb = await hello_identify(sim.url, [1, 4])
            assert ra["t"] == rb["t"] == "READY"
            # shard 2 shares bucket 0 with shard 0: too early -> op 9 false + violation
            c = await RawClient.open(sim.url)
            await c.recv()
            await c.identify([2, 4])
            inv = await c.recv()
            assert inv["op"] == Op.INVALID_SESSION and inv["d"] is False
            snap = sim.snapshot()
            assert len(snap["violations"]) == 1 and "bucket 0" in snap["violations"][0]
            assert [(i["shard"], i["bucket"], i["accepted"]) for i in snap["identifies"]] == [
                (0, 0, True), (1, 1, True), (2, 0, False)
            ]
            # after the interval the same connection may identify
            await asyncio.sleep(3.1)
            await c.identify([2, 4])
            assert (await c.recv())["t"] == "READY"
            assert len(sim.snapshot()["violations"]) == 1
            for x in (a, b, c):
                await x.close()

    asyncio.run(main())


def test_session_start_limit_exhausted_closes_4004() -> None:
    async def main():
        async with Simulator(
            token=TOKEN, session_start_remaining=1, identify_interval_s=0.0,
            heartbeat_interval_ms=10000,
        ) as sim:
            a, _, ready = await hello_identify(sim.url)
            assert ready["t"] == "READY"
            await a.close(1000)
            b = await RawClient.open(sim.url)
            await b.recv()
            await b.identify()
            code, _ = await b.closed()
            assert code == Close.AUTHENTICATION_FAILED
            snap = sim.snapshot()
            assert snap["session_start_limit"]["remaining"] == 0
            assert any("session starts" in v for v in snap["violations"])

    asyncio.run(main())
