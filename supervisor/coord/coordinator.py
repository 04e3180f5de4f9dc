"""Coordination of several supervisors (hosts) through Redis: identify buckets, budget, sessions.

When a bot outgrows one host, each host runs a supervisor for its own ``--shards`` range of the
same shard count, all on one RabbitMQ and one Redis. Discord's rules are per bot, not per host,
so three things are shared here:

- **Identify buckets**: bucket ``shard_id % max_concurrency`` admits one IDENTIFY per interval
  across every host, timed from the IDENTIFY's write. The key ``<prefix>:identify:bucket:<n>`` is
  taken for as long as a grant may still be written plus the interval; once the child reports the
  write, it is set to expire one interval after that write. A host that dies while holding it
  blocks nobody for longer than the grant's hold.
- **The daily identify budget**: ``<prefix>:identify:remaining`` holds Discord's
  ``session_start_limit.remaining``, expiring at ``reset_after`` (when Discord refills it), and
  ``<prefix>:identify:total`` its ``total``. Every grant decrements it in the same atomic script
  that takes the bucket; grants are also logged in the sorted set ``<prefix>:identify:log``
  (last 24 h). **A missing key is not "unlimited"**: the script then grants nothing and answers
  :data:`BUDGET_UNKNOWN`, and the supervisor refreshes the key from ``GET /gateway/bot`` (off its
  loop, at most once a minute, :mod:`supervisor.identify.refresh`). Going over Discord's limit
  resets the bot's token, so holding identifies for the second the refresh takes is the safe
  side. When Discord cannot be reached, :meth:`RedisCoordinator.estimate_budget` sets the key
  for a minute from the grant log (``total`` minus the grants of the last 24 h, a lower bound of
  what Discord would say when every identify of the bot goes through this log).
- **Sessions**: ``<prefix>:session:<shard_count>:<shard>`` holds the JSON ``{session_id, seq,
  resume_gateway_url}`` with a TTL a little past Discord's resume window, so a shard range moved
  to another host resumes there.

Every call here is a blocking network round trip (up to the 2 s socket timeout). The supervisor's
loop never makes them itself: :mod:`supervisor.coord.shared_state` runs them on one worker thread and
hands the answers back, so a hung or unreachable Redis delays only identifies (which wait for
the shared lock), never RESUMEs, IPC, heartbeats or ``status``.

Without ``--redis-url`` none of this is used and everything stays local (the state dir).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from shard_worker.config import SavedSession

log = logging.getLogger("supervisor.coord.coordinator")

DEFAULT_PREFIX = "spectacles"
#: Sessions are kept this long after their last update (Discord's resume window is a few minutes).
SESSION_TTL_S = 15 * 60
LOG_WINDOW_MS = 24 * 3600 * 1000

#: Discord's default ``session_start_limit.total``, when no host has published the real one.
DEFAULT_TOTAL = 1000
#: :meth:`RedisCoordinator.try_identify`'s answer while the shared budget is unknown (its key
#: expired or was never set): nothing was granted; refresh the budget, then ask again.
BUDGET_UNKNOWN = -1.0

#: Added to the age of Discord's budget figure (:meth:`RedisCoordinator.set_budget`).
BUDGET_AGE_SLACK_MS = 1000

#: Redis' own clock in epoch ms, as a Lua prelude: every time kept in Redis (the grant log's
#: scores) is Redis' time, so the hosts' clocks may disagree without effect (issue 20, defect 9).
REDIS_NOW_MS = "local _t = redis.call('TIME') local now = tonumber(_t[1]) * 1000 + math.floor(tonumber(_t[2]) / 1000)\n"

#: KEYS: bucket lock, remaining budget, grant log. ARGV: hold ms, reserve, member.
#: Returns 0 (granted), a positive wait in ms (the bucket is busy), -1 (budget held back) or -2
#: (no budget known: the key expired at Discord's reset or was never set; nothing granted).
_IDENTIFY_SCRIPT = REDIS_NOW_MS + """
local wait = redis.call('PTTL', KEYS[1])
if wait > 0 then return wait end
local remaining = redis.call('GET', KEYS[2])
if not remaining then return -2 end
if tonumber(remaining) <= tonumber(ARGV[2]) then return -1 end
redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[1])
redis.call('DECR', KEYS[2])
redis.call('ZADD', KEYS[3], now, ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - %d)
return 0
""" % LOG_WINDOW_MS

#: KEYS: bucket lock. ARGV: the member that took it, interval ms.
#: The IDENTIFY was written: the lock becomes "interval from now" if it is still ours (or gone).
#: Another host's lock (ours expired before the report came) is never shortened, only
#: lengthened to the interval: it must not open within an interval of this write either.
#: Returns 1 when the lock was ours (or free), 0 otherwise.
_SENT_SCRIPT = """
local holder = redis.call('GET', KEYS[1])
if (not holder) or holder == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[2]) then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""

