"""Cluster mode's rules: which shard groups a node takes, keeps, hands over and fences. Pure:
no Redis, no clock; :mod:`supervisor.cluster.store` talks to Redis and
:mod:`supervisor.cluster.node` runs the rounds, the arbiter only asks which groups to run.

The shards of the bot form fixed **groups** of K consecutive ids (``--shards-per-process``):
group ``g`` is shards ``g*K .. g*K+K-1``, one worker process. Each group is a **lease** in Redis
with a short TTL (:data:`LEASE_TTL_S`), renewed by its owner every round. Each live **node**
registers with a heartbeat (:data:`NODE_TTL_S`) and its ``--capacity`` weight.

At every round (:data:`ROUND_S`) a node reads the view (nodes, leases) and :func:`plan` says:

* **its share**: :func:`fair_shares` splits the groups over the live nodes by weight; with equal
  weights every node's share is ``groups / nodes`` rounded down or up, the rounding going to the
  nodes first by name (deterministic: every node computes the same shares);
* **acquire**: free groups (no lease) while it holds fewer than its share, lowest ids first,
  at most :data:`ACQUIRE_PER_ROUND` a round. Not before the node has seen the membership for
  :data:`SETTLE_S` (nodes started together see each other before they grab, so nothing is
  assigned and then reshuffled: every shard identifies once), and not a lease that vanished
  while its owner lives (:class:`LeaseMemory`: Redis lost the key; the owner re-asserts it);
* **release** (graceful handoff): one group at a time while it holds more than its share, and
  only a group whose shards are all READY (a group still identifying is never handed over: the
  new owner would identify it again). The owner stops the group's process (shards closed
  resumably), writes the sessions with their confirmed seq to Redis, then deletes the lease in
  the same script; the node below its share acquires it and RESUMEs.

**Fencing** (:class:`Fence`): a lease renewed at ``t`` (the time the renewal was *sent*, the
safe side) may expire elsewhere from ``t + LEASE_TTL_S``. Handoffs and failovers are
break-before-make, and a group is taken over elsewhere only by RESUMEing its session, which
Discord answers by closing the old connection. So when a node cannot renew a lease for
:data:`FENCE_S` (Redis out of reach: an outage of Redis for everyone, or a partition of this
node alone, which it cannot tell apart) the group is **guarded**, not stopped: it runs on, and
the first shard of it that loses its connection (Discord closing it because another node
resumed the session, or any other reason) stops the whole group at once (killed after
:data:`STOP_GRACE_S`) instead of reconnecting, which would take the session back. It starts
again once a renewal succeeds. A renewal refused because another node holds the lease stops
the group at once. When Redis answers again, each node's first round re-asserts its expired
leases (compare-and-set) before anyone may acquire a free group (:data:`SETTLE_S` of
successful rounds first), so an outage of Redis moves nothing.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

#: One round of heartbeat, renewals and plan.
ROUND_S = 1.0
#: A node's heartbeat key and a group's lease live this long without a renewal.
NODE_TTL_S = 10.0
LEASE_TTL_S = 10.0
#: A group not renewed for this long is stopped by its owner (before the TTL can expire).
FENCE_S = 6.0
#: The stop of a fenced group gets this long before its process is killed.
STOP_GRACE_S = 2.5
FENCE_MARGIN_S = LEASE_TTL_S - FENCE_S - STOP_GRACE_S
#: A guarded group (its lease not renewed for FENCE_S) that still cannot renew this long after
#: its last renewal is stopped (parked, sessions kept): a node that took it over without a
#: session to resume must IDENTIFY, which Discord does not answer by closing this node's
#: connections, so two sessions would publish at once (issue 20, defect 6). A Redis outage for
#: everyone longer than this parks every group; each resumes once its lease renews.
GUARD_LIMIT_S = 30.0
#: A node that takes over a group another node ran and finds no session for it waits this long
#: before it identifies: by then that node has parked the group (its last renewal was at least
#: LEASE_TTL_S before the takeover) and its process is killed (STOP_GRACE_S), with a margin.
TAKEOVER_WAIT_S = GUARD_LIMIT_S - LEASE_TTL_S + STOP_GRACE_S + 2.0
#: A worker whose supervisor sent nothing for this long stops its shards by itself (the
#: supervisor pings every second in cluster mode): a stopped or frozen supervisor renews no
#: lease, and its workers must not hold on to shards another node is about to resume.
PARENT_TIMEOUT_S = 4.0
#: A node whose supervisor loop has not run for this long (a blocking call, a stalled disk)
#: renews nothing: its workers stop after PARENT_TIMEOUT_S without a ping, and its leases must
#: lapse so that another node takes the groups over.
LOOP_STALE_S = 3.0
#: A node acquires nothing before it has seen the membership this long.
SETTLE_S = 3.0
#: After Redis forgot the cluster (its meta's epoch changed: a restart without persistence, a
#: flush, an eviction), a node acquires nothing for this long: every live node re-registers and
#: re-asserts its leases in its next round, and a node not heard from for NODE_TTL_S is dead.
AMNESIA_SETTLE_S = NODE_TTL_S + SETTLE_S
ACQUIRE_PER_ROUND = 4
#: A lease that vanished while the node that held it is alive (its heartbeat lives) and with no
#: handoff mark was lost by Redis (an eviction, a partial flush), not given up: its owner runs
#: the group on and re-asserts the lease in its next round. Nobody else takes it before it has
#: been free this long (the owner of a lease that merely expired is dead or cut off: its
#: heartbeat, renewed in the same round, expires with it, so a real failover waits a round).
LOST_LEASE_WAIT_S = AMNESIA_SETTLE_S


def group_count(shard_count: int, per_group: int) -> int:
    return math.ceil(shard_count / per_group)


def group_shards(group: int, shard_count: int, per_group: int) -> list[int]:
    """The shard ids of ``group``."""
    return list(range(group * per_group, min((group + 1) * per_group, shard_count)))


@dataclass(frozen=True)
class Node:
    """A live node as its heartbeat says: ``name``, ``capacity`` weight."""

    name: str
    capacity: float = 1.0


def fair_shares(nodes: Iterable[Node], groups: int) -> dict[str, int]:
    """Groups per node by capacity (largest remainder, ties by name); sums to ``groups``."""
    live = sorted(nodes, key=lambda n: n.name)
    total = sum(max(0.0, n.capacity) for n in live)
    if not live or total <= 0:
        return {n.name: 0 for n in live}
    exact = {n.name: groups * max(0.0, n.capacity) / total for n in live}
    shares = {name: math.floor(value) for name, value in exact.items()}
    left = groups - sum(shares.values())
    order = sorted(live, key=lambda n: (-(exact[n.name] - shares[n.name]), n.name))
    for node in order[:left]:
        shares[node.name] += 1
    return shares


@dataclass(frozen=True)
class View:
    """What one round read from Redis: the live nodes and each group's owner (absent: free);
    ``ran``, the node that took each group last (its ``ran`` mark), and ``handed``, the groups
    whose handoff mark is there (released by their owner a moment ago)."""

    nodes: tuple[Node, ...]
    owners: Mapping[int, str]
    groups: int
    ran: Mapping[int, str] = field(default_factory=dict)
    handed: frozenset[int] = frozenset()
    #: node name -> seconds its heartbeat still lives (by Redis' clock)
    expiries: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Plan:
    share: int
    acquire: tuple[int, ...] = ()
    release: tuple[int, ...] = ()


def plan(
    view: View,
    me: str,
    *,
    held: Iterable[int],
    ready: Iterable[int],
    releasing: Iterable[int] = (),
    settled: bool = True,
    vanished: Iterable[int] = (),
    acquire_per_round: int = ACQUIRE_PER_ROUND,
) -> Plan:
    """This round's decisions for node ``me`` (see the module docstring).

    ``held``: groups it holds a lease on; ``ready``: those of them whose shards are all READY;
    ``releasing``: handoffs already under way (they count as gone); ``settled``: it has seen the
    membership for :data:`SETTLE_S`; ``vanished``: free groups not to take yet
    (:class:`LeaseMemory`)."""
    shares = fair_shares(view.nodes, view.groups)
    share = shares.get(me, 0)
    mine = set(held) - set(releasing)
    if len(mine) > share:
        if set(releasing):
            return Plan(share)  # one handoff at a time
        candidates = sorted(set(ready) & mine, reverse=True)
        return Plan(share, release=tuple(candidates[:1]))
    if not settled or len(mine) >= share:
        return Plan(share)
    skip = set(vanished)
    free = [g for g in range(view.groups) if g not in view.owners and g not in skip]
    return Plan(share, acquire=tuple(free[: min(acquire_per_round, share - len(mine))]))


@dataclass
class LeaseMemory:
    """Who this node last saw holding each group, since when each group is free, and until when
    each node it saw lives: a free group whose last owner (its ``ran`` mark, else this memory:
    Redis may have lost the mark too) is another node still alive (in the view, or by the
    heartbeat expiry last seen: Redis may have lost the membership too), without a handoff
    mark, has **vanished** (Redis lost the lease) for :data:`LOST_LEASE_WAIT_S` after it went
    free. Taking it would stop a group that runs (and identify it, if its session or its marks
    were lost as well)."""

    wait_s: float = LOST_LEASE_WAIT_S
    last_owner: dict[int, str] = field(default_factory=dict)
    free_since: dict[int, float] = field(default_factory=dict)
    alive_until: dict[str, float] = field(default_factory=dict)

    def vanished(self, view: View, me: str, now: float) -> set[int]:
        for node in view.nodes:
            self.alive_until[node.name] = max(self.alive_until.get(node.name, now), now + view.expiries.get(node.name, 0.0))
        for name in [n for n, until in self.alive_until.items() if until <= now]:
            del self.alive_until[name]
        live = {n.name for n in view.nodes} | set(self.alive_until)
        out = set()
        for group in range(view.groups):
            owner = view.owners.get(group)
            if owner is not None:
                self.last_owner[group] = owner
                self.free_since.pop(group, None)
                continue
            since = self.free_since.setdefault(group, now)
            last = view.ran.get(group) or self.last_owner.get(group)
            if last and last != me and last in live and group not in view.handed and now - since < self.wait_s:
                out.add(group)
        return out


@dataclass
class Fence:
    """The renewals of one node's leases, by the time each renewal was sent."""

    fence_s: float = FENCE_S
    renewed: dict[int, float] = field(default_factory=dict)

    def acquired(self, group: int, sent_at: float) -> None:
        self.renewed[group] = sent_at

    def renewal(self, group: int, sent_at: float, ok: bool) -> None:
        """A renewal sent at ``sent_at`` succeeded (or not: the lease is not ours any more)."""
        if ok:
            if group in self.renewed:
                self.renewed[group] = max(self.renewed[group], sent_at)
        else:
            self.renewed.pop(group, None)

    def released(self, group: int) -> None:
        self.renewed.pop(group, None)

    def must_stop(self, now: float) -> list[int]:
        """Groups not renewed for ``fence_s``: stop them now."""
        return sorted(g for g, t in self.renewed.items() if now - t >= self.fence_s)

    def must_park(self, now: float, limit_s: float = GUARD_LIMIT_S) -> list[int]:
        """Groups not renewed for ``limit_s``: stopped even while guarded."""
        return sorted(g for g, t in self.renewed.items() if now - t >= limit_s)

    def holds(self, group: int) -> bool:
        return group in self.renewed


__all__ = [
    "ACQUIRE_PER_ROUND", "AMNESIA_SETTLE_S", "FENCE_MARGIN_S", "FENCE_S", "GUARD_LIMIT_S", "LEASE_TTL_S", "LOOP_STALE_S",
    "LOST_LEASE_WAIT_S", "NODE_TTL_S", "ROUND_S", "SETTLE_S", "STOP_GRACE_S", "TAKEOVER_WAIT_S", "Fence", "LeaseMemory", "Node",
    "Plan", "View", "fair_shares", "group_count", "group_shards", "plan",
]  # fmt: skip
