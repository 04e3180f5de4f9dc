"""Chaos: kill -9 random worker children while a 4-shard stream runs; nothing may be lost.

Real processes end to end: the simulator (a stand-in for Discord), ``spectacles-supervisor
start`` with one shard per child, the real RabbitMQ. While every shard streams its 5000 events,
a random child is killed with SIGKILL at random moments (at least 5 times). The guarantees
asserted, whatever the timing:

* every dispatch the simulator sent (``snapshot()["dispatched"]``: READY, GUILD_CREATE, the
  stream, every RESUMED) reaches RabbitMQ at least once, by its ``message_id``
  ``<shard>:<session_id>:<seq>``, with the right routing key and a body equal to the ``d`` sent;
* nothing else reaches RabbitMQ, and a duplicate is always the same message (same body);
* no IDENTIFY beyond the first 4: every recovery is a RESUME of the same session;
* duplicates are counted (at-least-once), and can only come from what a RESUME replayed.

Kill policy (documented choice): after each kill the test waits until the replacement child is
up and its shard RESUMED before drawing the next delay, so every one of the kills hits a live,
streaming shard (asserted) rather than a child still starting; the moment (a random delay of
0.3-3 s) and the victim (any child not yet killed twice) are drawn from ``random.Random(seed)``
with a printed seed (set ``SPECTACLES_CHAOS_SEED`` to replay one). A child is killed at most twice
so that the supervisor's flapping protection (5 quick exits in 120 s hold a group back 300 s)
never kicks in: that is a different feature, not what this test is about.

The number of kills is drawn in [5, 8]; should every stream end before that many happened (a
very slow machine), the test fails unless at least 5 did.

The measured figures go to ``docs/reliability/chaos.json`` (written only once every guarantee
held, so the docs never quote a failing run).
"""

from __future__ import annotations

import json
import os
import random
import time
from collections import Counter
from pathlib import Path

import psutil

from shard_worker import spectacles
from supervisor.simulator import SimulatorThread
from supervisor.simulator.payloads import DISPATCH_TYPES, STREAM_MIX
from tests.helpers import TOKEN, wait_for
from tests.supervisor.supervisor_process import SupervisorProcess

SHARDS = 4
EVENTS_PER_SHARD = 5000
#: Stream events per second per shard: 5000 events take ~42 s of connected time per shard, long
#: enough for every kill to land mid-stream on 2 slow cores.
RATE = 120.0
MIN_KILLS = 5
MAX_KILLS = 8
MAX_KILLS_PER_CHILD = 2
STREAM_TYPES = {t for t, _ in STREAM_MIX}
#: Every dispatch type this run can produce (GUILD_MEMBERS_CHUNK only if an op 8 were sent).
EVENT_TYPES = list(DISPATCH_TYPES)
FIGURES = Path(__file__).resolve().parents[1] / "docs" / "reliability" / "chaos.json"


def stream_count(snap: dict, shard: int) -> int:
    return sum(1 for _, _, t in snap["dispatched"].get(shard, []) if t in STREAM_TYPES)


def child_shard(proc: psutil.Process) -> int | None:
    """The shard a one-shard child runs, from its title ``spectacles-supervisor: shards N``."""
    try:
        title = " ".join(proc.cmdline()).strip()
    except psutil.Error:
        return None
    prefix = "spectacles-supervisor: shards "
    if title.startswith(prefix) and title[len(prefix):].isdigit():
        return int(title[len(prefix):])
    return None


def children_by_shard(sup: SupervisorProcess) -> dict[int, psutil.Process]:
    out = {}
    for child in sup.children():
        shard = child_shard(child)
        if shard is not None:
            out[shard] = child
    return out


def drain(rabbit, queue: str, into: list, deadline: float, done) -> None:
    """Read ``queue`` into ``into`` until ``done(into)`` or the deadline (then the caller asserts)."""
    while True:
        into.extend(rabbit.get_all(queue))
        if done(into) or time.monotonic() > deadline:
            return
        rabbit.connection.sleep(0.5)


