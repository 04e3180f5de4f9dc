"""REST ratelimits (SPEC.md, "Ratelimits"): the real Redis and a fake Discord REST server.

Every step test runs on both limiters: :class:`RedisRatelimiter` (a unique key prefix per test,
its keys deleted afterwards) and :class:`LocalRatelimiter` (a fresh in-process store).
"""

from __future__ import annotations

import json
import math
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from email.utils import formatdate
from typing import Any

import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st

from supervisor.discord import api as discord_api
from supervisor.discord.api import DiscordAPIError, get_gateway_bot, send_request
from supervisor.discord.ratelimits import (
    MAX_EXPIRY_MS,
    LocalRatelimiter,
    LocalStore,
    RatelimitTimeout,
    RedisRatelimiter,
    read_headers,
    route_for,
)
from tests.http_stub import StubHTTPServer

TOKEN = "MTIzNDU2Nzg5MDEyMzQ1Njc4.GabCdE.secret-part-of-the-token_xyz"
ROUTE = "get:/gateway/bot"
DEFAULT_WAIT = 777  # a recognisable default_wait_ms
RATE_LIMITED = "You are being rate limited."
WEBHOOK_TOKEN = "3d89bb7572e0fb30d8128367b3b1b44fecd1726de135cbe28a41f8b2f777c372"
GATEWAY_BOT = {
    "url": "wss://gateway.discord.gg",
    "shards": 2,
    "session_start_limit": {
        "total": 1000,
        "remaining": 999,
        "reset_after": 14400000,
        "max_concurrency": 1,
    },
}


# -- the two backends, seen through the same few operations ------------------------------------


class RedisBackend:
    name = "redis"

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.client = client
        self.prefix = prefix
        self.hosts: list[redis.Redis] = []

    def limiter(self, **kw: Any) -> RedisRatelimiter:
        """Another "host": its own connection pool, the same Redis and prefix."""
        client = redis.Redis.from_url(_url(self.client))
        self.hosts.append(client)
        return RedisRatelimiter(client, prefix=self.prefix, **kw)

    def key(self, name: str) -> str:
        return f"{self.prefix}:{name}"

    def get(self, name: str) -> str | None:
        value = self.client.get(self.key(name))
        return None if value is None else value.decode()

    def pttl(self, name: str) -> int:
        return self.client.pttl(self.key(name))

    def set(self, name: str, value: Any, px: int | None = None) -> None:
        self.client.set(self.key(name), value, px=px)

    def delete(self, name: str) -> None:
        self.client.delete(self.key(name))

    def names(self) -> set[str]:
        start = len(self.prefix) + 1
        return {k.decode()[start:] for k in self.client.scan_iter(match=f"{self.prefix}:*")}

    def cleanup(self) -> None:
        keys = list(self.client.scan_iter(match=f"{self.prefix}:*"))
        if keys:
            self.client.delete(*keys)
        for host in self.hosts:
            host.close()


class LocalBackend:
    name = "local"

    def __init__(self) -> None:
        self.store = LocalStore()

    def limiter(self, **kw: Any) -> LocalRatelimiter:
        return LocalRatelimiter(store=self.store, **kw)

    def get(self, name: str) -> str | None:
        return self.store.get(name)

    def pttl(self, name: str) -> int:
        return self.store.pttl(name)

    def set(self, name: str, value: Any, px: int | None = None) -> None:
        self.store.set(name, value, px=px)

    def delete(self, name: str) -> None:
        self.store.delete(name)

    def names(self) -> set[str]:
        return set(self.store.keys())

    def cleanup(self) -> None:
        pass


def _url(client: redis.Redis) -> str:
    kw = client.connection_pool.connection_kwargs
    return f"redis://{kw.get('host', '127.0.0.1')}:{kw.get('port', 6379)}/{kw.get('db', 0)}"


@pytest.fixture(scope="module")
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def _prefix() -> str:
    return f"test-rl-{uuid.uuid4().hex[:12]}"


@pytest.fixture(params=["redis", "local"])
def backend(request: pytest.FixtureRequest) -> Iterator[RedisBackend | LocalBackend]:
    if request.param == "redis":
        b: RedisBackend | LocalBackend = RedisBackend(
            request.getfixturevalue("redis_client"), _prefix()
        )
    else:
        b = LocalBackend()
    yield b
    b.cleanup()


# -- the numbered steps of the decision --------------------------------------------------------


def test_step1_global_ttl_is_the_wait_for_every_route(backend):
    limiter = backend.limiter(default_wait_ms=DEFAULT_WAIT)
    backend.set("global", "1", px=5000)
    assert 3000 < limiter.wait_time(ROUTE) <= 5000
    assert 3000 < limiter.wait_time("post:/channels/1/messages") <= 5000
    # The script answered before step 3: no bucket was claimed.
    assert backend.names() == {"global"}


