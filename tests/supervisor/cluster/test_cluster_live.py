"""Cluster mode end to end: several supervisors ("nodes", distinct names and state dirs, one
Redis prefix), the simulator and RabbitMQ under a live stream.

3 nodes spread 12 groups (12 shards, 1 per process) evenly with no bucket broken; kill -9 of
one node: its shards RESUME on the others within 30 s, no IDENTIFY; a fourth node joins and
gets its share by RESUME (handoffs); SIGTERM of a node hands its groups over at once (exit 0,
no process left, its shards resumed elsewhere within 20 s); a sampler never sees a shard with
two live gateway connections for more than a few seconds; 0 logical events lost; identifies
exactly the shard count."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid

import psutil
import redis

from shard_worker import spectacles
from supervisor.cluster.status import read
from supervisor.simulator import SimulatorThread
from tests.helpers import TOKEN, free_port, wait_for
from tests.supervisor.reshard_watch import SessionWatcher
from tests.supervisor.supervisor_process import SupervisorProcess

SHARDS = 12


class ConnectionSampler:
    """Every 0.25 s: the open gateway connections of each shard (of each shard count); the
    longest run of samples in which some shard had two or more."""

    def __init__(self, sim) -> None:
        self.sim = sim
        self.longest = 0
        self._run = 0
        self._on = True
        self.samples = 0
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while self._on:
            open_by_shard: dict[tuple[int, int | None], int] = {}
            for record in self.sim.snapshot()["connections"]:
                if record["closed"] is None and record.get("shard") is not None:
                    key = (record["shard"], record.get("shard_count"))  # a reshard's two sets differ
                    open_by_shard[key] = open_by_shard.get(key, 0) + 1
            self.samples += 1
            self._run = self._run + 1 if any(n > 1 for n in open_by_shard.values()) else 0
            self.longest = max(self.longest, self._run)
            time.sleep(0.25)

    def stop(self) -> float:
        """Seconds of the longest stretch with a doubled shard."""
        self._on = False
        self._thread.join(5)
        return self.longest * 0.25


def accepted(sim) -> int:
    return len([i for i in sim.snapshot()["identifies"] if i["accepted"]])


def held(client, prefix) -> dict[str, list[int]]:
    return {n["name"]: n["groups"] for n in read(client, prefix)["nodes"]}


def test_three_nodes_failover_join_and_leave(amqp_url, rabbit, redis_url, group, tmp_path):
    prefix = f"test-{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(redis_url)
    queue = spectacles.queue_name(group, "MESSAGE_CREATE", "test")
    rabbit.bind(group, queue, "MESSAGE_CREATE")
    rabbit.track(*(spectacles.shard_queue(group, s) for s in range(SHARDS)))

    def node(name: str, *more: str) -> SupervisorProcess:
        return SupervisorProcess(
            sim, amqp_url, group, tmp_path / name, "--cluster", "--redis-url", redis_url, "--redis-prefix", prefix,
            "--shard-count", str(SHARDS), "--shards-per-process", "1", "--node-name", name, *more,
        )  # fmt: skip

    def cluster_status(name: str) -> dict:
        return json.loads(nodes[name].cli("status", "--json").stdout)["cluster"]

    with SimulatorThread(
        token=TOKEN, shard_count=SHARDS, max_concurrency=4, events_per_shard=-1, rate=4, heartbeat_interval_ms=20000,
    ) as sim:  # fmt: skip
        nodes = {name: node(name) for name in ("node-a", "node-b", "node-c")}
        watcher = SessionWatcher(sim)
        sampler = ConnectionSampler(sim)
        try:
            # 1. three nodes spread 12 groups: 4 each, every shard identified once
            wait_for(lambda: sorted(map(len, held(client, prefix).values())) == [4, 4, 4], 60, what="4 groups each")
            sim.wait_until(lambda s: s["ready"] == set(range(SHARDS)), timeout=60)
            snap = sim.snapshot()
            assert snap["violations"] == [] and accepted(sim) == SHARDS

            # 2. kill -9 of node-b: its shards resume on the others within 30 s, no identify
            wait_for(lambda: all(client.exists(f"{prefix}:session:{SHARDS}:{s}") for s in range(SHARDS)), 15)
            victim_groups = held(client, prefix)["node-b"]
            kids = nodes["node-b"].children()
            killed_at = time.time()
            nodes["node-b"].signal(signal.SIGKILL)
            nodes["node-b"].wait(10)
            psutil.wait_procs(kids, timeout=15)

            def resumed_since(t: float, shards) -> bool:
                done = {r["shard"] for r in sim.snapshot()["resumes"] if r["result"] == "ok" and r["time"] > t}
                return set(shards) <= done

            wait_for(lambda: resumed_since(killed_at, victim_groups), 30, what="the dead node's shards resumed")
            took = time.time() - killed_at
            wait_for(lambda: sorted(map(len, held(client, prefix).values())) == [6, 6], 10)
            assert accepted(sim) == SHARDS
            # the survivors counted the takeovers as failovers
            assert sum(cluster_status(n)["acquired"].get("failover", 0) for n in ("node-a", "node-c")) == 4

            # 3. node-d joins: it gets its share (4) by handoffs, each resumed
            joined_at = time.time()
            port = free_port()
            nodes["node-d"] = node("node-d", "--metrics-addr", f"127.0.0.1:{port}")
            wait_for(lambda: sorted(map(len, held(client, prefix).values())) == [4, 4, 4], 60, what="node-d's share")
            wait_for(lambda: resumed_since(joined_at, held(client, prefix)["node-d"]), 30, what="node-d resumed")
            sim.wait_until(lambda s: s["ready"] == set(range(SHARDS)), timeout=30)
            assert accepted(sim) == SHARDS
            handoffs = "handed over by" in nodes["node-d"].output()
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
                metrics = response.read().decode()
            assert "spectacles_cluster_groups_held 4.0" in metrics
            assert 'spectacles_cluster_groups_acquired_total{how="handoff"} 4.0' in metrics
            assert "spectacles_cluster_nodes 3.0" in metrics
            text = subprocess.run(
                [sys.executable, "-m", "supervisor", "status", "--cluster", "--redis-url", redis_url, "--redis-prefix", prefix],
                capture_output=True, text=True, timeout=30,
            ).stdout  # fmt: skip
            assert text.startswith("12 shards in 12 groups of 1; 3 nodes") and "every group has an owner" in text
            assert all(f"node-{n}" in text for n in "acd") and "node-b" not in text

            # 4. SIGTERM of node-c: exit 0 within 20 s, nothing left; its shards resume elsewhere
            leaving = held(client, prefix)["node-c"]
            kids = nodes["node-c"].children()
            stopped_at = time.time()
            nodes["node-c"].signal(signal.SIGTERM)
            assert nodes["node-c"].wait(20) == 0
            assert not [k for k in kids if k.is_running() and k.status() != psutil.STATUS_ZOMBIE]
            wait_for(lambda: resumed_since(stopped_at, leaving), 20, what="node-c's shards resumed elsewhere")
            handover_took = time.time() - stopped_at
            wait_for(lambda: sorted(map(len, held(client, prefix).values())) == [6, 6], 10)
            sim.wait_until(lambda s: s["ready"] == set(range(SHARDS)), timeout=30)
            assert accepted(sim) == SHARDS
            assert sim.snapshot()["violations"] == []
            time.sleep(2.0)  # the last events are published
            due = watcher.stop()
            doubled = sampler.stop()
        finally:
            watcher.stop()
            sampler.stop()
            for proc in nodes.values():
                proc.stop()
            for key in client.scan_iter(f"{prefix}:*"):
                client.delete(key)
    published = {json.loads(body)["id"] for _, _, body in rabbit.get_all(queue)}
    lost = due - published
    assert len(due) > 500 and lost == set(), f"{len(lost)} lost of {len(due)}"
    assert doubled <= 3.0, f"a shard had two live connections for {doubled} s"
    assert handoffs
    print(
        f"\ncluster: failover resumed in {took:.1f} s, SIGTERM handover resumed in {handover_took:.1f} s; "
        f"{len(due)} logical events, 0 lost; identifies {SHARDS}; longest doubled connection {doubled:.2f} s"
    )
