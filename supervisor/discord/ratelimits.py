"""Discord REST ratelimits shared through Redis, as the Spectacles ratelimits document says.

Self-contained (the standard library and ``redis`` only), so any Python Spectacles service can
copy or import it. Two limiters with one interface:

* :class:`RedisRatelimiter`: the state lives in Redis, shared by every process and host of a bot;
* :class:`LocalRatelimiter`: the same state in an in-process :class:`LocalStore` (no Redis).

A caller does ``limiter.acquire(route)``, sends the request, then
``limiter.update(route, status, headers)``; :func:`route_for` names the route.

Keys (``<prefix>:`` only when a prefix is given; the route is part of the key):

================================  =========================================================
``[<prefix>:]global``             exists while the bot is globally ratelimited; expires then
``[<prefix>:]<route>:remaining``  requests left, counted here (never copied from Discord);
                                  expires when the bucket resets
``[<prefix>:]<route>:limit``      the bucket size from ``X-RateLimit-Limit``; no expiry;
                                  ``0`` when the header was absent (limiting off for the route)
================================  =========================================================

How long must a request wait (milliseconds)? One atomic decision, written twice: in Lua for
Redis (:data:`WAIT_SCRIPT`, the source of truth) and in Python for the local store
(:func:`_decide`). Both follow the same numbered steps, and nothing else:

====  ==================================================  ===================================
step  condition                                           answer (ms), side effect
====  ==================================================  ===================================
1     ``global`` has a positive TTL                       its TTL
2     ``limit`` (1 when absent) is ``<= 0``               0
3     ``remaining`` is absent                             0; set it to ``limit - 1``, no TTL
4     ``remaining <= 0``                                  its TTL, or ``default_wait_ms``
                                                          when it has none
5     otherwise                                           0; decrement it, keeping its TTL
====  ==================================================  ===================================

Only a 0 lets a request go; any other answer means "wait that long, then ask again".

Choices this module makes where the document leaves room (documented, deliberate):

* Step 3 creates ``remaining`` *without* an expiry, as the document's script does: the bucket's
  reset is only known once Discord answers, and a guessed expiry could reopen the bucket before
  Discord does. Until a response gives it one, step 4 answers ``default_wait_ms``.
* So that a request that never got an answer cannot leave ``remaining`` without a TTL for ever
  (every caller would wait ``default_wait_ms`` in a loop), :meth:`update` with no reset
  information, and :meth:`release` (the request failed before any response), give ``remaining``
  an expiry of ``default_wait_ms`` -- only when it has none. A process that dies between
  ``acquire`` and ``update`` can still leave such a key: deleting it is the remedy.
* ``X-RateLimit-Reset`` minus ``Date`` is what the document asks for; ``Date`` has whole-second
  precision, so the expiry may be up to one second longer than Discord's (never shorter). When
  ``Date`` is missing the caller's ``now`` (default :func:`time.time`) stands in for it. On a 429
  ``X-RateLimit-Reset-After`` is preferred, then ``Retry-After``.
* A response is global when it is a 429 with ``X-RateLimit-Global: true`` (or
  ``X-RateLimit-Scope: global``); ``global`` then expires after ``Retry-After`` (else
  ``X-RateLimit-Reset-After``, else ``default_wait_ms``).
* Every duration set is in milliseconds, rounded up, at least 1 and at most :data:`MAX_EXPIRY_MS`.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email.utils import mktime_tz, parsedate_tz
from typing import Any

__all__ = [
    "DEFAULT_WAIT_MS",
    "MAX_EXPIRY_MS",
    "WAIT_SCRIPT",
    "LocalRatelimiter",
    "LocalStore",
    "RatelimitTimeout",
    "RatelimitUpdate",
    "RedisRatelimiter",
    "read_headers",
    "route_for",
]

DEFAULT_WAIT_MS = 1000
MAX_EXPIRY_MS = 24 * 60 * 60 * 1000  # a day: anything longer is a malformed header


class RatelimitTimeout(TimeoutError):
    """:meth:`acquire` would have to wait longer than its ``max_wait_s``."""

    def __init__(self, route: str, wait_ms: int, waited_ms: int) -> None:
        super().__init__(
            f"ratelimited on {route}: {wait_ms} ms more to wait after {waited_ms} ms"
        )
        self.route = route
        self.wait_ms = wait_ms
        self.waited_ms = waited_ms


# -- the decision: Lua for Redis, Python for the local store (same steps, side by side) ---------

#: KEYS: global, <route>:limit, <route>:remaining. ARGV: default wait (ms). Returns the wait (ms).
WAIT_SCRIPT = """
local global = redis.call('pttl', KEYS[1])                   -- 1
if global > 0 then return global end
local limit = tonumber(redis.call('get', KEYS[2])) or 1      -- 2
if limit <= 0 then return 0 end
local remaining = tonumber(redis.call('get', KEYS[3]))       -- 3
if remaining == nil then
  redis.call('set', KEYS[3], limit - 1)
  return 0
