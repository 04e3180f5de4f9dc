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
  ``session_start_limit.remaining`` (refreshed by each host's ``GET /gateway/bot``, expiring at
  ``reset_after``) and is decremented by every grant in the same atomic script; grants are also
  logged in the sorted set ``<prefix>:identify:log`` (last 24 h), for operators.
- **Sessions**: ``<prefix>:session:<shard_count>:<shard>`` holds the JSON ``{session_id, seq,
  resume_gateway_url}`` with a TTL a little past Discord's resume window, so a shard range moved
  to another host resumes there.

Without ``--redis-url`` none of this is used and everything stays local (the state dir).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from dataclasses import asdict
from typing import Any

from shard_worker.config import SavedSession

log = logging.getLogger("supervisor.coordination")

DEFAULT_PREFIX = "spectacles"
#: Sessions are kept this long after their last update (Discord's resume window is a few minutes).
SESSION_TTL_S = 15 * 60
LOG_WINDOW_MS = 24 * 3600 * 1000

#: KEYS: bucket lock, remaining budget, grant log. ARGV: hold ms, reserve, now ms, member.
#: Returns 0 (granted), a positive wait in ms (the bucket is busy) or -1 (budget held back).
_IDENTIFY_SCRIPT = """
local wait = redis.call('PTTL', KEYS[1])
if wait > 0 then return wait end
local remaining = redis.call('GET', KEYS[2])
if remaining and tonumber(remaining) <= tonumber(ARGV[2]) then return -1 end
redis.call('SET', KEYS[1], ARGV[4], 'PX', ARGV[1])
if remaining then redis.call('DECR', KEYS[2]) end
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', tonumber(ARGV[3]) - %d)
return 0
""" % LOG_WINDOW_MS


class RedisCoordinator:
    def __init__(self, client: Any, prefix: str | None = DEFAULT_PREFIX, host_id: str | None = None) -> None:
        self.redis = client
        self.prefix = prefix or DEFAULT_PREFIX
        self.host_id = host_id or f"{socket.gethostname()}:{os.getpid()}"
        self._identify = client.register_script(_IDENTIFY_SCRIPT)
        self._grants = 0

    @classmethod
    def from_url(cls, url: str, prefix: str | None = DEFAULT_PREFIX) -> RedisCoordinator:
        import redis

        client = redis.Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)
        client.ping()
        return cls(client, prefix)

    def _key(self, *parts: object) -> str:
        return ":".join([self.prefix, *map(str, parts)])

    # -- identify -----------------------------------------------------------------------------
    def try_identify(self, bucket: int, hold_s: float, reserve: int, now: float | None = None) -> float:
        """Take bucket ``bucket`` for one IDENTIFY, for ``hold_s`` at most: 0.0 if granted, else
        seconds to wait (``float('inf')`` while the shared daily budget is held back)."""
        now_ms = int((time.time() if now is None else now) * 1000)
        self._grants += 1
        member = f"{self.host_id}:{now_ms}:{self._grants}"
        result = int(
            self._identify(
                keys=[self._key("identify", "bucket", bucket), self._key("identify", "remaining"), self._key("identify", "log")],
                args=[max(1, int(hold_s * 1000)), reserve, now_ms, member],
            )
        )
        if result == 0:
            return 0.0
        if result < 0:
            return float("inf")
        return result / 1000.0

    def identify_sent(self, bucket: int, interval_s: float) -> None:
        """The IDENTIFY granted on ``bucket`` was written just now: free it ``interval_s`` later."""
        self.redis.set(self._key("identify", "bucket", bucket), self.host_id, px=max(1, int(interval_s * 1000)))

    def set_budget(self, remaining: int, reset_after_s: float) -> None:
        """Publish Discord's ``session_start_limit`` (the latest answer wins)."""
        self.redis.set(self._key("identify", "remaining"), remaining, px=max(1, int(reset_after_s * 1000)))

    def budget(self) -> int | None:
        value = self.redis.get(self._key("identify", "remaining"))
        return int(value) if value is not None else None

    def identifies_last_24h(self, now: float | None = None) -> int:
        now_ms = int((time.time() if now is None else now) * 1000)
        return int(self.redis.zcount(self._key("identify", "log"), now_ms - LOG_WINDOW_MS, "+inf"))

    # -- sessions -----------------------------------------------------------------------------
    def save_sessions(self, shard_count: int, sessions: dict[int, SavedSession]) -> None:
        if not sessions:
            return
        pipe = self.redis.pipeline(transaction=False)
        for shard, saved in sessions.items():
            pipe.set(self._key("session", shard_count, shard), json.dumps(asdict(saved)), ex=SESSION_TTL_S)
        pipe.execute()

    def delete_sessions(self, shard_count: int, shard_ids: list[int]) -> int:
        """Forget sessions Discord invalidated, so that no host tries to resume them."""
        if not shard_ids:
            return 0
        return int(self.redis.delete(*(self._key("session", shard_count, s) for s in shard_ids)))

    def load_sessions(self, shard_count: int, shard_ids: list[int]) -> dict[int, SavedSession]:
        if not shard_ids:
            return {}
        values = self.redis.mget([self._key("session", shard_count, s) for s in shard_ids])
        sessions = {}
        for shard, value in zip(shard_ids, values):
            if value is None:
                continue
            try:
                sessions[shard] = SavedSession(**json.loads(value))
            except (TypeError, ValueError):
                log.warning("ignoring a malformed session for shard %d in Redis", shard)
        return sessions