def test_step1_global_without_ttl_is_ignored(backend):
    # "if global has a positive TTL": a key without expiry does not block.
    limiter = backend.limiter(default_wait_ms=DEFAULT_WAIT)
    backend.set("global", "1")
    assert limiter.wait_time(ROUTE) == 0
    assert backend.get(f"{ROUTE}:remaining") == "0"


def test_step2_absent_limit_counts_as_1(backend):
    limiter = backend.limiter(default_wait_ms=DEFAULT_WAIT)
    assert limiter.wait_time(ROUTE) == 0
    assert backend.get(f"{ROUTE}:remaining") == "0"
    assert backend.get(f"{ROUTE}:limit") is None  # the script never writes the limit
    assert limiter.wait_time(ROUTE) == DEFAULT_WAIT


@pytest.mark.parametrize("limit", ["0", "-1"])
def test_step2_limit_at_most_0_lets_every_request_through(backend, limit):
    limiter = backend.limiter(default_wait_ms=DEFAULT_WAIT)
    backend.set(f"{ROUTE}:limit", limit)
    backend.set(f"{ROUTE}:remaining", "0", px=60_000)  # even with an exhausted bucket
    assert [limiter.wait_time(ROUTE) for _ in range(20)] == [0] * 20
    assert backend.get(f"{ROUTE}:remaining") == "0"


def test_step3_absent_remaining_becomes_limit_minus_1_without_ttl(backend):
    limiter = backend.limiter(default_wait_ms=DEFAULT_WAIT)
    backend.set(f"{ROUTE}:limit", "5")
    assert limiter.wait_time(ROUTE) == 0
    assert backend.get(f"{ROUTE}:remaining") == "4"
    assert backend.pttl(f"{ROUTE}:remaining") == -1


@pytest.mark.parametrize("remaining", ["0", "-2"])
def test_step4_exhausted_bucket_waits_for_its_ttl(backend, remaining):
    limiter = backend.limiter(default_wait_ms=DEFAULT_WAIT)
    backend.set(f"{ROUTE}:limit", "5")
    backend.set(f"{ROUTE}:remaining", remaining, px=3000)
    assert 1500 < limiter.wait_time(ROUTE) <= 3000
    assert backend.get(f"{ROUTE}:remaining") == remaining  # waiting claims nothing


def test_step4_exhausted_bucket_without_ttl_waits_the_default(backend):
    limiter = backend.limiter(default_wait_ms=DEFAULT_WAIT)
    backend.set(f"{ROUTE}:limit", "5")
    backend.set(f"{ROUTE}:remaining", "0")
    assert limiter.wait_time(ROUTE) == DEFAULT_WAIT
    assert backend.limiter().wait_time(ROUTE) == 1000  # the documented default


def test_step5_decrements_and_keeps_the_ttl(backend):
    limiter = backend.limiter(default_wait_ms=DEFAULT_WAIT)
    backend.set(f"{ROUTE}:limit", "5")
    backend.set(f"{ROUTE}:remaining", "3", px=8000)
    assert limiter.wait_time(ROUTE) == 0
    assert backend.get(f"{ROUTE}:remaining") == "2"
    assert 6000 < backend.pttl(f"{ROUTE}:remaining") <= 8000
    backend.set("get:/other:limit", "5")
    backend.set("get:/other:remaining", "3")
    assert limiter.wait_time("get:/other") == 0
    assert backend.get("get:/other:remaining") == "2"
    assert backend.pttl("get:/other:remaining") == -1  # no TTL stays no TTL


def test_a_bucket_of_3_lets_3_through_then_waits(backend):
    limiter = backend.limiter(default_wait_ms=DEFAULT_WAIT)
    backend.set(f"{ROUTE}:limit", "3")
    assert [limiter.wait_time(ROUTE) for _ in range(5)] == [0, 0, 0, DEFAULT_WAIT, DEFAULT_WAIT]
    assert backend.get(f"{ROUTE}:remaining") == "0"


# -- key names ---------------------------------------------------------------------------------


def _global_429(retry_after: str = "3") -> dict[str, str]:
    return {
        "Retry-After": retry_after,
        "X-RateLimit-Global": "true",
        "X-RateLimit-Scope": "global",
        "Date": formatdate(usegmt=True),
    }


def _bucket_headers(limit: int, reset_in: float, remaining: int = 0) -> dict[str, str]:
    now = time.time()
    return {
        "X-RateLimit-Limit": str(limit),
        "X-RateLimit-Remaining": str(remaining),
        "X-RateLimit-Reset": f"{now + reset_in:.3f}",
        "X-RateLimit-Reset-After": f"{reset_in:.3f}",
        "X-RateLimit-Bucket": "abcd1234abcd1234abcd1234abcd1234",
        "Date": formatdate(now, usegmt=True),
    }


