"""The handover rule of :mod:`supervisor.reshard.shard_sets` applied to what a reshardable simulator
really delivers: an old set of 4 and a new set of 8 raw sessions, a live stream, a cut-over
point. Each connection's receipt times decide what that set would publish; every logical event
(a MESSAGE_CREATE, unique by its snowflake id) must be published at least once, and every
duplicate must be marked on both copies (old clients probe at T: what they read before the ACK is theirs). No RabbitMQ here: the
supervisor's live handover is not written yet; this checks the rule against the traffic."""

from __future__ import annotations

import asyncio
import json
import time

from supervisor.reshard.shard_sets import OVERLAP_HEADER, Reshard, Role, ShardSet
from supervisor.simulator import Simulator
from tests.supervisor.simulator._client import TOKEN, RawClient, hello_identify


async def read_all(client: RawClient, role: Role, log: list, stop: asyncio.Event, probe: dict) -> None:
    """Log each dispatch with whether this connection was caught up when it came: an old
    client sends a probe heartbeat at ``probe["at"]``, and everything after its ACK is read
    caught up (the rule of ``shard_worker/reshard.py``)."""
    sent = caught_up = False
    while not stop.is_set():
        if role is Role.OLD and not sent and probe.get("at") is not None and time.monotonic() >= probe["at"]:
            await client.send({"op": 1, "d": None})
            sent = True
        try:
            message = await client.recv(timeout=0.05)
        except asyncio.TimeoutError:
            continue
        if message.get("op") == 11 and sent:
            caught_up = True
        if message.get("op") == 0:
            log.append((time.monotonic(), role, message["t"], message["d"], caught_up))


def test_old_4_to_new_8_loses_nothing_and_marks_every_duplicate():
    async def main():
        async with Simulator(
            token=TOKEN, shard_count=4, reshardable=True, guilds_per_shard=4, events_per_shard=-1, rate=40,
            heartbeat_interval_ms=20000, identify_interval_s=0.0, seed=3,
        ) as sim:
            stop = asyncio.Event()
            received: list = []
            probe: dict = {}
            tasks, clients = [], []
            for role, count in ((Role.OLD, 4), (Role.NEW, 8)):
                for shard in range(count):
                    client, _, _ = await hello_identify(sim.url, [shard, count])
                    clients.append(client)
                    tasks.append(asyncio.ensure_future(read_all(client, role, received, stop, probe)))
                if role is Role.OLD:
                    await asyncio.sleep(0.5)  # the old set serves alone for a while
            while sim.ready_sets().get(8) != list(range(8)):
                await asyncio.sleep(0.05)
            plan = Reshard.plan(ShardSet.full(0, 4), 8).start().new_set_ready(time.monotonic(), lead_s=1.0)
            rule = plan.handover()
            probe["at"] = rule.cut_at
            await asyncio.sleep(plan.cut_at + 2.5 - time.monotonic())
            stop.set()
            await asyncio.gather(*tasks)
            for client in clients:
                await client.close()
            return rule, received, sim.snapshot()

    rule, received, snap = asyncio.run(main())
    assert snap["violations"] == []
    published: dict[str, list] = {}
    seen: dict[str, float] = {}
    for at, role, t, d, caught_up in received:
        if t != "MESSAGE_CREATE":
            continue
        key = d["id"]
        seen[key] = min(seen.get(key, at), at)
        if rule.publishes(role, at, caught_up):
            # the new set is not told the old set is done here: its copies stay marked
            headers = rule.headers(role, at, old_done=False)
            published.setdefault(key, []).append((role, at, headers, json.dumps(d, sort_keys=True)))
    # every logical event first received before the readers stopped (with a second of slack
    # for its twin to arrive) is published at least once
    due = [key for key, at in seen.items() if at < rule.cut_at + 1.5]
    lost = [key for key in due if key not in published]
    assert len(due) > 500 and lost == []
    duplicates = {key: copies for key, copies in published.items() if len(copies) == 2}
    assert all(len(copies) <= 2 for copies in published.values())
    for copies in duplicates.values():
        assert {role for role, *_ in copies} == {Role.OLD, Role.NEW}
        assert all(OVERLAP_HEADER in headers for _, at, headers, _ in copies)
        assert copies[0][3] == copies[1][3]  # the same d
    # unmarked copies are never duplicated
    for copies in published.values():
        if any(not headers for _, _, headers, _ in copies):
            assert len(copies) == 1
    assert duplicates  # the stream ran through the window
    span = max(at for c in duplicates.values() for _, at, _, _ in c) - min(
        at for c in duplicates.values() for _, at, _, _ in c
    )
    assert span < 3 * rule.overlap_s + 0.1
    print(
        f"\n4 -> 8: {len(due)} logical events, 0 lost, {len(duplicates)} published twice "
        f"({100 * len(duplicates) / len(due):.1f}%), all marked, within {span:.2f} s"
    )
