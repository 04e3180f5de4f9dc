"""The settings of ``spectacles-supervisor start``: where each comes from and what it may be.

Precedence, for every setting: **flag > environment variable > config file > default**. An empty
environment variable counts as unset (as in the Spectacles Go gateway), and so does an empty
string or empty array in the config file (the Spectacles config template ships ``token = ""``).

==================  ====================  =============================  ========================
setting             flag                  environment                    config file key
==================  ====================  =============================  ========================
token               --token               DISCORD_TOKEN                  discord.token
shard_ids           --shards              DISCORD_SHARD_IDS              discord.shards.ids
shard_count         --shard-count         DISCORD_SHARD_COUNT            discord.shards.count
shards_per_process  --shards-per-process  SPECTACLES_SHARDS_PER_PROCESS  supervisor.*
amqp_url            --amqp-url            AMQP_URL                       broker.url
queue_type          --queue-type          SPECTACLES_QUEUE_TYPE          supervisor.queue_type
amqp_ca_file        --amqp-ca-file        SPECTACLES_AMQP_CA_FILE        supervisor.amqp_ca_file
amqp_cert_file      --amqp-cert-file      SPECTACLES_AMQP_CERT_FILE      supervisor.amqp_cert_file
amqp_key_file       --amqp-key-file       SPECTACLES_AMQP_KEY_FILE       supervisor.amqp_key_file
group               --group               BROKER_GROUP                   broker.groups.gateway
events              --events              DISCORD_EVENTS                 supervisor.events
intents             --intents             DISCORD_INTENTS, then          supervisor.intents
                                          DISCORD_RAW_INTENTS
gateway_url         --gateway-url         DISCORD_GATEWAY_URL            supervisor.gateway_url
api_url             --api-url             DISCORD_API_URL                supervisor.api_url
compress            --compress            SPECTACLES_COMPRESS            supervisor.compress
log_level           --log-level           SPECTACLES_LOG_LEVEL           supervisor.log_level
state_dir           --state-dir           SPECTACLES_STATE_DIR           supervisor.state_dir
prefetch            --prefetch            SPECTACLES_PREFETCH            supervisor.prefetch
max_memory_mb       --max-memory-mb       SPECTACLES_MAX_MEMORY_MB       supervisor.max_memory_mb
redis_url           --redis-url           REDIS_URL                      supervisor.redis_url
redis_prefix        --redis-prefix        SPECTACLES_REDIS_PREFIX        supervisor.redis_prefix
child_timeout       --child-timeout       SPECTACLES_CHILD_TIMEOUT       supervisor.child_timeout
buffer_events       --buffer-events       SPECTACLES_BUFFER_EVENTS       supervisor.buffer_events
buffer_mb           --buffer-mb           SPECTACLES_BUFFER_MB           supervisor.buffer_mb
stall_timeout       --stall-timeout       SPECTACLES_STALL_TIMEOUT       supervisor.stall_timeout
large_threshold     --large-threshold     DISCORD_LARGE_THRESHOLD        supervisor.large_threshold
presence            --presence            DISCORD_PRESENCE               supervisor.presence
identify_extra      --identify-extra      SPECTACLES_IDENTIFY_EXTRA      supervisor.identify_extra
identify_reserve    --identify-reserve    SPECTACLES_IDENTIFY_RESERVE    supervisor.identify_reserve
metrics_addr        --metrics-addr        SPECTACLES_METRICS_ADDR        supervisor.metrics_addr
log_format          --log-format          SPECTACLES_LOG_FORMAT          supervisor.log_format
==================  ====================  =============================  ========================

(``supervisor.*`` is ``supervisor.shards_per_process``. ``shard_count_multiple``: flag
``--shard-count-multiple``, environment ``SPECTACLES_SHARD_COUNT_MULTIPLE``, config file key
``supervisor.shard_count_multiple``; a ``reshard`` target must be a multiple of it.
``auto_reshard``: flag ``--auto-reshard`` (no value), environment ``SPECTACLES_AUTO_RESHARD``
(true/false), key ``supervisor.reshard.auto``; ``auto_reshard_interval``: flag
``--auto-reshard-interval``, environment ``SPECTACLES_AUTO_RESHARD_INTERVAL``, key
``supervisor.auto_reshard_interval``, a duration such as ``8h`` (see ``supervisor.reshard.auto``).)

The config file (``--config FILE``) is the one Spectacles TOML file shared by all Spectacles
services (SPEC.md, "Config"), plus a ``[supervisor]`` table for this project::

    [discord]
    token = "..."                       # prefer DISCORD_TOKEN: files get copied around
      [discord.shards]
      count = 16                        # total shards (default: GET /gateway/bot "shards")
      ids = [0, 1, 2, 3]                # shards run here; a range string "0-3,8" also works

    [broker]
    url = "amqp://guest:guest@localhost:5672/%2F"   # several nodes: an array of URLs, or one
                                        # string with the URLs separated by commas
      [broker.groups]
      gateway = "gateway"               # the exchange; other services' groups may sit here too

    [supervisor]
    shards_per_process = 4              # default: ceil(shards / CPU cores)
    events = ["MESSAGE_CREATE", "GUILD_CREATE"]   # dispatches to publish (default: all;
                                        # "auto": those some queue is bound to)
    intents = "DEFAULT|MESSAGE_CONTENT" # names, an integer, or an array of names
    compress = "zlib-stream"            # or "zstd-stream" (the zstd extra), or "none"
                                        # (true / false also accepted: zlib-stream / none)
    log_level = "INFO"
    gateway_url = "wss://gateway.discord.gg"      # default: GET /gateway/bot "url"
    api_url = "https://discord.com/api/v10"
    state_dir = "./state"               # relative paths are relative to the working directory
    prefetch = 100                      # unacknowledged outbound messages per worker (1-65535)
    max_memory_mb = 512                 # recycle a worker past this RSS (default: no limit)
    child_timeout = 30                  # replace a worker silent on IPC this long (seconds)
    buffer_events = 10000               # dispatches held per worker until RabbitMQ confirms
    buffer_mb = 64                      # the same bound in megabytes
    stall_timeout = 30                  # seconds a shard may be unable to publish before it
                                        # closes resumably (it resumes once RabbitMQ is back)
    metrics_addr = "127.0.0.1:9400"     # Prometheus /metrics (default: off; ":9400" = every
                                        # interface), see docs/METRICS.md
    log_format = "text"                 # or "json": one JSON object per line
    queue_type = "classic"              # or "quorum": the type of <group>:<shard> and
                                        # <group>:SEND (see docs/RELIABILITY.md)
    amqp_ca_file = "/etc/spectacles/rabbit-ca.pem"   # TLS (amqps:// URLs): the CA to trust
    amqp_cert_file = "/etc/spectacles/client.pem"    # default: the system's; a client
    amqp_key_file = "/etc/spectacles/client.key"     # certificate and its key if asked for

Tables other services own (``[redis]``, ``[prometheus]``...) are ignored, as are other keys of
``[broker.groups]``; an unknown key inside ``[discord]``, ``[discord.shards]``, ``[broker]`` or
``[supervisor]`` is an error, as is a wrong type, naming the file, the line (when it can be found
in the text) and the key: ``spectacles.toml, line 12: supervisor.prefetch: must be at least 1``.

Every resolved value remembers its :class:`Origin` (flag, env, file or default) so that
``spectacles-supervisor config --show`` can print it; :meth:`StartSettings.describe` never shows
the token and masks the password of every AMQP URL.

``--amqp-url`` takes several URLs separated by commas (each with its scheme; a comma in a
password needs no encoding unless ``scheme://`` follows it), the nodes of one cluster: a worker
moves to the next when a connect fails or a connection is lost (``shard_worker.amqp.params``).
Every URL is checked here, and so are the TLS files (they are read to build the TLS context
once, so a missing or mismatched file is one line and exit 2, not a worker that cannot connect).
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import json
import os
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

from shard_worker.amqp import params as amqp_params
from shard_worker.config import DEFAULT_AMQP_URL, DEFAULT_GROUP, WorkerConfig
from shard_worker.event_selection import AUTO
from shard_worker.gateway.inflate import zstd_unavailable
from shard_worker.gateway.intents import DEFAULT_INTENTS, format_intents, parse_intents
from shard_worker.gateway.protocol import (
    COMPRESS_CHOICES,
    COMPRESS_ZLIB_STREAM,
    COMPRESS_ZSTD_STREAM,
    compress_name,
)
from shard_worker.logs import mask_url
from shard_worker.shard_ranges import (
    MAX_SHARD_COUNT,
    default_shards_per_process,
    format_shard_ids,
    parse_shard_ids,
    split_groups,
)
from supervisor.discord.api import DEFAULT_API_URL, GatewayBot
from supervisor.reshard.auto import DEFAULT_INTERVAL_S as AUTO_RESHARD_INTERVAL_S
from supervisor.reshard.auto import MAX_INTERVAL_S as AUTO_RESHARD_MAX_S
from supervisor.reshard.auto import MIN_INTERVAL_S as AUTO_RESHARD_MIN_S

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

DEFAULT_STATE_DIR = "./state"
DEFAULT_PREFETCH = 100
DEFAULT_CHILD_TIMEOUT = 30
DEFAULT_REDIS_PREFIX = "spectacles"
DEFAULT_BUFFER_EVENTS = 10_000
DEFAULT_BUFFER_MB = 64
DEFAULT_STALL_TIMEOUT = 30
DEFAULT_LOG_LEVEL = "INFO"
DEFAULT_LOG_FORMAT = "text"
LOG_FORMATS = ("text", "json")
#: AMQP's prefetch count is a 16-bit field.
MAX_PREFETCH = 65535
LOG_LEVELS = ("TRACE", "DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
TOKEN_MASK = "********"


class SettingsError(ValueError):
    """A setting has a bad value, or the config file is unreadable. ``str()`` is one line."""


class Source(str, enum.Enum):
    """Where a resolved setting came from."""

    FLAG = "flag"
    ENV = "env"
    FILE = "file"
    DEFAULT = "default"


@dataclass(frozen=True)
class Origin:
    """A :class:`Source` with its detail: the flag, the variable, or ``file: key``."""

    source: Source
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.source.value} {self.detail}" if self.detail else self.source.value


# -- value parsers ----------------------------------------------------------------------------
# Text parsers take a flag's or an environment variable's string; file parsers take the TOML
# value. Both raise ValueError with a reason that never contains the token or a URL password.

_TOML_TYPES: tuple[tuple[type, str], ...] = (
    (bool, "a boolean"),
    (int, "an integer"),
    (float, "a float"),
    (str, "a string"),
    (list, "an array"),
    (dict, "a table"),
)


def _type_name(value: Any) -> str:
    for kind, name in _TOML_TYPES:
        if isinstance(value, kind):
            return name
    return "a date/time" if hasattr(value, "isoformat") else type(value).__name__


def _expect(value: Any, kind: type, wanted: str) -> None:
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ValueError(f"expected {wanted}, got {_type_name(value)}")


def _int_in_range(value: int, low: int, high: int) -> int:
    if value < low:
        raise ValueError(f"must be at least {low}, not {value}")
    if value > high:
        raise ValueError(f"must be at most {high}, not {value}")
    return value


def _int_text(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        stripped = text.strip()
        if not re.fullmatch(r"[+-]?[0-9]{1,18}", stripped):
            raise ValueError(f"expected an integer, got {text!r}")
        return _int_in_range(int(stripped), low, high)

    return parse


def _int_file(low: int, high: int) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        _expect(value, int, "an integer")
        return _int_in_range(value, low, high)

    return parse


def _url_text(
    schemes: tuple[str, ...], what: str, strip_slash: bool = False
) -> Callable[[str], str]:
    def parse(text: str) -> str:
        url = text.strip()
        shown = mask_url(url)
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 - raises ValueError for a bad port
        except ValueError:
            raise ValueError(f"{shown!r} is not a valid URL") from None
        if parts.scheme.lower() not in schemes:
            wanted = " or ".join(f"{scheme}://" for scheme in schemes)
            raise ValueError(f"{shown!r} is not {what} URL (expected {wanted})")
        if not parts.hostname:
            raise ValueError(f"{shown!r} has no host")
        return url.rstrip("/") if strip_slash else url

    return parse


def _token_text(text: str) -> str:
    token = re.sub(r"^\s*(?i:bot)\s+", "", text).strip()
    if not token:
        raise ValueError("the token is empty")
    if not token.isascii() or any(ch.isspace() or not ch.isprintable() for ch in token):
        raise ValueError("the token contains spaces, control or non-ASCII characters")
    return token


def _shard_ids_text(text: str) -> tuple[int, ...]:
    return tuple(parse_shard_ids(text))


def _shard_ids_file(value: Any) -> tuple[int, ...]:
    if isinstance(value, str):
        return _shard_ids_text(value)
    if not isinstance(value, list):
        raise ValueError(
            f"expected an array of shard ids or a range string, got {_type_name(value)}"
        )
    ids: set[int] = set()
    for item in value:
        if isinstance(item, bool) or not isinstance(item, int):
            raise ValueError(f"expected shard ids (integers), got {_type_name(item)} in the array")
        if item < 0:
            raise ValueError(f"shard ids cannot be negative: {item}")
        if item >= MAX_SHARD_COUNT:
            raise ValueError(f"shard id {item} is too large (at most {MAX_SHARD_COUNT - 1})")
        ids.add(item)
    return tuple(sorted(ids))


_EVENT = re.compile(r"[A-Z][A-Z0-9_]*")


def _event_names(names: Iterable[str]) -> frozenset[str]:
    events = set()
    for name in names:
        event = name.strip().upper()
        if not _EVENT.fullmatch(event):
            raise ValueError(f"{name!r} is not a gateway event name (such as MESSAGE_CREATE)")
        events.add(event)
    return frozenset(events)


def _events_text(text: str) -> frozenset[str] | str | None:
    items = [item.strip() for item in text.split(",")]
    if items in (["*"], ["ALL"], ["all"]):
        return None
    if _auto(items):
        return AUTO
    if not any(items):
        raise ValueError("no event names given (use * for every event)")
    if not all(items):
        raise ValueError(f"empty item in the event list {text.strip()!r}")
    return _event_names(items)


def _events_file(value: Any) -> frozenset[str] | str | None:
    if isinstance(value, str) and value.strip().lower() == AUTO:
        return AUTO
    _expect(value, list, f"an array of event names (or {AUTO!r})")
    if value == ["*"]:
        return None
    for item in value:
        _expect(item, str, "event names (strings) in the array")
    if _auto(value):
        return AUTO
    return _event_names(value)


def _auto(items: list[str]) -> bool:
    """Whether ``items`` is ``auto`` alone; ``auto`` beside event names is an error."""
    names = [item.strip().lower() for item in items]
    if AUTO in names and len(names) > 1:
        raise ValueError(f"{AUTO} learns which events to publish: give it alone, not in a list")
    return names == [AUTO]


def _intents_file(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("expected intent names or an integer, got a boolean")
    if isinstance(value, int):
        return parse_intents(str(value))
    if isinstance(value, str):
        return parse_intents(value)
    if isinstance(value, list):
        for item in value:
            _expect(item, str, "intent names (strings) in the array")
        return parse_intents(",".join(value))
    raise ValueError(f"expected intent names or an integer, got {_type_name(value)}")


#: Short spellings of the transport compressions.
_COMPRESS_ALIASES = {"zlib": COMPRESS_ZLIB_STREAM, "zstd": COMPRESS_ZSTD_STREAM}


def _compress_text(text: str) -> str:
    """zlib-stream, zstd-stream or none; zstd-stream only where a zstd library is installed."""
    value = text.strip().lower()
    value = _COMPRESS_ALIASES.get(value, value)
    if value not in COMPRESS_CHOICES:
        raise ValueError(f"expected zlib-stream, zstd-stream or none, got {text!r}")
    if value == COMPRESS_ZSTD_STREAM and (missing := zstd_unavailable()):
        raise ValueError(missing)
    return value


def _compress_file(value: Any) -> str:
    if isinstance(value, bool):
        return compress_name(value)
    if isinstance(value, str):
        return _compress_text(value)
    raise ValueError(
        f'expected "zlib-stream", "zstd-stream", "none" or a boolean, got {_type_name(value)}'
    )


def _log_level_text(text: str) -> str:
    level = text.strip().upper()
    if level == "WARN":
        level = "WARNING"
    if level not in LOG_LEVELS:
        raise ValueError(f"expected one of {', '.join(LOG_LEVELS)}, got {text!r}")
    return level


_GROUP = re.compile(r"[A-Za-z0-9_.\-]{1,255}")


def _log_format_text(text: str) -> str:
    value = text.strip().lower()
    if value not in LOG_FORMATS:
        raise ValueError(f"expected {' or '.join(LOG_FORMATS)}, got {text!r}")
    return value


_HOST = re.compile(r"[A-Za-z0-9_.\-]{1,253}")
_METRICS_OFF = ("off", "none", "no", "false", "0")


def _metrics_addr_text(text: str) -> tuple[str, int] | None:
    """``host:port``, ``[v6]:port`` or ``:port`` (every interface); ``off`` turns it off."""
    value = text.strip()
    if value.lower() in _METRICS_OFF:
        return None
    if value.startswith("["):
        host, sep, port = value[1:].partition("]:")
        if not sep or ":" not in host:
            raise ValueError(f"expected [IPv6 address]:port, got {text!r}")
    else:
        host, sep, port = value.rpartition(":")
        if not sep:
            raise ValueError(f"expected host:port (or :port for every interface), got {text!r}")
        if ":" in host:
            raise ValueError(f"write an IPv6 address in brackets ([::1]:9400), got {text!r}")
        if host and not _HOST.fullmatch(host):
            raise ValueError(f"{host!r} is not a host name or address")
    if not re.fullmatch(r"[0-9]{1,5}", port):
        raise ValueError(f"expected a port number after the colon, got {text!r}")
    return (host or "0.0.0.0", _int_in_range(int(port), 1, 65535))


def format_metrics_addr(addr: tuple[str, int] | None) -> str:
    if addr is None:
        return "(off)"
    host, port = addr
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _group_text(text: str) -> str:
    group = text.strip()
    if not _GROUP.fullmatch(group):
        raise ValueError(
            f"{text!r} is not a usable exchange name (1-255 letters, digits, '-', '_' or '.')"
        )
    if group.startswith("amq."):
        raise ValueError(f"{group!r}: exchange names starting with 'amq.' are reserved by AMQP")
    return group


def _path_text(text: str) -> Path:
    if not text.strip():
        raise ValueError("the path is empty")
    return Path(text.strip()).expanduser()


def _amqp_urls_text(text: str) -> str:
    """One or more AMQP URLs (comma-separated), each checked; normalised to ``a,b``."""
    return ",".join(amqp_params.parse_urls(text))


def _amqp_urls_file(value: Any) -> str:
    """A URL string (commas allowed) or an array of URL strings."""
    if isinstance(value, list):
        for item in value:
            _expect(item, str, "URL strings in the array")
        return ",".join(amqp_params.parse_urls(value))
    _expect(value, str, "a URL string or an array of them")
    return _amqp_urls_text(value)


def _queue_type_text(text: str) -> str:
    value = text.strip().lower()
    if value not in amqp_params.QUEUE_TYPES:
        raise ValueError(f"expected {' or '.join(amqp_params.QUEUE_TYPES)}, got {text!r}")
    return value


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")


_NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,62}")


def _node_name_text(text: str) -> str:
    name = text.strip()
    if not _NODE_NAME.fullmatch(name):
        raise ValueError(f"{text!r} is not a node name (1-63 letters, digits, '-', '_' or '.')")
    return name


def _bool_text(text: str) -> bool:
    value = text.strip().lower()
    if value in _TRUE or value in _FALSE:
        return value in _TRUE
    raise ValueError(f"expected true or false, got {text!r}")


def _bool_file(value: Any) -> bool:
    _expect(value, bool, "true or false")
    return bool(value)


_DURATION = re.compile(r"([0-9]{1,9}(?:\.[0-9]{1,3})?)\s*(s|m|h|d)?")
_DURATION_UNITS = {None: 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration_text(low: float, high: float) -> Callable[[str], float]:
    """Seconds from ``90``, ``90s``, ``30m``, ``8h`` or ``1d``, within ``[low, high]``."""

    def parse(text: str) -> float:
        match = _DURATION.fullmatch(text.strip().lower())
        if not match:
            raise ValueError(f"expected a duration such as 30m or 8h, got {text!r}")
        seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        if not low <= seconds <= high:
            raise ValueError(f"must be between {low:g} s and {high / 86400:g} days, not {text.strip()}")
        return seconds

    return parse


def _duration_file(low: float, high: float) -> Callable[[Any], float]:
    def parse(value: Any) -> float:
        if isinstance(value, int) and not isinstance(value, bool):
            return _duration_text(low, high)(str(value))
        _expect(value, str, "a duration string (\"8h\") or seconds")
        return _duration_text(low, high)(value)

    return parse


def _from_str(parse: Callable[[str], Any]) -> Callable[[Any], Any]:
    def parse_file(value: Any) -> Any:
        _expect(value, str, "a string")
        return parse(value)

    return parse_file


#: Discord's presence statuses, and the fields of a presence (IDENTIFY's ``presence``).
PRESENCE_STATUSES = ("online", "dnd", "idle", "invisible", "offline")
_PRESENCE_FIELDS = {"since", "activities", "status", "afk"}
#: IDENTIFY fields this project sets itself: ``identify_extra`` may not name them.
_IDENTIFY_OWN = {"token", "properties", "intents", "shard", "compress", "large_threshold", "presence"}


def _json_object(value: Any, what: str) -> dict:
    """A TOML table, or a JSON object as text (a flag, an environment variable)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise ValueError(f"expected a JSON object for {what}, got {value!r}") from None
    if not isinstance(value, dict):
        raise ValueError(f"expected a JSON object (or a table) for {what}, got {_type_name(value)}")
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be plain JSON") from None
    return value


