"""A seeded random schedule of faults against a live cluster, with the invariants checked after
each fault (issue 20): how distributed systems that people trust are tested.

Three cluster nodes (real supervisor processes, one shard per worker process) run 6 shards of a
simulator's live stream, each node behind its own proxies to Redis and to RabbitMQ. A schedule
drawn from the seed applies faults one after the other:

- ``kill``: a node killed with -9 (its workers die with it), started again once its name is free;
- ``stop_node``: a node's supervisor SIGSTOPped for 5-12 s (its workers run on), then SIGCONT;
- ``stop_worker``: one worker process SIGSTOPped for 3-10 s, then SIGCONT;
- ``freeze_redis``: one node's Redis link frozen for 4-14 s (its calls hang), then restored;
- ``flush_redis``: every key of the cluster deleted, one by one over a few seconds (Redis
  restarted empty, or evicting);
- ``cut_rabbit``: one node's RabbitMQ link cut for 2-8 s, then restored.

After each fault, once every shard is READY again (at most :data:`LIVE_BOUND_S`):

- no simulator violation (bucket rule, send limits) and every IDENTIFY accepted;
- no shard had two open connections for more than 3 s (two sessions publishing);
- no IDENTIFY, except for a shard whose session had not reached Redis when the fault began (a
  shard READY a moment before: its session is lost with a node that dies or stops);
- at the end, 0 logical events lost: every MESSAGE_CREATE any session that was not replaced by
  an IDENTIFY received is in RabbitMQ.

``SPECTACLES_FAULT_SEEDS`` picks the seeds (``7`` or ``1-20``; CI runs the default, one seed);
the seed is in the test id and printed with every fault, so a failing seed becomes a
regression test by adding it to :data:`REGRESSION_SEEDS`.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from urllib.parse import urlsplit

import psutil
import pytest
import redis

from shard_worker import spectacles
from supervisor.cluster.status import read
from supervisor.simulator import SimulatorThread
from tests.helpers import TOKEN, wait_for
from tests.redis_faults import FreezingProxy
from tests.supervisor.cluster.test_cluster_live import ConnectionSampler
from tests.supervisor.reshard_watch import SessionWatcher
from tests.supervisor.supervisor_process import SupervisorProcess
from tests.tcp_proxy import TcpProxy

SHARDS = 6
NODES = ("node-a", "node-b", "node-c")
FAULTS_PER_SEED = 5
KINDS = ("kill", "stop_node", "stop_worker", "freeze_redis", "flush_redis", "cut_rabbit")
#: every shard is READY again this long after a fault ends, at the latest (a takeover without
#: a session waits 24.5 s before it identifies; a node killed -9 needs its leases to expire)
LIVE_BOUND_S = 90.0
#: seeds that once failed (each a regression test)
#: 9, 19: Redis forgot a second after a handoff (the taker identified); 19 again with the keys
#: lost one by one (the sessions written back at the first sign of it were deleted again); 6:
#: the members and some leases lost before the meta (a node took running groups)
REGRESSION_SEEDS: tuple[int, ...] = (6, 9, 19)
DEFAULT_SEEDS = (20261207,)


def seeds() -> list[int]:
    spec = os.environ.get("SPECTACLES_FAULT_SEEDS", "")
    if not spec:
        return [*DEFAULT_SEEDS, *REGRESSION_SEEDS]
    if "-" in spec:
        low, high = (int(x) for x in spec.split("-", 1))
        return list(range(low, high + 1))
    return [int(x) for x in spec.split(",")]


def begin(label: str, seed: int, kinds: tuple[str, ...]) -> tuple[random.Random, list[str], Callable[[str], None], float]:
    """The seed's random source, its schedule, a ``say`` that prints with the seed (and prints
    the schedule), and the start time."""
    rng = random.Random(seed)
    schedule = [rng.choice(kinds) for _ in range(FAULTS_PER_SEED)]
    started = time.monotonic()

    def say(line: str) -> None:
        print(f"[{label} +{time.monotonic() - started:.0f}s] {line}", flush=True)

    say(f"schedule: {', '.join(schedule)}")
    return rng, schedule, say, started


def servers(rabbit, redis_url: str, group: str, shard_queues: int) -> tuple[redis.Redis, str, str]:
    """A Redis client and a fresh key prefix; the MESSAGE_CREATE queue bound, the shard and
    SEND queues the supervisors will declare tracked for deletion."""
    queue = spectacles.queue_name(group, "MESSAGE_CREATE", "faults")
    rabbit.bind(group, queue, "MESSAGE_CREATE")
    rabbit.track(*(spectacles.shard_queue(group, s) for s in range(shard_queues)), spectacles.send_queue(group))
    return redis.Redis.from_url(redis_url), f"test-{uuid.uuid4().hex[:8]}", queue


def cluster_args(redis_url: str, prefix: str, name: str) -> tuple[str, ...]:
    return ("--cluster", "--redis-url", redis_url, "--redis-prefix", prefix, "--shard-count", str(SHARDS),
            "--shards-per-process", "1", "--node-name", name)  # fmt: skip


class Node:
    """One cluster node and its two proxies."""

    def __init__(self, name: str, sim, amqp_url: str, redis_host: str, redis_port: int, group: str, prefix: str, tmp) -> None:
        parts = urlsplit(amqp_url)
        self.name = name
        self.redis = FreezingProxy(redis_host, redis_port).__enter__()
        self.amqp = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5672).__enter__()
        self.args = (sim, f"amqp://guest:guest@127.0.0.1:{self.amqp.port}/%2F", group, tmp / name,
                     *cluster_args(f"redis://127.0.0.1:{self.redis.port}/0", prefix, name))  # fmt: skip
        self.proc = SupervisorProcess(*self.args)
        self.logs: list[str] = []

    def restart(self) -> None:
        self.logs.append(self.proc.output())
        self.proc = SupervisorProcess(*self.args)

    def output(self) -> str:
        return "".join(self.logs) + self.proc.output()

    def close(self) -> None:
        self.proc.stop()
        for proxy in (self.redis, self.amqp):
            proxy.__exit__(None, None, None)


def for_a_while(rng: random.Random, low: float, high: float, say, what: str, begin, end) -> None:
    """``begin()``, then ``end()`` a random ``low``-``high`` seconds later."""
    held_for = rng.uniform(low, high)
    say(f"{what} for {held_for:.1f} s")
    begin()
    try:
        time.sleep(held_for)
    finally:
        end()  # a stopped process or a frozen link must not outlive a failing test


def stop_a_worker(rng: random.Random, workers: list, say) -> None:
    """SIGSTOP one of ``workers`` for 3-10 s, then SIGCONT."""
    if not workers:
        say("no worker to stop")
        return
    worker = rng.choice(workers)
    try:
        for_a_while(rng, 3, 10, say, f"SIGSTOP worker {worker.pid}",
                    lambda: worker.send_signal(signal.SIGSTOP), lambda: worker.send_signal(signal.SIGCONT))  # fmt: skip
    except psutil.NoSuchProcess:
        pass  # replaced meanwhile


#: ``flush_redis`` deletes the cluster's keys this far apart (a few seconds in all): Redis forgets
#: key by key, as an eviction or a partial flush does, while the nodes run their rounds
#: between two deletions (harder than a restart empty, which loses every key at once: seed 19
#: lost handed-over sessions written back at the first sign of it)
FORGET_PAUSE_S = 0.05


def forget_everything(client: redis.Redis, prefix: str, say) -> None:
    """Redis forgets everything of this cluster, key by key: every key of the prefix deleted."""
    say("Redis forgets everything (every key deleted, one by one)")
    for key in client.scan_iter(f"{prefix}:*"):
        client.delete(key)
        time.sleep(FORGET_PAUSE_S)


def apply(fault: str, rng: random.Random, nodes: list[Node], client: redis.Redis, prefix: str, say) -> None:
    """Apply one fault and undo it (a kill is undone by a restart); returns when it is over."""
    node = rng.choice(nodes)
    if fault == "kill":
        say(f"kill -9 {node.name}")
        node.proc.proc.send_signal(signal.SIGKILL)
        node.proc.wait(10)
        time.sleep(11.0)  # its name is free once its heartbeat expired (10 s)
        node.restart()
    elif fault == "stop_node":
        for_a_while(rng, 5, 12, say, f"SIGSTOP {node.name}",
                    lambda: node.proc.signal(signal.SIGSTOP), lambda: node.proc.signal(signal.SIGCONT))  # fmt: skip
    elif fault == "stop_worker":
        stop_a_worker(rng, [c for n in nodes for c in n.proc.children() if c.is_running()], say)
    elif fault == "freeze_redis":
        for_a_while(rng, 4, 14, say, f"freeze {node.name}'s Redis link", node.redis.freeze, node.redis.restore)
    elif fault == "flush_redis":
        forget_everything(client, prefix, say)
    elif fault == "cut_rabbit":
        for_a_while(rng, 2, 8, say, f"cut {node.name}'s RabbitMQ link", node.amqp.cut, node.amqp.restore)
    else:
        raise ValueError(fault)


@pytest.mark.parametrize("seed", seeds(), ids=lambda s: f"seed-{s}")
def test_a_random_schedule_of_faults_keeps_the_invariants(amqp_url, rabbit, redis_url, group, tmp_path, seed):
    rng, schedule, say, started = begin(f"seed {seed}", seed, KINDS)
    client, prefix, queue = servers(rabbit, redis_url, group, SHARDS)
    kwargs = client.connection_pool.connection_kwargs
    nodes: list[Node] = []
    published: set[str] = set()
    identified_after: dict[str, int] = {}
    try:
        with SimulatorThread(
            token=TOKEN, shard_count=SHARDS, max_concurrency=SHARDS, events_per_shard=-1, rate=5,
            heartbeat_interval_ms=20000, seed=seed,
        ) as sim:  # fmt: skip
            for name in NODES:
                nodes.append(Node(name, sim, amqp_url, kwargs["host"], kwargs["port"], group, prefix, tmp_path))
            sim.wait_until(lambda s: s["ready"] == set(range(SHARDS)), timeout=90)
            wait_for(lambda: sorted(len(n["groups"]) for n in read(client, prefix)["nodes"]) == [2, 2, 2], 60,
                     what="2 groups per node")  # fmt: skip
            watcher = SessionWatcher(sim)
            unsaved: set[int] = set()
            for number, fault in enumerate(schedule, 1):
                identifies = len(sim.snapshot()["identifies"])
                # a session that has not reached Redis yet (a shard READY a moment ago) is lost
                # with a node that dies or stops now: its taker identifies it, perhaps only after
                # the takeover wait (24.5 s), so during a later fault
                unsaved |= {shard for shard in range(SHARDS) if not client.exists(f"{prefix}:session:{SHARDS}:{shard}")}
                sampler = ConnectionSampler(sim)
                apply(fault, rng, nodes, client, prefix, say)
                ended = time.monotonic()
                sim.wait_until(lambda s: s["ready"] == set(range(SHARDS)), timeout=LIVE_BOUND_S)
                live_after = time.monotonic() - ended
                time.sleep(2.0)
                doubled = sampler.stop()
                snap = sim.snapshot()
                new = snap["identifies"][identifies:]
                say(f"fault {number} ({fault}): all live {live_after:.1f} s after it ended; doubled {doubled:.2f} s; "
                    f"{len(new)} identifies")  # fmt: skip
                assert snap["violations"] == [], f"seed {seed}: {snap['violations']}"
                assert all(i["accepted"] for i in new), f"seed {seed}: an IDENTIFY refused: {new}"
                assert doubled <= 3.0, f"seed {seed}, fault {number} ({fault}): a shard doubled for {doubled} s"
                identified = {i["shard"] for i in new}
                assert identified <= unsaved, (
                    f"seed {seed}, fault {number} ({fault}): identified {sorted(identified)}, "
                    f"but only {sorted(unsaved)} had no session in Redis at a fault"
                )
                if new:
                    identified_after[f"{number}:{fault}"] = len(new)
                published |= {json.loads(body)["id"] for _, _, body in rabbit.get_all(queue)}
            time.sleep(2.0)
            watcher.stop()
            by_session = watcher.by_session
            # a session replaced by an IDENTIFY after the start was lost (it had not reached
            # Redis, checked above): what it received and nobody published is not owed
            sessions_of: dict[int, list[str]] = {}
            for record in sim.snapshot()["identifies"]:
                if record["accepted"]:
                    sessions_of.setdefault(record["shard"], []).append(record["session_id"])
            replaced = {sid for sids in sessions_of.values() for sid in sids[:-1]}
            due = set().union(*(ids for sid, ids in by_session.items() if sid not in replaced))
    finally:
        for node in nodes:
            node.close()
        for key in client.scan_iter(f"{prefix}:*"):
            client.delete(key)
    published |= {json.loads(body)["id"] for _, _, body in rabbit.get_all(queue)}
    lost = due - published
    say(f"done in {time.monotonic() - started:.0f} s: {len(due)} events owed, {len(lost)} lost; "
        f"identifies after faults {identified_after or 'none'}; sessions replaced {len(replaced)}")  # fmt: skip
    assert len(due) > 100 and not lost, f"seed {seed}: {len(lost)} of {len(due)} events lost"


# -- one supervisor, with live reshards -----------------------------------------------------------
#: a reshard is refused in cluster mode: this schedule runs one supervisor (with Redis) and
#: starts reshards, each with another fault while it runs
SINGLE_KINDS = ("reshard", "kill_worker", "stop_worker", "kill_supervisor", "cut_rabbit", "freeze_redis", "flush_redis")
DURING_RESHARD = ("kill_worker", "stop_worker", "kill_supervisor", "cut_rabbit", "freeze_redis")


def serving_count(sup) -> int | None:
    done = sup.cli("status", "--json")
    return json.loads(done.stdout)["shard_count"] if done.returncode == 0 else None


def saved_shards(state) -> set[tuple[int, int]]:
    """``(shard, count)`` of the sessions in the state dir."""
    try:
        saved = json.loads((state / "sessions.json").read_text())
    except (OSError, ValueError):
        return set()
    return {(int(s), saved["shard_count"]) for s in saved.get("sessions", {})}


@pytest.mark.parametrize("seed", seeds(), ids=lambda s: f"seed-{s}")
def test_a_random_schedule_of_faults_and_reshards_on_one_supervisor(amqp_url, rabbit, redis_url, group, tmp_path, seed):
    """One supervisor (``--redis-url``), 4 shards of a reshardable simulator in processes of 2,
    proxies to Redis and RabbitMQ. Faults: kill -9 of a worker or of the supervisor (started
    again on its state dir), SIGSTOP of a worker, RabbitMQ cut, Redis frozen or emptied, and live
    reshards (to 6, 8, 10...: a count is never used twice), each with another fault while it
    runs. After each: the serving count's shards READY, no violation, no shard doubled for more
    than 3 s, identifies only for a reshard's new set or a session not saved yet; at the end,
    0 events lost."""
    rng, schedule, say, started = begin(f"single seed {seed}", seed, SINGLE_KINDS)
    client, prefix, queue = servers(rabbit, redis_url, group, 4 + 2 * FAULTS_PER_SEED)
    kwargs = client.connection_pool.connection_kwargs
    parts = urlsplit(amqp_url)
    state = tmp_path / "state"
    published: set[str] = set()
    next_count = 6
    with FreezingProxy(kwargs["host"], kwargs["port"]) as redis_link, TcpProxy(parts.hostname, parts.port or 5672) as amqp_link, SimulatorThread(
        token=TOKEN, shard_count=4, reshardable=True, max_concurrency=4, guilds_per_shard=4, events_per_shard=-1, rate=5,
        heartbeat_interval_ms=20000, seed=seed,
    ) as sim:  # fmt: skip
        args = (sim, f"amqp://guest:guest@127.0.0.1:{amqp_link.port}/%2F", group, state, "--shards-per-process", "2",
                "--redis-url", f"redis://127.0.0.1:{redis_link.port}/0", "--redis-prefix", prefix)  # fmt: skip
        sup = SupervisorProcess(*args)
        watcher = SessionWatcher(sim)
        try:
            sim.wait_until(lambda s: s["ready"] == {0, 1, 2, 3}, timeout=60)
            wait_for(lambda: serving_count(sup) == 4, 20, what="status")
            unsaved: set[tuple[int, int]] = set()

            def one(kind: str) -> None:
                nonlocal sup
                if kind == "kill_worker":
                    workers = sup.children()
                    if workers:
                        worker = rng.choice(workers)
                        say(f"kill -9 worker {worker.pid}")
                        worker.send_signal(signal.SIGKILL)
                elif kind == "stop_worker":
                    stop_a_worker(rng, sup.children(), say)
                elif kind == "kill_supervisor":
                    say("kill -9 the supervisor (its workers die with it); started again on its state dir")
                    sup.proc.send_signal(signal.SIGKILL)
                    sup.wait(10)
                    time.sleep(1.0)
                    sup = SupervisorProcess(*args)
                elif kind == "cut_rabbit":
                    for_a_while(rng, 2, 8, say, "cut RabbitMQ", amqp_link.cut, amqp_link.restore)
                elif kind == "freeze_redis":
                    for_a_while(rng, 4, 14, say, "freeze Redis", redis_link.freeze, redis_link.restore)
                elif kind == "flush_redis":
                    forget_everything(client, prefix, say)
                else:
                    raise ValueError(kind)

            for number, fault in enumerate(schedule, 1):
                snap = sim.snapshot()
                identifies = len(snap["identifies"])
                count = serving_count(sup) or 4
                unsaved |= {(s, count) for s in range(count)} - saved_shards(state)
                sampler = ConnectionSampler(sim)
                resharding_to = None
                if fault == "reshard":
                    resharding_to, next_count = next_count, next_count + 2
                    say(f"reshard {count} -> {resharding_to}")
                    command = subprocess.Popen(
                        [sys.executable, "-m", "supervisor", "reshard", "--shard-count", str(resharding_to), "--state-dir", str(state)],
                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                    )  # fmt: skip
                    time.sleep(rng.uniform(0, 12))
                    one(rng.choice(DURING_RESHARD))
                    out, _ = command.communicate(timeout=180)
                    say(f"reshard command: {out.strip().splitlines()[-1] if out.strip() else '(nothing)'}")
                else:
                    one(fault)
                ended = time.monotonic()
                wait_for(lambda: serving_count(sup) is not None, 60, what="the supervisor answers")
                serving = serving_count(sup)
                sim.wait_until(lambda s, n=serving: s["ready_sets"].get(n) == list(range(n)), timeout=LIVE_BOUND_S)
                time.sleep(2.0)
                doubled = sampler.stop()
                snap = sim.snapshot()
                new = [i for i in snap["identifies"][identifies:] if i["accepted"]]
                say(f"fault {number} ({fault}): {serving} shards live {time.monotonic() - ended:.1f} s after it ended; "
                    f"doubled {doubled:.2f} s; {len(new)} identifies")  # fmt: skip
                assert snap["violations"] == [], f"seed {seed}: {snap['violations']}"
                assert all(i["accepted"] for i in snap["identifies"][identifies:]), f"seed {seed}: an IDENTIFY refused"
                assert doubled <= 3.0, f"seed {seed}, fault {number} ({fault}): a shard doubled for {doubled} s"
                unexpected = [i for i in new if i["shard_count"] != resharding_to and (i["shard"], i["shard_count"]) not in unsaved]
                assert not unexpected, f"seed {seed}, fault {number} ({fault}): identifies {unexpected}, unsaved {unsaved}"
                published |= {json.loads(body)["id"] for _, _, body in rabbit.get_all(queue)}
            time.sleep(2.0)
            watcher.stop()
            sessions_of: dict[tuple[int, int], list[str]] = {}
            for record in sim.snapshot()["identifies"]:
                if record["accepted"]:
                    sessions_of.setdefault((record["shard"], record["shard_count"]), []).append(record["session_id"])
            replaced = {sid for sids in sessions_of.values() for sid in sids[:-1]}
            due = set().union(*(ids for sid, ids in watcher.by_session.items() if sid not in replaced))
        finally:
            watcher.stop()
            sup.stop()
            for key in client.scan_iter(f"{prefix}:*"):
                client.delete(key)
    published |= {json.loads(body)["id"] for _, _, body in rabbit.get_all(queue)}
    lost = due - published
    say(f"done in {time.monotonic() - started:.0f} s: {len(due)} events owed, {len(lost)} lost; sessions replaced {len(replaced)}")
    assert len(due) > 100 and not lost, f"seed {seed}: {len(lost)} of {len(due)} events lost"