@pytest.mark.parametrize("decode", [False, True])
def test_redis_key_names_with_a_prefix(redis_client, decode):
    prefix = _prefix()
    client = redis.Redis.from_url(_url(redis_client), decode_responses=decode)
    try:
        limiter = RedisRatelimiter(client, prefix=prefix)
        assert limiter.wait_time(ROUTE) == 0
        limiter.update(ROUTE, 200, _bucket_headers(5, 10))
        limiter.update(ROUTE, 429, _global_429())
        keys = {k.decode() for k in redis_client.scan_iter(match=f"{prefix}:*")}
        assert keys == {
            f"{prefix}:global",
            f"{prefix}:get:/gateway/bot:limit",
            f"{prefix}:get:/gateway/bot:remaining",
        }
        assert redis_client.get(f"{prefix}:get:/gateway/bot:limit") == b"0"  # the 429 had none
        assert redis_client.pttl(f"{prefix}:global") > 1000
    finally:
        for key in redis_client.scan_iter(match=f"{prefix}:*"):
            redis_client.delete(key)
        client.close()


def test_redis_key_names_without_a_prefix(redis_client):
    # No prefix means the bare key "global": use a database of its own (15) so no other test of
    # this machine sees a global ratelimit.
    client = redis.Redis.from_url(_url(redis_client).rsplit("/", 1)[0] + "/15")
    route = f"get:/test-{uuid.uuid4().hex[:12]}"
    assert client.exists("global") == 0
    try:
        for prefix in (None, ""):
            limiter = RedisRatelimiter(client, prefix=prefix)
            client.delete(f"{route}:remaining", f"{route}:limit")
            assert limiter.wait_time(route) == 0
            limiter.update(route, 200, _bucket_headers(5, 10))
            assert client.get(f"{route}:remaining") == b"0"
            assert client.get(f"{route}:limit") == b"5"
            assert 0 < client.pttl(f"{route}:remaining") <= 11_000
        limiter.update(route, 429, _global_429("2"))
        assert 0 < client.pttl("global") <= 2000
        assert limiter.wait_time(route) > 0
    finally:
        client.delete("global", f"{route}:remaining", f"{route}:limit")
        client.close()


@pytest.mark.parametrize("prefix", [None, "bot-a"])
def test_local_key_names(prefix):
    limiter = LocalRatelimiter(prefix=prefix)
    limiter.wait_time(ROUTE)
    limiter.update(ROUTE, 429, {**_bucket_headers(5, 10), **_global_429()})
    base = f"{prefix}:" if prefix else ""
    assert set(limiter.store.keys()) == {
        f"{base}global",
        f"{base}get:/gateway/bot:limit",
        f"{base}get:/gateway/bot:remaining",
    }


def test_two_prefixes_are_two_bots(redis_client):
    a, b = RedisBackend(redis_client, _prefix()), RedisBackend(redis_client, _prefix())
    try:
        a.limiter().update(ROUTE, 429, _global_429("5"))
        assert a.limiter().wait_time(ROUTE) > 3000
        assert b.limiter().wait_time(ROUTE) == 0
    finally:
        a.cleanup()
        b.cleanup()


# -- update: what a response sets --------------------------------------------------------------


def test_update_expires_remaining_at_reset_minus_date(backend):
    limiter = backend.limiter(default_wait_ms=DEFAULT_WAIT)
    backend.set(f"{ROUTE}:remaining", "3")
    # A Date an hour old: only "Reset minus Date" (not "Reset minus our clock") gives 2.5 s.
    date = int(time.time()) - 3600
    headers = {
        "X-RateLimit-Limit": "5",
        "X-RateLimit-Remaining": "4",
        "X-RateLimit-Reset": f"{date + 2.5:.3f}",
        "X-RateLimit-Reset-After": "9.000",
        "X-RateLimit-Bucket": "b",
        "Date": formatdate(date, usegmt=True),
    }
    info = limiter.update(ROUTE, 200, headers)
    assert info.remaining_ms == 2500
    assert 1500 < backend.pttl(f"{ROUTE}:remaining") <= 2500
    assert backend.get(f"{ROUTE}:remaining") == "3"  # counted here, never copied from Discord
    assert backend.get(f"{ROUTE}:limit") == "5"
    assert backend.get("global") is None


def test_update_without_date_uses_now(backend):
    limiter = backend.limiter()
    backend.set(f"{ROUTE}:remaining", "1")
    now = float(int(time.time()))  # whole seconds: the header is exactly now + 3
    headers = {"X-RateLimit-Limit": "2", "X-RateLimit-Reset": f"{now + 3:.3f}"}
    assert limiter.update(ROUTE, 200, headers, now=now).remaining_ms == 3000
    assert 2000 < backend.pttl(f"{ROUTE}:remaining") <= 3000