def _presence(value: Any) -> dict:
    """IDENTIFY's initial presence: ``status`` (online, dnd, idle, invisible, offline),
    ``activities`` (objects with a ``name`` and an integer ``type``), ``afk``, ``since``;
    missing fields get Discord's defaults."""
    given = _json_object(value, "the presence")
    unknown = sorted(set(given) - _PRESENCE_FIELDS)
    if unknown:
        raise ValueError(f"unknown presence field {unknown[0]!r} (known: {', '.join(sorted(_PRESENCE_FIELDS))})")
    presence = {"since": None, "activities": [], "status": "online", "afk": False, **given}
    if presence["status"] not in PRESENCE_STATUSES:
        raise ValueError(f"presence status must be one of {', '.join(PRESENCE_STATUSES)}, got {presence['status']!r}")
    activities = presence["activities"]
    if not isinstance(activities, list) or not all(
        isinstance(a, dict) and isinstance(a.get("name"), str) and type(a.get("type")) is int for a in activities
    ):
        raise ValueError("presence activities must be objects with a string 'name' and an integer 'type'")
    if type(presence["afk"]) is not bool or not (presence["since"] is None or type(presence["since"]) is int):
        raise ValueError("presence afk must be true or false, and since null or an integer (ms)")
    return presence


def _identify_extra(value: Any) -> dict:
    """Further IDENTIFY fields Discord adds (a ``capabilities`` bit field...), sent as given."""
    extra = _json_object(value, "identify_extra")
    own = sorted(set(extra) & _IDENTIFY_OWN)
    if own:
        raise ValueError(f"identify_extra may not set {own[0]!r} (this project sets it)")
    return extra


