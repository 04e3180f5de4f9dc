"""Cluster mode under faults: a node cut off from Redis fences its shards before its leases can
expire elsewhere (never two live connections), the other node takes them over by RESUME, and
once Redis is back the two rebalance; a second live node with the same name is refused."""

from __future__ import annotations

import json
import time
import uuid

import redis

from shard_worker import spectacles
from supervisor.cluster.status import read
from supervisor.simulator import SimulatorThread
from tests.helpers import TOKEN, wait_for
from tests.supervisor.cluster.test_cluster_live import ConnectionSampler
from tests.supervisor.reshard_watch import SessionWatcher
from tests.supervisor.supervisor_process import SupervisorProcess
from tests.tcp_proxy import TcpProxy

SHARDS = 4


def held(client, prefix) -> dict[str, list[int]]:
    return {n["name"]: n["groups"] for n in read(client, prefix)["nodes"]}


def cluster_args(redis_url: str, prefix: str, name: str, shards: int = SHARDS) -> tuple[str, ...]:
    return ("--cluster", "--redis-url", redis_url, "--redis-prefix", prefix, "--shard-count", str(shards),
            "--shards-per-process", "1", "--node-name", name)  # fmt: skip


def streamed_cluster(rabbit, redis_url: str, group: str) -> tuple[str, redis.Redis, str]:
    """A fresh Redis prefix, a client, and the MESSAGE_CREATE queue bound (shard queues tracked)."""
    client = redis.Redis.from_url(redis_url)
    queue = spectacles.queue_name(group, "MESSAGE_CREATE", "test")
    rabbit.bind(group, queue, "MESSAGE_CREATE")
    rabbit.track(*(spectacles.shard_queue(group, s) for s in range(SHARDS)))
    return f"test-{uuid.uuid4().hex[:8]}", client, queue


def redis_proxy(client: redis.Redis) -> TcpProxy:
    """A TCP proxy in front of the test's Redis, to cut it."""
    kwargs = client.connection_pool.connection_kwargs
    return TcpProxy(kwargs["host"], kwargs["port"])


def stream(shards: int) -> SimulatorThread:
    return SimulatorThread(
        token=TOKEN, shard_count=shards, max_concurrency=4, events_per_shard=-1, rate=5, heartbeat_interval_ms=20000
    )


def test_a_node_cut_off_from_redis_fences_and_the_other_takes_over(amqp_url, rabbit, redis_url, group, tmp_path):
    prefix, client, queue = streamed_cluster(rabbit, redis_url, group)
    with redis_proxy(client) as proxy, stream(SHARDS) as sim:
        cut_off = SupervisorProcess(sim, amqp_url, group, tmp_path / "a", *cluster_args(f"redis://127.0.0.1:{proxy.port}/0", prefix, "node-a"))
        other = SupervisorProcess(sim, amqp_url, group, tmp_path / "b", *cluster_args(redis_url, prefix, "node-b"))
        watcher = SessionWatcher(sim)
        sampler = ConnectionSampler(sim)
        try:
            wait_for(lambda: sorted(map(len, held(client, prefix).values())) == [2, 2], 60, what="2 groups each")
            sim.wait_until(lambda s: s["ready"] == set(range(SHARDS)), timeout=60)
            wait_for(lambda: all(client.exists(f"{prefix}:session:{SHARDS}:{s}") for s in range(SHARDS)), 15)
            fenced = held(client, prefix)["node-a"]
            cut_at = time.time()
            proxy.cut()  # node-a cannot renew: it must stop its shards before the TTL (10 s)
            wait_for(lambda: "cluster: stopping group" in cut_off.output(), 15, what="the fence")
            resumed = wait_for(
                lambda: set(fenced) <= {r["shard"] for r in sim.snapshot()["resumes"] if r["result"] == "ok" and r["time"] > cut_at},
                30, what="node-b resumed node-a's shards",
            )  # fmt: skip
            assert resumed
            took = time.time() - cut_at
            time.sleep(3.0)
            # no bouncing: node-a did not take a session back after Discord closed it
            after_cut = [r["shard"] for r in sim.snapshot()["resumes"] if r["time"] > cut_at]
            assert sorted(after_cut) == sorted(fenced), after_cut
            assert cut_off.proc.poll() is None  # the node runs on, holding nothing
            proxy.restore()  # back: the two rebalance by handoff
            wait_for(lambda: sorted(map(len, held(client, prefix).values())) == [2, 2], 60, what="rebalanced")
            sim.wait_until(lambda s: s["ready"] == set(range(SHARDS)), timeout=30)
            assert len([i for i in sim.snapshot()["identifies"] if i["accepted"]]) == SHARDS
            assert sim.snapshot()["violations"] == []
            time.sleep(2.0)
            due = watcher.stop()
            doubled = sampler.stop()
        finally:
            watcher.stop()
            sampler.stop()
            cut_off.stop()
            other.stop()
            for key in client.scan_iter(f"{prefix}:*"):
                client.delete(key)
    published = {json.loads(body)["id"] for _, _, body in rabbit.get_all(queue)}
    assert due and due - published == set()
    assert doubled <= 1.0, f"a shard had two live connections for {doubled} s"
    print(f"\ncluster partition: node-b resumed the fenced shards {took:.1f} s after the cut; 0 lost; doubled {doubled:.2f} s")


