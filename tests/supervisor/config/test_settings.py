"""Settings resolution (flag > env > file > default), the TOML config file, worker configs."""

from __future__ import annotations

from pathlib import Path

import pytest

from shard_worker.config import DEFAULT_AMQP_URL, WorkerConfig
from shard_worker.gateway.intents import DEFAULT_INTENTS
from supervisor.config.settings import (
    SETTINGS,
    Origin,
    SettingsError,
    Source,
    build_worker_config,
    build_worker_configs,
    load_config_file,
    mask_url,
    resolve_start_settings,
)
from supervisor.discord.api import DEFAULT_API_URL, GatewayBot, SessionStartLimit

TOKEN = "MTIzNDU2Nzg5MDEyMzQ1Njc4.GabCdE.secret-part-of-the-token_xyz"
FILE_TOKEN = "file-token.abc.def"


def gateway_bot(shards: int = 4, max_concurrency: int = 16) -> GatewayBot:
    return GatewayBot(
        url="wss://gateway.discord.gg",
        shards=shards,
        session_start_limit=SessionStartLimit(1000, 1000, 0, max_concurrency),
    )


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "spectacles.toml"
    path.write_text(text, encoding="utf-8")
    return str(path)


FULL_FILE = f"""
[discord]
token = "{FILE_TOKEN}"
  [discord.shards]
  count = 16
  ids = [3, 1, 2, 2]

[broker]
url = "amqp://user:hunter2@rabbit:5672/%2F"
  [broker.groups]
  gateway = "file-group"
  rest = "rest-group"

[supervisor]
shards_per_process = 2
events = ["message_create", "GUILD_CREATE"]
intents = "GUILDS|GUILD_MESSAGES"
compress = "none"
log_level = "debug"
gateway_url = "wss://example.test/"
api_url = "http://localhost:9999/api/v10/"
state_dir = "/tmp/spectacles-state"
prefetch = 7

[redis]
url = "redis://localhost"
"""


def test_defaults_with_nothing_given():
    settings = resolve_start_settings({}, {})
    assert settings.token == ""
    assert settings.shard_ids is None
    assert settings.shard_count is None
    assert settings.amqp_url == DEFAULT_AMQP_URL
    assert settings.group == "gateway"
    assert settings.events is None
    assert settings.intents == DEFAULT_INTENTS
    assert settings.api_url == DEFAULT_API_URL
    assert settings.compress == "zlib-stream"
    assert settings.state_dir == Path("./state")
    assert settings.prefetch == 100
    assert settings.needs_gateway_bot
    assert all(origin.source is Source.DEFAULT for origin in settings.sources.values())


def test_file_values(tmp_path):
    settings = resolve_start_settings({"config": write(tmp_path, FULL_FILE)}, {})
    assert settings.token == FILE_TOKEN
    assert settings.shard_ids == (1, 2, 3)
    assert settings.shard_count == 16
    assert settings.shards_per_process == 2
    assert settings.amqp_url == "amqp://user:hunter2@rabbit:5672/%2F"
    assert settings.group == "file-group"
    assert settings.events == frozenset({"MESSAGE_CREATE", "GUILD_CREATE"})
    assert settings.intents == 513
    assert settings.compress == "none"
    assert settings.log_level == "DEBUG"
    assert settings.gateway_url == "wss://example.test"
    assert settings.api_url == "http://localhost:9999/api/v10"
    assert settings.state_dir == Path("/tmp/spectacles-state")
    assert settings.prefetch == 7
    assert not settings.needs_gateway_bot
    assert settings.sources["shard_count"] == Origin(
        Source.FILE, f"{tmp_path / 'spectacles.toml'}: discord.shards.count"
    )


def test_precedence_flag_over_env_over_file_over_default(tmp_path):
    config = write(tmp_path, FULL_FILE)
    env = {"DISCORD_SHARD_IDS": "0-1", "BROKER_GROUP": "env-group", "DISCORD_TOKEN": TOKEN}
    flags = {"config": config, "shard_ids": "5", "shard_count": None}
    settings = resolve_start_settings(flags, env)
    assert settings.shard_ids == (5,)  # flag beats env and file
    assert settings.group == "env-group"  # env beats file
    assert settings.token == TOKEN  # env beats file
    assert settings.shard_count == 16  # file beats default; a None flag is "not given"
    assert settings.prefetch == 7
    assert settings.sources["shard_ids"] == Origin(Source.FLAG, "--shards")
    assert settings.sources["group"] == Origin(Source.ENV, "BROKER_GROUP")
    assert settings.sources["shard_count"].source is Source.FILE
    assert settings.sources["config"] == Origin(Source.FLAG, "--config")
    no_file = resolve_start_settings({}, {})
    assert no_file.sources["prefetch"] == Origin(Source.DEFAULT)


def test_empty_env_var_counts_as_unset():
    settings = resolve_start_settings({}, {"DISCORD_SHARD_IDS": "", "AMQP_URL": ""})
    assert settings.shard_ids is None
    assert settings.amqp_url == DEFAULT_AMQP_URL
    assert settings.sources["shard_ids"].source is Source.DEFAULT