#: KEYS: remaining budget, total, grant log. ARGV: Discord's remaining, ttl ms, how long ago
#: Discord was asked (ms), total ('' when unknown). Discord's figure minus the grants logged
#: since it was asked (Discord had not counted those): the other hosts' decrements survive.
_SET_BUDGET_SCRIPT = REDIS_NOW_MS + """
local used = 0
if tonumber(ARGV[3]) > 0 then used = redis.call('ZCOUNT', KEYS[3], now - tonumber(ARGV[3]), '+inf') end
local value = math.max(0, tonumber(ARGV[1]) - used)
redis.call('SET', KEYS[1], value, 'PX', ARGV[2])
if ARGV[4] ~= '' then redis.call('SET', KEYS[2], ARGV[4]) end
return value
"""

#: KEYS: remaining budget, total, grant log. ARGV: ttl ms, default total.
#: Sets the budget (if still missing) to total minus the grants logged in the last 24 h.
_ESTIMATE_SCRIPT = REDIS_NOW_MS + """
local known = redis.call('GET', KEYS[1])
if known then return tonumber(known) end
local total = tonumber(redis.call('GET', KEYS[2]) or ARGV[2])
local used = redis.call('ZCOUNT', KEYS[3], now - %d, '+inf')
local remaining = math.max(0, total - used)
redis.call('SET', KEYS[1], remaining, 'PX', ARGV[1], 'NX')
return remaining
""" % LOG_WINDOW_MS

#: KEYS: grant log. The grants of the last 24 h by Redis' clock.
_COUNT_SCRIPT = REDIS_NOW_MS + """
return redis.call('ZCOUNT', KEYS[1], now - %d, '+inf')
""" % LOG_WINDOW_MS


#: KEYS: (session key, lease key) pairs. ARGV: owner, ttl s, then one value per pair ('' deletes).
#: Cluster mode: a node writes (or deletes) a shard's session only while it holds the shard's
#: group lease, in the same atomic step: a save that was queued, failed or delayed while the
#: node still ran the group can never overwrite the session of the node that took it over.
_FENCED_WRITE = """
local done = 0
for i = 1, #KEYS, 2 do
  if redis.call('GET', KEYS[i + 1]) == ARGV[1] then
    local value = ARGV[2 + (i + 1) / 2]
    if value == '' then redis.call('DEL', KEYS[i]) else redis.call('SET', KEYS[i], value, 'EX', ARGV[2]) end
    done = done + 1
  end
end
return done
"""


def session_key(prefix: str, shard_count: int, shard: int) -> str:
    """Where a shard's session lives in Redis (``<prefix>:session:<count>:<shard>``), for every
    supervisor and every cluster node."""
    return f"{prefix}:session:{shard_count}:{shard}"