def test_a_second_live_node_with_the_same_name_is_refused(amqp_url, redis_url, group, tmp_path):
    prefix = f"test-{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(redis_url)
    with SimulatorThread(token=TOKEN, shard_count=2, max_concurrency=2, heartbeat_interval_ms=20000) as sim:
        first = SupervisorProcess(sim, amqp_url, group, tmp_path / "a", *cluster_args(redis_url, prefix, "same", 2))
        second = None
        try:
            wait_for(lambda: held(client, prefix).get("same") == [0, 1], 60, what="the first node's groups")
            second = SupervisorProcess(sim, amqp_url, group, tmp_path / "b", *cluster_args(redis_url, prefix, "same", 2))
            assert second.wait(30) == 2
            lines = [line for line in second.output().splitlines() if "already running" in line]
            assert lines and "a node named 'same' is already running" in lines[0]
            assert first.proc.poll() is None and held(client, prefix)["same"] == [0, 1]
            # a cluster node does not reshard on its own, even holding every group
            refused = first.cli("reshard", "--shard-count", "4")
            assert refused.returncode == 1 and "resharding a cluster is not supported yet" in refused.stderr
            # another shape of cluster under the same prefix is refused too
            third = SupervisorProcess(sim, amqp_url, group, tmp_path / "c", *cluster_args(redis_url, prefix, "other", 4))
            assert third.wait(30) == 2
            assert "the cluster in Redis runs 2 shards in groups of 1" in third.output()
        finally:
            first.stop()
            if second is not None:
                second.stop()
            for key in client.scan_iter(f"{prefix}:*"):
                client.delete(key)


def test_a_redis_outage_for_every_node_stops_no_shard(amqp_url, rabbit, redis_url, group, tmp_path):
    """Redis out of reach of every node (both go through one proxy, cut): nobody can take
    anything over, so every shard runs on and publishes; once Redis is back every node
    re-asserts its own leases before anyone acquires: no handoff, no resume, no identify."""
    prefix, client, queue = streamed_cluster(rabbit, redis_url, group)
    with redis_proxy(client) as proxy, stream(SHARDS) as sim:
        url = f"redis://127.0.0.1:{proxy.port}/0"
        nodes = [SupervisorProcess(sim, amqp_url, group, tmp_path / n, *cluster_args(url, prefix, n)) for n in ("node-a", "node-b")]
        try:
            wait_for(lambda: sorted(map(len, held(client, prefix).values())) == [2, 2], 60, what="2 groups each")
            sim.wait_until(lambda s: s["ready"] == set(range(SHARDS)), timeout=60)
            before = held(client, prefix)
            resumes = len(sim.snapshot()["resumes"])
            proxy.cut()
            time.sleep(14.0)  # past the fence (6 s) and the TTL (10 s)
            depth = rabbit.depth(queue)
            time.sleep(2.0)
            assert rabbit.depth(queue) > depth + 10  # still publishing, Redis or not
            assert sim.snapshot()["ready"] == set(range(SHARDS))
            assert all("runs on, but stops if a shard loses its connection" in n.output() for n in nodes)
            proxy.restore()
            wait_for(lambda: all("its lease is renewed again" in n.output() for n in nodes), 30, what="re-asserted")
            time.sleep(5.0)  # a few rounds: nothing moves
            assert held(client, prefix) == before
            snap = sim.snapshot()
            assert len(snap["resumes"]) == resumes and len([i for i in snap["identifies"] if i["accepted"]]) == SHARDS
            assert not any("cluster: stopping group" in n.output() for n in nodes)
        finally:
            for proc in nodes:
                proc.stop()
            for key in client.scan_iter(f"{prefix}:*"):
                client.delete(key)