end
if remaining <= 0 then                                       -- 4
  local ttl = redis.call('pttl', KEYS[3])
  if ttl > 0 then return ttl end
  return tonumber(ARGV[1])
end
redis.call('decr', KEYS[3])                                  -- 5 (DECR keeps the TTL)
return 0
"""


def _decide(store: LocalStore, keys: tuple[str, str, str], default_wait_ms: int) -> int:
    """:data:`WAIT_SCRIPT`, line for line, on a :class:`LocalStore` (call it under its lock)."""
    global_key, limit_key, remaining_key = keys
    global_ttl = store.pttl(global_key)  # 1
    if global_ttl > 0:
        return global_ttl
    limit = _tonumber(store.get(limit_key))  # 2
    limit = 1 if limit is None else limit
    if limit <= 0:
        return 0
    remaining = _tonumber(store.get(remaining_key))  # 3
    if remaining is None:
        store.set(remaining_key, limit - 1)
        return 0
    if remaining <= 0:  # 4
        ttl = store.pttl(remaining_key)
        return ttl if ttl > 0 else default_wait_ms
    store.decr(remaining_key)  # 5 (keeps the TTL)
    return 0


#: KEYS: <route>:remaining. ARGV: ms. Gives the key that expiry only if it exists without one.
_EXPIRE_IF_PERSISTENT = """
if redis.call('pttl', KEYS[1]) == -1 then redis.call('pexpire', KEYS[1], ARGV[1]) end
return 0
"""


def _tonumber(value: Any) -> int | float | None:
    """Lua's ``tonumber`` for what the store holds: an int, a float, or ``None``."""
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    try:
        return int(value)
    except (TypeError, ValueError):
        pass
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


# -- reading Discord's headers --------------------------------------------------------------


@dataclass(frozen=True)
class RatelimitUpdate:
    """What one response says, ready to store (durations in ms, ``None`` = leave unset)."""

    is_global: bool
    global_ms: int | None
    remaining_ms: int | None
    limit: int


_NUMBER = re.compile(r"\s*\+?([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*", re.ASCII)
_INTEGER = re.compile(r"\s*\+?([0-9]{1,15})\s*", re.ASCII)


def _seconds(value: str | None) -> float | None:
    if value is None:
        return None
    match = _NUMBER.fullmatch(value)
    if not match:
        return None
    number = float(match.group(1))
    return number if math.isfinite(number) else None


def _http_date(value: str | None) -> float | None:
    if not value:
        return None
    try:
        parsed = parsedate_tz(value)
        return float(mktime_tz(parsed)) if parsed else None
    except (TypeError, ValueError, OverflowError, IndexError):
        return None


def _ms(seconds: float) -> int:
    """A duration to store: whole milliseconds rounded up, in ``[1, MAX_EXPIRY_MS]``."""
    if not math.isfinite(seconds) or seconds * 1000 >= MAX_EXPIRY_MS:
        return MAX_EXPIRY_MS if seconds > 0 else 1
    return max(1, math.ceil(seconds * 1000 - 1e-3))  # up to the next ms (float noise aside)


