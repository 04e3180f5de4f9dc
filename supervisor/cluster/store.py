"""Cluster mode's keys in Redis (see :mod:`supervisor.cluster.rules` for the rules). Every method is
one blocking round trip: :mod:`supervisor.cluster.node` calls them from its own thread.

Keys (``<p>`` the ``--redis-prefix``, ``<n>`` the shard count):

* ``<p>:cluster:meta``: hash ``shard_count``, ``per_group``, ``epoch``: the first node sets it, a
  node started with other values is refused (every node must cut the same groups); every round
  checks it again, and a new ``epoch`` means Redis forgot everything (``cluster_node``);
* ``<p>:cluster:members``: sorted set, node name -> its heartbeat's expiry (epoch ms by Redis'
  own clock, ``TIME`` in the scripts: the hosts' clocks may disagree without effect);
  ``<p>:cluster:tokens`` and ``<p>:cluster:info``: hashes, node name -> the random token of the
  process that registered it / its JSON (capacity, host, pid, groups, heartbeat time);
* ``<p>:cluster:lease:<n>:<g>``: ``<name>|<token>`` of group ``g``'s owner, with a PX TTL of
  :data:`~supervisor.cluster.rules.LEASE_TTL_S` (Redis' own clock: no skew), renewed by compare-and-
  pexpire, released by compare-and-delete in the script that also writes the group's sessions
  (``<p>:session:<n>:<shard>``, as elsewhere) and a handoff mark ``<p>:cluster:handoff:<n>:<g>``
  (the name of the node that handed it over, for a minute: the taker counts a handoff, not a
  failover);
* ``<p>:cluster:ran:<n>:<g>``: the name of the node that took group ``g`` last (no TTL): a node
  that takes a group another node ran, and finds no session for it, waits before identifying
  (:data:`~supervisor.cluster.rules.TAKEOVER_WAIT_S`: that node may still run it, guarded).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from shard_worker.config import SavedSession
from supervisor.cluster.rules import Node, View
from supervisor.coord.coordinator import REDIS_NOW_MS, SESSION_TTL_S, parse_sessions, session_key

HANDOFF_MARK_S = 60

_REGISTER = REDIS_NOW_MS + """
local ttl = tonumber(ARGV[3])
local token = redis.call('HGET', KEYS[2], ARGV[1])
local expiry = redis.call('ZSCORE', KEYS[1], ARGV[1])
if token and token ~= ARGV[2] and expiry and tonumber(expiry) > now then
  return tonumber(expiry) - now
end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[4])
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
return 0
"""

#: KEYS: members. Returns Redis' now (ms), then name, expiry pairs of the live nodes.
_NODES = REDIS_NOW_MS + """
local out = redis.call('ZRANGEBYSCORE', KEYS[1], now, '+inf', 'WITHSCORES')
table.insert(out, 1, tostring(now))
return out
"""

_RENEW = """
local out = {}
for i, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[1] then
    redis.call('PEXPIRE', key, ARGV[2])
    out[i] = 1
  else
    out[i] = 0
  end
end
return out
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
for i = 2, #KEYS - 1 do
  redis.call('SET', KEYS[i], ARGV[i + 2], 'EX', ARGV[2])