def test_raw_intents_env_is_a_fallback():
    assert resolve_start_settings({}, {"DISCORD_RAW_INTENTS": "513"}).intents == 513
    both = resolve_start_settings({}, {"DISCORD_RAW_INTENTS": "513", "DISCORD_INTENTS": "GUILDS"})
    assert both.intents == 1
    assert both.sources["intents"] == Origin(Source.ENV, "DISCORD_INTENTS")


def test_spectacles_template_empty_values_are_unset(tmp_path):
    path = write(
        tmp_path,
        '[discord]\ntoken = ""\n[discord.shards]\nids = []\n[broker]\nurl = ""\n'
        '[broker.groups]\ngateway = ""\n',
    )
    settings = resolve_start_settings({"config": path}, {})
    assert settings.token == ""
    assert settings.shard_ids is None
    assert settings.group == "gateway"
    assert settings.sources["group"].source is Source.DEFAULT


def test_token_normalisation():
    assert resolve_start_settings({"token": f"  Bot {TOKEN}\n"}, {}).token == TOKEN


@pytest.mark.parametrize(
    ("flags", "env", "message"),
    [
        ({"shard_ids": "x"}, {}, r"^--shards: invalid shard id or range 'x'"),
        ({}, {"DISCORD_SHARD_IDS": "3-1"}, r"^DISCORD_SHARD_IDS: .*reversed"),
        ({"shard_count": "0"}, {}, r"^--shard-count: must be at least 1"),
        ({}, {"DISCORD_SHARD_COUNT": "many"}, r"^DISCORD_SHARD_COUNT: expected an integer"),
        ({"shards_per_process": "-2"}, {}, r"^--shards-per-process: must be at least 1"),
        ({"prefetch": "70000"}, {}, r"^--prefetch: must be at most 65535"),
        ({"amqp_url": "http://x"}, {}, r"^--amqp-url: .*not an AMQP URL"),
        ({"gateway_url": "https://x"}, {}, r"^--gateway-url: .*WebSocket"),
        ({"api_url": "discord.com"}, {}, r"^--api-url: .*HTTP URL"),
        ({"compress": "gzip"}, {}, r"^--compress: expected zlib-stream, zstd-stream or none"),
        ({"log_level": "loud"}, {}, r"^--log-level: expected one of"),
        ({}, {"DISCORD_INTENTS": "GUILDS,NOPE"}, r"^DISCORD_INTENTS: unknown intent 'NOPE'"),
        ({"events": "MESSAGE CREATE"}, {}, r"^--events: 'MESSAGE CREATE' is not"),
        ({"events": ""}, {}, r"^--events: no event names"),
        ({"group": "amq.direct"}, {}, r"^--group: .*reserved"),
        ({"group": "a:b"}, {}, r"^--group: .*exchange name"),
        ({"state_dir": " "}, {}, r"^--state-dir: the path is empty"),
        ({"token": "Bot "}, {}, r"^--token: the token is empty"),
        ({"shard_ids": "0-4", "shard_count": "4"}, {}, r"shard id 4 .*out of range for 4 shards"),
    ],
)
def test_bad_values_name_their_source(flags, env, message):
    with pytest.raises(SettingsError, match=message) as error:
        resolve_start_settings(flags, env)
    assert "\n" not in str(error.value)


def test_bad_token_is_not_echoed():
    with pytest.raises(SettingsError) as error:
        resolve_start_settings({}, {"DISCORD_TOKEN": "abc def-secret"})
    assert "secret" not in str(error.value)
    assert str(error.value).startswith("DISCORD_TOKEN:")


def test_bad_amqp_url_masks_the_password():
    with pytest.raises(SettingsError) as error:
        resolve_start_settings({"amqp_url": "http://user:hunter2@host/"}, {})
    assert "hunter2" not in str(error.value)
    assert "user:***@host" in str(error.value)


def test_out_of_range_names_both_sources(tmp_path):
    path = write(tmp_path, "[discord.shards]\ncount = 8\n")
    with pytest.raises(SettingsError) as error:
        resolve_start_settings({"config": path}, {"DISCORD_SHARD_IDS": "6-9"})
    message = str(error.value)
    assert "shard id 9" in message
    assert "DISCORD_SHARD_IDS" in message
    assert "discord.shards.count" in message


# -- the config file --------------------------------------------------------------------------


def test_invalid_toml_names_file_and_line(tmp_path):
    path = write(tmp_path, '[discord]\ntoken = "x"\ncount 3\n')
    with pytest.raises(SettingsError) as error:
        load_config_file(path)
    message = str(error.value)
    assert message.startswith(f"{path}, line 3, column")
    assert "invalid TOML" in message
    assert "\n" not in message


def test_missing_file():
    with pytest.raises(SettingsError, match=r"config file /no/such/file\.toml: no such file"):
        load_config_file("/no/such/file.toml")


def test_directory_is_not_a_config_file(tmp_path):
    with pytest.raises(SettingsError, match="is a directory"):
        load_config_file(tmp_path)


