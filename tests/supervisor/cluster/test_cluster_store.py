"""Cluster mode's Redis keys (``supervisor/cluster/store.py``) on the real Redis: names,
leases by compare-and-set, the release that writes sessions only while the lease is ours."""

from __future__ import annotations

import time
import uuid

import pytest
import redis

from shard_worker.config import SavedSession
from supervisor.cluster.status import format_cluster, read
from supervisor.cluster.store import ClusterStore


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


def registered_node(store, now: list[float], shard_count: int = 4, per_group: int = 2):
    """A :class:`ClusterNode` on a clock driven by hand (``now[0]``), its rounds run by the test,
    registered as its thread does before its first round."""
    from supervisor.cluster.node import ClusterNode
    from supervisor.cluster.rules import NODE_TTL_S, group_count

    node = ClusterNode(store, shard_count=shard_count, per_group=per_group, groups=group_count(shard_count, per_group), clock=lambda: now[0])
    reason, node._epoch = store.check_meta(shard_count, per_group)
    assert reason is None and store.heartbeat(node._info(), NODE_TTL_S) == 0.0
    return node


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
    taken = b.take(4, 0, ttl_s=10, shards=[0, 1])  # the mark and the sessions with the lease
    assert taken is not None and taken.handed_by == "a" and taken.sessions == {0: session} and taken.before == "a"
    assert client.get(f"{prefix}:cluster:handoff:4:0") is None  # read once
    assert b.renew(4, [0], ttl_s=10) == {0: True}


def test_the_shape_is_the_first_nodes(redis_url, prefix):
    _, (a, b) = stores(redis_url, prefix, "a", "b")
    (ok_a, epoch), (ok_b, same) = a.check_meta(12, 2), b.check_meta(12, 2)
    assert ok_a is None and ok_b is None and epoch == same and len(epoch) == 32
    reason, _ = b.check_meta(16, 2)
    assert "runs 12 shards in groups of 2" in reason


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