# -- the table of settings --------------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    """One ``start`` setting: its flag, environment variables, config key, default and parsers."""

    name: str
    flag: str
    envs: tuple[str, ...]
    key: tuple[str, ...]
    default: Any
    from_text: Callable[[str], Any]
    from_file: Callable[[Any], Any]
    metavar: str
    help: str
    #: A flag that takes no value on the command line gives this text (``--auto-reshard``);
    #: None: the flag takes a value.
    flag_value: str | None = None

    @property
    def dotted_key(self) -> str:
        return ".".join(self.key)


_GATEWAY_URL = _url_text(("ws", "wss"), "a WebSocket", strip_slash=True)
_API_URL = _url_text(("http", "https"), "an HTTP", strip_slash=True)
_REDIS_URL = _url_text(("redis", "rediss", "unix"), "a Redis")

#: Every ``start`` setting, in the order ``config --show`` prints them.
SETTINGS: tuple[Setting, ...] = (
    Setting("token", "--token", ("DISCORD_TOKEN",), ("discord", "token"), "",
            _token_text, _from_str(_token_text), "TOKEN",
            "Bot token. Prefer the environment variable: flags show up in process lists."),
    Setting("shard_ids", "--shards", ("DISCORD_SHARD_IDS",), ("discord", "shards", "ids"), None,
            _shard_ids_text, _shard_ids_file, "IDS",
            "Shards to run, e.g. 0-15 or 0-3,8,10-11 (default: all shards)."),
    Setting("shard_count", "--shard-count", ("DISCORD_SHARD_COUNT",),
            ("discord", "shards", "count"), None,
            _int_text(1, MAX_SHARD_COUNT), _int_file(1, MAX_SHARD_COUNT), "N",
            "Total number of shards (default: 'shards' from GET /gateway/bot)."),
    Setting("shards_per_process", "--shards-per-process", ("SPECTACLES_SHARDS_PER_PROCESS",),
            ("supervisor", "shards_per_process"), None,
            _int_text(1, MAX_SHARD_COUNT), _int_file(1, MAX_SHARD_COUNT), "N",
            "Shards per worker process (default: spread over the CPU cores)."),
    Setting("cluster", "--cluster", ("SPECTACLES_CLUSTER",), ("supervisor", "cluster"), False,
            _bool_text, _bool_file, "",
            "Cluster mode: the nodes sharing --redis-url lease the groups of --shards-per-process "
            "shards among themselves, take over a dead node's, rebalance (needs --redis-url, "
            "--shard-count and --shards-per-process; no --shards). See README, Cluster mode.",
            flag_value="true"),
    Setting("node_name", "--node-name", ("SPECTACLES_NODE_NAME",), ("supervisor", "node_name"), None,
            _node_name_text, _from_str(_node_name_text), "NAME",
            "This node's name in the cluster, unique among the live nodes (default: the host name)."),
    Setting("capacity", "--capacity", ("SPECTACLES_CAPACITY",), ("supervisor", "capacity"), 1,
            _int_text(1, 1000), _int_file(1, 1000), "W",
            "This node's weight in the cluster: its share of the groups is W / the sum (default: 1)."),
    Setting("shards_from_ordinal", "--shards-from-ordinal", ("SPECTACLES_SHARDS_FROM_ORDINAL",),
            ("supervisor", "shards_from_ordinal"), False, _bool_text, _bool_file, "",
            "Kubernetes StatefulSet: run the shards of this pod's ordinal (the -N ending its host "
            "name, or SPECTACLES_ORDINAL), with --shard-count and --pods or --shards-per-pod.",
            flag_value="true"),
    Setting("pods", "--pods", ("SPECTACLES_PODS",), ("supervisor", "pods"), None,
            _int_text(1, MAX_SHARD_COUNT), _int_file(1, MAX_SHARD_COUNT), "P",
            "With --shards-from-ordinal: the shard count split evenly over P pods."),
    Setting("shards_per_pod", "--shards-per-pod", ("SPECTACLES_SHARDS_PER_POD",),
            ("supervisor", "shards_per_pod"), None,
            _int_text(1, MAX_SHARD_COUNT), _int_file(1, MAX_SHARD_COUNT), "K",
            "With --shards-from-ordinal: K consecutive shards per pod."),
    Setting("amqp_url", "--amqp-url", ("AMQP_URL",), ("broker", "url"), DEFAULT_AMQP_URL,
            _amqp_urls_text, _amqp_urls_file, "URL[,URL...]",
            "RabbitMQ URL, or several separated by commas (the nodes of a cluster, tried in turn; "
            f"amqps:// for TLS; default: {DEFAULT_AMQP_URL})."),
    Setting("queue_type", "--queue-type", ("SPECTACLES_QUEUE_TYPE",), ("supervisor", "queue_type"),
            amqp_params.DEFAULT_QUEUE_TYPE, _queue_type_text, _from_str(_queue_type_text),
            "[classic|quorum]",
            "Type of the queues the gateway declares, <group>:<shard> and <group>:SEND "
            "(default: classic, durable; quorum: replicated over the cluster)."),
    Setting("amqp_ca_file", "--amqp-ca-file", ("SPECTACLES_AMQP_CA_FILE",),
            ("supervisor", "amqp_ca_file"), None, _path_text, _from_str(_path_text), "FILE",
            "TLS (amqps://): PEM file of the CA that signed RabbitMQ's certificate "
            "(default: the system's CAs)."),
    Setting("amqp_cert_file", "--amqp-cert-file", ("SPECTACLES_AMQP_CERT_FILE",),
            ("supervisor", "amqp_cert_file"), None, _path_text, _from_str(_path_text), "FILE",
            "TLS (amqps://): PEM client certificate, for a RabbitMQ that asks for one."),
    Setting("amqp_key_file", "--amqp-key-file", ("SPECTACLES_AMQP_KEY_FILE",),
            ("supervisor", "amqp_key_file"), None, _path_text, _from_str(_path_text), "FILE",
            "TLS (amqps://): PEM private key of the client certificate, without a passphrase "
            "(default: in the certificate file)."),
    Setting("group", "--group", ("BROKER_GROUP",), ("broker", "groups", "gateway"),
            DEFAULT_GROUP, _group_text, _from_str(_group_text), "NAME",
            f"Broker group, i.e. the AMQP exchange (default: {DEFAULT_GROUP})."),
    Setting("events", "--events", ("DISCORD_EVENTS",), ("supervisor", "events"), None,
            _events_text, _events_file, "LIST|auto",
            "Comma-separated dispatch events to publish, * (default: every event), or auto: "
            "only those some queue is bound to, learnt from RabbitMQ's basic.return."),
    Setting("intents", "--intents", ("DISCORD_INTENTS", "DISCORD_RAW_INTENTS"),
            ("supervisor", "intents"), DEFAULT_INTENTS,
            parse_intents, _intents_file, "INTENTS",
            "Intent names (GUILDS,GUILD_MESSAGES), ALL, DEFAULT, NONE or an integer "
            "(default: DEFAULT, every non-privileged intent)."),
    Setting("gateway_url", "--gateway-url", ("DISCORD_GATEWAY_URL",),
            ("supervisor", "gateway_url"), None,
            _GATEWAY_URL, _from_str(_GATEWAY_URL), "URL",
            "Gateway URL (default: 'url' from GET /gateway/bot)."),
    Setting("api_url", "--api-url", ("DISCORD_API_URL",), ("supervisor", "api_url"),
            DEFAULT_API_URL, _API_URL, _from_str(_API_URL), "URL",
            f"Discord REST API base URL (default: {DEFAULT_API_URL})."),
    Setting("compress", "--compress", ("SPECTACLES_COMPRESS",), ("supervisor", "compress"),
            COMPRESS_ZLIB_STREAM, _compress_text, _compress_file, "[zlib-stream|zstd-stream|none]",
            "Gateway transport compression: zlib-stream, zstd-stream (needs the zstd extra) or "
            "none (default: zlib-stream)."),
    Setting("log_level", "--log-level", ("SPECTACLES_LOG_LEVEL",), ("supervisor", "log_level"),
            DEFAULT_LOG_LEVEL, _log_level_text, _from_str(_log_level_text), "LEVEL",
            "TRACE (payloads, token redacted), DEBUG, INFO, WARNING, ERROR or CRITICAL (default: INFO)."),
    Setting("state_dir", "--state-dir", ("SPECTACLES_STATE_DIR",), ("supervisor", "state_dir"),
            Path(DEFAULT_STATE_DIR), _path_text, _from_str(_path_text), "DIR",
            f"Where sessions are kept between restarts (default: {DEFAULT_STATE_DIR})."),
    Setting("prefetch", "--prefetch", ("SPECTACLES_PREFETCH",), ("supervisor", "prefetch"),
            DEFAULT_PREFETCH, _int_text(1, MAX_PREFETCH), _int_file(1, MAX_PREFETCH), "N",
            f"Unacknowledged outbound messages per worker (default: {DEFAULT_PREFETCH})."),
    Setting("max_memory_mb", "--max-memory-mb", ("SPECTACLES_MAX_MEMORY_MB",),
            ("supervisor", "max_memory_mb"), None,
            _int_text(16, 1 << 20), _int_file(16, 1 << 20), "MB",
            "Recycle a worker whose RSS grows past this (its shards resume; default: no limit)."),
    Setting("child_timeout", "--child-timeout", ("SPECTACLES_CHILD_TIMEOUT",),
            ("supervisor", "child_timeout"), DEFAULT_CHILD_TIMEOUT,
            _int_text(3, 3600), _int_file(3, 3600), "SECONDS",
            f"Replace a worker that sends no IPC heartbeat for this long "
            f"(default: {DEFAULT_CHILD_TIMEOUT})."),
    Setting("buffer_events", "--buffer-events", ("SPECTACLES_BUFFER_EVENTS",),
            ("supervisor", "buffer_events"), DEFAULT_BUFFER_EVENTS,
            _int_text(10, 10_000_000), _int_file(10, 10_000_000), "N",
            "Dispatches a worker holds until RabbitMQ confirms them; when full its shards stop "
            f"reading (default: {DEFAULT_BUFFER_EVENTS})."),
    Setting("buffer_mb", "--buffer-mb", ("SPECTACLES_BUFFER_MB",),
            ("supervisor", "buffer_mb"), DEFAULT_BUFFER_MB,
            _int_text(1, 1 << 16), _int_file(1, 1 << 16), "MB",
            f"The same bound in megabytes of bodies (default: {DEFAULT_BUFFER_MB})."),
    Setting("stall_timeout", "--stall-timeout", ("SPECTACLES_STALL_TIMEOUT",),
            ("supervisor", "stall_timeout"), DEFAULT_STALL_TIMEOUT,
            _int_text(1, 3600), _int_file(1, 3600), "SECONDS",
            "A shard that cannot publish this long closes resumably and resumes when RabbitMQ "
            f"is back (default: {DEFAULT_STALL_TIMEOUT})."),
    Setting("large_threshold", "--large-threshold", ("DISCORD_LARGE_THRESHOLD",),
            ("supervisor", "large_threshold"), None, _int_text(50, 250), _int_file(50, 250), "N",
            "IDENTIFY's large_threshold: members above which a guild's offline members are not "
            "sent (50-250; default: Discord's, 50)."),
    Setting("presence", "--presence", ("DISCORD_PRESENCE",), ("supervisor", "presence"), None,
            _presence, _presence, "JSON",
            "IDENTIFY's initial presence as a JSON object (a table in the config file): status, "
            "activities, afk, since (default: none)."),
    Setting("identify_extra", "--identify-extra", ("SPECTACLES_IDENTIFY_EXTRA",),
            ("supervisor", "identify_extra"), None, _identify_extra, _identify_extra, "JSON",
            "Further IDENTIFY fields as a JSON object, sent as given, e.g. {\"capabilities\": "
            "16381} (default: none)."),
    Setting("identify_reserve", "--identify-reserve", ("SPECTACLES_IDENTIFY_RESERVE",),
            ("supervisor", "identify_reserve"), None, _int_text(0, 1_000_000), _int_file(0, 1_000_000), "N",
            "Identifies of the daily budget never spent on our own: identifies are held (status, "
            "/metrics, /readyz say so) once only this many are left (default: one full restart of "
            "the shards run here, one per shard)."),
    Setting("metrics_addr", "--metrics-addr", ("SPECTACLES_METRICS_ADDR",),
            ("supervisor", "metrics_addr"), None,
            _metrics_addr_text, _from_str(_metrics_addr_text), "HOST:PORT",
            "Serve Prometheus metrics at http://HOST:PORT/metrics from the supervisor "
            "(:PORT for every interface; default: off). See docs/METRICS.md."),
    Setting("log_format", "--log-format", ("SPECTACLES_LOG_FORMAT",), ("supervisor", "log_format"),
            DEFAULT_LOG_FORMAT, _log_format_text, _from_str(_log_format_text), "[text|json]",
            "Log lines as text, or as JSON objects with time, level, logger, message and "
            "shard/group when known (default: text)."),
    Setting("redis_url", "--redis-url", ("REDIS_URL",), ("supervisor", "redis_url"), None,
            _REDIS_URL, _from_str(_REDIS_URL), "URL",
            "Redis shared by every host of the bot: identify buckets, budget and sessions "
            "(default: none, everything local)."),
    Setting("redis_prefix", "--redis-prefix", ("SPECTACLES_REDIS_PREFIX",),
            ("supervisor", "redis_prefix"), DEFAULT_REDIS_PREFIX, _group_text, _from_str(_group_text),
            "PREFIX", f"Key prefix in Redis, one per bot (default: {DEFAULT_REDIS_PREFIX})."),
    Setting("shard_count_multiple", "--shard-count-multiple", ("SPECTACLES_SHARD_COUNT_MULTIPLE",),
            ("supervisor", "shard_count_multiple"), 1,
            _int_text(1, MAX_SHARD_COUNT), _int_file(1, MAX_SHARD_COUNT), "M",
            "A reshard's shard count must be a multiple of this, the number Discord gives "
            "large bots (default: 1)."),
    Setting("auto_reshard", "--auto-reshard", ("SPECTACLES_AUTO_RESHARD",), ("supervisor", "auto_reshard"),
            False, _bool_text, _bool_file, "",
            "Reshard by itself when Discord recommends more shards (checked every "
            "--auto-reshard-interval) or closes a shard with 4011, instead of halting "
            "(default: off). See README, Resharding.", flag_value="true"),
    Setting("auto_reshard_interval", "--auto-reshard-interval", ("SPECTACLES_AUTO_RESHARD_INTERVAL",),
            ("supervisor", "auto_reshard_interval"), AUTO_RESHARD_INTERVAL_S,
            _duration_text(AUTO_RESHARD_MIN_S, AUTO_RESHARD_MAX_S),
            _duration_file(AUTO_RESHARD_MIN_S, AUTO_RESHARD_MAX_S), "DURATION",
            "How often --auto-reshard asks GET /gateway/bot for the recommended count: 30m, 8h, "
            "1d or seconds (default: 8h)."),
)  # fmt: skip
SETTINGS_BY_NAME: Mapping[str, Setting] = MappingProxyType({s.name: s for s in SETTINGS})
#: The flags dict key of ``--config``.
CONFIG_FLAG = "config"


