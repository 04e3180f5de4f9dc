"""The one Discord REST call the supervisor makes: ``GET /gateway/bot``.

Uses :mod:`urllib` from the standard library. The HTTP exchange itself lives in
:func:`send_request` (one request in, one :class:`Response` out, HTTP errors included). It goes
through a REST ratelimiter (SPEC.md, "Ratelimits"; :mod:`supervisor.discord.ratelimits`):
``acquire(route)`` -> HTTP -> ``update(route, status, headers)``; a 429 is retried (at most
:data:`MAX_429_RETRIES` times) after the wait it asks for. Without a ``ratelimiter`` argument the
process-wide :data:`DEFAULT_RATELIMITER` (in memory) is used; pass a
:class:`~supervisor.discord.ratelimits.RedisRatelimiter` to share the buckets with other processes.

The token never appears in an error message: every message is built from the URL, the status and
Discord's own ``message``, and is scrubbed of the token once more before it is raised.
"""

from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from supervisor.discord.ratelimits import LocalRatelimiter, RedisRatelimiter, route_for

USER_AGENT = "DiscordBot (https://github.com/spec-tacles, 0.1)"
DEFAULT_API_URL = "https://discord.com/api/v10"
_MAX_DETAIL = 200
MAX_429_RETRIES = 3
MAX_RETRY_WAIT_MS = 60_000  # a 429 asking for a longer wait is returned, not slept on

#: The ratelimiter of :func:`send_request` when none is given: this process only.
DEFAULT_RATELIMITER = LocalRatelimiter()

Ratelimiter = LocalRatelimiter | RedisRatelimiter


class DiscordAPIError(Exception):
    """A REST call to Discord failed. ``str(error)`` is one line, without the token.

    ``status`` is the HTTP status, or ``None`` when Discord could not be reached at all.
    """

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status

    @property
    def unauthorized(self) -> bool:
        """Discord rejected the token (retrying will not help)."""
        return self.status == 401


@dataclass(frozen=True)
class SessionStartLimit:
    """How many IDENTIFYs the bot may still send (``reset_after`` is in milliseconds)."""

    total: int
    remaining: int
    reset_after: int
    max_concurrency: int


@dataclass(frozen=True)
class GatewayBot:
    """The answer of ``GET /gateway/bot``."""

    url: str
    shards: int
    session_start_limit: SessionStartLimit


@dataclass(frozen=True)
class Response:
    """One HTTP response: status, headers (lower-case names) and the raw body."""

    status: int
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""


def _one_line(text: str, limit: int = _MAX_DETAIL) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _scrub(text: str, token: str) -> str:
    return text.replace(token, "<token>") if token else text


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Refuse redirects: urllib would replay the ``Authorization`` header to the new location."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


def send_request(
    method: str,
    url: str,
    *,
    token: str,
    timeout: float = 10,
    ratelimiter: Ratelimiter | None = None,
    sleep: Callable[[float], Any] = time.sleep,
) -> Response:
    """Send one authenticated request to Discord and return the response, whatever its status.

    The request waits for its ratelimit bucket (``ratelimiter``, default
    :data:`DEFAULT_RATELIMITER`; the route is :func:`~supervisor.discord.ratelimits.route_for`), and
    every response updates it. A 429 is retried after the wait it gives (``X-RateLimit-Reset-After``
    or ``Retry-After``, else the body's ``retry_after``, else 1 s), at most
    :data:`MAX_429_RETRIES` times and only when that wait is at most :data:`MAX_RETRY_WAIT_MS`;
    otherwise the 429 is returned. ``sleep`` takes seconds.

    Redirects are not followed (they come back as a 3xx response). Raises
    :class:`DiscordAPIError` (``status=None``) only when no HTTP response arrived: connection
    refused, DNS failure, timeout, TLS error, a URL that is not http(s), a malformed request.
    """
    if urlsplit(url).scheme not in ("http", "https"):
        raise DiscordAPIError(f"cannot call Discord at {url}: the API URL must be http(s)")
    if not token.isascii() or any(ch.isspace() or not ch.isprintable() for ch in token):
        raise DiscordAPIError("the token contains spaces, control or non-ASCII characters")
    limiter = DEFAULT_RATELIMITER if ratelimiter is None else ratelimiter
    route = route_for(method, url)
    attempt = 0
    while True:
        limiter.acquire(route, sleep=sleep)
        try:
            response = _exchange(method, url, token=token, timeout=timeout)
        except DiscordAPIError:
            limiter.release(route)
            raise
        info = limiter.update(route, response.status, response.headers)
        if response.status != 429 or attempt >= MAX_429_RETRIES:
            return response
        wait_ms = info.global_ms if info.is_global else info.remaining_ms
        if wait_ms is None:
            wait_ms = _body_retry_after_ms(response.body)
        if wait_ms > MAX_RETRY_WAIT_MS:
            return response
        attempt += 1
        sleep(wait_ms / 1000)


def _body_retry_after_ms(body: bytes) -> int:
    """The ``retry_after`` (seconds) of a 429's JSON body in ms; 1000 when there is none."""
    try:
        data = json.loads(body)
        seconds = float(data["retry_after"])
    except (ValueError, UnicodeDecodeError, TypeError, KeyError, OverflowError):
        return 1000
    if not 0 <= seconds <= 3600:  # NaN too
        return 1000
    return max(1, int(seconds * 1000 + 0.999))