def test_not_utf8(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_bytes(b'[discord]\ntoken = "\xff"\n')
    with pytest.raises(SettingsError, match=r"bad\.toml: invalid TOML"):
        load_config_file(path)


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("[discord]\ntokn = 'x'\n", 2, r"unknown key 'discord\.tokn' \(did you mean 'discord\.token'"),
        ("[supervisor]\nprefech = 5\n", 2, r"unknown key 'supervisor\.prefech'"),
        ("[discord.shards]\ncount = '16'\n", 2, r"shards\.count: expected an integer, got a string"),
        ("[discord.shards]\ncount = true\n", 2, r"shards\.count: expected an integer, got a boolean"),
        ("[discord.shards]\nids = [0, 'one']\n", 2, r"discord\.shards\.ids: expected shard ids"),
        ("[discord.shards]\nids = [-1]\n", 2, r"discord\.shards\.ids: shard ids cannot be negative"),
        ("[discord]\nshards = 3\n", 2, r"discord\.shards: expected a table, got an integer"),
        ("[supervisor]\nevents = 'MESSAGE_CREATE'\n", 2, r"supervisor\.events: expected an array"),
        ("[supervisor]\nprefetch = 1.5\n", 2, r"prefetch: expected an integer, got a float"),
        ("[supervisor]\nintents = 'GUILDS,BAD'\n", 2, r"supervisor\.intents: unknown intent 'BAD'"),
        ("[supervisor]\ncompress = 1\n", 2, r"supervisor\.compress: expected"),
        ("[supervisr]\nprefetch = 1\n", 1, r"unknown table \[supervisr\] \(did you mean \[supervisor"),
        ("[broker]\nurl = 'redis://x'\n", 2, r"broker\.url: .*not an AMQP URL"),
        # the line is found past comments, other tables, dotted and quoted keys
        ("# mine\n[redis]\nurl = 'x'\n\n[supervisor]\nlog_level = 'INFO'\n"
         "max_memory_mb = 8   # too small\n", 7, r"supervisor\.max_memory_mb: must be at least 16"),
        ("[discord]\ntoken = 't'\nshards.count = 0\n", 3, r"discord\.shards\.count: must be at least 1"),
        ("[supervisor]\n\"log_format\" = 'xml'\n", 2, r"supervisor\.log_format: expected text or json"),
        ("[supervisor]\nprefetch = 5\nmetrics_addr = 'localhost'\n", 3,
         r"supervisor\.metrics_addr: expected host:port"),
        ("[supervisor]\nmetrics_addr = ':70000'\n", 2, r"supervisor\.metrics_addr: must be at most 65535"),
        ("[supervisor]\nchild_timeout = 1\n[broker]\n", 2, r"supervisor\.child_timeout: must be at least 3"),
    ],
)
def test_bad_file_keys_name_file_line_and_key(tmp_path, text, line, message):
    path = write(tmp_path, text)
    with pytest.raises(SettingsError, match=message) as error:
        load_config_file(path)
    assert str(error.value).startswith(f"{path}, line {line}: ")
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("text", "where", "reason"),
    [
        ('[discord]\ntoken = "x"\ncount 3\n', "line 3, column", "invalid TOML"),
        ("[supervisor]\nprefetch = 1\nprefetch = 2\n", "line 3, column", "invalid TOML"),
        ("[supervisor]\nevents = [\n  'A',\n", "at the end", "invalid TOML"),
        ("[supervisor\n", "line 1, column", "invalid TOML"),
        ('[discord]\ntoken = "unterminated\n', "line 2, column", "invalid TOML"),
    ],
)
def test_invalid_toml_names_file_line_and_reason(tmp_path, text, where, reason):
    path = write(tmp_path, text)
    with pytest.raises(SettingsError) as error:
        load_config_file(path)
    message = str(error.value)
    assert message.startswith(f"{path}, {where}")
    _, found, why = message.partition(f": {reason}: ")
    assert found and len(why.strip()) > 5, message  # tomllib's reason follows "invalid TOML: "
    assert "\n" not in message


def test_a_bad_file_reaches_the_command_line_with_file_line_and_reason(tmp_path):
    from click.testing import CliRunner

    from supervisor.cli import cli

    path = write(tmp_path, "[supervisor]\nprefetch = 5\nlog_format = 'yaml'\n")
    result = CliRunner().invoke(cli, ["config", "--show", "--config", path], env={"SPECTACLES_LOG_FORMAT": ""})
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        f"spectacles-supervisor: error: {path}, line 3: supervisor.log_format: "
        "expected text or json, got 'yaml'"
    )


def test_line_finder_is_best_effort(tmp_path):
    from supervisor.config.settings import find_key_line

    text = "[supervisor]\nevents = [\n  'A',\n]\n[discord.shards]\ncount = 4\n"
    assert find_key_line(text, ("discord", "shards", "count")) == 6
    assert find_key_line(text, ("discord",)) == 5  # the header that opens the table
    assert find_key_line(text, ("broker", "url")) is None
    # an inline table hides its keys from the scanner: the file and the key are still named
    path = write(tmp_path, "supervisor = { prefetch = 0 }\n")
    with pytest.raises(SettingsError, match=r"supervisor\.prefetch: must be at least 1") as error:
        load_config_file(path)
    assert str(error.value).startswith(f"{path}, line 1: ")


