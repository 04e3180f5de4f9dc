"""The REST and control endpoints, served next to the gateway, driven through SimulatorThread."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request

from shard_worker.gateway.protocol import Op
from supervisor.simulator import SimulatorThread
from tests.supervisor.simulator._client import TOKEN, hello_identify


def get(url: str, headers: dict | None = None) -> tuple[int, str, dict]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.headers.get("Content-Type"), json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type"), json.loads(exc.read())


def test_gateway_bot_with_right_and_wrong_authorization() -> None:
    with SimulatorThread(token=TOKEN, shard_count=6, max_concurrency=2) as sim:
        status, ctype, body = get(f"{sim.api_url}/gateway/bot", {"Authorization": f"Bot {TOKEN}"})
        assert status == 200 and ctype == "application/json"
        assert body["url"] == sim.url == f"ws://127.0.0.1:{sim.port}"
        assert body["shards"] == 6
        limit = body["session_start_limit"]
        assert limit["total"] == 1000 and limit["remaining"] == 1000
        assert limit["max_concurrency"] == 2 and 0 < limit["reset_after"] <= 86_400_000
        for headers in ({"Authorization": "Bot wrong"}, {"Authorization": TOKEN}, {}):
            status, ctype, body = get(f"{sim.api_url}/gateway/bot", headers)
            assert status == 401 and ctype == "application/json"
            assert body == {"message": "401: Unauthorized", "code": 0}
        status, _, body = get(f"{sim.api_url}/users/@me", {"Authorization": f"Bot {TOKEN}"})
        assert status == 404 and body["message"] == "404: Not Found"


def test_remaining_identifies_drop_with_each_identify() -> None:
    with SimulatorThread(token=TOKEN, identify_interval_s=0.0) as sim:

        async def connect_once() -> None:
            c, _, ready = await hello_identify(sim.url)
            assert ready["t"] == "READY"
            await c.close(1000)

        asyncio.run(connect_once())
        _, _, body = get(f"{sim.api_url}/gateway/bot", {"Authorization": f"Bot {TOKEN}"})
        assert body["session_start_limit"]["remaining"] == 999


def test_stats_and_control_endpoints() -> None:
    with SimulatorThread(token=TOKEN, heartbeat_interval_ms=10000, guilds_per_shard=1) as sim:
        base = f"http://127.0.0.1:{sim.port}/_sim"

        async def session() -> list[dict]:
            c, _, ready = await hello_identify(sim.url)
            await c.recv()  # GUILD_CREATE
            loop = asyncio.get_running_loop()
            status, _, body = await loop.run_in_executor(
                None, get, f"{base}/emit?shard=0&n=3&t=PRESENCE_UPDATE"
            )
            assert status == 200 and body["ok"] is True
            events = [await c.recv() for _ in range(3)]
            status, _, body = await loop.run_in_executor(None, get, f"{base}/reconnect?shard=0")
            assert status == 200
            events.append(await c.recv())
            await c.close(4900)
            return events

        events = asyncio.run(session())
        assert [e["t"] for e in events[:3]] == ["PRESENCE_UPDATE"] * 3
        assert events[3]["op"] == Op.RECONNECT
        status, ctype, stats = get(f"{base}/stats")
        assert status == 200 and ctype == "application/json"
        assert stats["connections"] == 1 and stats["identifies"] == 1
        assert stats["dispatched"] == 5 and stats["dispatched_per_shard"] == {"0": 5}
        assert stats["violations"] == 0 and stats["open_connections"] == 0
        assert TOKEN not in json.dumps(stats)
        status, _, body = get(f"{base}/drop?shard=0")
        assert status == 404 and "no open connection" in body["error"]
        status, _, body = get(f"{base}/nonsense?shard=0")
        assert status == 404
        status, _, body = get(f"{base}/emit")
        assert status == 400
        status, _, snap = get(f"{base}/snapshot")
        assert status == 200 and len(snap["dispatched"]["0"]) == 5
        assert TOKEN not in json.dumps(snap)


def test_thread_call_snapshot_and_wait_until() -> None:
    with SimulatorThread(token=TOKEN, heartbeat_interval_ms=10000, events_per_shard=20) as sim:

        async def client() -> None:
            c, _, _ = await hello_identify(sim.url, compress=True)
            for _ in range(22):
                await c.recv()
            await c.close(4900)

        asyncio.run(client())
        snap = sim.wait_until(lambda s: s["counters"]["dispatched"] == 23, timeout=10)
        assert len(snap["dispatched"][0]) == 23
        # the snapshot is a copy: mutating it changes nothing
        snap["dispatched"][0].clear()
        assert len(sim.snapshot()["dispatched"][0]) == 23
        assert sim.call("ready_shards") == set()  # disconnected
        try:
            sim.call("emit", 5, 1)
            raised = False
        except LookupError:
            raised = True
        assert raised
        try:
            sim.wait_until(lambda s: False, timeout=0.3)
            timed_out = False
        except TimeoutError:
            timed_out = True
        assert timed_out
    # stopped: the thread is gone
    assert not sim._thread.is_alive()