# -- the config file --------------------------------------------------------------------------


@dataclass(frozen=True)
class ConfigFile:
    """A loaded and checked config file: parsed values by setting name, and their dotted keys."""

    path: Path
    values: Mapping[str, Any]
    keys: Mapping[str, str]


def _tables() -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for setting in SETTINGS:
        node = tree
        for part in setting.key[:-1]:
            node = node.setdefault(part, {})
        node[setting.key[-1]] = setting
    return tree


_SCHEMA = _tables()
#: Tables whose unknown keys belong to other Spectacles services.
_OPEN_TABLES = {("broker", "groups")}
_TOML_POSITION = re.compile(
    r"^(?P<reason>.*?)\s*\(at (?:line (?P<line>\d+), column (?P<col>\d+)|end of document)\)$"
)


def _suggest(word: str, options: Iterable[str], form: str = "'{}'") -> str:
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.75)
    return f" (did you mean {form.format(close[0])}?)" if close else ""


_BARE_OR_QUOTED = r"""(?:[A-Za-z0-9_-]+|"(?:[^"\\]|\\.)*"|'[^']*')"""
_DOTTED = rf"{_BARE_OR_QUOTED}(?:\s*\.\s*{_BARE_OR_QUOTED})*"
_TABLE_LINE = re.compile(rf"^\s*\[\[?\s*(?P<key>{_DOTTED})\s*\]\]?\s*(?:#.*)?$")
_KEY_LINE = re.compile(rf"^\s*(?P<key>{_DOTTED})\s*=")
_KEY_PART = re.compile(_BARE_OR_QUOTED)