def parse_sessions(shard_ids: list[int], values: list[Any]) -> dict[int, SavedSession]:
    """The sessions among ``values`` (Redis' replies for ``shard_ids``, in order): a missing
    one (None or empty) is skipped, a malformed one logged and skipped."""
    sessions = {}
    for shard, value in zip(shard_ids, values):
        if not value:
            continue
        try:
            sessions[shard] = SavedSession(**json.loads(value))
        except (TypeError, ValueError):
            log.warning("ignoring a malformed session for shard %d in Redis", shard)
    return sessions


class RedisCoordinator:
    """The keys of one bot (``prefix``) in Redis, for one host (``host_id``). Every method is one
    blocking round trip: call them off the supervisor's loop (:mod:`supervisor.coord.shared_state`)."""

    def __init__(self, client: Any, prefix: str | None = DEFAULT_PREFIX, host_id: str | None = None) -> None:
        self.redis = client
        self.prefix = prefix or DEFAULT_PREFIX
        self.host_id = host_id or f"{socket.gethostname()}:{os.getpid()}"
        self._identify = client.register_script(_IDENTIFY_SCRIPT)
        self._sent = client.register_script(_SENT_SCRIPT)
        self._set_budget = client.register_script(_SET_BUDGET_SCRIPT)
        self._estimate = client.register_script(_ESTIMATE_SCRIPT)
        self._count = client.register_script(_COUNT_SCRIPT)
        self._grants = 0
        #: bucket -> the member (lock value) of this host's last grant on it
        self._taken: dict[int, str] = {}
        self._fenced_write = client.register_script(_FENCED_WRITE)
        #: Cluster mode (:meth:`set_fence`): (shard_count, shard) -> its group's lease key, and
        #: the lease value that says this node holds it. None: sessions are written plainly.
        self._lease_of: Callable[[int, int], str] | None = None
        self._owner = ""

    @classmethod
    def from_url(cls, url: str, prefix: str | None = DEFAULT_PREFIX) -> RedisCoordinator:
        """Connect (2 s timeouts) and PING: a Redis that cannot be reached fails the start."""
        import redis

        client = redis.Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)
        client.ping()
        return cls(client, prefix)

    def _key(self, *parts: object) -> str:
        return ":".join([self.prefix, *map(str, parts)])

    # -- identify -----------------------------------------------------------------------------
    def try_identify(self, bucket: int, hold_s: float, reserve: int) -> float:
        """Take bucket ``bucket`` for one IDENTIFY, for ``hold_s`` at most: 0.0 if granted, else
        seconds to wait (``float('inf')`` while the shared daily budget is held back), or
        :data:`BUDGET_UNKNOWN` when no budget is known (nothing granted: refresh it first)."""
        self._grants += 1
        member = f"{self.host_id}:{int(time.time() * 1000)}:{self._grants}"  # unique, not a time
        result = int(
            self._identify(
                keys=[self._key("identify", "bucket", bucket), self._key("identify", "remaining"), self._key("identify", "log")],
                args=[max(1, int(hold_s * 1000)), reserve, member],
            )
        )
        if result == 0:
            self._taken[bucket] = member
            return 0.0
        if result == -2:
            return BUDGET_UNKNOWN
        if result < 0:
            return float("inf")
        return result / 1000.0

    def identify_sent(self, bucket: int, interval_s: float) -> bool:
        """The IDENTIFY granted on ``bucket`` was written just now: free it ``interval_s`` later,
        if the lock is still this host's grant's (or gone). A late report, after the lock
        expired and another host took it, never shortens that host's lock (it may lengthen it
        to ``interval_s``). Returns whether the lock was ours."""
        member = self._taken.pop(bucket, self.host_id)
        key = self._key("identify", "bucket", bucket)
        return bool(int(self._sent(keys=[key], args=[member, max(1, int(interval_s * 1000))])))

    def set_budget(self, remaining: int, reset_after_s: float, total: int | None = None, asked_ago_s: float = 0.0) -> int:
        """Publish Discord's ``session_start_limit``: ``remaining`` (as Discord counted it
        ``asked_ago_s`` ago) minus the grants logged since, until ``reset_after_s`` from now,
        when Discord refills it to ``total``. Returns the budget written. Grants other hosts
        took while the answer was on its way stay counted (an overwrite would erase them)."""
        keys = [self._key("identify", "remaining"), self._key("identify", "total"), self._key("identify", "log")]
        # The trip to Redis is not in ``asked_ago_s``: count a second more of grants (a grant
        # Discord had counted already, counted twice, only lowers the budget: the safe side).
        since_ms = int(asked_ago_s * 1000) + BUDGET_AGE_SLACK_MS if asked_ago_s > 0 else 0
        args = [remaining, max(1, int(reset_after_s * 1000)), since_ms, "" if total is None else total]
        return int(self._set_budget(keys=keys, args=args))

    def estimate_budget(self, ttl_s: float, default_total: int = DEFAULT_TOTAL) -> int:
        """When Discord cannot be asked: set the missing budget for ``ttl_s`` to the known total
        (else ``default_total``) minus the grants logged in the last 24 h; return the budget
        (the one already there, if another host set it meanwhile)."""
        keys = [self._key("identify", "remaining"), self._key("identify", "total"), self._key("identify", "log")]
        return int(self._estimate(keys=keys, args=[max(1, int(ttl_s * 1000)), default_total]))

    def budget(self) -> int | None:
        """The shared identifies left (None: unknown, the key is missing)."""
        value = self.redis.get(self._key("identify", "remaining"))
        return int(value) if value is not None else None

    def total(self) -> int | None:
        """Discord's daily ``session_start_limit.total`` as last published (None: never)."""
        value = self.redis.get(self._key("identify", "total"))
        return int(value) if value is not None else None

    def identifies_last_24h(self) -> int:
        """Grants logged by every host in the last 24 h (by Redis' clock)."""
        return int(self._count(keys=[self._key("identify", "log")]))

    # -- sessions -----------------------------------------------------------------------------
    def set_fence(self, lease_of: Callable[[int, int], str], owner: str) -> None:
        """Cluster mode: from now on a session is written or deleted only while ``lease_of(
        shard_count, shard)`` holds ``owner`` (issue 20, defect 8)."""
        self._lease_of, self._owner = lease_of, owner

    def _write_fenced(self, shard_count: int, values: dict[int, str]) -> int:
        assert self._lease_of is not None
        keys: list[str] = []
        for shard in values:
            keys += [session_key(self.prefix, shard_count, shard), self._lease_of(shard_count, shard)]
        return int(self._fenced_write(keys=keys, args=[self._owner, SESSION_TTL_S, *values.values()]))

    def save_sessions(self, shard_count: int, sessions: dict[int, SavedSession]) -> None:
        """Write ``sessions`` (one pipeline), each for :data:`SESSION_TTL_S` (with a fence: only
        those of groups this node still leases)."""
        if not sessions:
            return
        if self._lease_of is not None:
            self._write_fenced(shard_count, {s: json.dumps(asdict(v)) for s, v in sessions.items()})
            return
        pipe = self.redis.pipeline(transaction=False)
        for shard, saved in sessions.items():
            pipe.set(session_key(self.prefix, shard_count, shard), json.dumps(asdict(saved)), ex=SESSION_TTL_S)
        pipe.execute()

    def delete_sessions(self, shard_count: int, shard_ids: list[int]) -> int:
        """Forget sessions Discord invalidated, so that no host tries to resume them."""
        if not shard_ids:
            return 0
        if self._lease_of is not None:
            return self._write_fenced(shard_count, dict.fromkeys(shard_ids, ""))
        return int(self.redis.delete(*(session_key(self.prefix, shard_count, s) for s in shard_ids)))

    def load_sessions(self, shard_count: int, shard_ids: list[int]) -> dict[int, SavedSession]:
        """The sessions of ``shard_ids`` found in Redis (malformed ones skipped)."""
        if not shard_ids:
            return {}
        return parse_sessions(shard_ids, self.redis.mget([session_key(self.prefix, shard_count, s) for s in shard_ids]))