def read_headers(
    status: int, headers: Mapping[str, str], now: float | None = None
) -> RatelimitUpdate:
    """Interpret one response's ratelimit headers (names in any case). Never raises.

    * ``is_global``: a 429 with ``X-RateLimit-Global: true`` or ``X-RateLimit-Scope: global``.
    * ``global_ms``: when global, ``Retry-After``, else ``X-RateLimit-Reset-After`` (seconds),
      else ``None`` (the limiter then uses its ``default_wait_ms``).
    * ``remaining_ms``: on a 429 ``X-RateLimit-Reset-After``, else ``Retry-After``; otherwise (and
      as the 429's last resort) ``X-RateLimit-Reset`` minus ``Date`` (``now`` when ``Date`` is
      missing or unreadable); else ``X-RateLimit-Reset-After``; else ``None``.
    * ``limit``: ``X-RateLimit-Limit``, or 0 when absent or unreadable.
    """
    h = {str(name).lower(): str(value) for name, value in headers.items()}
    if now is None:
        now = time.time()
    reset_after = _seconds(h.get("x-ratelimit-reset-after"))
    retry_after = _seconds(h.get("retry-after"))
    date = _http_date(h.get("date"))
    if retry_after is None and "retry-after" in h:  # Retry-After may be an HTTP date
        retry_date = _http_date(h["retry-after"])
        if retry_date is not None:
            retry_after = retry_date - (now if date is None else date)
    reset = _seconds(h.get("x-ratelimit-reset"))
    until_reset = None if reset is None else reset - (now if date is None else date)

    is_global = status == 429 and (
        h.get("x-ratelimit-global", "").strip().lower() == "true"
        or h.get("x-ratelimit-scope", "").strip().lower() == "global"
    )
    global_s = (retry_after if retry_after is not None else reset_after) if is_global else None

    if status == 429:
        candidates = (reset_after, retry_after, until_reset)
    else:
        candidates = (until_reset, reset_after)
    remaining_s = next((c for c in candidates if c is not None), None)

    limit_match = _INTEGER.fullmatch(h.get("x-ratelimit-limit", ""))
    return RatelimitUpdate(
        is_global=is_global,
        global_ms=None if global_s is None else _ms(global_s),
        remaining_ms=None if remaining_s is None else _ms(remaining_s),
        limit=int(limit_match.group(1)) if limit_match else 0,
    )


# -- route names ------------------------------------------------------------------------------

_MAJOR = ("channels", "guilds", "webhooks")
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://", re.ASCII)
_API_PREFIX = re.compile(r"/api(?:/v[0-9]+)?(?=/|$)", re.ASCII)


def route_for(method: str, path: str) -> str:
    """The bucket key of a request, after Discord's convention: ``<method>:<path>``.

    * ``method`` is lower-cased: ``route_for("GET", "/gateway/bot") == "get:/gateway/bot"``.
    * ``path`` may be a full URL; the scheme, host, query, fragment and a leading ``/api`` or
      ``/api/v<N>`` are dropped.
    * Major parameters are kept: the id after a leading ``channels``, ``guilds`` or
      ``webhooks``, and a webhook's token (``/webhooks/<id>/<token>``).
    * Every other path segment made only of ASCII digits (a snowflake) becomes ``:id``; a reaction's
      emoji (``/reactions/<emoji>``) becomes ``:reaction`` and an interaction's token
      (``/interactions/<id>/<token>``) ``:token``, as those never select a bucket.

    ``route_for("PATCH", "https://discord.com/api/v10/channels/81384788765712384/messages/1")``
    is ``"patch:/channels/81384788765712384/messages/:id"``.
    """
    url = _URL.match(path)
    if url:  # scheme://host/path: keep the path
        rest = path[url.end():]
        slash = rest.find("/")
        path = rest[slash:] if slash >= 0 else "/"
    path = path.split("?", 1)[0].split("#", 1)[0]
    prefix = _API_PREFIX.match(path)
    if prefix:
        path = path[prefix.end():]
    segments = path.split("/")
    if segments and segments[0] == "":
        segments = segments[1:]
    out: list[str] = []
    for index, segment in enumerate(segments):
        previous = segments[index - 1] if index else None
        major = segments[0] in _MAJOR and (
            (index == 1 and _is_id(segment)) or (index == 2 and segments[0] == "webhooks")
        )
        if major:
            out.append(segment)
        elif previous == "reactions":
            out.append(":reaction")
        elif index >= 2 and segments[index - 2] == "interactions" and _is_id(segments[index - 1]):
            out.append(":token")
        elif _is_id(segment):
            out.append(":id")
        else:
            out.append(segment)
    return f"{method.lower()}:/" + "/".join(out)


