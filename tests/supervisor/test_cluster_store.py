"""Cluster mode's Redis keys (``supervisor/cluster_store.py``) on the real Redis: names,
leases by compare-and-set, the release that writes sessions only while the lease is ours."""

from __future__ import annotations

import uuid

import pytest
import redis

from shard_worker.config import SavedSession
from supervisor.cluster_store import ClusterStore
from supervisor.cluster_status import format_cluster, read


@pytest.fixture
def prefix(redis_url):
    name = f"test-{uuid.uuid4().hex[:8]}"
    yield name
    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter(f"{name}:*"):
        client.delete(key)


def stores(redis_url, prefix, *names):
    client = redis.Redis.from_url(redis_url)
    return client, [ClusterStore(client, prefix, name, uuid.uuid4().hex) for name in names]


def test_a_name_is_taken_while_its_heartbeat_lives(redis_url, prefix):
    client, (a, a_again) = stores(redis_url, prefix, "a", "a")
    assert a.heartbeat({"capacity": 1}, ttl_s=10) == 0.0
    assert 0 < a_again.heartbeat({"capacity": 1}, ttl_s=10) <= 10.0  # another process, same name
    assert a.heartbeat({"capacity": 1}, ttl_s=10) == 0.0  # its own refresh
    a.leave()
    assert a_again.heartbeat({"capacity": 1}, ttl_s=10) == 0.0  # free once it left
    assert [n["name"] for n in a_again.nodes()] == ["a"]


def test_leases_renew_and_release_only_for_their_owner(redis_url, prefix):
    client, (a, b) = stores(redis_url, prefix, "a", "b")
    assert a.acquire(4, 0, ttl_s=10) and not b.acquire(4, 0, ttl_s=10)
    assert b.acquire(4, 1, ttl_s=10)
    assert a.owners(4, 2) == {0: "a", 1: "b"}
    assert a.renew(4, [0, 1], ttl_s=10) == {0: True, 1: False}
    session = SavedSession("s0", 42, "wss://resume.example")
    assert not b.release(4, 0, {0: session})  # not b's: nothing written
    assert client.get(f"{prefix}:session:4:0") is None
    assert a.release(4, 0, {0: session})
    assert a.owners(4, 2) == {1: "b"}
    assert b.handed_over_by(4, 0) == "a" and b.handed_over_by(4, 0) is None
    assert b.acquire(4, 0, ttl_s=10)
    assert b.renew(4, [0], ttl_s=10) == {0: True}


def test_the_shape_is_the_first_nodes(redis_url, prefix):
    _, (a, b) = stores(redis_url, prefix, "a", "b")
    assert a.check_meta(12, 2) is None and b.check_meta(12, 2) is None
    assert "runs 12 shards in groups of 2" in b.check_meta(16, 2)


def test_status_of_a_cluster(redis_url, prefix):
    client, (a, b) = stores(redis_url, prefix, "a", "b")
    assert read(client, prefix)["shard_count"] is None
    a.check_meta(4, 2)
    a.heartbeat({"capacity": 1, "host": "vm1"}, ttl_s=10)
    b.heartbeat({"capacity": 2, "host": "vm2"}, ttl_s=10)
    a.acquire(4, 0, ttl_s=10)
    state = read(client, prefix)
    assert [(n["name"], n["groups"], n["shards"]) for n in state["nodes"]] == [("a", [0], "0-1"), ("b", [], "")]
    assert state["groups"] == [{"group": 0, "shards": "0-1", "owner": "a"}, {"group": 1, "shards": "2-3", "owner": None}]
    text = format_cluster(state)
    assert text.splitlines()[0] == "4 shards in 2 groups of 2; 2 nodes" and "free groups: 1" in text


def test_membership_expires_by_redis_clock_not_the_hosts(redis_url, prefix, monkeypatch):
    # Issue 20, defect 9: a node's heartbeat expiry was its own time.time() + TTL and the others
    # compared it with theirs: a node whose clock ran 30 s behind looked dead to everyone (its
    # groups taken while it ran them), one 30 s ahead stayed "alive" 30 s after it died.
    import time

    _, (behind, ahead, honest) = stores(redis_url, prefix, "behind", "ahead", "honest")
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() - 30)
    assert behind.heartbeat({"capacity": 1}, ttl_s=10) == 0.0
    monkeypatch.setattr(time, "time", lambda: real() + 30)
    assert ahead.heartbeat({"capacity": 1}, ttl_s=0.5) == 0.0
    monkeypatch.setattr(time, "time", real)
    assert sorted(n["name"] for n in honest.nodes()) == ["ahead", "behind"]
    time.sleep(0.8)
    assert [n["name"] for n in honest.nodes()] == ["behind"]  # the dead one is gone on time
    [node] = honest.nodes()
    assert 9.0 < node["expires_in_s"] <= 10.0