def test_other_services_tables_and_groups_are_ignored(tmp_path):
    path = write(
        tmp_path,
        "[redis]\nurl = 'x'\n[prometheus]\naddress = ':8080'\n"
        "[broker.groups]\ngateway = 'gw'\ncache = 'cache'\n",
    )
    config = load_config_file(path)
    assert dict(config.values) == {"group": "gw"}
    assert dict(config.keys) == {"group": "broker.groups.gateway"}


def test_file_accepts_alternative_forms(tmp_path):
    path = write(
        tmp_path,
        "[discord.shards]\nids = '0-2,5'\n[supervisor]\nintents = ['GUILDS', 'guild_messages']\n"
        "compress = true\nevents = ['*']\n",
    )
    values = load_config_file(path).values
    assert values["shard_ids"] == (0, 1, 2, 5)
    assert values["intents"] == 513
    assert values["compress"] == "zlib-stream"  # true: what the setting was before zstd-stream
    assert values["events"] is None


def test_a_bad_file_value_fails_even_when_a_flag_overrides_it(tmp_path):
    path = write(tmp_path, "[supervisor]\nprefetch = 0\n")
    with pytest.raises(SettingsError, match="supervisor.prefetch: must be at least 1"):
        resolve_start_settings({"config": path, "prefetch": "5"}, {})


# -- showing ----------------------------------------------------------------------------------


def test_describe_masks_secrets_and_gives_sources(tmp_path):
    path = write(tmp_path, FULL_FILE)
    settings = resolve_start_settings({"config": path}, {"DISCORD_TOKEN": TOKEN})
    rows = {name: (value, source) for name, value, source in settings.describe()}
    assert rows["token"] == ("********", "env DISCORD_TOKEN")
    assert rows["amqp_url"][0] == "amqp://user:***@rabbit:5672/%2F"
    assert rows["shard_ids"] == ("1-3", f"file {path}: discord.shards.ids")
    assert rows["intents"][0] == "513 (GUILDS|GUILD_MESSAGES)"
    assert rows["config"] == (path, "flag --config")
    assert set(rows) == {s.name for s in SETTINGS} | {"config"}
    text = repr(settings) + "".join(value for value, _ in rows.values())
    assert TOKEN not in text
    assert "hunter2" not in text


def test_describe_without_token():
    rows = {name: value for name, value, _ in resolve_start_settings({}, {}).describe()}
    assert rows["token"] == "(not set)"
    assert rows["shard_count"] == "(from GET /gateway/bot)"


def test_mask_url():
    masked = mask_url("amqp://guest:guest@localhost:5672/%2F")
    assert masked == "amqp://guest:***@localhost:5672/%2F"
    assert mask_url("amqp://localhost") == "amqp://localhost"
    assert mask_url("amqp://user@localhost") == "amqp://user@localhost"


# -- worker configs ---------------------------------------------------------------------------


def test_build_worker_config_from_gateway_bot():
    settings = resolve_start_settings({"token": TOKEN, "intents": "GUILDS"}, {})
    config = build_worker_config(settings, gateway_bot(shards=4, max_concurrency=16))
    assert isinstance(config, WorkerConfig)
    assert config.shard_ids == [0, 1, 2, 3]
    assert config.shard_count == 4
    assert config.gateway_url == "wss://gateway.discord.gg"
    assert config.max_concurrency == 16
    assert config.token == TOKEN
    assert config.intents == 1
    assert config.compress == "zlib-stream"
    assert TOKEN not in config.to_json()


def test_build_worker_config_given_values_win_over_gateway_bot():
    flags = {
        "token": TOKEN,
        "shard_ids": "2,3",
        "shard_count": "8",
        "gateway_url": "ws://127.0.0.1:9000",
        "events": "MESSAGE_CREATE",
        "prefetch": "5",
        "group": "g",
        "amqp_url": "amqp://rabbit",
        "compress": "none",
        "log_level": "warn",
    }
    settings = resolve_start_settings(flags, {})
    config = build_worker_config(settings, gateway_bot(shards=4))
    assert (config.shard_ids, config.shard_count) == ([2, 3], 8)
    assert config.gateway_url == "ws://127.0.0.1:9000"
    assert config.events == frozenset({"MESSAGE_CREATE"})
    assert (config.prefetch, config.group, config.amqp_url) == (5, "g", "amqp://rabbit")
    assert (config.compress, config.log_level) == ("none", "WARNING")
    # Without /gateway/bot: max_concurrency falls back to 1.
    assert build_worker_config(settings, None).max_concurrency == 1


def test_build_worker_config_checks_ids_against_the_discord_count():
    settings = resolve_start_settings({"token": TOKEN, "shard_ids": "0-5"}, {})
    with pytest.raises(SettingsError, match=r"shard id 5 .*4 shards \(from GET /gateway/bot\)"):
        build_worker_config(settings, gateway_bot(shards=4))


def test_build_worker_config_needs_token_and_count():
    with pytest.raises(SettingsError, match="no bot token"):
        build_worker_config(resolve_start_settings({}, {}), gateway_bot())
    settings = resolve_start_settings({"token": TOKEN, "gateway_url": "wss://x"}, {})
    with pytest.raises(SettingsError, match="shard count is unknown"):
        build_worker_config(settings, None)