def _key_parts(dotted: str) -> tuple[str, ...]:
    parts = []
    for match in _KEY_PART.finditer(dotted):
        part = match.group(0)
        if part[0] == '"':
            try:
                part = json.loads(part)
            except ValueError:
                part = part[1:-1]
        elif part[0] == "'":
            part = part[1:-1]
        parts.append(part)
    return tuple(parts)


def find_key_line(text: str, path: tuple[str, ...]) -> int | None:
    """The 1-based line of ``text`` (TOML) that defines ``path``: its ``key =`` line, or the
    ``[table]`` header that opens it. Best effort (a line scanner, not a TOML parser): ``None``
    when it is not found, e.g. inside an inline table or a multi-line value."""
    table: tuple[str, ...] = ()
    header_line: int | None = None
    inline_line: int | None = None  # a key whose value (an inline table) holds ``path``
    for number, line in enumerate(text.splitlines(), 1):
        header = _TABLE_LINE.match(line)
        if header:
            table = _key_parts(header.group("key"))
            if table == path or (header_line is None and table[: len(path)] == path):
                header_line = header_line or number
                if table == path:
                    return number
            continue
        key = _KEY_LINE.match(line)
        if key:
            full = table + _key_parts(key.group("key"))
            if full[: len(path)] == path:
                return header_line or number
            if inline_line is None and path[: len(full)] == full:
                inline_line = number
    return header_line or inline_line


