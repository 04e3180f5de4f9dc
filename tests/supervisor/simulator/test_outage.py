"""The simulator's whole-gateway outage (``Simulator.outage``, ``/_sim/outage``): every
connection ends at once, some sessions die, the gateway refuses connections for a while, and the
first connections after it meet op 7 (issue 22, item 6)."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request

import pytest
import websockets

from shard_worker.gateway.protocol import Op
from supervisor.simulator import Simulator, SimulatorThread
from tests.supervisor.simulator._client import TOKEN, RawClient, hello_identify

SHARDS = 8


def test_an_outage_ends_every_connection_kills_some_sessions_and_refuses_then_reconnects():
    async def main():
        async with Simulator(token=TOKEN, shard_count=SHARDS, max_concurrency=SHARDS, identify_interval_s=0.0,
                             heartbeat_interval_ms=30000) as sim:
            clients, sessions = {}, {}
            for shard in range(SHARDS):
                c, _, ready = await hello_identify(sim.url, [shard, SHARDS])
                clients[shard], sessions[shard] = c, ready["d"]["session_id"]
            result = await sim.outage(down_s=2.0, invalidate=0.5, cut=0.5, op7=1, seed=7)
            assert sorted(result["dropped"] + result["closed"]) == list(range(SHARDS))
            assert result["dropped"] and result["closed"]  # both kinds, by the seed
            assert 0 < len(result["invalidated"]) < SHARDS
            for shard in result["closed"]:
                code, _ = await clients[shard].closed()
                assert code == 4000  # resumable
            for shard in result["dropped"]:
                code, _ = await clients[shard].closed()
                assert code in (None, 1006)  # no close frame: the TCP connection was cut
            # while down: refused at the HTTP upgrade
            with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
                await RawClient.open(sim.url)
            assert refused.value.response.status_code == 503
            await asyncio.sleep(2.2)
            # the first connection after meets op 7 instead of HELLO; the next ones HELLO
            first = await RawClient.open(sim.url)
            assert (await first.recv())["op"] == Op.RECONNECT
            await first.close()
            for shard in range(SHARDS):
                c = await RawClient.open(sim.url)
                assert (await c.recv())["op"] == Op.HELLO
                await c.resume(sessions[shard], 1)
                answer = await c.recv_until(lambda f: f["op"] == Op.INVALID_SESSION or f.get("t") == "RESUMED")
                if shard in result["invalidated"]:
                    assert answer["op"] == Op.INVALID_SESSION and answer["d"] is False
                else:
                    assert answer["op"] == Op.DISPATCH and answer["t"] == "RESUMED", answer
                await c.close()
            snap = sim.snapshot()
            assert snap["counters"]["outages"] == 1 and snap["counters"]["refused_down"] == 1
            assert snap["violations"] == []

    asyncio.run(main())


def test_the_outage_over_http_and_bad_values():
    with SimulatorThread(token=TOKEN, shard_count=1) as sim:
        base = sim.url.replace("ws://", "http://").rstrip("/")
        with urllib.request.urlopen(f"{base}/_sim/outage?down_s=0&invalidate=0&cut=1&seed=1", timeout=10) as response:
            assert json.loads(response.read()) == {"ok": True, "result": {"invalidated": [], "dropped": [], "closed": []}}
        with pytest.raises(urllib.error.HTTPError) as bad:
            urllib.request.urlopen(f"{base}/_sim/outage?invalidate=2", timeout=10)
        assert bad.value.code == 400