def test_build_worker_configs_splits_consecutively():
    settings = resolve_start_settings({"token": TOKEN, "shards_per_process": "3"}, {})
    configs = build_worker_configs(settings, gateway_bot(shards=8))
    assert [c.shard_ids for c in configs] == [[0, 1, 2], [3, 4, 5], [6, 7]]
    assert all(c.shard_count == 8 and c.token == TOKEN for c in configs)
    auto = resolve_start_settings({"token": TOKEN}, {})
    assert [c.shard_ids for c in build_worker_configs(auto, gateway_bot(8), cpu_count=2)] == [
        [0, 1, 2, 3],
        [4, 5, 6, 7],
    ]


# -- metrics_addr and log_format --------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:9400", ("127.0.0.1", 9400)),
        (" localhost:80 ", ("localhost", 80)),
        (":9400", ("0.0.0.0", 9400)),
        ("[::1]:9400", ("::1", 9400)),
        ("off", None),
        ("OFF", None),
    ],
)
def test_metrics_addr_forms(text, expected):
    settings = resolve_start_settings({"metrics_addr": text}, {})
    assert settings.metrics_addr == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("9400", r"expected host:port"),
        ("localhost:http", r"expected a port number"),
        ("::1:9400", r"IPv6 address in brackets"),
        ("[::1]9400", r"expected \[IPv6 address\]:port"),
        (":0", r"must be at least 1"),
        ("a b:80", r"not a host name"),
    ],
)
def test_bad_metrics_addr_names_the_flag(text, message):
    with pytest.raises(SettingsError, match=r"^--metrics-addr: .*" + message):
        resolve_start_settings({"metrics_addr": text}, {})


def test_metrics_addr_and_log_format_from_env_file_and_default(tmp_path):
    assert resolve_start_settings({}, {}).metrics_addr is None  # off unless asked
    assert resolve_start_settings({}, {}).log_format == "text"
    env = {"SPECTACLES_METRICS_ADDR": "0.0.0.0:9500", "SPECTACLES_LOG_FORMAT": "JSON"}
    settings = resolve_start_settings({}, env)
    assert (settings.metrics_addr, settings.log_format) == (("0.0.0.0", 9500), "json")
    assert settings.sources["metrics_addr"] == Origin(Source.ENV, "SPECTACLES_METRICS_ADDR")
    path = write(tmp_path, "[supervisor]\nmetrics_addr = '127.0.0.1:9600'\nlog_format = 'json'\n")
    from_file = resolve_start_settings({"config": path}, {})
    assert (from_file.metrics_addr, from_file.log_format) == (("127.0.0.1", 9600), "json")
    # a flag turns off what the file turned on
    assert resolve_start_settings({"config": path, "metrics_addr": "off"}, {}).metrics_addr is None
    with pytest.raises(SettingsError, match=r"^SPECTACLES_LOG_FORMAT: expected text or json"):
        resolve_start_settings({}, {"SPECTACLES_LOG_FORMAT": "logfmt"})


def test_config_show_lists_the_new_settings(tmp_path):
    path = write(tmp_path, "[supervisor]\nmetrics_addr = '[::1]:9400'\n")
    rows = {name: (value, source) for name, value, source in resolve_start_settings(
        {"config": path, "log_format": "json"}, {}).describe()}
    assert rows["metrics_addr"] == ("[::1]:9400", f"file {path}: supervisor.metrics_addr")
    assert rows["log_format"] == ("json", "flag --log-format")
    assert dict((n, v) for n, v, _ in resolve_start_settings({}, {}).describe())["metrics_addr"] == "(off)"


def test_config_show_prints_the_new_settings_with_their_sources():
    from click.testing import CliRunner

    from supervisor.cli import cli

    env = {name: "" for setting in SETTINGS for name in setting.envs}
    env["SPECTACLES_METRICS_ADDR"] = ":9400"
    result = CliRunner().invoke(cli, ["config", "--show", "--log-format", "JSON"], env=env)
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines()}
    assert rows["metrics_addr"][1:] == ["0.0.0.0:9400", "env", "SPECTACLES_METRICS_ADDR"]
    assert rows["log_format"][1:] == ["json", "flag", "--log-format"]


# -- several AMQP URLs, the queue type, TLS (issue 11) ----------------------------------------


def test_several_amqp_urls_from_flag_env_and_file(tmp_path):
    two = "amqp://a:pw1@node1/%2F, amqp://b:pw2@node2:5673/%2F"
    assert resolve_start_settings({"amqp_url": two}, {}).amqp_url == "amqp://a:pw1@node1/%2F,amqp://b:pw2@node2:5673/%2F"
    assert resolve_start_settings({}, {"AMQP_URL": two}).amqp_url.count("amqp://") == 2
    path = write(tmp_path, '[broker]\nurl = ["amqp://a:pw1@node1/%2F", "amqps://b:pw2@node2/%2F"]\n')
    settings = resolve_start_settings({"config": path}, {})
    assert settings.amqp_url == "amqp://a:pw1@node1/%2F,amqps://b:pw2@node2/%2F"
    rows = {name: value for name, value, _ in settings.describe()}
    assert rows["amqp_url"] == "amqp://a:***@node1/%2F,amqps://b:***@node2/%2F"
    assert "pw1" not in repr(settings) + str(rows) and "pw2" not in repr(settings) + str(rows)