def load_config_file(path: str | os.PathLike[str]) -> ConfigFile:
    """Read, check and parse a Spectacles TOML config file (see the module docstring).

    Raises :class:`SettingsError` naming the file and the line for invalid TOML, and the file,
    the line (when :func:`find_key_line` finds it) and the key for an unknown key or a bad value.
    """
    shown = os.fspath(path)
    try:
        with open(path, "rb") as file:
            source = file.read().decode("utf-8")
        document = tomllib.loads(source)
    except FileNotFoundError:
        raise SettingsError(f"config file {shown}: no such file") from None
    except IsADirectoryError:
        raise SettingsError(f"config file {shown}: is a directory") from None
    except OSError as error:
        raise SettingsError(f"config file {shown}: {error.strerror or error}") from None
    except UnicodeDecodeError as error:
        raise SettingsError(f"{shown}: invalid TOML: not UTF-8 (byte {error.start})") from None
    except tomllib.TOMLDecodeError as error:
        text = " ".join(str(error).split())
        match = _TOML_POSITION.match(text)
        if match and match.group("line"):
            where = f"{shown}, line {match.group('line')}, column {match.group('col')}"
            raise SettingsError(f"{where}: invalid TOML: {match.group('reason')}") from None
        if match:
            reason = match.group("reason")
            raise SettingsError(f"{shown}, at the end: invalid TOML: {reason}") from None
        raise SettingsError(f"{shown}: invalid TOML: {text}") from None

    def where(*key: str) -> str:
        line = find_key_line(source, key)
        return f"{shown}, line {line}" if line is not None else shown

    values: dict[str, Any] = {}
    keys: dict[str, str] = {}

    def walk(table: Mapping[str, Any], schema: Mapping[str, Any], prefix: tuple[str, ...]) -> None:
        for key, value in table.items():
            dotted = ".".join((*prefix, key))
            expected = schema.get(key)
            if expected is None:
                if not prefix:
                    # Another service's table, unless it is a typo of one of ours.
                    if isinstance(value, dict) and (hint := _suggest(key, schema, "[{}]")):
                        raise SettingsError(f"{where(key)}: unknown table [{key}]{hint}")
                    continue
                if prefix in _OPEN_TABLES:
                    continue
                hint = _suggest(key, schema, "'" + ".".join(prefix) + ".{}'")
                raise SettingsError(f"{where(*prefix, key)}: unknown key '{dotted}'{hint}")
            if isinstance(expected, dict):
                if not isinstance(value, dict):
                    got = _type_name(value)
                    raise SettingsError(
                        f"{where(*prefix, key)}: {dotted}: expected a table, got {got}"
                    )
                walk(value, expected, (*prefix, key))
                continue
            if value == "" or value == []:
                continue  # the Spectacles template's "not set"
            try:
                values[expected.name] = expected.from_file(value)
            except ValueError as error:
                raise SettingsError(f"{where(*prefix, key)}: {dotted}: {error}") from None
            keys[expected.name] = dotted

    walk(document, _SCHEMA, ())
    return ConfigFile(Path(path), MappingProxyType(values), MappingProxyType(keys))


# -- resolution -------------------------------------------------------------------------------