def test_kill_9_children_mid_stream_loses_no_event(amqp_url, rabbit, group, tmp_path):
    seed = int(os.environ.get("SPECTACLES_CHAOS_SEED") or random.SystemRandom().randrange(2**32))
    print(f"chaos seed: {seed} (replay with SPECTACLES_CHAOS_SEED={seed})")
    rng = random.Random(seed)
    started = time.monotonic()

    queue = spectacles.queue_name(group, "chaos", "all")
    for event in EVENT_TYPES:
        rabbit.bind(group, queue, event)

    with SimulatorThread(
        token=TOKEN,
        shard_count=SHARDS,
        max_concurrency=SHARDS,
        heartbeat_interval_ms=2000,
        events_per_shard=EVENTS_PER_SHARD,
        rate=RATE,
        replay_buffer=EVENTS_PER_SHARD * 2,
        seed=seed,
    ) as sim:
        sup = SupervisorProcess(sim, amqp_url, group, tmp_path / "state", "--shards-per-process", "1")
        try:
            first = sim.wait_until(lambda s: s["ready"] == set(range(SHARDS)), timeout=120)
            wait_for(lambda: len(children_by_shard(sup)) == SHARDS, 60, what="4 titled children")
            sessions = {shard: first["shards"][shard]["session_id"] for shard in range(SHARDS)}

            # -- the chaos --------------------------------------------------------------------
            kills: list[dict] = []
            killed_per_shard: Counter[int] = Counter()
            n_kills = rng.randint(MIN_KILLS, MAX_KILLS)
            while len(kills) < n_kills:
                time.sleep(rng.uniform(0.3, 3.0))
                snap = sim.snapshot()
                live = children_by_shard(sup)
                candidates = sorted(
                    shard
                    for shard in live
                    if killed_per_shard[shard] < MAX_KILLS_PER_CHILD and stream_count(snap, shard) < EVENTS_PER_SHARD
                )
                if not candidates:  # every stream ended (asserted below: at least MIN_KILLS happened)
                    print(f"no streaming child left to kill after {len(kills)} kills")
                    break
                shard = rng.choice(candidates)
                victim = live[shard]
                at_kill = stream_count(snap, shard)
                killed_at = time.time()
                victim.kill()  # SIGKILL: no goodbye, no flush, no session handed over
                killed_per_shard[shard] += 1
                # Wait for the replacement child and its RESUME (timeouts in minutes: 2 busy cores).
                resumed = sim.wait_until(
                    lambda s, shard=shard, killed_at=killed_at: any(
                        r["shard"] == shard and r["time"] > killed_at and r["result"] == "ok" for r in s["resumes"]
                    )
                    and shard in s["ready"],
                    timeout=120,
                )
                resume = next(
                    r for r in resumed["resumes"] if r["shard"] == shard and r["time"] > killed_at and r["result"] == "ok"
                )
                replacement = wait_for(
                    lambda shard=shard, victim=victim: (c := children_by_shard(sup).get(shard)) and c.pid != victim.pid and c, 60,
                    what=f"the replacement child of shard {shard}",
                )
                kills.append(
                    {
                        "shard": shard,
                        "pid": victim.pid,
                        "replacement_pid": replacement.pid,
                        "stream_events_before_kill": at_kill,
                        "resumed_after_s": round(resume["time"] - killed_at, 3),
                        "resumed_from_seq": resume["seq"],
                        "replayed": resume["replayed"],
                        "session_id": resume["session_id"],
                    }
                )
                print(f"kill {len(kills)}: shard {shard} pid {victim.pid} at {at_kill} events; "
                      f"resumed in {resume['time'] - killed_at:.2f} s from seq {resume['seq']}, "
                      f"{resume['replayed']} replayed")

            # -- the end of the stream ----------------------------------------------------------
            final = sim.wait_until(
                lambda s: all(stream_count(s, shard) == EVENTS_PER_SHARD for shard in range(SHARDS))
                and s["ready"] == set(range(SHARDS)),
                timeout=180,
                interval=0.5,
            )
            stream_done = time.monotonic()
            assert sup.proc.poll() is None, "the supervisor itself must survive its children's deaths"

            # Everything the simulator dispatched, with the d it sent.
            expected: dict[str, tuple[str, object]] = {}
            for shard in range(SHARDS):
                items = final["dispatched"][shard]
                assert {sid for sid, _, _ in items} == {sessions[shard]}, f"shard {shard} got a new session"
                assert [seq for _, seq, _ in items] == list(range(1, len(items) + 1))
                history = {frame["s"]: frame for frame in sim.call("history", sessions[shard])}
                for sid, seq, t in items:
                    frame = history[seq]
                    assert frame["t"] == t
                    expected[spectacles.message_id(shard, sid, seq)] = (t, frame["d"])
            assert len(expected) >= SHARDS * EVENTS_PER_SHARD

            # -- what reached RabbitMQ ------------------------------------------------------------
            got: list[tuple] = []
            drain(
                rabbit, queue, got, time.monotonic() + 150,
                lambda items: expected.keys() <= {props.message_id for _, props, _ in items},
            )
            # Late duplicates (a replay still in flight) are counted too: read until quiet.
            time.sleep(2.0)
            got.extend(rabbit.get_all(queue))
            drained = time.monotonic()
            log = sup.output()
        finally:
            sup.stop()

    ids = Counter(props.message_id for _, props, _ in got)
    missing = sorted(set(expected) - set(ids), key=lambda m: (m.split(":")[0], int(m.split(":")[2])))
    assert not missing, f"{len(missing)} dispatches never reached RabbitMQ, e.g. {missing[:10]}"
    assert set(ids) <= set(expected), f"unexpected messages: {sorted(set(ids) - set(expected))[:10]}"
    for method, props, body in got:
        t, d = expected[props.message_id]
        assert method.routing_key == t
        assert props.headers[spectacles.SHARD_HEADER] == int(props.message_id.split(":")[0])
        assert props.delivery_mode == spectacles.PERSISTENT
        assert json.loads(body) == d, f"{props.message_id}: body differs from the d the simulator sent"
    duplicates = sum(n - 1 for n in ids.values())

    # No IDENTIFY beyond the first 4; every recovery is a RESUME of the same session.
    assert len(final["identifies"]) == SHARDS and all(i["accepted"] for i in final["identifies"])
    assert sorted(i["shard"] for i in final["identifies"]) == list(range(SHARDS))
    assert final["counters"]["identifies"] == SHARDS
    assert all(r["result"] == "ok" for r in final["resumes"]), [r for r in final["resumes"] if r["result"] != "ok"]
    assert all(r["session_id"] == sessions[r["shard"]] for r in final["resumes"])
    assert {shard: final["shards"][shard]["session_id"] for shard in range(SHARDS)} == sessions
    assert final["violations"] == []

    # The chaos did happen, mid-stream, and each kill was answered by a resume.
    assert len(kills) >= MIN_KILLS, f"only {len(kills)} kills before the streams ended (rate {RATE}/s)"
    assert all(0 < k["stream_events_before_kill"] < EVENTS_PER_SHARD for k in kills)
    assert all(k["replacement_pid"] != k["pid"] for k in kills)
    assert len(final["resumes"]) >= len(kills)
    assert log.count("died (killed by SIGKILL)") == len(kills)
    # A duplicate can only be something a RESUME replayed (at-least-once, never more than that).
    replayed = final["counters"]["replayed"]
    assert duplicates <= replayed

    figures = {
        "seed": seed,
        "shards": SHARDS,
        "processes": SHARDS,
        "rate_per_shard": RATE,
        "events": len(expected),
        "stream_events": SHARDS * EVENTS_PER_SHARD,
        "messages_in_rabbitmq": sum(ids.values()),
        "lost": len(missing),
        "duplicates": duplicates,
        "kills": len(kills),
        "identifies": len(final["identifies"]),
        "resumes": len(final["resumes"]),
        "replayed": replayed,
        "max_resume_after_kill_s": max(k["resumed_after_s"] for k in kills),
        "wall_time_s": round(drained - started, 1),
        "stream_wall_time_s": round(stream_done - started, 1),
        "kill_log": kills,
    }
    print(json.dumps({k: v for k, v in figures.items() if k != "kill_log"}, indent=1))
    FIGURES.parent.mkdir(parents=True, exist_ok=True)
    FIGURES.write_text(json.dumps(figures, indent=1) + "\n")