def test_a_stopped_supervisors_workers_let_go_and_the_other_node_resumes(amqp_url, redis_url, group, tmp_path):
    """SIGSTOP of a node's supervisor (its workers keep running): with no ping for 4 s they stop
    their shards by themselves, before the leases expire; the other node resumes each of them
    once (no bounce); after SIGCONT the stopped node finds its leases taken and rebalances."""
    import psutil

    prefix = f"test-{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(redis_url)
    with stream(SHARDS) as sim:
        frozen = SupervisorProcess(sim, amqp_url, group, tmp_path / "a", *cluster_args(redis_url, prefix, "node-a"))
        other = SupervisorProcess(sim, amqp_url, group, tmp_path / "b", *cluster_args(redis_url, prefix, "node-b"))
        sampler = ConnectionSampler(sim)
        try:
            wait_for(lambda: sorted(map(len, held(client, prefix).values())) == [2, 2], 60, what="2 groups each")
            sim.wait_until(lambda s: s["ready"] == set(range(SHARDS)), timeout=60)
            wait_for(lambda: all(client.exists(f"{prefix}:session:{SHARDS}:{s}") for s in range(SHARDS)), 15)
            taken = held(client, prefix)["node-a"]
            kids = frozen.children()
            stopped_at = time.time()
            psutil.Process(frozen.pid).suspend()
            try:
                def exited(kid) -> bool:  # a zombie: exited, not reaped by its stopped parent
                    try:
                        return kid.status() == psutil.STATUS_ZOMBIE
                    except psutil.NoSuchProcess:
                        return True

                wait_for(lambda: all(exited(k) for k in kids), 15, what="the workers stopped by themselves")
                wait_for(
                    lambda: set(taken) <= {r["shard"] for r in sim.snapshot()["resumes"] if r["result"] == "ok" and r["time"] > stopped_at},
                    30, what="node-b resumed them",
                )  # fmt: skip
            finally:
                psutil.Process(frozen.pid).resume()
            wait_for(lambda: sorted(map(len, held(client, prefix).values())) == [2, 2], 60, what="rebalanced")
            sim.wait_until(lambda s: s["ready"] == set(range(SHARDS)), timeout=30)
            snap = sim.snapshot()
            assert snap["violations"] == [] and len([i for i in snap["identifies"] if i["accepted"]]) == SHARDS
            doubled = sampler.stop()
            assert doubled <= 1.0, f"a shard had two live connections for {doubled} s"
            assert "the supervisor sent nothing for" in frozen.output()
        finally:
            sampler.stop()
            frozen.stop()
            other.stop()
            for key in client.scan_iter(f"{prefix}:*"):
                client.delete(key)


def test_a_takeover_without_a_session_waits_until_the_guarded_owner_has_stopped(amqp_url, rabbit, redis_url, group, tmp_path):
    """Issue 20, defect 6: node-a is cut off from Redis and its sessions are gone from Redis
    (lost). node-b takes node-a's groups when the leases expire, but has nothing to resume: an
    IDENTIFY at once would open a second session beside node-a's (guarded, still running: only
    a lost connection stops it), and both would publish. node-a parks its groups 30 s after its
    last renewal; node-b identifies only after that: never two connections for one shard."""
    from supervisor.cluster.rules import GUARD_LIMIT_S, TAKEOVER_WAIT_S

    prefix, client, queue = streamed_cluster(rabbit, redis_url, group)
    with redis_proxy(client) as proxy, stream(SHARDS) as sim:
        cut_off = SupervisorProcess(sim, amqp_url, group, tmp_path / "a", *cluster_args(f"redis://127.0.0.1:{proxy.port}/0", prefix, "node-a"))
        other = SupervisorProcess(sim, amqp_url, group, tmp_path / "b", *cluster_args(redis_url, prefix, "node-b"))
        sampler = None
        try:
            wait_for(lambda: sorted(map(len, held(client, prefix).values())) == [2, 2], 60, what="2 groups each")
            sim.wait_until(lambda s: s["ready"] == set(range(SHARDS)), timeout=60)
            fenced = held(client, prefix)["node-a"]
            sampler = ConnectionSampler(sim)
            cut_at = time.time()
            proxy.cut()
            for shard in fenced:  # lost in Redis (node-a cannot write them again)
                client.delete(f"{prefix}:session:{SHARDS}:{shard}")
            wait_for(lambda: "no session to resume" in other.output(), 30, what="node-b's takeover")
            wait_for(lambda: f"could not be renewed for {GUARD_LIMIT_S:.0f} s" in cut_off.output(), 40, what="node-a parks")
            parked_at = time.time()

            def identified_since_the_cut() -> list[dict]:
                return [i for i in sim.snapshot()["identifies"] if i["accepted"] and i["time"] > cut_at]

            # node-a's connections close a moment after it logs the park (a loaded machine: seconds),
            # and until then every shard is still READY: wait for node-b's identifies themselves
            wait_for(lambda: set(fenced) <= {i["shard"] for i in identified_since_the_cut()}, 60, what="node-b identifies")
            sim.wait_until(lambda s: s["ready"] == set(range(SHARDS)), timeout=60)
            identified = identified_since_the_cut()
            assert sorted(i["shard"] for i in identified) == sorted(fenced)
            assert all(i["time"] > parked_at - 1.0 for i in identified)  # only once node-a stopped
            doubled = sampler.stop()
        finally:
            if sampler is not None:
                sampler.stop()
            cut_off.stop()
            other.stop()
            for key in client.scan_iter(f"{prefix}:*"):
                client.delete(key)
    assert doubled <= 1.0, f"a shard had two live connections for {doubled} s"
    print(f"\ntakeover without session: node-a parked {parked_at - cut_at:.1f} s after the cut, node-b identified "
          f"after it (wait {TAKEOVER_WAIT_S:.1f} s); doubled {doubled:.2f} s")  # fmt: skip
