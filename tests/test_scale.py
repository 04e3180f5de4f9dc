"""Large-bot scale with real processes: 2000 shards in two 1000-shard children, the simulator in a
process of its own and the real RabbitMQ.

One run checks what breaks first at a thousand shards: every shard READY with no two IDENTIFYs of
a bucket closer than 5 s (as the simulated Discord saw them arrive), a kill -9 of a 1000-shard
child whose replacement gets 1000 saved sessions (far past the 128 KiB an environment variable
may hold) and RESUMEs every one with no IDENTIFY while the other child is untouched, the series
per shard within the documented bound while more than 9 event types flow, ``status`` at
that size, and a whole-gateway outage (every connection ends at once, a quarter of the sessions
die): every valid session RESUMEs, one IDENTIFY per dead one and never an op 9 for pacing, no
event lost, with the time to all READY against the identify floor printed (docs/RELIABILITY.md).
The simulated Discord judges pacing by arrival windows (its ``poll_clock``): a gap short only by
its own loop's lateness is a recorded doubt, not a violation.
"""

from __future__ import annotations

import json
import os
import time
import urllib.request
from collections import Counter, defaultdict

import pytest
from prometheus_client.parser import text_string_to_metric_families

from shard_worker import spectacles
from supervisor.simulator.process import SimulatorProcess
from tests.helpers import TOKEN, free_port, wait_for
from tests.supervisor.supervisor_process import SupervisorProcess

#: 2000 shards on two cores: the simulator's own loop lags when other tests share the CPU, and
#: the pacing it measures (5 s per bucket, at the server) with it. Runs alone.
pytestmark = pytest.mark.exclusive

SHARDS = 2000
PER_PROCESS = 1000
MAX_CONCURRENCY = 256
#: docs/METRICS.md: at most 12 series per shard.
SERIES_PER_SHARD = 12
#: How long the simulated gateway refuses connections in the outage.
OUTAGE_DOWN_S = 5.0
EXTRA_TYPES = ("CHANNEL_CREATE", "GUILD_ROLE_CREATE", "MESSAGE_REACTION_ADD", "INTERACTION_CREATE", "VOICE_STATE_UPDATE")


def scrape(port: int) -> list:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as response:
        return list(text_string_to_metric_families(response.read().decode()))


def bucket_gaps(identifies: list[dict]) -> list[float]:
    """Seconds between consecutive accepted IDENTIFYs of each bucket, as the server saw them."""
    by_bucket: dict[int, list[float]] = defaultdict(list)
    for entry in identifies:
        if entry["accepted"]:
            by_bucket[entry["bucket"]].append(entry["time"])
    gaps = []
    for times in by_bucket.values():
        times.sort()
        gaps += [b - a for a, b in zip(times, times[1:])]
    return gaps