@dataclass(frozen=True)
class StartSettings:
    """Every ``start`` setting, resolved and validated, with its :class:`Origin` in ``sources``.

    ``None`` means "not given": ``shard_ids`` (run every shard), ``shard_count`` and
    ``gateway_url`` (ask ``GET /gateway/bot``), ``shards_per_process`` (spread over the cores),
    ``events`` (publish every dispatch). ``token`` is ``""`` when not given (``config --show``
    works without one; :meth:`require_token` is for ``start``).
    """

    token: str = field(repr=False)
    shard_ids: tuple[int, ...] | None
    shard_count: int | None
    shards_per_process: int | None
    amqp_url: str = field(repr=False)  # may hold a password
    group: str
    events: frozenset[str] | str | None  # a str is event_selection.AUTO
    intents: int
    gateway_url: str | None
    api_url: str
    compress: str
    log_level: str
    state_dir: Path
    prefetch: int
    max_memory_mb: int | None = None
    child_timeout: int = DEFAULT_CHILD_TIMEOUT
    buffer_events: int = DEFAULT_BUFFER_EVENTS
    buffer_mb: int = DEFAULT_BUFFER_MB
    stall_timeout: int = DEFAULT_STALL_TIMEOUT
    metrics_addr: tuple[str, int] | None = None
    log_format: str = DEFAULT_LOG_FORMAT
    large_threshold: int | None = None
    presence: dict | None = None
    identify_extra: dict | None = None
    identify_reserve: int | None = None
    queue_type: str = amqp_params.DEFAULT_QUEUE_TYPE
    amqp_ca_file: Path | None = None
    amqp_cert_file: Path | None = None
    amqp_key_file: Path | None = None
    redis_url: str | None = field(default=None, repr=False)  # may hold a password
    redis_prefix: str = DEFAULT_REDIS_PREFIX
    shard_count_multiple: int = 1
    auto_reshard: bool = False
    auto_reshard_interval: float = AUTO_RESHARD_INTERVAL_S
    cluster: bool = False
    node_name: str | None = None
    capacity: int = 1
    shards_from_ordinal: bool = False
    pods: int | None = None
    shards_per_pod: int | None = None
    config_file: Path | None = None
    sources: Mapping[str, Origin] = field(default_factory=dict, compare=False)

    @property
    def needs_gateway_bot(self) -> bool:
        """Whether ``GET /gateway/bot`` must be asked (for the shard count or the gateway URL)."""
        return self.shard_count is None or self.gateway_url is None

    def require_token(self) -> str:
        """The token, or :class:`SettingsError` telling every way to give one."""
        if not self.token:
            raise SettingsError(
                "no bot token: set DISCORD_TOKEN, pass --token or set [discord] token "
                "in the config file"
            )
        return self.token

    def describe(self) -> list[tuple[str, str, str]]:
        """``(setting, shown value, source)`` rows for ``config --show``; secrets are masked."""
        shown: dict[str, str] = {
            "token": TOKEN_MASK if self.token else "(not set)",
            "shard_ids": format_shard_ids(self.shard_ids)
            if self.shard_ids is not None
            else "(all shards)",
            "shard_count": str(self.shard_count)
            if self.shard_count is not None
            else "(from GET /gateway/bot)",
            "shards_per_process": str(self.shards_per_process)
            if self.shards_per_process is not None
            else f"(auto: shards / {os.cpu_count() or 1} CPU cores)",
            "amqp_url": mask_url(self.amqp_url),
            "queue_type": self.queue_type,
            "amqp_ca_file": str(self.amqp_ca_file) if self.amqp_ca_file else "(the system's CAs)",
            "amqp_cert_file": str(self.amqp_cert_file) if self.amqp_cert_file else "(none)",
            "amqp_key_file": str(self.amqp_key_file)
            if self.amqp_key_file
            else "(in the certificate file)"
            if self.amqp_cert_file
            else "(none)",
            "group": self.group,
            "events": "(all)"
            if self.events is None
            else f"{AUTO} (what some queue is bound to)"
            if self.events == AUTO
            else ",".join(sorted(self.events)),
            "intents": format_intents(self.intents),
            "gateway_url": self.gateway_url or "(from GET /gateway/bot)",
            "api_url": self.api_url,
            "compress": self.compress,
            "log_level": self.log_level,
            "state_dir": str(self.state_dir),
            "prefetch": str(self.prefetch),
            "max_memory_mb": str(self.max_memory_mb) if self.max_memory_mb else "(no limit)",
            "child_timeout": f"{self.child_timeout} s",
            "buffer_events": str(self.buffer_events),
            "buffer_mb": f"{self.buffer_mb} MB",
            "stall_timeout": f"{self.stall_timeout} s",
            "large_threshold": str(self.large_threshold) if self.large_threshold is not None else "(Discord's: 50)",
            "presence": json.dumps(self.presence, separators=(",", ":")) if self.presence else "(none)",
            "identify_extra": json.dumps(self.identify_extra, separators=(",", ":")) if self.identify_extra else "(none)",
            "identify_reserve": str(self.identify_reserve)
            if self.identify_reserve is not None
            else "(one per shard run here)",
            "metrics_addr": format_metrics_addr(self.metrics_addr),
            "log_format": self.log_format,
            "redis_url": mask_url(self.redis_url) if self.redis_url else "(none: everything local)",
            "redis_prefix": self.redis_prefix,
            "shard_count_multiple": str(self.shard_count_multiple),
            "auto_reshard": "on" if self.auto_reshard else "off",
            "auto_reshard_interval": format_duration(self.auto_reshard_interval),
            "cluster": "on" if self.cluster else "off",
            "node_name": self.node_name or f"(the host name: {__import__('socket').gethostname()})",
            "capacity": str(self.capacity),
            "shards_from_ordinal": "on" if self.shards_from_ordinal else "off",
            "pods": str(self.pods) if self.pods is not None else "(not set)",
            "shards_per_pod": str(self.shards_per_pod) if self.shards_per_pod is not None else "(not set)",
        }
        rows = [
            (name, value, str(self.sources.get(name, Origin(Source.DEFAULT))))
            for name, value in shown.items()
        ]
        rows.append(
            (
                "config",
                str(self.config_file) if self.config_file else "(none)",
                str(self.sources.get(CONFIG_FLAG, Origin(Source.DEFAULT))),
            )
        )
        return rows


