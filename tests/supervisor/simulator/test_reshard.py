"""Several shard counts at once (``reshardable``): every guild event reaches every session that
owns the guild under its own count; the recommended count and 4011 on command."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request

from shard_worker.gateway.protocol import Close, Op, shard_for_guild
from supervisor.simulator import Simulator, SimulatorThread
from tests.supervisor.simulator._client import TOKEN, RawClient, hello_identify


def opts(**kw):
    base = dict(
        token=TOKEN, heartbeat_interval_ms=10000, identify_interval_s=0.0, reshardable=True, shard_count=2,
        guilds_per_shard=3, seed=7,
    )
    base.update(kw)
    return base


def raw_d(text: str) -> str:
    """The ``d`` of a dispatch exactly as sent (the frame is ``{"t":..,"s":..,"op":0,"d":...}``)."""
    return text[text.index(',"d":') + 5 : -1]


async def connect_set(sim: Simulator, count: int) -> tuple[list[RawClient], list[dict]]:
    clients, readies = [], []
    for shard in range(count):
        client, _, ready = await hello_identify(sim.url, [shard, count])
        for _ in ready["d"]["guilds"]:
            assert (await client.recv())["t"] == "GUILD_CREATE"
        clients.append(client)
        readies.append(ready)
    return clients, readies


async def stream_of(client: RawClient, n: int) -> list[str]:
    """The next ``n`` MESSAGE_CREATE bodies (exact text) of one connection."""
    out = []
    while len(out) < n:
        message = await client.recv()
        if message.get("t") == "MESSAGE_CREATE":
            out.append(raw_d(client.raw[-1]))
    return out


def test_every_guild_event_reaches_its_owner_in_each_set_byte_for_byte() -> None:
    async def main():
        async with Simulator(**opts()) as sim:
            population = sim.population()
            assert len(population) == 6
            old, old_ready = await connect_set(sim, 2)
            new, new_ready = await connect_set(sim, 4)
            # each session of either count lists exactly the guilds it owns under that count
            for count, readies in ((2, old_ready), (4, new_ready)):
                owned = [[int(g["id"]) for g in r["d"]["guilds"]] for r in readies]
                assert sorted(g for gs in owned for g in gs) == sorted(population)
                for shard, guilds in enumerate(owned):
                    assert all(shard_for_guild(g, count) == shard for g in guilds)
                assert [r["d"]["shard"] for r in readies] == [[s, count] for s in range(count)]

            # 12 events made by old shard 0 reach it, and each of them the new owner of its guild
            await sim.emit(0, 12, "MESSAGE_CREATE")
            made = await stream_of(old[0], 12)
            new_owner = {s: [] for s in range(4)}
            for body in made:
                new_owner[shard_for_guild(int(json.loads(body)["guild_id"]), 4)].append(body)
            for shard, expected in new_owner.items():
                assert await stream_of(new[shard], len(expected)) == expected  # same bytes, same order
            # and the other way: events of new shard 3 reach the old owners
            await sim.emit(3, 5, "MESSAGE_CREATE", count=4)
            made = await stream_of(new[3], 5)
            old_owner = {0: [], 1: []}
            for body in made:
                old_owner[shard_for_guild(int(json.loads(body)["guild_id"]), 2)].append(body)
            for shard, expected in old_owner.items():
                assert await stream_of(old[shard], len(expected)) == expected
            snap = sim.snapshot()
            assert snap["counters"]["copies"] == 17
            assert snap["ready_sets"] == {2: [0, 1], 4: [0, 1, 2, 3]}
            assert snap["ready"] == {0, 1}  # the base count, as before
            assert set(snap["sets"]) == {2, 4} and set(snap["dispatched_sets"]) == {4}
            assert snap["violations"] == []
            # the copies carry each receiving session's own seq, in order
            seqs = [s for _, s, _ in snap["dispatched_sets"][4][3]]
            assert seqs == list(range(1, len(seqs) + 1))
            for client in old + new:
                await client.close()

    asyncio.run(main())


def test_a_disconnected_session_keeps_its_copies_for_resume() -> None:
    async def main():
        async with Simulator(**opts(shard_count=1, guilds_per_shard=4)) as sim:
            old, _ = await connect_set(sim, 1)
            new, new_ready = await connect_set(sim, 2)
            sid, seq = new_ready[1]["d"]["session_id"], json.loads(new[1].raw[-1])["s"]
            await new[1].close(4900)  # resumable
            await asyncio.sleep(0.1)
            await sim.emit(0, 10, "MESSAGE_CREATE")
            made = await stream_of(old[0], 10)
            mine = [b for b in made if shard_for_guild(int(json.loads(b)["guild_id"]), 2) == 1]
            assert mine
            again = await RawClient.open(new_ready[1]["d"]["resume_gateway_url"])
            assert (await again.recv())["op"] == Op.HELLO
            await again.resume(sid, seq)
            assert await stream_of(again, len(mine)) == mine
            assert (await again.recv())["t"] == "RESUMED"
            await again.close()
            for client in old + new[:1]:
                await client.close()

    asyncio.run(main())


async def identify_refused(url: str, shard: list[int]) -> int | None:
    client = await RawClient.open(url)
    assert (await client.recv())["op"] == Op.HELLO
    await client.identify(shard)
    return (await client.closed())[0]


def test_shard_counts_accepted_and_refused() -> None:
    async def main():
        async with Simulator(**opts(shard_count=4, shard_count_multiple=4)) as sim:
            ok, _, ready = await hello_identify(sim.url, [5, 8])
            assert ready["d"]["shard"] == [5, 8]
            assert await identify_refused(sim.url, [0, 6]) == Close.INVALID_SHARD  # not a multiple of 4
            await ok.close()
        async with Simulator(**opts(reshardable=False)) as strict:  # as before: only its count
            assert await identify_refused(strict.url, [0, 4]) == Close.INVALID_SHARD

    asyncio.run(main())


def get(url: str, headers: dict | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_recommended_count_and_4011_on_command() -> None:
    with SimulatorThread(**opts(shard_count=2)) as sim:
        bot = lambda: get(f"{sim.api_url}/gateway/bot", {"Authorization": f"Bot {TOKEN}"})[1]  # noqa: E731
        control = f"http://127.0.0.1:{sim.port}/_sim"
        assert bot()["shards"] == 2
        assert get(f"{control}/set_recommended?shards=6") == (200, {"ok": True, "result": {"shards": 6}})
        assert bot()["shards"] == 6 and get(f"{control}/stats")[1]["recommended_shards"] == 6
        assert get(f"{control}/set_recommended?shards=0")[0] == 400
        assert get(f"{control}/set_recommended")[0] == 400

        async def main():
            old, _ = await connect_set(sim, 2)  # type: ignore[arg-type]
            new, _ = await connect_set(sim, 4)  # type: ignore[arg-type]
            status, body = await asyncio.to_thread(get, f"{control}/sharding_required?shard=1&count=4")
            assert status == 200, body
            assert (await new[1].closed())[0] == Close.SHARDING_REQUIRED
            # shard 1 of the other set is untouched; the default set is the base count
            assert (await asyncio.to_thread(get, f"{control}/sharding_required?shard=1&count=4"))[0] == 404
            assert (await asyncio.to_thread(get, f"{control}/sharding_required?shard=1"))[0] == 200
            assert (await old[1].closed())[0] == Close.SHARDING_REQUIRED
            for client in (old[0], new[0], new[2], new[3]):
                await client.close()

        asyncio.run(main())
