"""The command line: one-line errors, exit codes, start wiring, config --show, lazy simulate."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import types
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from shard_worker.config import WorkerConfig
from supervisor import cli as cli_module
from supervisor.cli import EXIT_RUNTIME, EXIT_UNAUTHORIZED, EXIT_USAGE, cli, main
from supervisor.config.settings import SETTINGS
from supervisor.discord.api import DiscordAPIError, GatewayBot, SessionStartLimit

TOKEN = "MTIzNDU2Nzg5MDEyMzQ1Njc4.GabCdE.secret-part-of-the-token_xyz"
ERROR_PREFIX = "spectacles-supervisor: error: "
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    """No setting leaks in from the machine's environment."""
    for setting in SETTINGS:
        for name in setting.envs:
            monkeypatch.delenv(name, raising=False)


@pytest.fixture(autouse=True)
def keep_root_logging():
    """``start`` reconfigures the root logger onto CliRunner's stream: put it back afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def runner():
    return CliRunner()


@pytest.fixture
def no_network(monkeypatch):
    """Fail the test if GET /gateway/bot is called."""

    def forbidden(*args, **kwargs):
        raise AssertionError("GET /gateway/bot must not be called")

    monkeypatch.setattr(cli_module, "get_gateway_bot", forbidden)


@pytest.fixture
def fake_worker(monkeypatch):
    """A stand-in Arbiter that records the group configs it was given and returns 7."""
    import shard_worker.proctitle
    import supervisor.core.arbiter

    calls: list[WorkerConfig] = []

    class FakeArbiter:
        def __init__(self, groups, options):
            calls.extend(groups)
            self.options = options

        def run(self) -> int:
            return 7

    monkeypatch.setattr(supervisor.core.arbiter, "Arbiter", FakeArbiter)
    monkeypatch.setattr(shard_worker.proctitle, "set_title", lambda title: None)
    return calls


def fake_gateway_bot(monkeypatch, shards=4, remaining=1000, max_concurrency=2):
    asked: list[tuple[str, str]] = []

    def get_gateway_bot(api_url, token, timeout=10, ratelimiter=None):
        asked.append((api_url, token))
        return GatewayBot(
            "wss://gateway.test",
            shards,
            SessionStartLimit(1000, remaining, 60_000, max_concurrency),
        )

    monkeypatch.setattr(cli_module, "get_gateway_bot", get_gateway_bot)
    return asked


def one_error_line(result) -> str:
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(ERROR_PREFIX)
    assert "Traceback" not in result.stderr
    assert "Usage:" not in result.stderr
    return lines[0][len(ERROR_PREFIX) :]


# -- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "env", "reason"),
    [
        (["start", "--shards", "x"], {}, "--shards: invalid shard id or range 'x'"),
        (["start", "--shards", "0-3", "--shard-count", "2"], {}, "shard id 3"),
        (["start", "--intents", "GUILDS,NOPE"], {}, "unknown intent 'NOPE'"),
        (["start", "--compress", "gzip"], {}, "--compress: expected zlib-stream, zstd-stream or none"),
        (["start"], {"DISCORD_SHARD_COUNT": "zero"}, "DISCORD_SHARD_COUNT: expected an integer"),
        (["start", "--shard-count", "4"], {}, "no bot token"),
        (["start", "--bogus"], {}, "No such option"),
        (["start", "--shards"], {}, "requires an argument"),
        (["start", "extra"], {}, "unexpected extra argument"),
        (["strat"], {}, "No such command 'strat'"),
        (["start", "--config", "/no/such.toml"], {}, "config file /no/such.toml: no such file"),
        (["config"], {}, "nothing to do: pass --show"),
    ],
)
def test_bad_usage_is_one_line_and_exit_2(runner, no_network, args, env, reason):
    result = runner.invoke(cli, args, env=env)
    assert result.exit_code == EXIT_USAGE
    assert reason in one_error_line(result)
    assert result.stdout == ""


def test_shard_id_beyond_discord_count_is_a_usage_error(runner, monkeypatch, fake_worker):
    fake_gateway_bot(monkeypatch, shards=4)
    result = runner.invoke(cli, ["start", "--shards", "2-5"], env={"DISCORD_TOKEN": TOKEN})
    assert result.exit_code == EXIT_USAGE
    assert "shard id 5" in one_error_line(result)
    assert fake_worker == []


def test_bad_config_file_is_one_line(runner, tmp_path, no_network):
    config = tmp_path / "spectacles.toml"
    config.write_text("[discord]\ntoken = \n", encoding="utf-8")
    result = runner.invoke(cli, ["config", "--show", "--config", str(config)])
    assert result.exit_code == EXIT_USAGE
    reason = one_error_line(result)
    assert reason.startswith(f"{config}, line 2, column")


def test_401_exits_3_without_the_token(runner, monkeypatch, fake_worker):
    def unauthorized(api_url, token, timeout=10, ratelimiter=None):
        raise DiscordAPIError("Discord rejected the token (401)", status=401)

    monkeypatch.setattr(cli_module, "get_gateway_bot", unauthorized)
    result = runner.invoke(cli, ["start", "--token", TOKEN])
    assert result.exit_code == EXIT_UNAUTHORIZED
    assert one_error_line(result) == "Discord rejected the token (401)"
    assert TOKEN not in result.output
    assert fake_worker == []


def test_unreachable_discord_exits_1(runner, monkeypatch, fake_worker):
    def unreachable(api_url, token, timeout=10, ratelimiter=None):
        raise DiscordAPIError(f"could not reach Discord at {api_url}/gateway/bot: refused")

    monkeypatch.setattr(cli_module, "get_gateway_bot", unreachable)
    result = runner.invoke(
        cli, ["start", "--api-url", "http://127.0.0.1:9/api"], env={"DISCORD_TOKEN": TOKEN}
    )
    assert result.exit_code == EXIT_RUNTIME
    assert "http://127.0.0.1:9/api/gateway/bot" in one_error_line(result)


def test_used_up_identify_budget_exits_1(runner, monkeypatch, fake_worker):
    fake_gateway_bot(monkeypatch, remaining=0)
    result = runner.invoke(cli, ["start"], env={"DISCORD_TOKEN": TOKEN})
    assert result.exit_code == EXIT_RUNTIME
    assert "session start limit is used up" in one_error_line(result)
    assert fake_worker == []


def test_token_is_scrubbed_from_click_errors(runner, no_network):
    result = runner.invoke(cli, ["start", TOKEN], env={"DISCORD_TOKEN": TOKEN})
    assert result.exit_code == EXIT_USAGE
    assert TOKEN not in result.output
    assert "<token>" in one_error_line(result)


def test_no_arguments_shows_help_and_exits_2(runner):
    result = runner.invoke(cli, [])
    assert result.exit_code == EXIT_USAGE
    assert "start" in result.stderr and "config" in result.stderr


def test_help_exits_0(runner):
    result = runner.invoke(cli, ["start", "--help"])
    assert result.exit_code == 0
    for setting in SETTINGS:
        assert setting.flag in result.stdout
    assert "DISCORD_TOKEN" in result.stdout


# -- start ------------------------------------------------------------------------------------


def test_start_resolves_and_runs_the_group(runner, monkeypatch, fake_worker):
    asked = fake_gateway_bot(monkeypatch, shards=4, max_concurrency=2)
    result = runner.invoke(
        cli,
        ["start", "--events", "MESSAGE_CREATE", "--intents", "GUILDS,GUILD_MESSAGES"],
        env={"DISCORD_TOKEN": TOKEN, "DISCORD_API_URL": "http://api.test/v10"},
    )
    assert result.exit_code == 7, result.output  # the arbiter's return code
    assert asked == [("http://api.test/v10", TOKEN)]
    config = fake_worker[0]
    assert [s for c in fake_worker for s in c.shard_ids] == [0, 1, 2, 3]
    assert config.shard_count == 4
    assert config.gateway_url == "wss://gateway.test"
    assert config.max_concurrency == 2
    assert config.intents == 513
    assert config.events == frozenset({"MESSAGE_CREATE"})
    assert config.token == TOKEN
    assert TOKEN not in result.output


def test_start_goes_on_without_discord_when_count_and_url_are_given(runner, monkeypatch, fake_worker):
    def unreachable(*args, **kwargs):
        raise DiscordAPIError("cannot reach Discord")

    monkeypatch.setattr(cli_module, "get_gateway_bot", unreachable)
    result = runner.invoke(
        cli,
        ["start", "--shards", "1,3", "--shard-count", "4", "--gateway-url", "ws://127.0.0.1:1"],
        env={"DISCORD_TOKEN": TOKEN},
    )
    assert result.exit_code == 7, result.output
    assert [s for c in fake_worker for s in c.shard_ids] == [1, 3]
    assert {(c.shard_count, c.max_concurrency) for c in fake_worker} == {(4, 1)}


def test_main_returns_the_code(no_network, capsys):
    assert main(["start", "--shards", "3-1"]) == EXIT_USAGE
    assert capsys.readouterr().err.startswith(ERROR_PREFIX)


# -- config --show ----------------------------------------------------------------------------


def test_config_show_masks_and_names_sources(runner, tmp_path, no_network):
    config = tmp_path / "spectacles.toml"
    config.write_text(
        '[broker]\nurl = "amqp://bot:hunter2@rabbit/%2F"\n[supervisor]\nprefetch = 9\n',
        encoding="utf-8",
    )
    result = runner.invoke(
        cli,
        ["config", "--show", "--config", str(config), "--shards", "0-3,8"],
        env={"DISCORD_TOKEN": TOKEN, "BROKER_GROUP": "gw"},
    )
    assert result.exit_code == 0, result.output
    lines = {line.split()[0]: line for line in result.stdout.splitlines()}
    assert "********" in lines["token"] and "env DISCORD_TOKEN" in lines["token"]
    assert "0-3,8" in lines["shard_ids"] and "flag --shards" in lines["shard_ids"]
    assert "env BROKER_GROUP" in lines["group"]
    assert "amqp://bot:***@rabbit/%2F" in lines["amqp_url"]
    assert f"file {config}: broker.url" in lines["amqp_url"]
    assert lines["prefetch"].split()[1:3] == ["9", "file"]
    assert lines["log_level"].split()[1:] == ["INFO", "default"]
    assert TOKEN not in result.output
    assert "hunter2" not in result.output


# -- the lazy simulate command ----------------------------------------------------------------


def isolate_simulate(monkeypatch):
    """Forget any ``simulate`` already loaded, for the duration of the test."""
    commands = dict(cli.commands)
    commands.pop("simulate", None)
    monkeypatch.setattr(cli, "commands", commands)


def test_simulate_is_loaded_lazily(runner, monkeypatch):
    module = types.ModuleType("fake_simulator_cli")

    @click.command()
    @click.option("--port", type=int, default=0)
    def simulate_command(port):
        click.echo(f"simulating on {port}")

    module.simulate_command = simulate_command  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "fake_simulator_cli", module)
    monkeypatch.setitem(
        cli_module.LAZY_COMMANDS, "simulate", ("fake_simulator_cli", "simulate_command")
    )
    isolate_simulate(monkeypatch)
    result = runner.invoke(cli, ["simulate", "--port", "5"])
    assert result.exit_code == 0, result.output
    assert result.stdout == "simulating on 5\n"
    assert "simulate" in runner.invoke(cli, ["--help"]).stdout


def test_missing_simulator_module_is_just_an_unknown_command(runner, monkeypatch):
    monkeypatch.setitem(cli_module.LAZY_COMMANDS, "simulate", ("no_such_simulator_mod", "x"))
    isolate_simulate(monkeypatch)
    result = runner.invoke(cli, ["simulate"])
    assert result.exit_code == EXIT_USAGE
    assert "No such command 'simulate'" in one_error_line(result)
    help_result = runner.invoke(cli, ["--help"])
    assert help_result.exit_code == 0
    assert "simulate" not in help_result.stdout


def test_broken_simulator_module_does_not_break_start(runner, monkeypatch, no_network):
    module = types.ModuleType("broken_simulator_cli")  # no simulate_command attribute
    monkeypatch.setitem(sys.modules, "broken_simulator_cli", module)
    monkeypatch.setitem(
        cli_module.LAZY_COMMANDS, "simulate", ("broken_simulator_cli", "simulate_command")
    )
    isolate_simulate(monkeypatch)
    result = runner.invoke(cli, ["simulate"])
    assert result.exit_code == 1
    assert "the simulate command cannot be loaded" in one_error_line(result)
    assert runner.invoke(cli, ["start", "--shards", "x"]).exit_code == EXIT_USAGE


# -- a real process ---------------------------------------------------------------------------


def test_python_m_supervisor_reports_one_line_and_exits_2():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DISCORD_", "SPECTACLES_"))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    process = subprocess.run(
        [sys.executable, "-m", "supervisor", "start", "--shards", "x"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert process.returncode == 2
    lines = process.stderr.splitlines()
    assert lines == [
        "spectacles-supervisor: error: --shards: invalid shard id or range 'x' "
        "(expected e.g. 0-3,8,10-11)"
    ]
    assert process.stdout == ""


def test_the_real_simulator_is_registered_when_present(runner):
    pytest.importorskip("supervisor.simulator.cli")
    result = runner.invoke(cli, ["simulate", "--help"])
    assert result.exit_code == 0, result.output
    assert "simulate" in runner.invoke(cli, ["--help"]).stdout


def test_unreachable_redis_is_one_line_and_exit_1(runner, no_network, fake_worker):
    import socket

    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = runner.invoke(
        cli,
        ["start", "--shard-count", "2", "--gateway-url", "ws://127.0.0.1:1", "--redis-url", f"redis://:pw@127.0.0.1:{port}/0"],
        env={"DISCORD_TOKEN": TOKEN},
    )
    assert result.exit_code == EXIT_RUNTIME
    reason = one_error_line(result)
    assert "cannot reach Redis" in reason and "pw" not in reason and fake_worker == []


def test_redis_settings_from_env_and_masked_in_config_show(runner, no_network):
    result = runner.invoke(
        cli, ["config", "--show"], env={"REDIS_URL": "redis://:secret@redis:6379/0", "SPECTACLES_REDIS_PREFIX": "mybot"}
    )
    assert result.exit_code == 0
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines()}
    assert rows["redis_url"][1:] == ["redis://:***@redis:6379/0", "env", "REDIS_URL"]
    assert rows["redis_prefix"][1:] == ["mybot", "env", "SPECTACLES_REDIS_PREFIX"]
    assert "secret" not in result.stdout


def test_start_with_a_pika_the_fast_path_cannot_use_is_one_line_and_exit_2(runner, monkeypatch, no_network):
    import pika.connection

    monkeypatch.delattr(pika.connection.Connection, "_adapter_emit_data")
    result = runner.invoke(cli, ["start", "--shard-count", "1"], env={"DISCORD_TOKEN": TOKEN})
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "lacks _adapter_emit_data" in lines[0], result.output


# -- several AMQP URLs, the queue type, TLS (issue 11) ----------------------------------------


@pytest.mark.parametrize(
    ("args", "env", "reason"),
    [
        (["start", "--amqp-url", "amqp://a/%2F,amqp://u:hunter2@b:70000/%2F"], {},
         "--amqp-url: URL 2 of 2: 'amqp://u:***@b:70000/%2F' is not a valid URL (Port out of range 0-65535)"),
        (["start"], {"AMQP_URL": "amqp://u:hunter2@a/%2F,amqp:/b"},
         "AMQP_URL: 'amqp://u:***@a/%2F,amqp:/b': a URL after a comma lacks the '//' of 'amqp://'"),
        (["start", "--queue-type", "stream"], {}, "--queue-type: expected classic or quorum, got 'stream'"),
        (["start", "--amqp-url", "amqps://r/%2F", "--amqp-ca-file", "/no/ca.pem"], {},
         "--amqp-ca-file: /no/ca.pem: no such file"),
        (["start", "--amqp-cert-file", "/no/cert.pem"], {}, "--amqp-cert-file: TLS files are for amqps:// URLs"),
    ],
)  # fmt: skip
def test_bad_amqp_options_are_one_line_and_exit_2(runner, no_network, args, env, reason):
    result = runner.invoke(cli, args, env={"DISCORD_TOKEN": TOKEN, **env})
    assert result.exit_code == EXIT_USAGE
    assert reason in one_error_line(result)
    assert "hunter2" not in result.output


def test_start_hands_urls_queue_type_and_tls_files_to_every_worker(runner, monkeypatch, fake_worker, tmp_path):
    from tests.tls_certs import make_tls_files

    tls = make_tls_files(tmp_path)
    fake_gateway_bot(monkeypatch, shards=4)
    urls = "amqps://u:hunter2@node1:5671/%2F,amqps://u:hunter2@node2:5671/%2F"
    result = runner.invoke(
        cli,
        ["start", "--shards-per-process", "2", "--queue-type", "quorum", "--amqp-ca-file", str(tls.ca_file),
         "--amqp-cert-file", str(tls.client_cert_file), "--amqp-key-file", str(tls.client_key_file)],
        env={"DISCORD_TOKEN": TOKEN, "AMQP_URL": urls},
    )  # fmt: skip
    assert result.exit_code == 7, result.output
    assert len(fake_worker) == 2
    for config in fake_worker:
        assert config.amqp_url == urls and config.queue_type == "quorum"
        assert (config.amqp_ca_file, config.amqp_key_file) == (str(tls.ca_file), str(tls.client_key_file))
        assert "hunter2" not in repr(config)
    assert "hunter2" not in result.output


def test_config_show_masks_every_url(runner, no_network):
    result = runner.invoke(
        cli, ["config", "--show", "--amqp-url", "amqp://a:hunter2@n1/%2F, amqp://b:hunter3@n2/%2F"]
    )
    assert result.exit_code == 0, result.output
    assert "amqp://a:***@n1/%2F,amqp://b:***@n2/%2F" in result.stdout
    assert "hunter" not in result.stdout


def test_zstd_stream_without_a_zstd_library_is_one_line_at_start(runner, no_network, monkeypatch):
    from shard_worker.gateway import inflate

    monkeypatch.setattr(inflate, "_zstd", None)
    result = runner.invoke(cli, ["start", "--compress", "zstd-stream", "--shard-count", "1"],
                           env={"DISCORD_TOKEN": TOKEN})
    assert result.exit_code == EXIT_USAGE
    reason = one_error_line(result)
    assert reason.startswith("--compress: zstd-stream needs a zstd library")
    assert "pip install 'spectacles-supervisor[zstd]'" in reason
