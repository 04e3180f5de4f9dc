"""Every ``start`` setting, declared once: name, flag, environment variables, config file key,
default, type (:mod:`supervisor.config.types`) and help. click does the rest.

:func:`supervisor.config.settings.settings_options` makes one click option per setting (``envvar=`` with ``show_envvar``,
the type, the default), and ``--config``, an eager option whose callback loads the config file
into the context's ``default_map``: click's own precedence is then **flag > environment variable
> config file > default**. An empty environment variable counts as unset (as in the Spectacles
Go gateway), and so does an empty string or empty array in the config file. ``intents`` reads
``DISCORD_INTENTS``, then ``DISCORD_RAW_INTENTS``. README's option table is checked against
these declarations (``tests/docs/test_readme_options.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import click

from shard_worker.amqp import params as amqp_params
from shard_worker.config import DEFAULT_AMQP_URL, DEFAULT_GROUP
from shard_worker.gateway.intents import DEFAULT_INTENTS
from shard_worker.gateway.protocol import COMPRESS_ZLIB_STREAM
from shard_worker.shard_ranges import MAX_SHARD_COUNT
from supervisor.config import types
from supervisor.config.types import Bool, Duration, Int, Url, environ_of
from supervisor.discord.api import DEFAULT_API_URL
from supervisor.reshard.auto import DEFAULT_INTERVAL_S as AUTO_RESHARD_INTERVAL_S
from supervisor.reshard.auto import MAX_INTERVAL_S as AUTO_RESHARD_MAX_S
from supervisor.reshard.auto import MIN_INTERVAL_S as AUTO_RESHARD_MIN_S

DEFAULT_STATE_DIR = "./state"
DEFAULT_PREFETCH = 100
DEFAULT_CHILD_TIMEOUT = 30
DEFAULT_REDIS_PREFIX = "spectacles"
DEFAULT_BUFFER_EVENTS = 10_000
DEFAULT_BUFFER_MB = 64
DEFAULT_STALL_TIMEOUT = 30
DEFAULT_LOG_LEVEL = "INFO"
DEFAULT_LOG_FORMAT = "text"
#: AMQP's prefetch count is a 16-bit field.
MAX_PREFETCH = 65535


@dataclass(frozen=True)
class Setting:
    """One ``start`` setting: its flag, environment variables, config key, default and type."""

    name: str
    flag: str
    envs: tuple[str, ...]
    key: tuple[str, ...]
    default: Any
    type: types.SettingType
    metavar: str
    help: str
    #: A flag that takes no value on the command line (``--auto-reshard``).
    is_flag: bool = False

    @property
    def dotted_key(self) -> str:
        return ".".join(self.key)


GATEWAY_URL = Url(("ws", "wss"), "a WebSocket", strip_slash=True)
API_URL = Url(("http", "https"), "an HTTP", strip_slash=True)
REDIS_URL = Url(("redis", "rediss", "unix"), "a Redis")


#: Every ``start`` setting, in the order ``config --show`` prints them.
SETTINGS: tuple[Setting, ...] = (
    Setting("token", "--token", ("DISCORD_TOKEN",), ("discord", "token"), "",
            types.TOKEN, "TOKEN",
            "Bot token. Prefer the environment variable: flags show up in process lists."),
    Setting("shard_ids", "--shards", ("DISCORD_SHARD_IDS",), ("discord", "shards", "ids"), None,
            types.SHARD_IDS, "IDS",
            "Shards to run, e.g. 0-15 or 0-3,8,10-11 (default: all shards)."),
    Setting("shard_count", "--shard-count", ("DISCORD_SHARD_COUNT",),
            ("discord", "shards", "count"), None,
            Int(1, MAX_SHARD_COUNT), "N",
            "Total number of shards (default: 'shards' from GET /gateway/bot)."),
    Setting("shards_per_process", "--shards-per-process", ("SPECTACLES_SHARDS_PER_PROCESS",),
            ("supervisor", "shards_per_process"), None,
            Int(1, MAX_SHARD_COUNT), "N",
            "Shards per worker process (default: spread over the CPU cores)."),
    Setting("cluster", "--cluster", ("SPECTACLES_CLUSTER",), ("supervisor", "cluster"), False,
            Bool(), "",
            "Cluster mode: the nodes sharing --redis-url lease the groups of --shards-per-process "
            "shards among themselves, take over a dead node's, rebalance (needs --redis-url, "
            "--shard-count and --shards-per-process; no --shards). See README, Cluster mode.", is_flag=True),
    Setting("node_name", "--node-name", ("SPECTACLES_NODE_NAME",), ("supervisor", "node_name"), None,
            types.NODE_NAME, "NAME",
            "This node's name in the cluster, unique among the live nodes (default: the host name)."),
    Setting("capacity", "--capacity", ("SPECTACLES_CAPACITY",), ("supervisor", "capacity"), 1,
            Int(1, 1000), "W",
            "This node's weight in the cluster: its share of the groups is W / the sum (default: 1)."),
    Setting("shards_from_ordinal", "--shards-from-ordinal", ("SPECTACLES_SHARDS_FROM_ORDINAL",),
            ("supervisor", "shards_from_ordinal"), False, Bool(), "",
            "Kubernetes StatefulSet: run the shards of this pod's ordinal (the -N ending its host "
            "name, or SPECTACLES_ORDINAL), with --shard-count and --pods or --shards-per-pod.", is_flag=True),
    Setting("pods", "--pods", ("SPECTACLES_PODS",), ("supervisor", "pods"), None,
            Int(1, MAX_SHARD_COUNT), "P",
            "With --shards-from-ordinal: the shard count split evenly over P pods."),
    Setting("shards_per_pod", "--shards-per-pod", ("SPECTACLES_SHARDS_PER_POD",),
            ("supervisor", "shards_per_pod"), None,
            Int(1, MAX_SHARD_COUNT), "K",
            "With --shards-from-ordinal: K consecutive shards per pod."),
    Setting("amqp_url", "--amqp-url", ("AMQP_URL",), ("broker", "url"), DEFAULT_AMQP_URL,
            types.AMQP_URLS, "URL[,URL...]",
            "RabbitMQ URL, or several separated by commas (the nodes of a cluster, tried in turn; "
            f"amqps:// for TLS; default: {DEFAULT_AMQP_URL})."),
    Setting("queue_type", "--queue-type", ("SPECTACLES_QUEUE_TYPE",), ("supervisor", "queue_type"),
            amqp_params.DEFAULT_QUEUE_TYPE, types.QUEUE_TYPE,
            "[classic|quorum]",
            "Type of the queues the gateway declares, <group>:<shard> and <group>:SEND "
            "(default: classic, durable; quorum: replicated over the cluster)."),
    Setting("amqp_ca_file", "--amqp-ca-file", ("SPECTACLES_AMQP_CA_FILE",),
            ("supervisor", "amqp_ca_file"), None, types.PATH, "FILE",
            "TLS (amqps://): PEM file of the CA that signed RabbitMQ's certificate "
            "(default: the system's CAs)."),
    Setting("amqp_cert_file", "--amqp-cert-file", ("SPECTACLES_AMQP_CERT_FILE",),
            ("supervisor", "amqp_cert_file"), None, types.PATH, "FILE",
            "TLS (amqps://): PEM client certificate, for a RabbitMQ that asks for one."),
    Setting("amqp_key_file", "--amqp-key-file", ("SPECTACLES_AMQP_KEY_FILE",),
            ("supervisor", "amqp_key_file"), None, types.PATH, "FILE",
            "TLS (amqps://): PEM private key of the client certificate, without a passphrase "
            "(default: in the certificate file)."),
    Setting("group", "--group", ("BROKER_GROUP",), ("broker", "groups", "gateway"),
            DEFAULT_GROUP, types.EXCHANGE_NAME, "NAME",
            f"Broker group, i.e. the AMQP exchange (default: {DEFAULT_GROUP})."),
    Setting("events", "--events", ("DISCORD_EVENTS",), ("supervisor", "events"), None,
            types.EVENTS, "LIST|auto",
            "Comma-separated dispatch events to publish, * (default: every event), or auto: "
            "only those some queue is bound to, learnt from RabbitMQ's basic.return."),
    Setting("intents", "--intents", ("DISCORD_INTENTS", "DISCORD_RAW_INTENTS"),
            ("supervisor", "intents"), DEFAULT_INTENTS,
            types.INTENTS, "INTENTS",
            "Intent names (GUILDS,GUILD_MESSAGES), ALL, DEFAULT, NONE or an integer "
            "(default: DEFAULT, every non-privileged intent)."),
    Setting("gateway_url", "--gateway-url", ("DISCORD_GATEWAY_URL",),
            ("supervisor", "gateway_url"), None,
            GATEWAY_URL, "URL",
            "Gateway URL (default: 'url' from GET /gateway/bot)."),
    Setting("api_url", "--api-url", ("DISCORD_API_URL",), ("supervisor", "api_url"),
            DEFAULT_API_URL, API_URL, "URL",
            f"Discord REST API base URL (default: {DEFAULT_API_URL})."),
    Setting("compress", "--compress", ("SPECTACLES_COMPRESS",), ("supervisor", "compress"),
            COMPRESS_ZLIB_STREAM, types.COMPRESS, "[zlib-stream|zstd-stream|none]",
            "Gateway transport compression: zlib-stream, zstd-stream (needs the zstd extra) or "
            "none (default: zlib-stream)."),
    Setting("log_level", "--log-level", ("SPECTACLES_LOG_LEVEL",), ("supervisor", "log_level"),
            DEFAULT_LOG_LEVEL, types.LOG_LEVEL, "LEVEL",
            "TRACE (payloads, token redacted), DEBUG, INFO, WARNING, ERROR or CRITICAL (default: INFO)."),
    Setting("state_dir", "--state-dir", ("SPECTACLES_STATE_DIR",), ("supervisor", "state_dir"),
            Path(DEFAULT_STATE_DIR), types.PATH, "DIR",
            f"Where sessions are kept between restarts (default: {DEFAULT_STATE_DIR})."),
    Setting("prefetch", "--prefetch", ("SPECTACLES_PREFETCH",), ("supervisor", "prefetch"),
            DEFAULT_PREFETCH, Int(1, MAX_PREFETCH), "N",
            f"Unacknowledged outbound messages per worker (default: {DEFAULT_PREFETCH})."),
    Setting("max_memory_mb", "--max-memory-mb", ("SPECTACLES_MAX_MEMORY_MB",),
            ("supervisor", "max_memory_mb"), None,
            Int(16, 1 << 20), "MB",
            "Recycle a worker whose RSS grows past this (its shards resume; default: no limit)."),
    Setting("child_timeout", "--child-timeout", ("SPECTACLES_CHILD_TIMEOUT",),
            ("supervisor", "child_timeout"), DEFAULT_CHILD_TIMEOUT,
            Int(3, 3600), "SECONDS",
            f"Replace a worker that sends no IPC heartbeat for this long "
            f"(default: {DEFAULT_CHILD_TIMEOUT})."),
    Setting("buffer_events", "--buffer-events", ("SPECTACLES_BUFFER_EVENTS",),
            ("supervisor", "buffer_events"), DEFAULT_BUFFER_EVENTS,
            Int(10, 10_000_000), "N",
            "Dispatches a worker holds until RabbitMQ confirms them; when full its shards stop "
            f"reading (default: {DEFAULT_BUFFER_EVENTS})."),
    Setting("buffer_mb", "--buffer-mb", ("SPECTACLES_BUFFER_MB",),
            ("supervisor", "buffer_mb"), DEFAULT_BUFFER_MB,
            Int(1, 1 << 16), "MB",
            f"The same bound in megabytes of bodies (default: {DEFAULT_BUFFER_MB})."),
    Setting("stall_timeout", "--stall-timeout", ("SPECTACLES_STALL_TIMEOUT",),
            ("supervisor", "stall_timeout"), DEFAULT_STALL_TIMEOUT,
            Int(1, 3600), "SECONDS",
            "A shard that cannot publish this long closes resumably and resumes when RabbitMQ "
            f"is back (default: {DEFAULT_STALL_TIMEOUT})."),
    Setting("large_threshold", "--large-threshold", ("DISCORD_LARGE_THRESHOLD",),
            ("supervisor", "large_threshold"), None, Int(50, 250), "N",
            "IDENTIFY's large_threshold: members above which a guild's offline members are not "
            "sent (50-250; default: Discord's, 50)."),
    Setting("presence", "--presence", ("DISCORD_PRESENCE",), ("supervisor", "presence"), None,
            types.PRESENCE, "JSON",
            "IDENTIFY's initial presence as a JSON object (a table in the config file): status, "
            "activities, afk, since (default: none)."),
    Setting("identify_extra", "--identify-extra", ("SPECTACLES_IDENTIFY_EXTRA",),
            ("supervisor", "identify_extra"), None, types.IDENTIFY_EXTRA, "JSON",
            "Further IDENTIFY fields as a JSON object, sent as given, e.g. {\"capabilities\": "
            "16381} (default: none)."),
    Setting("identify_reserve", "--identify-reserve", ("SPECTACLES_IDENTIFY_RESERVE",),
            ("supervisor", "identify_reserve"), None, Int(0, 1_000_000), "N",
            "Identifies of the daily budget never spent on our own: identifies are held (status, "
            "/metrics, /readyz say so) once only this many are left (default: one full restart of "
            "the shards run here, one per shard)."),
    Setting("metrics_addr", "--metrics-addr", ("SPECTACLES_METRICS_ADDR",),
            ("supervisor", "metrics_addr"), None,
            types.METRICS_ADDR, "HOST:PORT",
            "Serve Prometheus metrics at http://HOST:PORT/metrics from the supervisor "
            "(:PORT for every interface; default: off). See docs/METRICS.md."),
    Setting("log_format", "--log-format", ("SPECTACLES_LOG_FORMAT",), ("supervisor", "log_format"),
            DEFAULT_LOG_FORMAT, types.LOG_FORMAT, "[text|json]",
            "Log lines as text, or as JSON objects with time, level, logger, message and "
            "shard/group when known (default: text)."),
    Setting("redis_url", "--redis-url", ("REDIS_URL",), ("supervisor", "redis_url"), None,
            REDIS_URL, "URL",
            "Redis shared by every host of the bot: identify buckets, budget and sessions "
            "(default: none, everything local)."),
    Setting("redis_prefix", "--redis-prefix", ("SPECTACLES_REDIS_PREFIX",),
            ("supervisor", "redis_prefix"), DEFAULT_REDIS_PREFIX, types.EXCHANGE_NAME,
            "PREFIX", f"Key prefix in Redis, one per bot (default: {DEFAULT_REDIS_PREFIX})."),
    Setting("shard_count_multiple", "--shard-count-multiple", ("SPECTACLES_SHARD_COUNT_MULTIPLE",),
            ("supervisor", "shard_count_multiple"), 1,
            Int(1, MAX_SHARD_COUNT), "M",
            "A reshard's shard count must be a multiple of this, the number Discord gives "
            "large bots (default: 1)."),
    Setting("auto_reshard", "--auto-reshard", ("SPECTACLES_AUTO_RESHARD",), ("supervisor", "auto_reshard"),
            False, Bool(), "",
            "Reshard by itself when Discord recommends more shards (checked every "
            "--auto-reshard-interval) or closes a shard with 4011, instead of halting "
            "(default: off). See README, Resharding.", is_flag=True),
    Setting("auto_reshard_interval", "--auto-reshard-interval", ("SPECTACLES_AUTO_RESHARD_INTERVAL",),
            ("supervisor", "auto_reshard_interval"), AUTO_RESHARD_INTERVAL_S,
            Duration(AUTO_RESHARD_MIN_S, AUTO_RESHARD_MAX_S), "DURATION",
            "How often --auto-reshard asks GET /gateway/bot for the recommended count: 30m, 8h, "
            "1d or seconds (default: 8h)."),
)  # fmt: skip
SETTINGS_BY_NAME: Mapping[str, Setting] = MappingProxyType({s.name: s for s in SETTINGS})#: The name of ``--config`` among the parameters.
CONFIG_FLAG = "config"


class SettingOption(click.Option):
    """A setting's option: its environment variables are read from the context's environment
    (``ctx.meta[types.ENVIRON]``, else :data:`os.environ`), and their text goes to the type as
    is (a flag's variable too: ``SPECTACLES_AUTO_RESHARD=sometimes`` is an error, not unset)."""

    def resolve_envvar_value(self, ctx: click.Context) -> str | None:
        env = environ_of(ctx)
        return next((env[name] for name in self.envvar or () if env.get(name)), None)

    def value_from_envvar(self, ctx: click.Context) -> Any:
        return self.resolve_envvar_value(ctx)
