"""The state dir records the active shard count: a ``start`` with another explicit count exits 2
naming both, unless there are no sessions worth resuming."""

from __future__ import annotations

import logging

import pytest
from click.testing import CliRunner

from shard_worker.config import SavedSession
from supervisor.cli import EXIT_USAGE, cli
from supervisor.config.settings import SETTINGS
from supervisor.core.state_store import MAX_SESSION_AGE_S, StateStore, saved_shard_count
from tests.supervisor.test_cli import TOKEN, fake_gateway_bot, fake_worker, one_error_line  # noqa: F401

pytestmark = pytest.mark.usefixtures("clean")


@pytest.fixture
def clean(monkeypatch):
    for setting in SETTINGS:
        for name in setting.envs:
            monkeypatch.delenv(name, raising=False)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def save(state, count, now=None, sessions=None):
    StateStore(state, count).save_sessions(
        {0: SavedSession("s0", 5, "ws://r")} if sessions is None else sessions, now=now
    )


def test_saved_shard_count_only_for_sessions_worth_resuming(tmp_path):
    assert saved_shard_count(tmp_path / "none") is None
    assert not (tmp_path / "none").exists()  # asking creates nothing
    save(tmp_path, 4, now=1000.0)
    assert saved_shard_count(tmp_path, now=1000.0 + MAX_SESSION_AGE_S) == 4
    assert saved_shard_count(tmp_path, now=1001.0 + MAX_SESSION_AGE_S) is None  # too old
    save(tmp_path, 4, sessions={})
    assert saved_shard_count(tmp_path) is None


def start(state, *args, env=None):
    return CliRunner().invoke(
        cli,
        ["start", "--state-dir", str(state), "--gateway-url", "ws://gateway.test", *args],
        env={"DISCORD_TOKEN": TOKEN, **(env or {})},
    )


def test_an_explicit_count_other_than_the_saved_one_exits_2_naming_both(tmp_path, monkeypatch, fake_worker):  # noqa: F811
    fake_gateway_bot(monkeypatch, shards=4)
    state = tmp_path / "state"
    save(state, 4)
    result = start(state, "--shard-count", "8")
    assert result.exit_code == EXIT_USAGE
    assert one_error_line(result) == (
        f"--shard-count 8 (flag --shard-count) disagrees with the 4 shards whose sessions are saved in "
        f"{state}: start with --shard-count 4 to resume them, or delete {state}/sessions.json to identify "
        "every shard anew"
    )
    result = start(state, env={"DISCORD_SHARD_COUNT": "16"})
    assert result.exit_code == EXIT_USAGE and "--shard-count 16 (env DISCORD_SHARD_COUNT)" in result.stderr
    assert fake_worker == []  # nothing started
    # the same count: no refusal
    assert start(state, "--shard-count", "4").exit_code == 7
    assert {c.shard_count for c in fake_worker} == {4}


def test_without_a_count_the_saved_one_wins_over_discords_recommendation(tmp_path, monkeypatch, fake_worker):  # noqa: F811
    fake_gateway_bot(monkeypatch, shards=12)  # Discord now recommends 12
    state = tmp_path / "state"
    save(state, 4)  # a reshard (or an earlier start) left 4 sessions to resume
    assert start(state).exit_code == 7
    assert {c.shard_count for c in fake_worker} == {4}
    assert sorted(s for c in fake_worker for s in c.shard_ids) == [0, 1, 2, 3]


def test_no_sessions_to_resume_no_refusal(tmp_path, monkeypatch, fake_worker):  # noqa: F811
    fake_gateway_bot(monkeypatch, shards=4)
    state = tmp_path / "state"
    assert start(state, "--shard-count", "8").exit_code == 7  # no state dir yet
    save(state, 4, now=0.0)  # long expired
    assert start(state, "--shard-count", "8").exit_code == 7
    assert {c.shard_count for c in fake_worker} == {8}