@pytest.mark.timeout(600)  # the start, the kill, the outage: about 3 minutes
def test_2000_shards_ready_paced_resumed_after_kill_metrics_bounded_and_an_outage(amqp_url, rabbit, group, tmp_path):
    rabbit.declare_exchange(group)
    # durable queues outlive the test: delete every one the children declare
    rabbit.track(*(spectacles.shard_queue(group, s) for s in range(SHARDS)), spectacles.send_queue(group))
    port = free_port()
    with SimulatorProcess(
        token=TOKEN, shard_count=SHARDS, max_concurrency=MAX_CONCURRENCY, guilds_per_shard=1,
        events_per_shard=-1, rate=0.2, log_path=tmp_path / "simulator.log",
    ) as sim:  # fmt: skip
        sup = SupervisorProcess(
            sim, amqp_url, group, tmp_path / "state",
            "--shards-per-process", str(PER_PROCESS), "--metrics-addr", f"127.0.0.1:{port}",
        )  # fmt: skip
        try:
            started = time.monotonic()
            sim.wait_until(lambda s: len(s["ready"]) == SHARDS, timeout=150, interval=1.0)
            startup = time.monotonic() - started
            snap = sim.snapshot()
            assert snap["violations"] == []
            accepted = [e for e in snap["identifies"] if e["accepted"]]
            assert len(accepted) == SHARDS and {e["shard"] for e in accepted} == set(range(SHARDS))
            gaps = bucket_gaps(snap["identifies"])
            assert len(gaps) == SHARDS - MAX_CONCURRENCY
            # No gap short at both ends of the simulator's arrival window (violations would list
            # it); one short only by the simulator's own lateness is recorded as its doubt.
            doubts = [e["doubt"] for e in snap["identifies"] if "doubt" in e]
            assert len(doubts) == snap["counters"]["pacing_doubts"]
            assert all(longest >= 5.0 for _, longest in doubts)
            assert sum(1 for g in gaps if g < 5.0) <= len(doubts)  # every short stamp explained
            print(
                f"\n2000 shards READY in {startup:.1f} s; smallest bucket gap {min(gaps):.3f} s by the "
                f"simulator's stamps, {len(doubts)} short only by its loop (widest pass {snap['widest_pass_s']} s)"
            )

            # more event types than the stream mixes, on shards of both children (one event per
            # shard: a shard's stream goes at the simulator's rate, emitted events included)
            for i, t in enumerate(EXTRA_TYPES):
                for shard in (i, 1500 + i):
                    sim.call("emit", shard=shard, n=1, t=t)
            seen: list[int] = []
            received = wait_for(
                lambda: (fams := scrape(port))
                and seen.append(_typed(fams, "spectacles_events_received_total")) is None
                and seen[-1] >= 11
                and fams,
                60,
                interval=1.0,
                what="11 event types counted",
            )
            _check_cardinality(received)

            status = json.loads(sup.cli("status", "--json").stdout)
            assert len(status["shards"]) == SHARDS
            assert Counter(row["state"] for row in status["shards"]) == {"ready": SHARDS}
            summary = sup.cli("status").stdout
            assert "2000 ready" in summary and len(summary.splitlines()) < 20

            # kill -9 of the child of shards 1000-1999: its replacement resumes all 1000
            children = sup.wait_children(2)
            victim = next(c for c in children if " ".join(c.cmdline()).strip().endswith("shards 1000-1999"))
            survivor = next(c for c in children if c.pid != victim.pid)
            before = sim.snapshot()
            survivor_conns = {
                c["id"] for c in before["connections"] if c["shard"] is not None and c["shard"] < PER_PROCESS and c["closed"] is None
            }
            assert len(survivor_conns) == PER_PROCESS
            killed_at = time.time()
            victim.kill()
            t0 = time.monotonic()
            sim.wait_until(
                lambda s: len(s["ready"]) == SHARDS and s["resumes"] >= PER_PROCESS, timeout=90, interval=1.0
            )
            resumed_in = time.monotonic() - t0
            after = sim.snapshot()
            ok = {r["shard"] for r in after["resumes"] if r["result"] == "ok" and r["time"] > killed_at}
            assert ok == set(range(PER_PROCESS, SHARDS))
            assert after["counters"]["identifies"] == SHARDS  # not one IDENTIFY more
            still_open = {c["id"] for c in after["connections"] if c["id"] in survivor_conns and c["closed"] is None}
            assert still_open == survivor_conns  # the other child was untouched
            assert survivor.is_running() and survivor.pid in {c.pid for c in sup.children()}
            assert after["violations"] == []
            print(f"1000 shards resumed {resumed_in:.1f} s after the kill")
            log = sup.output()
            assert "Argument list too long" not in log
            assert "1000 to resume, 0 to identify" in log
            assert "shards 1000-1999" in log and "1000, 1001, 1002" not in log
            _check_cardinality(scrape(port))

            _outage(sim, rabbit, group)
            # Every connection closed in the outage: each child runs a full collection for
            # them (gc_tuning.FullCollections). Its pause at 1,000 shards a child is a figure.
            groups = wait_for(
                lambda: (g := json.loads(sup.cli("status", "--json").stdout)["groups"])
                and all((r["sizes"] or {}).get("full_collections", 0) >= 1 for r in g) and g,
                120, what="a full collection in each child",
            )  # fmt: skip
            print("full collections (runs, longest ms, objects freed) per 1000-shard child: "
                  f"{[(r['sizes']['full_collections'], r['sizes']['gc_max_ms'], r['sizes']['gc_freed']) for r in groups]}")
        finally:
            sup.stop()