def test_update_on_429_prefers_reset_after(backend):
    limiter = backend.limiter()
    backend.set(f"{ROUTE}:remaining", "2")
    date = int(time.time())
    headers = {
        "Retry-After": "2",
        "X-RateLimit-Limit": "5",
        "X-RateLimit-Remaining": "0",
        "X-RateLimit-Reset": f"{date + 30:.3f}",
        "X-RateLimit-Reset-After": "1.750",
        "X-RateLimit-Scope": "user",
        "Date": formatdate(date, usegmt=True),
    }
    info = limiter.update(ROUTE, 429, headers)
    assert (info.is_global, info.remaining_ms) == (False, 1750)
    assert 750 < backend.pttl(f"{ROUTE}:remaining") <= 1750
    assert backend.get("global") is None  # not a global 429
    # Without Reset-After, Retry-After.
    backend.set(f"{ROUTE}:remaining", "2")
    limiter.update(ROUTE, 429, {"Retry-After": "3", "Date": formatdate(date, usegmt=True)})
    assert 2000 < backend.pttl(f"{ROUTE}:remaining") <= 3000


def test_update_on_a_global_429_blocks_every_route(backend):
    limiter = backend.limiter()
    backend.set("get:/b:limit", "5")
    info = limiter.update(ROUTE, 429, _global_429("3"))
    assert (info.is_global, info.global_ms) == (True, 3000)
    assert 2000 < backend.pttl("global") <= 3000
    other = backend.limiter()  # another host of the same bot
    for route in (ROUTE, "get:/b", "post:/channels/1/messages"):
        assert 1500 < other.wait_time(route) <= 3000
    # A global 429 without any wait in its headers still blocks, for default_wait_ms.
    backend.delete("global")
    backend.limiter(default_wait_ms=2500).update(ROUTE, 429, {"X-RateLimit-Global": "true"})
    assert 1500 < backend.pttl("global") <= 2500


def test_global_header_on_a_200_is_not_a_global_ratelimit(backend):
    limiter = backend.limiter()
    info = limiter.update(ROUTE, 200, {"X-RateLimit-Global": "true", "Retry-After": "5"})
    assert not info.is_global
    assert backend.get("global") is None
    assert limiter.wait_time(ROUTE) == 0


def test_update_without_limit_header_sets_limit_0_and_opens_the_route(backend):
    limiter = backend.limiter(default_wait_ms=DEFAULT_WAIT)
    backend.set(f"{ROUTE}:limit", "5")
    backend.set(f"{ROUTE}:remaining", "0", px=60_000)
    assert limiter.wait_time(ROUTE) > 50_000
    limiter.update(ROUTE, 200, {"Content-Type": "application/json"})
    assert backend.get(f"{ROUTE}:limit") == "0"
    assert limiter.wait_time(ROUTE) == 0  # step 2
    assert 50_000 < backend.pttl(f"{ROUTE}:remaining") <= 60_000  # an expiry is never dropped


def test_update_does_not_create_remaining(backend):
    limiter = backend.limiter()
    limiter.update(ROUTE, 200, _bucket_headers(5, 10, remaining=4))
    assert backend.get(f"{ROUTE}:remaining") is None
    assert backend.names() == {f"{ROUTE}:limit"}


def test_no_reset_information_gives_a_ttl_less_remaining_the_default_expiry(backend):
    limiter = backend.limiter(default_wait_ms=2500)
    backend.set(f"{ROUTE}:remaining", "0")
    limiter.update(ROUTE, 500, {"X-RateLimit-Limit": "5"})
    assert 1500 < backend.pttl(f"{ROUTE}:remaining") <= 2500
    # One that has an expiry keeps it.
    backend.set("get:/b:remaining", "0", px=60_000)
    limiter.update("get:/b", 500, {})
    assert backend.pttl("get:/b:remaining") > 50_000
    # release(): the request got no response at all.
    backend.set("get:/c:remaining", "0")
    limiter.release("get:/c")
    assert 1500 < backend.pttl("get:/c:remaining") <= 2500
    assert backend.get("get:/c:remaining") == "0"


# -- acquire -----------------------------------------------------------------------------------


def test_acquire_sleeps_what_the_decision_says_then_asks_again(backend):
    limiter = backend.limiter(default_wait_ms=DEFAULT_WAIT)
    backend.set(f"{ROUTE}:limit", "1")
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        if len(slept) == 2:
            backend.delete(f"{ROUTE}:remaining")  # the bucket resets during the second sleep

    assert limiter.acquire(ROUTE, sleep=sleep) == 0
    assert slept == []
    assert limiter.acquire(ROUTE, sleep=sleep) == 2 * DEFAULT_WAIT
    assert slept == [DEFAULT_WAIT / 1000] * 2
    assert backend.get(f"{ROUTE}:remaining") == "0"  # claimed by the second acquire


def test_acquire_gives_up_after_max_wait(backend):
    limiter = backend.limiter()
    backend.set("global", "1", px=5000)
    slept: list[float] = []
    with pytest.raises(RatelimitTimeout) as error:
        limiter.acquire(ROUTE, sleep=slept.append, max_wait_s=1)
    assert slept == []
    assert error.value.route == ROUTE and 3000 < error.value.wait_ms <= 5000
    assert isinstance(error.value, TimeoutError)
    assert backend.get(f"{ROUTE}:remaining") is None  # nothing was claimed