@pytest.mark.parametrize(
    ("flags", "env", "message"),
    [
        ({"amqp_url": "amqp://a/%2F,http://u:pw@b/"}, {}, r"^--amqp-url: URL 2 of 2: 'http://u:\*\*\*@b/' is not an AMQP URL"),
        ({}, {"AMQP_URL": "amqp://u:pw@a:0/%2F"}, r"^AMQP_URL: 'amqp://u:\*\*\*@a:0/%2F': port 0"),
        ({"amqp_url": " , "}, {}, r"^--amqp-url: no AMQP URL given$"),
        ({"queue_type": "stream"}, {}, r"^--queue-type: expected classic or quorum, got 'stream'$"),
        ({}, {"SPECTACLES_QUEUE_TYPE": "lazy"}, r"^SPECTACLES_QUEUE_TYPE: expected classic or quorum"),
    ],
)
def test_bad_amqp_values_are_one_line_without_the_password(flags, env, message):
    with pytest.raises(SettingsError, match=message) as error:
        resolve_start_settings(flags, env)
    assert "pw" not in str(error.value) and "\n" not in str(error.value)


def test_a_bad_url_in_the_file_array_names_the_key(tmp_path):
    path = write(tmp_path, '[broker]\nurl = ["amqp://a/%2F", "ftp://b/"]\n')
    with pytest.raises(SettingsError, match=r"line 2: broker\.url: URL 2 of 2: 'ftp://b/' is not an AMQP URL"):
        resolve_start_settings({"config": path}, {})


def test_queue_type_defaults_to_classic_and_reaches_the_worker(tmp_path):
    assert resolve_start_settings({}, {}).queue_type == "classic"
    path = write(tmp_path, '[supervisor]\nqueue_type = "Quorum"\n')
    settings = resolve_start_settings({"config": path, "token": TOKEN, "shard_count": "2", "gateway_url": "ws://x"}, {})
    assert settings.sources["queue_type"] == Origin(Source.FILE, f"{path}: supervisor.queue_type")
    assert build_worker_config(settings, None).queue_type == "quorum"


def test_tls_files_reach_the_worker_and_config_show(tmp_path):
    from tests.tls_certs import make_tls_files

    tls = make_tls_files(tmp_path / "tls")
    env = {
        "AMQP_URL": "amqps://u:pw@rabbit:5671/%2F",
        "SPECTACLES_AMQP_CA_FILE": str(tls.ca_file),
        "SPECTACLES_AMQP_CERT_FILE": str(tls.client_cert_file),
        "SPECTACLES_AMQP_KEY_FILE": str(tls.client_key_file),
    }
    settings = resolve_start_settings({"token": TOKEN, "shard_count": "1", "gateway_url": "ws://x"}, env)
    config = build_worker_config(settings, None)
    assert (config.amqp_ca_file, config.amqp_cert_file, config.amqp_key_file) == (
        str(tls.ca_file), str(tls.client_cert_file), str(tls.client_key_file),
    )  # fmt: skip
    assert WorkerConfig.from_json(config.to_json(), TOKEN).amqp_key_file == str(tls.client_key_file)
    rows = {name: (value, source) for name, value, source in settings.describe()}
    assert rows["amqp_ca_file"] == (str(tls.ca_file), "env SPECTACLES_AMQP_CA_FILE")
    defaults = {name: value for name, value, _ in resolve_start_settings({}, {}).describe()}
    assert defaults["amqp_ca_file"] == "(the system's CAs)" and defaults["amqp_cert_file"] == "(none)"


def test_tls_files_are_checked_and_named_by_their_source(tmp_path):
    from tests.tls_certs import make_tls_files

    tls = make_tls_files(tmp_path / "tls")
    amqps = {"amqp_url": "amqps://rabbit/%2F"}
    with pytest.raises(SettingsError, match=r"^--amqp-ca-file: .*nope\.pem: no such file$"):
        resolve_start_settings({**amqps, "amqp_ca_file": str(tmp_path / "nope.pem")}, {})
    with pytest.raises(SettingsError, match=r"^SPECTACLES_AMQP_KEY_FILE: a key without a certificate"):
        resolve_start_settings(amqps, {"SPECTACLES_AMQP_KEY_FILE": str(tls.client_key_file)})
    other = make_tls_files(tmp_path / "other")
    path = write(tmp_path, f'[supervisor]\namqp_cert_file = "{tls.client_cert_file}"\namqp_key_file = "{other.client_key_file}"\n')
    with pytest.raises(SettingsError, match=r"supervisor\.amqp_key_file: cannot use the client certificate .*KEY_VALUES_MISMATCH"):
        resolve_start_settings({**amqps, "config": path}, {})
    # TLS files with no amqps:// URL are a mistake, not silently unused
    with pytest.raises(SettingsError, match=r"^--amqp-ca-file: TLS files are for amqps:// URLs, and AMQP_URL has none"):
        resolve_start_settings({"amqp_ca_file": str(tls.ca_file)}, {"AMQP_URL": "amqp://u:pw@rabbit/%2F"})