end
redis.call('SET', KEYS[#KEYS], ARGV[3], 'EX', %d)
redis.call('DEL', KEYS[1])
return 1
""" % HANDOFF_MARK_S


#: KEYS: lease, ran mark, handoff mark, then the group's session keys. ARGV: owner, ttl ms, node
#: name. Takes a free lease, marks the group as run by this node (no TTL: one small key per
#: group), and reads (and clears) the handoff mark and reads the sessions **in the same
#: step**: a session deleted between a take and a later read (keys lost one by one: an
#: eviction, a partial flush) would leave the taker holding the group with nothing to resume.
#: Returns false when the lease is taken, else {the node that ran the group before, the node
#: that handed it over, each session}, '' for each one missing.
_TAKE = """
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return false end
local out = {redis.call('GET', KEYS[2]) or '', redis.call('GET', KEYS[3]) or ''}
redis.call('SET', KEYS[2], ARGV[3])
redis.call('DEL', KEYS[3])
for i = 4, #KEYS do out[#out + 1] = redis.call('GET', KEYS[i]) or '' end
return out
"""


@dataclass(frozen=True)
class Taken:
    """A lease just taken: ``before``, the node that ran the group last ('' for none since
    Redis remembers); ``handed_by``, the node that handed it over (None: a start or a
    failover); ``sessions``, the group's sessions found in Redis."""

    before: str
    handed_by: str | None
    sessions: dict[int, SavedSession]


def _owners(leases: list[Any]) -> dict[int, str]:
    """Group -> its owner's name, from the leases' values (``<name>|<token>``) by group."""
    return {g: v.decode().split("|", 1)[0] for g, v in enumerate(leases) if v is not None}


class ClusterStore:
    """One node's view of the cluster's keys."""

    def __init__(self, client: Any, prefix: str, name: str, token: str) -> None:
        self.redis = client
        self.prefix = prefix
        self.name = name
        self.token = token
        self.owner = f"{name}|{token}"
        self._register = client.register_script(_REGISTER)
        self._nodes = client.register_script(_NODES)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)
        self._take = client.register_script(_TAKE)

    def _key(self, *parts: object) -> str:
        return ":".join([self.prefix, "cluster", *map(str, parts)])

    def lease_key(self, shard_count: int, group: int) -> str:
        return self._key("lease", shard_count, group)

    # -- membership ---------------------------------------------------------------------------
    def check_meta(self, shard_count: int, per_group: int) -> tuple[str | None, str]:
        """Set the cluster's shape and epoch if unset (one transaction: a reader sees all or
        none). Returns the reason a node of another shape is refused (else None) and the
        cluster's **epoch**: a token written once with the shape. A node that sees the epoch
        change (or the meta gone and written anew) knows Redis lost its memory (a restart
        without persistence, a flush, an eviction), not that the other nodes died."""
        meta = self._key("meta")
        pipe = self.redis.pipeline(transaction=True)
        pipe.hsetnx(meta, "shard_count", shard_count)
        pipe.hsetnx(meta, "per_group", per_group)
        pipe.hsetnx(meta, "epoch", uuid.uuid4().hex)
        pipe.hgetall(meta)
        have = pipe.execute()[-1]
        count, per, epoch = int(have[b"shard_count"]), int(have[b"per_group"]), have[b"epoch"].decode()
        if (count, per) != (shard_count, per_group):
            return (
                f"the cluster in Redis runs {count} shards in groups of {per}; this node was started with "
                f"{shard_count} and {per} (every node needs the same --shard-count and --shards-per-process)"
            ), epoch
        return None, epoch

    def heartbeat(self, info: dict[str, Any], ttl_s: float) -> float:
        """Register or refresh this node: 0.0, or the seconds another live process with this
        name still has (the name is taken). Its expiry is Redis' clock plus ``ttl_s``."""
        keys = [self._key("members"), self._key("tokens"), self._key("info")]
        info = {**info, "name": self.name, "ttl": ttl_s}
        left = self._register(keys=keys, args=[self.name, self.token, int(ttl_s * 1000), json.dumps(info)])
        return int(left) / 1000.0

    def leave(self) -> None:
        """Deregister (SIGTERM): the others' shares grow at their next round."""
        if self.redis.hget(self._key("tokens"), self.name) == self.token.encode():
            pipe = self.redis.pipeline()
            pipe.zrem(self._key("members"), self.name)
            pipe.hdel(self._key("tokens"), self.name)
            pipe.hdel(self._key("info"), self.name)
            pipe.execute()

    def nodes(self) -> list[dict[str, Any]]:
        """Every live node's info (its heartbeat not expired by Redis' clock), with
        ``expires_in_s``: how long its heartbeat still lives."""
        reply = self._nodes(keys=[self._key("members")])
        now_ms = float(reply[0])
        pairs = reply[1:]
        names = [n.decode() for n in pairs[0::2]]
        expiries = {name: (float(score) - now_ms) / 1000 for name, score in zip(names, pairs[1::2])}
        if not names:
            return []
        infos = self.redis.hmget(self._key("info"), names)
        out = []
        for name, raw in zip(names, infos):
            try:
                info = json.loads(raw) if raw else {}
            except ValueError:
                info = {}
            out.append({**info, "name": name, "expires_in_s": expiries[name]})
        return out

    def view(self, shard_count: int, groups: int) -> View:
        """The live nodes, and each group's lease, ``ran`` mark and handoff mark (one MGET)."""
        live = self.nodes()
        nodes = tuple(Node(n["name"], float(n.get("capacity", 1.0))) for n in live)
        expiries = {n["name"]: float(n["expires_in_s"]) for n in live}
        if not groups:
            return View(nodes, {}, 0, expiries=expiries)
        keys = [self._key(kind, shard_count, g) for kind in ("lease", "ran", "handoff") for g in range(groups)]
        values = self.redis.mget(keys)
        leases, ran, handed = values[:groups], values[groups : 2 * groups], values[2 * groups :]
        return View(
            nodes, _owners(leases), groups,
            ran={g: v.decode() for g, v in enumerate(ran) if v is not None},
            handed=frozenset(g for g, v in enumerate(handed) if v is not None), expiries=expiries,
        )  # fmt: skip

    def owners(self, shard_count: int, groups: int) -> dict[int, str]:
        """Group -> the name of its owner, for every leased group."""
        return _owners(self.redis.mget([self.lease_key(shard_count, g) for g in range(groups)]) if groups else [])

    # -- leases -------------------------------------------------------------------------------
    def acquire(self, shard_count: int, group: int, ttl_s: float) -> bool:
        """Take ``group``'s lease if it is free (a lease this node held and Redis let lapse)."""
        return self.take(shard_count, group, ttl_s) is not None

    def take(self, shard_count: int, group: int, ttl_s: float, shards: Sequence[int] = ()) -> Taken | None:
        """Take ``group``'s lease if it is free, mark the group as run by this node, and read
        the handoff mark and the sessions of ``shards`` in the same script. None when the lease
        is taken."""
        keys = [self.lease_key(shard_count, group), self._key("ran", shard_count, group), self._key("handoff", shard_count, group)]
        keys += [self.session_key(shard_count, s) for s in shards]
        reply = self._take(keys=keys, args=[self.owner, int(ttl_s * 1000), self.name])
        if reply is None:
            return None
        before, by, *values = (v.decode() if isinstance(v, bytes) else str(v) for v in reply)
        return Taken(before, by or None, parse_sessions(list(shards), values))

    def session_key(self, shard_count: int, shard: int) -> str:
        """A shard's session, where every supervisor keeps it (``<p>:session:<n>:<shard>``)."""
        return session_key(self.prefix, shard_count, shard)

    def renew(self, shard_count: int, groups: list[int], ttl_s: float) -> dict[int, bool]:
        if not groups:
            return {}
        result = self._renew(keys=[self.lease_key(shard_count, g) for g in groups], args=[self.owner, int(ttl_s * 1000)])
        return {g: bool(int(r)) for g, r in zip(groups, result)}

    def release(self, shard_count: int, group: int, sessions: dict[int, SavedSession]) -> bool:
        """Write ``sessions`` and the handoff mark, then drop the lease, if it is still ours."""
        keys = [self.lease_key(shard_count, group)]
        values = []
        for shard, saved in sorted(sessions.items()):
            keys.append(self.session_key(shard_count, shard))
            values.append(json.dumps(asdict(saved)))
        keys.append(self._key("handoff", shard_count, group))
        return bool(int(self._release(keys=keys, args=[self.owner, SESSION_TTL_S, self.name, *values])))

    def restore_sessions(self, shard_count: int, sessions: dict[int, SavedSession]) -> None:
        """Write ``sessions`` back where none is (``SET NX``): the sessions of groups this node
        handed over a moment before Redis forgot everything. A session written since (the
        taker's) is never replaced."""
        if not sessions:
            return
        pipe = self.redis.pipeline(transaction=False)
        for shard, saved in sorted(sessions.items()):
            pipe.set(self.session_key(shard_count, shard), json.dumps(asdict(saved)), ex=SESSION_TTL_S, nx=True)
        pipe.execute()


__all__ = ["ClusterStore", "HANDOFF_MARK_S", "Taken"]