def test_acquire_really_waits_for_the_bucket_to_reset(backend):
    limiter = backend.limiter()
    backend.set(f"{ROUTE}:limit", "2")
    backend.set(f"{ROUTE}:remaining", "0", px=1500)
    start = time.monotonic()
    waited = limiter.acquire(ROUTE)
    assert time.monotonic() - start >= 1.4
    assert waited >= 1400
    assert backend.get(f"{ROUTE}:remaining") == "1"  # a new bucket of 2, one taken


# -- the local limiter is the Lua script, step for step ----------------------------------------

_KEYS = ("global", f"{ROUTE}:limit", f"{ROUTE}:remaining")
_OPS = st.one_of(
    st.tuples(st.just("wait")),
    st.tuples(
        st.just("set"), st.sampled_from(_KEYS), st.integers(-2, 6), st.sampled_from([None, 30_000])
    ),
    st.tuples(st.just("del"), st.sampled_from(_KEYS)),
    st.tuples(
        st.just("update"),
        st.sampled_from([200, 429]),
        st.sampled_from([None, "3"]),  # X-RateLimit-Limit
        st.sampled_from([None, "20.5"]),  # X-RateLimit-Reset-After
        st.booleans(),  # global
    ),
)


@settings(max_examples=60)
@given(ops=st.lists(_OPS, max_size=25))
def test_local_and_redis_decide_alike(redis_client, ops):
    redis_backend, local_backend = RedisBackend(redis_client, _prefix()), LocalBackend()
    try:
        limiters = [b.limiter(default_wait_ms=DEFAULT_WAIT) for b in (redis_backend, local_backend)]
        for op in ops:
            if op[0] == "wait":
                r, l = (limiter.wait_time(ROUTE) for limiter in limiters)
                assert (r == 0) == (l == 0), ops
                assert abs(r - l) < 2000, ops
            elif op[0] == "set":
                for b in (redis_backend, local_backend):
                    b.set(op[1], op[2], px=op[3])
            elif op[0] == "del":
                for b in (redis_backend, local_backend):
                    b.delete(op[1])
            else:
                _, status, limit, reset_after, is_global = op
                headers = {"X-RateLimit-Limit": limit, "X-RateLimit-Reset-After": reset_after}
                headers = {k: v for k, v in headers.items() if v is not None}
                if is_global:
                    headers.update({"X-RateLimit-Global": "true", "Retry-After": "25"})
                for limiter in limiters:
                    limiter.update(ROUTE, status, headers)
            for key in _KEYS:
                assert redis_backend.get(key) == local_backend.get(key), (key, ops)
                r_ttl, l_ttl = redis_backend.pttl(key), local_backend.pttl(key)
                assert (r_ttl > 0) == (l_ttl > 0) and min(r_ttl, 0) == min(l_ttl, 0), (key, ops)
    finally:
        redis_backend.cleanup()


def test_local_store_clock_expires_keys():
    now = [100.0]
    store = LocalStore(clock=lambda: now[0])
    limiter = LocalRatelimiter(store=store, default_wait_ms=DEFAULT_WAIT)
    store.set(f"{ROUTE}:limit", 2)
    store.set(f"{ROUTE}:remaining", 0, px=1500)
    assert limiter.wait_time(ROUTE) == 1500
    now[0] += 1.0
    assert limiter.wait_time(ROUTE) == 500
    now[0] += 0.5
    assert limiter.wait_time(ROUTE) == 0  # expired: a new bucket
    assert store.get(f"{ROUTE}:remaining") == "1"


# -- reading headers ---------------------------------------------------------------------------

_HEADER_NAMES = st.sampled_from(
    [
        "X-RateLimit-Limit",
        "X-RateLimit-Remaining",
        "X-RateLimit-Reset",
        "X-RateLimit-Reset-After",
        "X-RateLimit-Global",
        "X-RateLimit-Scope",
        "Retry-After",
        "Date",
    ]
).map(lambda name: name.lower() if len(name) % 2 else name.upper())
_VALUES = st.one_of(
    st.text(max_size=40),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.integers(-(10**30), 10**30).map(str),
    st.just("true"),
    st.integers(0, 2**35).map(lambda t: formatdate(t, usegmt=True)),
)


@given(
    status=st.sampled_from([200, 204, 400, 429, 500]),
    headers=st.dictionaries(_HEADER_NAMES, _VALUES),
)
def test_read_headers_never_raises_and_stays_in_range(status, headers):
    info = read_headers(status, headers, now=time.time())
    for ms in (info.global_ms, info.remaining_ms):
        assert ms is None or 1 <= ms <= MAX_EXPIRY_MS
    assert info.limit >= 0
    assert info.is_global == (info.is_global and status == 429)