def _is_id(segment: str) -> bool:
    return segment.isascii() and segment.isdigit()


# -- the limiters -----------------------------------------------------------------------------


class _Ratelimiter:
    """What both limiters share: key names and the waiting loop."""

    prefix: str | None
    default_wait_ms: int

    def _keys(self, route: str) -> tuple[str, str, str]:
        """(global, limit, remaining) key names for ``route``."""
        base = f"{self.prefix}:" if self.prefix else ""
        return f"{base}global", f"{base}{route}:limit", f"{base}{route}:remaining"

    def wait_time(self, route: str) -> int:  # pragma: no cover - overridden
        raise NotImplementedError

    def acquire(
        self,
        route: str,
        sleep: Callable[[float], Any] = time.sleep,
        max_wait_s: float | None = None,
    ) -> int:
        """Wait until the decision says 0 (the request may go); return the ms waited in total.

        Each non-zero answer is slept (``sleep`` takes seconds) and the question asked again.
        With ``max_wait_s``, raise :class:`RatelimitTimeout` instead of a sleep that would make
        the total slept exceed it (nothing is claimed then).
        """
        waited = 0
        while True:
            wait = self.wait_time(route)
            if wait <= 0:
                return waited
            if max_wait_s is not None and (waited + wait) / 1000 > max_wait_s:
                raise RatelimitTimeout(route, wait, waited)
            sleep(wait / 1000)
            waited += wait


class RedisRatelimiter(_Ratelimiter):
    """The ratelimits of one bot (``prefix``) in Redis, shared by every process using them.

    ``redis_client`` is a ``redis.Redis`` (``decode_responses`` either way). The decision is one
    :data:`WAIT_SCRIPT` call (``EVALSHA``, registered once per limiter).
    """

    def __init__(
        self, redis_client: Any, prefix: str | None = None, default_wait_ms: int = DEFAULT_WAIT_MS
    ) -> None:
        self.redis = redis_client
        self.prefix = prefix or None
        self.default_wait_ms = max(1, int(default_wait_ms))
        self._wait = redis_client.register_script(WAIT_SCRIPT)
        self._expire_if_persistent = redis_client.register_script(_EXPIRE_IF_PERSISTENT)

    def wait_time(self, route: str) -> int:
        """How long (ms) before a request on ``route`` may go; 0 claims a slot for it now."""
        return int(self._wait(keys=self._keys(route), args=[self.default_wait_ms]))

    def update(
        self,
        route: str,
        status: int,
        headers: Mapping[str, str],
        now: float | None = None,
    ) -> RatelimitUpdate:
        """Store what Discord's response says (see :func:`read_headers`); one transaction.

        Sets only: ``global`` (with its expiry) on a global 429, the expiry of an existing
        ``<route>:remaining``, and ``<route>:limit``.
        """
        info = read_headers(status, headers, now)
        global_key, limit_key, remaining_key = self._keys(route)
        with self.redis.pipeline(transaction=True) as pipe:
            if info.is_global:
                pipe.set(global_key, "1", px=info.global_ms or self.default_wait_ms)
            if info.remaining_ms is not None:
                pipe.pexpire(remaining_key, info.remaining_ms)
            else:
                self._expire_if_persistent(
                    keys=[remaining_key], args=[self.default_wait_ms], client=pipe
                )
            pipe.set(limit_key, info.limit)
            pipe.execute()
        return info

    def release(self, route: str) -> None:
        """The request got no response: let ``remaining`` expire (``default_wait_ms``) if it
        has no expiry, so the bucket cannot stay closed for ever."""
        self._expire_if_persistent(keys=[self._keys(route)[2]], args=[self.default_wait_ms])