def _outage(sim, rabbit, group: str) -> None:
    """A whole-gateway outage at 2000 shards: every connection ends at once (half cut, half
    closed 4000), a quarter of the sessions die, the gateway refuses connections for 5 s, the
    first 200 connections after meet op 7. Every valid session RESUMEs, one IDENTIFY per dead
    one, paced, and no event of a session alive at the end is lost."""
    seed = int(os.environ.get("SPECTACLES_SCALE_SEED", "22"))
    print(f"outage seed {seed} (SPECTACLES_SCALE_SEED)")
    events = spectacles.queue_name(group, "MESSAGE_CREATE", "scale-test")
    rabbit.bind(group, events, "MESSAGE_CREATE")  # before the seqs below are read
    before = sim.snapshot()
    seq_at_bind = {int(k): (v["session_id"], v["seq"]) for k, v in before["shards"].items()}
    outage_at = time.time()
    result = sim.call("outage", down_s=OUTAGE_DOWN_S, invalidate=0.25, cut=0.5, op7=200, seed=seed)["result"]
    t0 = time.monotonic()
    invalidated = set(result["invalidated"])
    assert 300 < len(invalidated) < 700 and len(result["dropped"]) + len(result["closed"]) == SHARDS
    wait_for(lambda: len(sim.stats()["ready"]) < SHARDS, 30, what="the outage to be seen")
    sim.wait_until(lambda s: len(s["ready"]) == SHARDS, timeout=240, interval=1.0)
    back_in = time.monotonic() - t0
    # the floor: the outage, then the busiest bucket's identifies 5 s apart
    per_bucket = Counter(shard % MAX_CONCURRENCY for shard in invalidated)
    floor = OUTAGE_DOWN_S + 5.0 * (max(per_bucket.values()) - 1)
    time.sleep(3.0)  # the last events published
    snap = sim.snapshot()
    assert snap["violations"] == []
    new = snap["identifies"][len(before["identifies"]):]
    assert all(e["accepted"] for e in new)  # never an op 9 for pacing
    assert sorted(e["shard"] for e in new) == sorted(invalidated)  # one IDENTIFY where a session died
    resumed = {r["shard"] for r in snap["resumes"] if r["result"] == "ok" and r["time"] > outage_at}
    assert resumed == set(range(SHARDS)) - invalidated
    # each dead session's RESUME met op 9 (the simulator no longer knows its shard), then it identified
    refused = {r["session_id"] for r in snap["resumes"] if r["result"] != "ok" and r["time"] > outage_at}
    assert refused == {seq_at_bind[shard][0] for shard in invalidated}
    owed: set[str] = set()
    for key, state in snap["shards"].items():
        session, since = seq_at_bind.get(int(key), (None, 0))
        since = since if session == state["session_id"] else 0
        frames = sim.call("history", session_id=state["session_id"])["result"]
        owed |= {f["d"]["id"] for f in frames if f["t"] == "MESSAGE_CREATE" and f["s"] > since}
    published = {json.loads(body)["id"] for _, _, body in rabbit.get_all(events)}
    lost = owed - published
    print(
        f"outage at 2000 shards: all READY {back_in:.1f} s after it began (floor {floor:.0f} s, "
        f"{back_in / floor:.2f}x); {len(invalidated)} sessions died, {len(new)} identifies, "
        f"{len(resumed)} resumed; {snap['counters']['refused_down']} connections refused while down; "
        f"{len(owed)} events owed, {len(lost)} lost; {snap['counters']['pacing_doubts']} pacing doubts"
    )
    assert len(owed) > 100 and not lost, f"seed {seed}: {len(lost)} of {len(owed)} events lost"


def _typed(families: list, name: str) -> int:
    """Distinct ``type`` labels of a counter family."""
    for family in families:
        if family.name == name.removesuffix("_total"):
            return len({s.labels["type"] for s in family.samples if s.name == name})
    return 0


def _check_cardinality(families: list) -> None:
    per_shard: Counter = Counter()
    typed_series = 0
    for family in families:
        for sample in family.samples:
            if "shard" in sample.labels:
                per_shard[sample.labels["shard"]] += 1
            if "type" in sample.labels:
                assert "shard" not in sample.labels  # counts by type are per process
                typed_series += 1
    assert len(per_shard) == SHARDS
    assert max(per_shard.values()) <= SERIES_PER_SHARD
    # 2 counters x 2 processes x the types seen: bounded by the types, not the shards
    assert typed_series <= 2 * (SHARDS // PER_PROCESS) * 16