@given(seconds=st.floats(0.001, 3600))
def test_read_headers_reset_after_on_429(seconds):
    info = read_headers(429, {"X-RateLimit-Reset-After": f"{seconds:.3f}"})
    assert info.remaining_ms == max(1, round(float(f"{seconds:.3f}") * 1000))


@given(date=st.integers(1_400_000_000, 2_000_000_000), delta=st.floats(-100, 3600))
def test_read_headers_reset_minus_date(date, delta):
    headers = {"X-RateLimit-Reset": f"{date + delta:.3f}", "Date": formatdate(date, usegmt=True)}
    info = read_headers(200, headers, now=0.0)
    expected = max(1, round(float(f"{date + delta:.3f}") * 1000) - date * 1000)
    assert abs(info.remaining_ms - expected) <= 1


@given(limit=st.integers(0, 10**9))
def test_read_headers_limit(limit):
    assert read_headers(200, {"x-ratelimit-limit": str(limit)}).limit == limit
    assert read_headers(200, {}).limit == 0


# -- route_for ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "route"),
    [
        ("GET", "/gateway/bot", "get:/gateway/bot"),
        ("GET", "https://discord.com/api/v10/gateway/bot", "get:/gateway/bot"),
        ("GET", "http://127.0.0.1:8080/api/v10/gateway/bot?x=1", "get:/gateway/bot"),
        (
            "POST",
            "/api/channels/81384788765712384/messages",
            "post:/channels/81384788765712384/messages",
        ),
        (
            "PATCH",
            "/channels/81384788765712384/messages/1101140475262566420",
            "patch:/channels/81384788765712384/messages/:id",
        ),
        (
            "PUT",
            "/guilds/222078108977594368/members/80351110224678912/roles/41771983423143936",
            "put:/guilds/222078108977594368/members/:id/roles/:id",
        ),
        (
            "POST",
            f"/webhooks/223704706495545344/{WEBHOOK_TOKEN}/messages/1",
            f"post:/webhooks/223704706495545344/{WEBHOOK_TOKEN}/messages/:id",
        ),
        ("GET", "/users/80351110224678912", "get:/users/:id"),
        ("GET", "/users/@me/guilds", "get:/users/@me/guilds"),
        (
            "PUT",
            "/channels/1/messages/2/reactions/%F0%9F%91%8D/@me",
            "put:/channels/1/messages/:id/reactions/:reaction/@me",
        ),
        (
            "POST",
            "/interactions/99/aW50ZXJhY3Rpb24/callback",
            "post:/interactions/:id/:token/callback",
        ),
    ],
)
def test_route_for_examples(method, path, route):
    assert route_for(method, path) == route


_SNOWFLAKE = st.integers(10**16, 2**63 - 1).map(str)


@given(major=st.sampled_from(["channels", "guilds"]), a=_SNOWFLAKE, b=_SNOWFLAKE, c=_SNOWFLAKE)
def test_route_for_keeps_the_major_id_only(major, a, b, c):
    one = route_for("get", f"/{major}/{a}/messages/{b}")
    assert one == f"get:/{major}/{a}/messages/:id"
    assert one == route_for("GET", f"https://discord.com/api/v10/{major}/{a}/messages/{c}")
    assert (route_for("get", f"/{major}/{b}/x") == route_for("get", f"/{major}/{c}/x")) == (b == c)


@given(method=st.sampled_from(["GET", "post", "Patch"]), path=st.text(max_size=60))
def test_route_for_accepts_anything(method, path):
    route = route_for(method, path)
    assert route.startswith(method.lower() + ":/")
    segments = route.split(":", 1)[1].split("/")[1:]
    kept = {"channels": 2, "guilds": 2, "webhooks": 3}.get(segments[0] if segments else "", 0)
    major = segments[:kept]
    rest = segments[len(major):]
    assert not any(s.isascii() and s.isdigit() for s in rest)


# -- a fake Discord REST API with real ratelimit headers ----------------------------------------

Reply = tuple[int, dict[str, str], bytes]


