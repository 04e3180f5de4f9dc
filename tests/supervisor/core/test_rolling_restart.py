"""A rolling restart under a live stream loses no dispatch: a real supervisor, the simulator and
RabbitMQ, ``spectacles-supervisor restart`` mid-stream."""

from __future__ import annotations

import time

from shard_worker import spectacles
from supervisor.simulator import SimulatorThread
from supervisor.simulator.payloads import DISPATCH_TYPES
from tests.helpers import TOKEN, wait_for
from tests.supervisor.supervisor_process import SupervisorProcess

SHARDS = 4
EVENTS_PER_SHARD = 3000
#: Every dispatch type the simulator sends (its stream mix, the session's own events).
EVENT_TYPES = DISPATCH_TYPES
SESSION_EVENTS = ("READY", "GUILD_CREATE", "RESUMED")


def accepted_identifies(snap):
    return [i for i in snap["identifies"] if i["accepted"]]


def stream_done(snap) -> bool:
    return all(
        len([1 for _, _, t in snap["dispatched"].get(shard, []) if t not in SESSION_EVENTS]) >= EVENTS_PER_SHARD
        for shard in range(SHARDS)
    )


def drain_ids(rabbit, queue: str, expected: set[str], timeout: float) -> set[str]:
    """Message ids of everything in ``queue`` (consumed), until ``expected`` came or time ran out."""
    got: set[str] = set()
    deadline = time.monotonic() + timeout
    for method, props, _ in rabbit.channel.consume(queue, auto_ack=True, inactivity_timeout=1.0):
        if method is not None:
            got.add(props.message_id)
        elif expected <= got or time.monotonic() > deadline:
            break
    rabbit.channel.cancel()
    return got


def test_rolling_restart_under_a_live_stream_loses_no_seq(amqp_url, rabbit, group, tmp_path):
    queue = spectacles.queue_name(group, "everything", "test")
    for event in EVENT_TYPES:
        rabbit.bind(group, queue, event)
    rabbit.track(*(spectacles.shard_queue(group, s) for s in range(SHARDS)), spectacles.send_queue(group))
    with SimulatorThread(
        token=TOKEN,
        shard_count=SHARDS,
        max_concurrency=SHARDS,
        heartbeat_interval_ms=2000,
        events_per_shard=EVENTS_PER_SHARD,
        rate=100,
    ) as sim:
        sup = SupervisorProcess(sim, amqp_url, group, tmp_path / "state", "--shards-per-process", "2")
        try:
            sim.wait_until(lambda s: s["ready"] == set(range(SHARDS)), timeout=60)
            old = {child.pid for child in sup.wait_children(2)}
            # mid-stream: a fifth of the events are out
            sim.wait_until(
                lambda s: all((s["shards"][k]["seq"] or 0) >= EVENTS_PER_SHARD // 5 for k in range(SHARDS)),
                timeout=60,
            )
            wait_for(lambda: sup.cli("status").returncode == 0, 15, what="the control socket")
            restart_at = time.time()
            result = sup.cli("restart")
            assert result.returncode == 0, result.stderr
            assert result.stdout.strip() == "rolling restart started"

            snap = sim.wait_until(
                lambda s: {r["shard"] for r in s["resumes"] if r["result"] == "ok" and r["time"] > restart_at}
                == set(range(SHARDS))
                and s["ready"] == set(range(SHARDS)),
                timeout=90,
            )
            wait_for(
                lambda: (kids := sup.children()) and len(kids) == 2 and not ({k.pid for k in kids} & old),
                30,
                what="two new children",
            )
            # the restart happened mid-stream: every shard resumed well before its last event
            for shard in range(SHARDS):
                resume = next(r for r in snap["resumes"] if r["shard"] == shard and r["time"] > restart_at)
                assert resume["seq"] < EVENTS_PER_SHARD, resume
            # one group at a time: group 1 resumed after group 0 was back
            first = max(r["time"] for r in snap["resumes"] if r["shard"] in (0, 1) and r["time"] > restart_at)
            second = min(r["time"] for r in snap["resumes"] if r["shard"] in (2, 3) and r["time"] > restart_at)
            assert first < second

            final = sim.wait_until(stream_done, timeout=120)
            assert len(accepted_identifies(final)) == SHARDS  # no new IDENTIFY
            assert final["violations"] == []
            expected = {
                spectacles.message_id(shard, session_id, seq)
                for shard, items in final["dispatched"].items()
                for session_id, seq, _ in items
            }
            assert len(expected) >= SHARDS * (EVENTS_PER_SHARD + 3)  # READY, 2 guilds, the stream
            got = drain_ids(rabbit, queue, expected, timeout=120)
            missing = expected - got
            assert not missing, f"{len(missing)} dispatches never reached RabbitMQ, e.g. {sorted(missing)[:5]}"
            assert got <= expected  # and nothing that was never dispatched

            output = sup.output()
            assert "rolling restart: group 0 ready" in output and "rolling restart: group 1 ready" in output
            # not a terminal: the start's progress is one line per shard READY, then a summary
            for shard in range(SHARDS):
                assert f"shard {shard} ready (group {shard // 2})" in output
            assert "all 4 shards ready in " in output
            assert "all 4 shards ready again after " in output
            assert TOKEN not in output
        finally:
            sup.stop()
