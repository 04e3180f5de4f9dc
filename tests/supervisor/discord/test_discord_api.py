"""GET /gateway/bot against a real local HTTP server (http.server in a thread)."""

from __future__ import annotations

import json
import socket

import pytest

from supervisor.discord.api import (
    USER_AGENT,
    DiscordAPIError,
    GatewayBot,
    SessionStartLimit,
    get_gateway_bot,
    parse_gateway_bot,
)
from tests.http_stub import StubHTTPServer

TOKEN = "MTIzNDU2Nzg5MDEyMzQ1Njc4.GabCdE.secret-part-of-the-token_xyz"

GATEWAY_BOT = {
    "url": "wss://gateway.discord.gg",
    "shards": 9,
    "session_start_limit": {
        "total": 1000,
        "remaining": 999,
        "reset_after": 14400000,
        "max_concurrency": 16,
    },
}


class FakeDiscord:
    """Answers per path with (status, headers, body); records every request it gets."""

    def __init__(self) -> None:
        self.routes: dict[str, tuple[int, dict[str, str], bytes]] = {}
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.http = StubHTTPServer(self._reply)

    def _reply(self, path: str, headers: dict[str, str]):
        self.requests.append(("GET", path, headers))
        return self.routes.get(path, (404, {}, b'{"message": "404: Not Found", "code": 0}'))

    @property
    def api_url(self) -> str:
        return self.http.api_url

    def route(self, path: str, status: int, body: object, headers: dict | None = None) -> None:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.routes[path] = (status, {"Content-Type": "application/json", **(headers or {})}, raw)


@pytest.fixture
def discord():
    fake = FakeDiscord()
    with fake.http:
        yield fake


def test_200_gives_gateway_bot_and_sends_the_headers(discord):
    discord.route("/api/v10/gateway/bot", 200, GATEWAY_BOT)
    result = get_gateway_bot(discord.api_url, TOKEN, timeout=5)
    assert result == GatewayBot(
        url="wss://gateway.discord.gg",
        shards=9,
        session_start_limit=SessionStartLimit(
            total=1000, remaining=999, reset_after=14400000, max_concurrency=16
        ),
    )
    [(method, path, headers)] = discord.requests
    assert (method, path) == ("GET", "/api/v10/gateway/bot")
    assert headers["Authorization"] == f"Bot {TOKEN}"
    assert headers["User-Agent"] == USER_AGENT == "DiscordBot (https://github.com/spec-tacles, 0.1)"


def test_trailing_slash_in_api_url(discord):
    discord.route("/api/v10/gateway/bot", 200, GATEWAY_BOT)
    assert get_gateway_bot(discord.api_url + "/", TOKEN, timeout=5).shards == 9


def test_401_says_the_token_was_rejected(discord):
    discord.route("/api/v10/gateway/bot", 401, {"message": "401: Unauthorized", "code": 0})
    with pytest.raises(DiscordAPIError) as error:
        get_gateway_bot(discord.api_url, TOKEN, timeout=5)
    assert str(error.value) == "Discord rejected the token (401)"
    assert error.value.status == 401
    assert error.value.unauthorized


def test_500_gives_status_and_discord_message(discord):
    discord.route("/api/v10/gateway/bot", 500, {"message": "Internal\nServer  Error", "code": 0})
    with pytest.raises(DiscordAPIError) as error:
        get_gateway_bot(discord.api_url, TOKEN, timeout=5)
    message = str(error.value)
    assert "500" in message
    assert "Internal Server Error" in message
    assert "\n" not in message
    assert TOKEN not in message
    assert error.value.status == 500
    assert not error.value.unauthorized


def test_error_without_json_uses_the_reason_phrase(discord):
    html = b"<html>bad gateway</html>"
    discord.route("/api/v10/gateway/bot", 502, html, {"Content-Type": "text/html"})
    with pytest.raises(DiscordAPIError, match=r"HTTP 502: Bad Gateway$"):
        get_gateway_bot(discord.api_url, TOKEN, timeout=5)


def test_429_mentions_retry_after(discord):
    discord.route(
        "/api/v10/gateway/bot",
        429,
        {"message": "You are being rate limited.", "retry_after": 1.5, "global": False},
        {"Retry-After": "2"},
    )
    with pytest.raises(DiscordAPIError) as error:
        get_gateway_bot(discord.api_url, TOKEN, timeout=5)
    assert error.value.status == 429
    assert "retry after 2 s" in str(error.value)
    assert "You are being rate limited." in str(error.value)


def test_redirect_is_not_followed(discord):
    # urllib would replay the Authorization header to the new location.
    discord.route("/api/v10/gateway/bot", 302, b"", {"Location": "/elsewhere"})
    discord.route("/elsewhere", 200, GATEWAY_BOT)
    with pytest.raises(DiscordAPIError) as error:
        get_gateway_bot(discord.api_url, TOKEN, timeout=5)
    assert error.value.status == 302
    assert [path for _, path, _ in discord.requests] == ["/api/v10/gateway/bot"]


def test_malformed_200_body(discord):
    discord.route("/api/v10/gateway/bot", 200, {"url": "wss://x", "shards": "nine"})
    with pytest.raises(DiscordAPIError, match="unexpected answer"):
        get_gateway_bot(discord.api_url, TOKEN, timeout=5)


def test_connection_refused_names_the_url():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # The port is closed now: nothing listens there.
    api_url = f"http://127.0.0.1:{port}/api/v10"
    with pytest.raises(DiscordAPIError) as error:
        get_gateway_bot(api_url, TOKEN, timeout=5)
    message = str(error.value)
    assert f"http://127.0.0.1:{port}/api/v10/gateway/bot" in message
    assert "could not reach Discord" in message
    assert TOKEN not in message
    assert error.value.status is None


def test_token_with_a_newline_is_not_echoed(discord):
    # http.client quotes the bad header value (the token) in its ValueError.
    bad = TOKEN + "\nX-Injected: 1"
    with pytest.raises(DiscordAPIError) as error:
        get_gateway_bot(discord.api_url, bad, timeout=5)
    assert TOKEN not in str(error.value)
    assert error.value.__cause__ is None
    assert discord.requests == []


def test_non_http_url_is_refused():
    with pytest.raises(DiscordAPIError, match="http"):
        get_gateway_bot("file:///etc", TOKEN)


def test_parse_gateway_bot_floors_max_concurrency():
    limit = {"total": 1000, "remaining": 5, "reset_after": 0, "max_concurrency": 0}
    body = json.dumps({**GATEWAY_BOT, "session_start_limit": limit}).encode()
    assert parse_gateway_bot(body).session_start_limit.max_concurrency == 1
    with pytest.raises(DiscordAPIError, match="not JSON"):
        parse_gateway_bot(b"nope")