class FakeDiscord:
    """A Discord REST API: one fixed-window bucket of ``limit`` requests per ``window`` seconds
    per path, answered with Discord's ratelimit headers (a 429 past the limit). ``script`` queues
    special replies per path (functions called when the request arrives)."""

    def __init__(self, limit: int = 5, window: float = 1.0) -> None:
        self.limit, self.window = limit, window
        self.lock = threading.Lock()
        self.windows: dict[str, list[dict[str, float]]] = {}
        self.script: dict[str, list[Callable[[], Reply]]] = {}
        self.log: list[tuple[float, str, int]] = []  # (time.monotonic(), path, status)
        self.served = threading.Condition(self.lock)
        self.http = StubHTTPServer(lambda path, headers: self.reply(path))

    @property
    def api_url(self) -> str:
        return self.http.api_url

    def reply(self, path: str) -> Reply:
        with self.lock:
            queued = self.script.get(path)
            if queued:
                status, headers, body = queued.pop(0)()
            else:
                status, headers, body = self._bucket(path)
            self.log.append((time.monotonic(), path, status))
            self.served.notify_all()
        return status, {**headers, "Content-Type": "application/json"}, body

    def _bucket(self, path: str) -> Reply:
        now = time.time()
        windows = self.windows.setdefault(path, [])
        if not windows or now >= windows[-1]["reset"]:
            # Whole milliseconds, as Discord sends them: the header is the exact reset.
            windows.append({"reset": math.ceil((now + self.window) * 1000) / 1000, "count": 0})
        current = windows[-1]
        current["count"] += 1
        reset_after = current["reset"] - now
        headers = {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(max(0, self.limit - int(current["count"]))),
            "X-RateLimit-Reset": f"{current['reset']:.3f}",
            "X-RateLimit-Reset-After": f"{reset_after:.3f}",
            "X-RateLimit-Bucket": "41f9cd5d28af77da04563bcb1d67fdfd",
            "Date": formatdate(now, usegmt=True),
        }
        if current["count"] > self.limit:
            body = {"message": RATE_LIMITED, "retry_after": reset_after, "global": False}
            headers.update(
                {"Retry-After": str(math.ceil(reset_after)), "X-RateLimit-Scope": "user"}
            )
            return 429, headers, json.dumps(body).encode()
        body_obj = GATEWAY_BOT if path.endswith("/gateway/bot") else {"id": "1"}
        return 200, headers, json.dumps(body_obj).encode()

    def queue(self, path: str, *replies: Callable[[], Reply]) -> None:
        self.script.setdefault(path, []).extend(replies)

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 10) -> bool:
        with self.lock:
            return self.served.wait_for(predicate, timeout)

    def statuses(self, path: str) -> list[int]:
        return [status for _, p, status in self.log if p == path]


def global_429(retry_after: float = 0.5) -> Callable[[], Reply]:
    def reply() -> Reply:
        body = {"message": RATE_LIMITED, "retry_after": retry_after, "global": True}
        headers = {
            "Retry-After": str(math.ceil(retry_after)),
            "X-RateLimit-Global": "true",
            "X-RateLimit-Scope": "global",
            "Date": formatdate(usegmt=True),
        }
        return 429, headers, json.dumps(body).encode()

    return reply


def bucket_429(reset_after: float = 0.5, limit: int | None = 5) -> Callable[[], Reply]:
    def reply() -> Reply:
        now = time.time()
        headers = {
            "Retry-After": str(math.ceil(reset_after)),
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset": f"{now + reset_after:.3f}",
            "X-RateLimit-Reset-After": f"{reset_after:.3f}",
            "X-RateLimit-Bucket": "41f9cd5d28af77da04563bcb1d67fdfd",
            "X-RateLimit-Scope": "user",
            "Date": formatdate(now, usegmt=True),
        }
        if limit is not None:
            headers["X-RateLimit-Limit"] = str(limit)
        body = {"message": RATE_LIMITED, "retry_after": reset_after, "global": False}
        return 429, headers, json.dumps(body).encode()

    return reply


@pytest.fixture
def discord() -> Iterator[FakeDiscord]:
    fake = FakeDiscord()
    with fake.http:
        yield fake


GATEWAY_PATH = "/api/v10/gateway/bot"


def test_get_gateway_bot_stores_discords_headers(backend, discord):
    limiter = backend.limiter()
    assert get_gateway_bot(discord.api_url, TOKEN, timeout=5, ratelimiter=limiter).shards == 2
    assert backend.get(f"{ROUTE}:limit") == "5"
    assert backend.get(f"{ROUTE}:remaining") == "0"  # claimed with the default limit of 1
    # Reset minus Date: up to the window (1 s) plus Date's lost fraction of a second.
    assert 0 < backend.pttl(f"{ROUTE}:remaining") <= 2000
    # The next four requests of the window of 5 go without waiting (a fresh bucket of 5).
    backend.delete(f"{ROUTE}:remaining")
    for _ in range(4):
        assert limiter.wait_time(ROUTE) == 0
    assert backend.get(f"{ROUTE}:remaining") == "1"


def test_default_ratelimiter_is_used_without_one(discord, monkeypatch):
    fresh = LocalRatelimiter()
    monkeypatch.setattr(discord_api, "DEFAULT_RATELIMITER", fresh)
    get_gateway_bot(discord.api_url, TOKEN, timeout=5)
    assert fresh.store.get(f"{ROUTE}:limit") == "5"
    assert fresh.store.pttl(f"{ROUTE}:remaining") > 0