class LocalStore:
    """The few Redis commands the limiters use, in memory, with Redis' semantics.

    Values are strings; ``pttl`` is -2 for a missing key, -1 for one without expiry, else the
    ms left. ``clock`` is in seconds (monotonic). ``lock`` guards a whole decision.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.lock = threading.RLock()
        self._data: dict[str, tuple[str, float | None]] = {}

    def _entry(self, key: str) -> tuple[str, float | None] | None:
        entry = self._data.get(key)
        if entry is not None and entry[1] is not None and entry[1] <= self.clock():
            del self._data[key]
            return None
        return entry

    def get(self, key: str) -> str | None:
        entry = self._entry(key)
        return None if entry is None else entry[0]

    def set(self, key: str, value: Any, px: int | None = None) -> None:
        """Like Redis ``SET``: drops any previous expiry unless ``px`` gives a new one."""
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        expires = None if px is None else self.clock() + px / 1000
        self._data[key] = (str(value), expires)

    def pttl(self, key: str) -> int:
        entry = self._entry(key)
        if entry is None:
            return -2
        if entry[1] is None:
            return -1
        return max(1, math.ceil((entry[1] - self.clock()) * 1000))

    def pexpire(self, key: str, ms: int) -> bool:
        entry = self._entry(key)
        if entry is None:
            return False
        self._data[key] = (entry[0], self.clock() + ms / 1000)
        return True

    def decr(self, key: str) -> int:
        entry = self._entry(key)
        value = int(entry[0]) - 1 if entry else -1
        self._data[key] = (str(value), entry[1] if entry else None)
        return value

    def delete(self, key: str) -> None:
        self._data.pop(key, None)

    def keys(self) -> list[str]:
        return [key for key in list(self._data) if self._entry(key) is not None]


class LocalRatelimiter(_Ratelimiter):
    """The same limiter for one process, without Redis (the steps of :func:`_decide`).

    Thread-safe. Limiters given the same ``store`` share their buckets, like
    :class:`RedisRatelimiter` instances on one Redis.
    """

    def __init__(
        self,
        prefix: str | None = None,
        default_wait_ms: int = DEFAULT_WAIT_MS,
        store: LocalStore | None = None,
    ) -> None:
        self.prefix = prefix or None
        self.default_wait_ms = max(1, int(default_wait_ms))
        self.store = store if store is not None else LocalStore()

    def wait_time(self, route: str) -> int:
        """How long (ms) before a request on ``route`` may go; 0 claims a slot for it now."""
        with self.store.lock:
            return _decide(self.store, self._keys(route), self.default_wait_ms)

    def update(
        self,
        route: str,
        status: int,
        headers: Mapping[str, str],
        now: float | None = None,
    ) -> RatelimitUpdate:
        """Same as :meth:`RedisRatelimiter.update`, on the local store."""
        info = read_headers(status, headers, now)
        global_key, limit_key, remaining_key = self._keys(route)
        with self.store.lock:
            if info.is_global:
                self.store.set(global_key, "1", px=info.global_ms or self.default_wait_ms)
            if info.remaining_ms is not None:
                self.store.pexpire(remaining_key, info.remaining_ms)
            elif self.store.pttl(remaining_key) == -1:
                self.store.pexpire(remaining_key, self.default_wait_ms)
            self.store.set(limit_key, info.limit)
        return info

    def release(self, route: str) -> None:
        """Same as :meth:`RedisRatelimiter.release`, on the local store."""
        remaining_key = self._keys(route)[2]
        with self.store.lock:
            if self.store.pttl(remaining_key) == -1:
                self.store.pexpire(remaining_key, self.default_wait_ms)