def format_duration(seconds: float) -> str:
    """``8h``, ``30m``, ``1d`` or ``90s``: what ``--auto-reshard-interval`` reads back."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def _check_cluster(settings: StartSettings) -> None:
    """``--cluster`` needs the same groups on every node, cut by every node alike."""
    src = settings.sources
    if not settings.cluster:
        for name in ("node_name", "capacity"):
            if src[name].source is not Source.DEFAULT:
                raise SettingsError(f"{src[name]} needs --cluster")
        return
    if settings.shard_ids is not None:
        raise SettingsError(f"--cluster and {src['shard_ids']}: in a cluster the nodes lease the shards, give no --shards")
    if settings.auto_reshard:
        raise SettingsError(f"--cluster and {src['auto_reshard']}: a cluster does not reshard yet (see README, Cluster mode)")
    for name, flag in (("redis_url", "--redis-url"), ("shard_count", "--shard-count"), ("shards_per_process", "--shards-per-process")):
        if getattr(settings, name) is None:
            raise SettingsError(f"--cluster needs {flag} (every node must give the same)")


def _shards_from_ordinal(settings: StartSettings, env: Mapping[str, str]) -> StartSettings:
    """``--shards-from-ordinal``: the shard ids of this StatefulSet pod (:mod:`supervisor.config.ordinal`)."""
    from supervisor.config.ordinal import ordinal_of, parse_ordinal, shards_for_ordinal

    src = settings.sources
    if not settings.shards_from_ordinal:
        for name in ("pods", "shards_per_pod"):
            if getattr(settings, name) is not None:
                raise SettingsError(f"{src[name]} needs --shards-from-ordinal (it splits the shards over pods)")
        return settings
    if settings.shard_ids is not None:
        raise SettingsError(
            f"--shards-from-ordinal and {src['shard_ids']} both say which shards to run: give one of them"
        )
    if settings.shard_count is None:
        raise SettingsError("--shards-from-ordinal needs --shard-count: every pod must split the same count")
    if (settings.pods is None) == (settings.shards_per_pod is None):
        raise SettingsError("--shards-from-ordinal needs exactly one of --pods and --shards-per-pod")
    try:
        if env.get("SPECTACLES_ORDINAL"):
            ordinal, where = parse_ordinal(env["SPECTACLES_ORDINAL"]), "SPECTACLES_ORDINAL"
        else:
            host = env.get("HOSTNAME") or __import__("socket").gethostname()
            ordinal, where = ordinal_of(host), f"host {host}"
        ids = shards_for_ordinal(ordinal, settings.shard_count, pods=settings.pods, per_pod=settings.shards_per_pod)
    except ValueError as error:
        raise SettingsError(f"--shards-from-ordinal: {error}") from None
    of = f"of {settings.pods} pods" if settings.pods is not None else f"at {settings.shards_per_pod} per pod"
    origin = Origin(Source.FLAG, f"--shards-from-ordinal (ordinal {ordinal} {of}, from {where})")
    return dataclasses.replace(settings, shard_ids=tuple(ids), sources=MappingProxyType({**src, "shard_ids": origin}))


def _check_shard_range(ids: Iterable[int], count: int, ids_from: str, count_from: str) -> None:
    too_big = [shard for shard in ids if shard >= count]
    if too_big:
        raise SettingsError(
            f"shard id {max(too_big)} ({ids_from}) is out of range for {count} shards "
            f"({count_from}): shard ids go from 0 to {count - 1}"
        )


def resolve_start_settings(
    flags: Mapping[str, Any], environ: Mapping[str, str] | None = None
) -> StartSettings:
    """Resolve every setting: flag > environment > config file > default.

    ``flags`` maps setting names (see :data:`SETTINGS`) and ``"config"`` to the command-line
    strings, ``None`` when a flag was not given. ``environ`` defaults to :data:`os.environ`.
    Raises :class:`SettingsError` (one line, naming the flag, variable or file key) for any bad
    value, including shard ids not below the shard count when both are known.
    """
    env = os.environ if environ is None else environ
    config_path = flags.get(CONFIG_FLAG)
    config = load_config_file(config_path) if config_path else None

    values: dict[str, Any] = {}
    sources: dict[str, Origin] = {
        CONFIG_FLAG: Origin(Source.FLAG, "--config") if config_path else Origin(Source.DEFAULT)
    }
    for setting in SETTINGS:
        flag_value = flags.get(setting.name)
        env_name = next((name for name in setting.envs if env.get(name)), None)
        if flag_value is not None:
            try:
                values[setting.name] = setting.from_text(str(flag_value))
            except ValueError as error:
                raise SettingsError(f"{setting.flag}: {error}") from None
            sources[setting.name] = Origin(Source.FLAG, setting.flag)
        elif env_name is not None:
            try:
                values[setting.name] = setting.from_text(env[env_name])
            except ValueError as error:
                raise SettingsError(f"{env_name}: {error}") from None
            sources[setting.name] = Origin(Source.ENV, env_name)
        elif config is not None and setting.name in config.values:
            values[setting.name] = config.values[setting.name]
            detail = f"{config.path}: {config.keys[setting.name]}"
            sources[setting.name] = Origin(Source.FILE, detail)
        else:
            values[setting.name] = setting.default
            sources[setting.name] = Origin(Source.DEFAULT)

    settings = StartSettings(
        **values,
        config_file=Path(config_path) if config_path else None,
        sources=MappingProxyType(sources),
    )
    settings = _shards_from_ordinal(settings, env)
    _check_cluster(settings)
    if settings.shard_ids is not None and settings.shard_count is not None:
        _check_shard_range(
            settings.shard_ids,
            settings.shard_count,
            str(sources["shard_ids"]),
            str(sources["shard_count"]),
        )
    _check_amqp_tls(settings)
    _check_identify_size(settings)
    return settings


def _check_identify_size(settings: StartSettings) -> None:
    """The IDENTIFY with this presence and these extra fields fits Discord's 4096 bytes, for a
    token of the usual length (or the one given) and the largest shard numbers."""
    if settings.presence is None and not settings.identify_extra:
        return
    from shard_worker.gateway.state import ShardMachine

    count = MAX_SHARD_COUNT  # the longest shard numbers: the bound holds for any count
    token = settings.token or "x" * 72
    try:
        ShardMachine(count - 1, count, token, intents=settings.intents, large_threshold=settings.large_threshold,
                     presence=settings.presence, identify_extra=settings.identify_extra)  # fmt: skip
    except ValueError:
        where = [_label(settings, name) for name in ("presence", "identify_extra") if getattr(settings, name)]
        raise SettingsError(f"{' and '.join(where)}: the IDENTIFY would be over Discord's 4096 bytes") from None


TLS_SETTINGS = ("amqp_ca_file", "amqp_cert_file", "amqp_key_file")


def tls_files(settings: StartSettings) -> amqp_params.TlsFiles:
    """The TLS files of ``settings`` as the worker takes them (paths as strings)."""
    paths = (getattr(settings, name) for name in TLS_SETTINGS)
    return amqp_params.TlsFiles(*(str(path) if path is not None else None for path in paths))


def _label(settings: StartSettings, name: str) -> str:
    """How an error names where ``name`` came from: the flag, the variable or ``file: key``."""
    origin = settings.sources.get(name)
    return origin.detail if origin is not None and origin.detail else SETTINGS_BY_NAME[name].flag


def _check_amqp_tls(settings: StartSettings) -> None:
    """TLS files go with at least one ``amqps://`` URL, and must make a TLS context (they are
    read: a missing file, a key that does not match, an encrypted key are one line here)."""
    given = [name for name in TLS_SETTINGS if getattr(settings, name) is not None]
    if not given:
        return
    if not any(amqp_params.is_tls(url) for url in amqp_params.split_urls(settings.amqp_url)):
        raise SettingsError(
            f"{_label(settings, given[0])}: TLS files are for amqps:// URLs, and "
            f"{_label(settings, 'amqp_url')} has none (e.g. amqps://user:pass@rabbit:5671/%2F)"
        )
    try:
        amqp_params.ssl_context(tls_files(settings))
    except amqp_params.TlsConfigError as error:
        raise SettingsError(f"{_label(settings, error.setting)}: {error.reason}") from None


# -- from settings to worker configs ----------------------------------------------------------


def build_worker_config(settings: StartSettings, gateway_bot: GatewayBot | None) -> WorkerConfig:
    """The :class:`WorkerConfig` for every shard these settings run.

    The shard count and gateway URL come from the settings, else from ``gateway_bot``;
    ``max_concurrency`` comes from ``gateway_bot``'s session start limit, else 1. Raises
    :class:`SettingsError` when the token is missing, when neither source gives the shard count or
    the gateway URL, or when a shard id is not below the shard count.
    """
    token = settings.require_token()
    if settings.shard_count is not None:
        shard_count, count_from = settings.shard_count, str(settings.sources.get("shard_count"))
    elif gateway_bot is not None:
        shard_count, count_from = gateway_bot.shards, "from GET /gateway/bot"
    else:
        raise SettingsError("the shard count is unknown: pass --shard-count")
    if settings.gateway_url is not None:
        url = settings.gateway_url
    elif gateway_bot is not None:
        url = gateway_bot.url.rstrip("/")
    else:
        raise SettingsError("the gateway URL is unknown: pass --gateway-url")
    if settings.shard_ids is not None:
        shard_ids = list(settings.shard_ids)
        ids_from = str(settings.sources.get("shard_ids"))
        _check_shard_range(shard_ids, shard_count, ids_from, count_from)
    else:
        shard_ids = list(range(shard_count))
    max_concurrency = gateway_bot.session_start_limit.max_concurrency if gateway_bot else 1
    return WorkerConfig(
        shard_ids=shard_ids,
        shard_count=shard_count,
        gateway_url=url,
        token=token,
        amqp_url=settings.amqp_url,
        group=settings.group,
        events=settings.events,
        intents=settings.intents,
        compress=settings.compress,
        max_concurrency=max(1, max_concurrency),
        prefetch=settings.prefetch,
        log_level=settings.log_level,
        buffer_events=settings.buffer_events,
        buffer_bytes=settings.buffer_mb * 1024 * 1024,
        stall_timeout=float(settings.stall_timeout),
        queue_type=settings.queue_type,
        amqp_ca_file=tls_files(settings).ca_file,
        amqp_cert_file=tls_files(settings).cert_file,
        amqp_key_file=tls_files(settings).key_file,
        large_threshold=settings.large_threshold,
        presence=settings.presence,
        identify_extra=settings.identify_extra,
    )


def shards_per_process(settings: StartSettings, n_shards: int, cpu_count: int | None = None) -> int:
    """The ``shards_per_process`` setting, or the default spread of ``n_shards`` over the cores."""
    if settings.shards_per_process is not None:
        return settings.shards_per_process
    cpus = cpu_count if cpu_count is not None else os.cpu_count()
    return default_shards_per_process(n_shards, cpus)


def build_worker_configs(
    settings: StartSettings, gateway_bot: GatewayBot | None, cpu_count: int | None = None
) -> list[WorkerConfig]:
    """:func:`build_worker_config` cut into one config per worker process (consecutive shards)."""
    whole = build_worker_config(settings, gateway_bot)
    per_process = shards_per_process(settings, len(whole.shard_ids), cpu_count)
    return [
        dataclasses.replace(
            whole,
            shard_ids=group,
            sessions={k: v for k, v in whole.sessions.items() if k in group},
        )
        for group in split_groups(whole.shard_ids, per_process)
    ]
