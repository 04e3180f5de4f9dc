"""``supervisor/simulator/poll_clock.py``: the simulated Discord judges identify pacing by when
bytes arrived, known to within its loop's last pass, and tells its own lateness from a client
that wrote too early (issue 22, item 6: gaps of 4.93 s seen at 5000 shards)."""

from __future__ import annotations

import asyncio
import time

from shard_worker.gateway.protocol import Op
from supervisor.simulator import Simulator
from supervisor.simulator.poll_clock import PollClock, new_loop, poll_clock
from tests.supervisor.simulator._client import TOKEN, RawClient

INTERVAL_S = 5.0


def test_the_poll_clock_window_spans_the_loops_last_pass():
    async def main():
        clock = poll_clock(asyncio.get_running_loop())
        assert isinstance(clock, PollClock)
        await asyncio.sleep(0)
        before = time.monotonic()
        time.sleep(0.3)  # a busy pass
        await asyncio.sleep(0)
        earliest, latest = clock.window()
        assert earliest <= before and latest - earliest >= 0.3 and clock.widest >= 0.3

    with asyncio.Runner(loop_factory=new_loop) as runner:
        runner.run(main())


def test_a_gap_short_only_by_the_simulators_lateness_is_its_doubt_not_an_op_9():
    async def main():
        # one bucket: shards 0, 1, 2 all in bucket 0
        async with Simulator(token=TOKEN, shard_count=4, max_concurrency=1, identify_interval_s=INTERVAL_S,
                             heartbeat_interval_ms=30000) as sim:
            a, b, c = [await RawClient.open(sim.url) for _ in range(3)]
            for x in (a, b, c):
                assert (await x.recv())["op"] == Op.HELLO
            await a.identify([0, 4])
            sent_a = time.monotonic()
            time.sleep(3.0)  # the loop is stuck: shard 0's bytes wait in the socket
            assert (await a.recv())["t"] == "READY"
            await asyncio.sleep(max(0.0, sent_a + INTERVAL_S + 1.0 - time.monotonic()))
            await b.identify([1, 4])  # 6 s after shard 0 was written; 3 s after the loop saw it
            assert (await b.recv())["t"] == "READY"
            await asyncio.sleep(2.0)
            await c.identify([2, 4])  # 2 s after shard 1, on a quiet loop: the client's fault
            inv = await c.recv()
            assert inv["op"] == Op.INVALID_SESSION and inv["d"] is False
            snap = sim.snapshot()
            first, second, third = snap["identifies"]
            assert first["time"] - first["earliest"] >= 3.0  # the window holds the stuck pass
            assert second["accepted"] and second["doubt"][0] < INTERVAL_S <= second["doubt"][1]
            assert snap["counters"]["pacing_doubts"] == 1
            assert not third["accepted"] and "doubt" not in third
            assert third["time"] - third["earliest"] < 1.0  # a quiet loop polls every 50 ms
            assert snap["widest_pass_s"] >= 3.0
            assert len(snap["violations"]) == 1 and "shard 2" in snap["violations"][0]
            for x in (a, b, c):
                await x.close()

    with asyncio.Runner(loop_factory=new_loop) as runner:
        runner.run(main())


def test_without_a_poll_clock_the_handlers_time_is_the_arrival():
    async def main():
        assert poll_clock(asyncio.get_running_loop()) is None
        async with Simulator(token=TOKEN, shard_count=2, max_concurrency=1, identify_interval_s=INTERVAL_S,
                             heartbeat_interval_ms=30000) as sim:
            a = await RawClient.open(sim.url)
            await a.recv()
            await a.identify([0, 2])
            assert (await a.recv())["t"] == "READY"
            [entry] = sim.snapshot()["identifies"]
            assert entry["earliest"] == entry["time"] <= entry["handled"]
            await a.close()

    asyncio.run(main())