def test_worker_config_repr_masks_every_amqp_password():
    config = WorkerConfig([0], 1, "ws://x", token=TOKEN, amqp_url="amqp://a:pw-one@h1/%2F,amqps://b:pw-two@h2/%2F")
    assert "pw-one" not in repr(config) and "pw-two" not in repr(config) and TOKEN not in repr(config)
    assert "amqp://a:***@h1/%2F,amqps://b:***@h2/%2F" in repr(config)
    assert "pw-one" in config.to_json()  # the child needs it: it travels over its stdin pipe only


# -- compress: zlib-stream | zstd-stream | none ------------------------------------------------


@pytest.mark.parametrize(
    ("flag", "expected"),
    [("zlib-stream", "zlib-stream"), ("ZLIB", "zlib-stream"), ("zstd-stream", "zstd-stream"),
     ("zstd", "zstd-stream"), (" none ", "none")],
)
def test_compress_names(flag, expected):
    assert resolve_start_settings({"compress": flag}, {}).compress == expected
    assert resolve_start_settings({}, {"SPECTACLES_COMPRESS": flag}).compress == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [('"zstd-stream"', "zstd-stream"), ('"none"', "none"), ("true", "zlib-stream"),
     ("false", "none")],
)
def test_compress_in_the_file(tmp_path, value, expected):
    path = write(tmp_path, f"[supervisor]\ncompress = {value}\n")
    settings = resolve_start_settings({"config": path, "token": TOKEN}, {})
    assert settings.compress == expected
    # ...and what the worker gets, and `config --show` prints
    assert build_worker_config(settings, gateway_bot()).compress == expected
    assert ("compress", expected) in [(name, shown) for name, shown, _ in settings.describe()]


def test_zstd_stream_without_a_zstd_library_is_one_line(monkeypatch, tmp_path):
    from shard_worker.gateway import inflate

    monkeypatch.setattr(inflate, "_zstd", None)
    for flags, env, where in [
        ({"compress": "zstd-stream"}, {}, "--compress"),
        ({}, {"SPECTACLES_COMPRESS": "zstd-stream"}, "SPECTACLES_COMPRESS"),
    ]:
        with pytest.raises(SettingsError) as error:
            resolve_start_settings(flags, env)
        message = str(error.value)
        assert message.startswith(f"{where}: zstd-stream needs a zstd library")
        assert "spectacles-supervisor[zstd]" in message and "\n" not in message
    path = write(tmp_path, "[supervisor]\ncompress = 'zstd-stream'\n")
    with pytest.raises(SettingsError, match=r"line 2: supervisor\.compress: zstd-stream needs"):
        load_config_file(path)
    # zlib-stream and none do not need it
    assert resolve_start_settings({"compress": "zlib-stream"}, {}).compress == "zlib-stream"


# -- --events auto ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "env", "file"),
    [
        ({"events": "auto"}, {}, ""),
        ({}, {"DISCORD_EVENTS": "AUTO"}, ""),
        ({}, {}, '[supervisor]\nevents = "auto"\n'),
        ({}, {}, '[supervisor]\nevents = ["auto"]\n'),
    ],
)
def test_events_auto_from_flag_env_and_file_reaches_the_worker(tmp_path, flags, env, file):
    base = {"token": TOKEN, "shard_count": "2", "gateway_url": "ws://x"}
    if file:
        base["config"] = write(tmp_path, file)
    settings = resolve_start_settings({**base, **flags}, env)
    assert settings.events == "auto"
    assert build_worker_config(settings, None).events == "auto"
    rows = {name: value for name, value, _ in settings.describe()}
    assert rows["events"] == "auto (what some queue is bound to)"


def test_events_auto_is_alone_or_an_error(tmp_path):
    with pytest.raises(SettingsError, match=r"^--events: auto learns which events to publish: give it alone"):
        resolve_start_settings({"events": "MESSAGE_CREATE,auto"}, {})
    path = write(tmp_path, '[supervisor]\nevents = ["auto", "READY"]\n')
    with pytest.raises(SettingsError, match=r"supervisor\.events: auto learns"):
        resolve_start_settings({"config": path}, {})


def test_auto_reshard_is_off_by_default_and_reads_flag_env_and_file(tmp_path):
    settings = resolve_start_settings({}, {})
    assert settings.auto_reshard is False and settings.auto_reshard_interval == 8 * 3600
    assert resolve_start_settings({"auto_reshard": "true"}, {}).auto_reshard is True
    on = resolve_start_settings({}, {"SPECTACLES_AUTO_RESHARD": "yes", "SPECTACLES_AUTO_RESHARD_INTERVAL": "30m"})
    assert on.auto_reshard is True and on.auto_reshard_interval == 1800
    assert resolve_start_settings({}, {"SPECTACLES_AUTO_RESHARD": "off"}).auto_reshard is False
    path = write(tmp_path, "[supervisor]\nauto_reshard = true\nauto_reshard_interval = \"1d\"\n")
    from_file = resolve_start_settings({"config": path}, {})
    assert from_file.auto_reshard is True and from_file.auto_reshard_interval == 86400
    seconds = write(tmp_path, "[supervisor]\nauto_reshard_interval = 90\n")
    assert resolve_start_settings({"config": seconds}, {}).auto_reshard_interval == 90
    rows = {name: (value, source) for name, value, source in on.describe()}
    assert rows["auto_reshard"] == ("on", "env SPECTACLES_AUTO_RESHARD")
    assert rows["auto_reshard_interval"] == ("30m", "env SPECTACLES_AUTO_RESHARD_INTERVAL")


