"""The worker configuration crosses the process boundary without the token."""

from __future__ import annotations

import pytest

from shard_worker.config import CONFIG_ENV, TOKEN_ENV, SavedSession, WorkerConfig

TOKEN = "secret-token-abcdefgh"


def test_round_trip_without_the_token():
    config = WorkerConfig(
        shard_ids=[0, 3], shard_count=4, gateway_url="wss://g", token=TOKEN, events=frozenset({"A", "B"}),
        sessions={3: SavedSession("s", 9, "wss://r")}, presence={"status": "idle"},
    )  # fmt: skip
    text = config.to_json()
    assert TOKEN not in text and TOKEN not in repr(config)
    back = WorkerConfig.from_json(text, token=TOKEN)
    assert back == config


def test_from_env_needs_both_config_and_token():
    text = WorkerConfig(shard_ids=[0], shard_count=1, gateway_url="wss://g").to_json()
    assert WorkerConfig.from_env({CONFIG_ENV: text, TOKEN_ENV: TOKEN}).token == TOKEN
    with pytest.raises(SystemExit, match=TOKEN_ENV):
        WorkerConfig.from_env({CONFIG_ENV: text})
    with pytest.raises(SystemExit, match=CONFIG_ENV):
        WorkerConfig.from_env({TOKEN_ENV: TOKEN})


@pytest.mark.parametrize("events", [None, "auto", frozenset()])
def test_every_events_mode_crosses_the_boundary(events):
    config = WorkerConfig(shard_ids=[0], shard_count=1, gateway_url="wss://g", events=events)
    assert WorkerConfig.from_json(config.to_json(), token=TOKEN).events == events


def test_an_unknown_events_mode_is_refused():
    text = WorkerConfig(shard_ids=[0], shard_count=1, gateway_url="wss://g").to_json().replace(
        '"events": null', '"events": "sometimes"'
    )
    with pytest.raises(ValueError, match="sometimes"):
        WorkerConfig.from_json(text, token=TOKEN)