def test_a_429_is_retried_after_its_reset_after(backend, discord):
    discord.queue(GATEWAY_PATH, bucket_429(reset_after=1.5))
    limiter = backend.limiter()
    assert get_gateway_bot(discord.api_url, TOKEN, timeout=5, ratelimiter=limiter).shards == 2
    times = [t for t, path, _ in discord.log if path == GATEWAY_PATH]
    assert discord.statuses(GATEWAY_PATH) == [429, 200]
    assert times[1] - times[0] >= 1.45


def test_429s_are_retried_at_most_3_times(backend, discord):
    discord.queue(GATEWAY_PATH, *[bucket_429(reset_after=0.25, limit=None)] * 10)
    slept: list[float] = []
    response = send_request(
        "GET", discord.api_url + "/gateway/bot", token=TOKEN, ratelimiter=backend.limiter(),
        sleep=slept.append,
    )
    assert response.status == 429
    assert discord.statuses(GATEWAY_PATH) == [429] * 4
    assert slept == [0.25] * 3
    with pytest.raises(DiscordAPIError) as error:
        get_gateway_bot(discord.api_url, TOKEN, timeout=5, ratelimiter=backend.limiter())
    assert error.value.status == 429


def test_a_429_asking_for_too_long_is_not_slept_on(discord):
    discord.queue(GATEWAY_PATH, global_429(retry_after=3600))
    slept: list[float] = []
    response = send_request(
        "GET", discord.api_url + "/gateway/bot", token=TOKEN, ratelimiter=LocalRatelimiter(),
        sleep=slept.append,
    )
    assert response.status == 429 and slept == []


def test_global_429_holds_every_route_of_every_host(backend, discord):
    # Host A is told "global, retry after 2 s" on /gateway/bot; host B then asks for another
    # route: it must not reach Discord before the 2 s are over.
    discord.queue(GATEWAY_PATH, global_429(retry_after=2))
    host_a, host_b = backend.limiter(), backend.limiter()
    results: list[Any] = []
    thread = threading.Thread(
        target=lambda: results.append(
            get_gateway_bot(discord.api_url, TOKEN, timeout=5, ratelimiter=host_a)
        )
    )
    thread.start()
    try:
        assert discord.wait_for(lambda: discord.statuses(GATEWAY_PATH) == [429])
        deadline = time.monotonic() + 5
        while backend.pttl("global") <= 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert host_b.wait_time("get:/anything") > 1000
        response = send_request(
            "GET", discord.api_url + "/channels/1/messages", token=TOKEN, ratelimiter=host_b
        )
        assert response.status == 200
    finally:
        thread.join(timeout=15)
    assert results and results[0].shards == 2
    served = {path: t for t, path, status in discord.log if status == 429}
    first_b = min(t for t, path, _ in discord.log if path == "/api/v10/channels/1/messages")
    assert first_b - served[GATEWAY_PATH] >= 1.9
    assert discord.statuses(GATEWAY_PATH) == [429, 200]


def test_no_response_releases_the_bucket():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # The port is closed now: nothing listens there.
    limiter = LocalRatelimiter(default_wait_ms=1500)
    with pytest.raises(DiscordAPIError) as error:
        get_gateway_bot(f"http://127.0.0.1:{port}/api/v10", TOKEN, timeout=5, ratelimiter=limiter)
    assert error.value.status is None
    assert limiter.store.get(f"{ROUTE}:remaining") == "0"
    assert 0 < limiter.store.pttl(f"{ROUTE}:remaining") <= 1500  # not closed for ever


@pytest.mark.parametrize("hosts", ["two-redis-hosts", "one-local-limiter"])
def test_threads_hammering_a_bucket_of_5_never_exceed_it(request, discord, hosts):
    """6 threads on 2 hosts (or one local limiter) send 16 requests to a limit-5 bucket: Discord
    must never count more than 5 in a window, and never answer 429."""
    total = 16
    if hosts == "two-redis-hosts":
        b = RedisBackend(request.getfixturevalue("redis_client"), _prefix())
        request.addfinalizer(b.cleanup)
        limiters: list[Any] = [b.limiter(), b.limiter()]
    else:
        limiters = [LocalRatelimiter()]
    url = discord.api_url + "/gateway/bot"
    left = [total]
    counter = threading.Lock()
    statuses: list[int] = []
    errors: list[BaseException] = []

    def hammer(limiter: Any) -> None:
        try:
            while True:
                with counter:
                    if left[0] == 0:
                        return
                    left[0] -= 1
                statuses.append(send_request("GET", url, token=TOKEN, ratelimiter=limiter).status)
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [
        threading.Thread(target=hammer, args=(limiters[i % len(limiters)],)) for i in range(6)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert statuses == [200] * total
    counts = [int(w["count"]) for w in discord.windows[GATEWAY_PATH]]
    assert sum(counts) == total
    assert max(counts) <= 5, counts
    assert max(counts) == 5, counts  # the bucket was used, not just serialised
    assert discord.statuses(GATEWAY_PATH) == [200] * total