def test_a_stale_session_save_never_overwrites_the_takers_session(redis_url, prefix):
    """Issue 20, defect 8: node A's save of group 0's sessions failed (Redis out of reach) and
    was kept for a retry; meanwhile A's lease expired and B took the group over by RESUME and
    saved its session. A's retry, computed while A still held the group, overwrote B's (and a
    queued deletion could delete it). Writes are fenced by the lease now, through the real
    SharedState retry path: the retry writes nothing for a group A no longer holds."""
    from supervisor.coord.coordinator import RedisCoordinator
    from supervisor.coord.shared_state import SESSION_RETRY_S, SharedState
    from tests.helpers import wait_for
    from tests.redis_faults import FreezingProxy

    parts = redis_url.split("://", 1)[1].split("/", 1)[0].split(":")
    client, (a, b) = stores(redis_url, prefix, "a", "b")
    with FreezingProxy(parts[0], int(parts[1])) as proxy:
        a_client = redis.Redis(host="127.0.0.1", port=proxy.port, socket_timeout=0.5, socket_connect_timeout=0.5)
        a_coord = RedisCoordinator(a_client, prefix, host_id="a")
        a_coord.set_fence(lambda count, shard: a.lease_key(count, shard // 2), a.owner)
        b_coord = RedisCoordinator(client, prefix, host_id="b")
        b_coord.set_fence(lambda count, shard: b.lease_key(count, shard // 2), b.owner)
        assert a.acquire(4, 0, ttl_s=1.0)
        shared = SharedState(a_coord)
        try:
            proxy.cut()  # A cannot reach Redis: its save fails and is kept for a retry
            shared.save_sessions(4, {0: SavedSession("a-old", 5, "wss://r"), 1: SavedSession("a-old", 6, "wss://r")})
            wait_for(lambda: any(x.error is not None for x in shared.answers()), 10, what="the failed save")
            wait_for(lambda: b.acquire(4, 0, ttl_s=10), 5, what="A's lease expired, B takes the group")
            b_coord.save_sessions(4, {0: SavedSession("b-new", 50, "wss://r"), 1: SavedSession("b-new", 60, "wss://r")})
            proxy.restore()
            time.sleep(SESSION_RETRY_S + 1.0)
            assert shared.flush(10)
            answers = shared.answers()
            assert answers and answers[-1].error is None  # the retry ran, and wrote nothing
            assert {s.session_id for s in b_coord.load_sessions(4, [0, 1]).values()} == {"b-new"}
            a_coord.delete_sessions(4, [0, 1])  # nor does a deletion of A's
            assert set(b_coord.load_sessions(4, [0, 1])) == {0, 1}
            # a group A does hold is written as before
            assert a.acquire(4, 1, ttl_s=10)
            a_coord.save_sessions(4, {2: SavedSession("a-2", 7, "wss://r")})
            assert b_coord.load_sessions(4, [2]) == {2: SavedSession("a-2", 7, "wss://r")}
        finally:
            shared.close()
            a_client.close()


def test_a_redis_that_forgot_everything_moves_no_group(redis_url, prefix):
    """Issue 20, defect 5: Redis restarted empty (or flushed) between two rounds. The first node
    to run a round saw itself alone, re-registered, and took the other node's groups (free, and
    without sessions: it would identify them) while that node still ran them. Now the cluster's
    epoch changes with its meta: each node re-asserts its own leases and acquires nothing until
    every live node had time to do the same. Rounds are driven by hand, with a fake clock."""
    from supervisor.cluster.rules import AMNESIA_SETTLE_S

    client, (sa, sb) = stores(redis_url, prefix, "a", "b")
    now = [0.0]
    nodes = []
    for store in (sa, sb):
        nodes.append(registered_node(store, now, shard_count=8))
    a, b = nodes
    for t in range(8):
        now[0] = float(t)
        for n in (a, b):
            n.facts(set())  # the supervisor's loop runs
            n._round(now[0])
    held_a, held_b = set(a.held), set(b.held)
    assert len(held_a) == len(held_b) == 2 and held_a | held_b == {0, 1, 2, 3}
    a.events(), b.events()

    for key in client.scan_iter(f"{prefix}:*"):  # Redis comes back empty
        client.delete(key)
    for t in range(8, 8 + int(AMNESIA_SETTLE_S) + 3):
        now[0] = float(t)
        a.facts(set())
        a._round(now[0])
        assert a.held == held_a, "a took b's groups"
        b.facts(set())
        b._round(now[0])
        assert b.held == held_b
    assert a.amnesias == b.amnesias == 1
    assert any(e.kind == "amnesia" for e in a.events()) and any(e.kind == "amnesia" for e in b.events())
    assert sa.owners(8, 4) == {g: "a" for g in held_a} | {g: "b" for g in held_b}  # re-asserted


def test_a_group_run_elsewhere_and_taken_without_a_session_is_a_takeover(redis_url, prefix):
    """Issue 20, defect 6: a group that another node ran, taken over with no session in Redis
    (lost), is acquired as a "takeover" (the arbiter waits before it identifies); a group
    nobody ran is a plain start."""

    client, (sa, sb) = stores(redis_url, prefix, "a", "b")
    taken = sa.take(4, 0, ttl_s=10)
    assert taken is not None and taken.before == "" and sb.take(4, 0, ttl_s=10) is None  # nobody ran it; taken
    now = [0.0]
    b = registered_node(sb, now)
    client.delete(sa.lease_key(4, 0))  # a's lease expired (a partitioned, or dead)
    for t in range(5):
        now[0] = float(t)
        b.facts(set())
        b._round(now[0])
    acquired = {e.group: e.how for e in b.events() if e.kind == "acquired"}
    assert acquired == {0: "takeover", 1: "start"}


def test_a_stuck_supervisor_loop_lets_its_leases_lapse(redis_url, prefix):
    """Issue 20, defect 7: the cluster thread renewed the leases while the supervisor's loop was
    stuck (a stalled disk under an fsync): its workers stopped for lack of pings, and no other
    node could take the groups over. Now the thread renews only while the loop tells it the
    facts (every pass); a round after LOOP_STALE_S of silence does nothing."""
    from supervisor.cluster.rules import LOOP_STALE_S

    client, (sa,) = stores(redis_url, prefix, "a")
    now = [0.0]
    a = registered_node(sa, now)
    for t in range(5):
        now[0] = float(t)
        a.facts(set())  # the loop runs
        a._round(now[0])
    assert a.held == {0, 1}
    time.sleep(1.0)  # Redis' clock: the lease lost a second of its TTL
    now[0] = 4.0 + LOOP_STALE_S  # the loop has been stuck since t=4
    a._round(now[0])
    assert a.stale_rounds == 1
    assert client.pttl(sa.lease_key(4, 0)) < 9_500  # not renewed
    now[0] += 1.0
    a.facts(set())  # the loop is back: renewed at once
    a._round(now[0])
    assert a.stale_rounds == 0 and client.pttl(sa.lease_key(4, 0)) > 9_500


def test_sessions_handed_over_just_before_redis_forgot_are_written_back(redis_url, prefix):
    """Found by the fault schedule (seed 9): Redis forgot everything a second after node a
    handed a group over; the handed sessions lived only in Redis, so the taker found none and
    identified. The node that handed them over keeps them for a minute and writes them back
    (only where no session is) when it sees Redis forget."""
    from supervisor.cluster.rules import AMNESIA_SETTLE_S

    client, (sa, sb) = stores(redis_url, prefix, "a", "b")
    now = [0.0]

    a = registered_node(sa, now)
    for t in range(5):
        now[0] = float(t)
        a.facts({0, 1})
        a._round(now[0])
    assert a.held == {0, 1}
    b = registered_node(sb, now)
    now[0] = 5.0
    a.facts({0, 1})
    a._round(now[0])
    [release] = [e for e in a.events() if e.kind == "release"]
    handed = {s: SavedSession(f"s{s}", 40 + s, "wss://r") for s in (2 * release.group, 2 * release.group + 1)}
    a.release(release.group, handed)  # its process exited: the arbiter hands the sessions in
    now[0] = 6.0
    a._round(now[0])
    assert release.group not in a.held
    for key in client.scan_iter(f"{prefix}:*"):  # Redis forgets before b read them
        client.delete(key)
    for t in range(7, 7 + int(AMNESIA_SETTLE_S) + 4):
        now[0] = float(t)
        a.facts(set(a.held))
        a._round(now[0])
        b.facts(set(b.held))
        b._round(now[0])
    acquired = [e for e in b.events() if e.kind == "acquired"]
    assert [e.group for e in acquired] == [release.group]
    assert acquired[0].sessions == handed and acquired[0].how == "failover"  # resumed, not identified


def test_sessions_handed_over_survive_keys_lost_one_by_one(redis_url, prefix):
    """Found by the fault schedule with Redis' keys deleted 100 ms apart (an eviction, a partial
    flush; seed 19): the node that handed a group over wrote its sessions back once, when it saw
    Redis forget, and the deletions still under way removed them again; the taker found none
    and identified 24 s later. Now the giver writes them back at every round while the group's
    lease is free, and stops once a taker holds it (the taker read them with the lease, in
    the same script): a session the taker deleted since (Discord invalidated it) stays deleted."""
    from supervisor.cluster.rules import AMNESIA_SETTLE_S

    client, (sa, sb) = stores(redis_url, prefix, "a", "b")
    now = [0.0]

    def rounds(*nodes, until):
        while now[0] < until:
            now[0] += 1.0
            for n in nodes:
                n.facts(set(n.held))
                n._round(now[0])

    a = registered_node(sa, now)
    rounds(a, until=4.0)
    assert a.held == {0, 1}
    b = registered_node(sb, now)
    rounds(a, until=5.0)
    [release] = [e for e in a.events() if e.kind == "release"]
    handed = {s: SavedSession(f"s{s}", 40 + s, "wss://r") for s in (2 * release.group, 2 * release.group + 1)}
    a.release(release.group, handed)
    rounds(a, until=6.0)
    session_keys = [sa.session_key(4, s) for s in handed]
    for key in client.scan_iter(f"{prefix}:*"):  # Redis forgets everything...
        client.delete(key)
    rounds(a, until=7.0)
    assert a.amnesias == 1 and all(client.exists(k) for k in session_keys)  # written back
    client.delete(*session_keys)  # ...and the deletions still under way take them again
    rounds(a, b, until=7.0 + AMNESIA_SETTLE_S + 4)
    acquired = [e for e in b.events() if e.kind == "acquired"]
    assert [e.group for e in acquired] == [release.group]
    assert acquired[0].sessions == handed and acquired[0].how == "failover"  # resumed, not identified

    client.delete(*session_keys)  # b's shards: Discord invalidated them, b deleted them
    rounds(a, b, until=now[0] + 3)
    assert not any(client.exists(k) for k in session_keys)  # a no longer writes them back


def test_a_lease_redis_lost_while_its_owner_lives_is_reasserted_not_taken(redis_url, prefix):
    """Found by the fault schedule (seed 6, keys deleted one by one): the leases and marks of
    some groups were gone while the cluster's meta was not, so no node saw Redis forget; a node
    under its share took them at once, their owners stopped them, and the taker identified
    them (one at once: its ran mark was gone too, so it looked never run). Now a free group
    whose last owner lives waits LOST_LEASE_WAIT_S; its owner re-asserts it in its next round."""
    client, (sa, sb) = stores(redis_url, prefix, "a", "b")
    now = [0.0]
    a = registered_node(sa, now, shard_count=8)
    for t in range(1, 5):  # a alone: it takes the 4 groups
        now[0] = float(t)
        a.facts(set(a.held))
        a._round(now[0])
    b = registered_node(sb, now, shard_count=8)
    a_groups = set(a.held)
    assert a_groups == {0, 1, 2, 3}
    for t in range(5, 12):  # b joins: a hands 2 groups over, one at a time
        now[0] = float(t)
        for n in (a, b):
            n.facts(set(n.held))
            n._round(now[0])
            for event in n.events():
                if event.kind == "release":
                    n.release(event.group, {})
    assert len(a.held) == len(b.held) == 2
    lost = min(a.held)
    # evicted (the meta is not): a's lease and ran mark, and the membership (b sees itself alone,
    # its share is every group)
    client.delete(sa.lease_key(8, lost), f"{prefix}:cluster:ran:8:{lost}", f"{prefix}:cluster:members")
    held_a, held_b = set(a.held), set(b.held)
    b.events()
    now[0] += 1.0
    b.facts(held_b)
    b._round(now[0])  # b first: it sees the group free, its owner alive
    assert b.held == held_b and not [e for e in b.events() if e.kind == "acquired"]
    for _ in range(3):
        now[0] += 1.0
        for n in (a, b):
            n.facts(set(n.held))
            n._round(now[0])
    assert a.held == held_a and b.held == held_b
    assert sa.owners(8, 4) == {g: "a" for g in held_a} | {g: "b" for g in held_b}  # re-asserted by a
    assert not [e for e in a.events() if e.kind == "renewed" and e.lost]  # a never lost it