def _exchange(method: str, url: str, *, token: str, timeout: float) -> Response:
    """One HTTP request and its response; :class:`DiscordAPIError` when none arrived."""
    request = urllib.request.Request(
        url,
        method=method,
        headers={
            "Authorization": f"Bot {token}",
            "User-Agent": USER_AGENT,
            "Accept": "application/json",
        },
    )
    try:
        with _OPENER.open(request, timeout=timeout) as reply:
            return Response(reply.status, _headers(reply.headers), reply.read())
    except urllib.error.HTTPError as error:
        with error:
            try:
                body = error.read()
            except (OSError, http.client.HTTPException):
                body = b""
        return Response(error.code, _headers(error.headers), body)
    except urllib.error.URLError as error:
        reason = error.reason if isinstance(error.reason, str) else _describe(error.reason)
        detail = _one_line(_scrub(str(reason), token))
        raise DiscordAPIError(f"could not reach Discord at {url}: {detail}") from None
    except (OSError, http.client.HTTPException) as error:
        # Timeouts while reading, connection resets, protocol errors.
        detail = _one_line(_scrub(_describe(error), token))
        raise DiscordAPIError(f"could not reach Discord at {url}: {detail}") from None
    except ValueError:
        # http.client quotes a bad header value (the token) in its message: never show it.
        raise DiscordAPIError(f"cannot call Discord at {url}: the request is malformed") from None


def _describe(error: BaseException) -> str:
    if isinstance(error, TimeoutError):
        return "timed out"
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error) or type(error).__name__


def _headers(headers: Any) -> dict[str, str]:
    if headers is None:
        return {}
    return {name.lower(): value for name, value in headers.items()}


def _discord_message(body: bytes) -> str | None:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if isinstance(data, dict) and isinstance(data.get("message"), str):
        return data["message"]
    return None


def _error_for(response: Response, route: str) -> DiscordAPIError:
    if response.status == 401:
        return DiscordAPIError("Discord rejected the token (401)", status=401)
    message = _discord_message(response.body)
    if response.status == 429:
        retry = response.headers.get("retry-after")
        wait = f", retry after {retry} s" if retry else ""
        detail = f": {_one_line(message)}" if message else ""
        return DiscordAPIError(f"Discord rate limited GET {route} (429){wait}{detail}", status=429)
    if message is None:
        try:
            message = http.client.responses.get(response.status) or _one_line(
                response.body.decode("utf-8", "replace")
            )
        except Exception:  # pragma: no cover - decode with "replace" does not fail
            message = ""
    detail = f": {_one_line(message)}" if message else ""
    return DiscordAPIError(
        f"Discord answered GET {route} with HTTP {response.status}{detail}", status=response.status
    )


def _int_field(data: Mapping[str, Any], key: str, where: str) -> int:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise DiscordAPIError(f"unexpected answer from {where}: {key!r} is missing or not a number")
    return value


def parse_gateway_bot(body: bytes, where: str = "GET /gateway/bot") -> GatewayBot:
    """Decode the JSON body of ``GET /gateway/bot``; :class:`DiscordAPIError` if it is malformed."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise DiscordAPIError(f"unexpected answer from {where}: not JSON") from None
    if not isinstance(data, dict):
        raise DiscordAPIError(f"unexpected answer from {where}: not a JSON object")
    url = data.get("url")
    if not isinstance(url, str) or not url:
        raise DiscordAPIError(f"unexpected answer from {where}: 'url' is missing or not a string")
    limit = data.get("session_start_limit")
    if not isinstance(limit, dict):
        raise DiscordAPIError(f"unexpected answer from {where}: 'session_start_limit' is missing")
    shards = _int_field(data, "shards", where)
    if shards < 1:
        raise DiscordAPIError(f"unexpected answer from {where}: 'shards' is {shards}")
    start_limit = SessionStartLimit(
        total=_int_field(limit, "total", where),
        remaining=_int_field(limit, "remaining", where),
        reset_after=_int_field(limit, "reset_after", where),
        max_concurrency=max(1, _int_field(limit, "max_concurrency", where)),
    )
    return GatewayBot(url=url, shards=shards, session_start_limit=start_limit)


def get_gateway_bot(
    api_url: str, token: str, timeout: float = 10, ratelimiter: Ratelimiter | None = None
) -> GatewayBot:
    """``GET {api_url}/gateway/bot``: the gateway URL, recommended shards and identify budget.

    Ratelimited as :func:`send_request` says (``ratelimiter`` defaults to the in-process one).

    Raises :class:`DiscordAPIError` with a one-line message free of the token: ``status`` 401
    when Discord rejected the token, another status for other HTTP errors (with Discord's
    ``message``), ``None`` when Discord could not be reached (the message names the URL).
    """
    url = api_url.rstrip("/") + "/gateway/bot"
    response = send_request("GET", url, token=token, timeout=timeout, ratelimiter=ratelimiter)
    if response.status != 200:
        error = _error_for(response, "/gateway/bot")
        raise DiscordAPIError(_scrub(str(error), token), status=error.status)
    return parse_gateway_bot(response.body, f"GET {url}")