@pytest.mark.parametrize(
    ("flags", "env", "message"),
    [
        ({}, {"SPECTACLES_AUTO_RESHARD": "sometimes"}, r"^SPECTACLES_AUTO_RESHARD: expected true or false"),
        ({"auto_reshard_interval": "4s"}, {}, r"^--auto-reshard-interval: must be between 5 s and 7 days, not 4s"),
        ({"auto_reshard_interval": "8 weeks"}, {}, r"^--auto-reshard-interval: expected a duration such as 30m"),
        ({"auto_reshard_interval": "8d"}, {}, r"^--auto-reshard-interval: must be between"),
    ],
)
def test_bad_auto_reshard_values_name_their_source(flags, env, message):
    with pytest.raises(SettingsError, match=message):
        resolve_start_settings(flags, env)


def test_a_bad_auto_reshard_file_value_names_the_key(tmp_path):
    path = write(tmp_path, "[supervisor]\nauto_reshard = \"yes\"\n")
    with pytest.raises(SettingsError, match=r"supervisor\.auto_reshard.*true or false"):
        resolve_start_settings({"config": path}, {})


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({}, r"--cluster needs --redis-url"),
        ({"redis_url": "redis://x"}, r"--cluster needs --shard-count"),
        ({"redis_url": "redis://x", "shard_count": "8"}, r"--cluster needs --shards-per-process"),
        ({"redis_url": "redis://x", "shard_count": "8", "shards_per_process": "2", "shard_ids": "0-3"}, r"give no --shards"),
        ({"redis_url": "redis://x", "shard_count": "8", "shards_per_process": "2", "auto_reshard": "true"}, r"does not reshard yet"),
    ],
)
def test_cluster_settings_are_checked(flags, message):
    with pytest.raises(SettingsError, match=message):
        resolve_start_settings({"cluster": "true", **flags}, {})


def test_cluster_settings_resolve_and_node_flags_need_cluster():
    settings = resolve_start_settings(
        {"cluster": "true", "redis_url": "redis://x", "shard_count": "8", "shards_per_process": "2",
         "node_name": "vm-1", "capacity": "3"}, {},
    )  # fmt: skip
    assert settings.cluster and settings.node_name == "vm-1" and settings.capacity == 3
    with pytest.raises(SettingsError, match=r"--node-name needs --cluster"):
        resolve_start_settings({"node_name": "vm-1"}, {})
    with pytest.raises(SettingsError, match=r"--node-name: .* is not a node name"):
        resolve_start_settings({"cluster": "true", "node_name": "bad name"}, {})


# -- identify options a large bot sets (issue 22, item 5) -------------------------------------


def test_identify_options_from_flags_env_and_the_config_file(tmp_path):
    config = write(tmp_path, """
[supervisor]
large_threshold = 120
identify_extra = '{"capabilities": 16381}'
  [supervisor.presence]
  status = "idle"
  activities = [{ name = "the shards", type = 3 }]
""")
    settings = resolve_start_settings({"config": config}, {"DISCORD_TOKEN": "t" * 70})
    assert settings.large_threshold == 120 and settings.identify_extra == {"capabilities": 16381}
    assert settings.presence == {"since": None, "activities": [{"name": "the shards", "type": 3}], "status": "idle", "afk": False}
    worker = build_worker_config(settings, gateway_bot())
    assert (worker.large_threshold, worker.presence, worker.identify_extra) == (120, settings.presence, {"capabilities": 16381})
    shown = {row[0]: (row[1], row[2]) for row in settings.describe()}
    assert shown["presence"][0].startswith('{"since":null') and "presence" in shown["presence"][1]
    env = resolve_start_settings({}, {"DISCORD_PRESENCE": '{"status": "dnd"}', "DISCORD_LARGE_THRESHOLD": "250"})
    assert env.presence["status"] == "dnd" and env.large_threshold == 250
    assert str(env.sources["presence"]) == "env DISCORD_PRESENCE"
    flags = resolve_start_settings({"presence": '{"afk": true}'}, {"DISCORD_PRESENCE": '{"status": "dnd"}'})
    assert flags.presence["afk"] is True and flags.presence["status"] == "online"  # the flag wins


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"large_threshold": "49"}, "--large-threshold"),
        ({"presence": "online"}, "--presence: expected a JSON object"),
        ({"presence": '{"status": "busy"}'}, "presence status must be one of"),
        ({"presence": '{"mood": 1}'}, "unknown presence field 'mood'"),
        ({"presence": '{"activities": [{"name": 1}]}'}, "activities must be objects"),
        ({"identify_extra": '{"token": "x"}'}, "may not set 'token'"),
        ({"identify_extra": "[1]"}, "expected a JSON object"),
        ({"identify_extra": '{"capabilities": 1, "padding": "' + "x" * 4000 + '"}'}, "over Discord's 4096 bytes"),
    ],
)
def test_bad_identify_options_are_one_line_naming_their_flag(flags, message):
    with pytest.raises(SettingsError, match=message) as error:
        resolve_start_settings(flags, {})
    assert "\n" not in str(error.value)
