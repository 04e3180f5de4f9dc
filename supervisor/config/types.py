"""The values of ``start``'s settings: one :class:`click.ParamType` per kind of value.

Each type's ``convert`` takes a flag's or an environment variable's text, or a value already of
its type (a default, or a config file value: :func:`supervisor.config.file.load_config_file`
parses those with the type's :meth:`SettingType.toml`, so the file is checked whole, naming the
file, the line and the key, and they reach click as the context's ``default_map``). A bad value
is a :class:`SettingsError` naming its flag or variable: one line, exit 2. Reasons never contain
the token or a URL password.
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
from click.core import ParameterSource

from shard_worker.amqp import params as amqp_params
from shard_worker.event_selection import AUTO
from shard_worker.gateway.inflate import zstd_unavailable
from shard_worker.gateway.intents import parse_intents
from shard_worker.gateway.protocol import (
    COMPRESS_CHOICES,
    COMPRESS_ZLIB_STREAM,
    COMPRESS_ZSTD_STREAM,
    compress_name,
)
from shard_worker.logs import mask_url
from shard_worker.shard_ranges import MAX_SHARD_COUNT, parse_shard_ids

LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("TRACE", "DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

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




# -- the click types --------------------------------------------------------------------------

#: ``ctx.meta`` keys: the environment variables to read (default: :data:`os.environ`), and the
#: loaded config file (:class:`supervisor.config.file.ConfigFile`).
ENVIRON = "spectacles.environ"
CONFIG = "spectacles.config"


def environ_of(ctx: click.Context | None) -> Mapping[str, str]:
    import os

    return ctx.meta.get(ENVIRON, os.environ) if ctx is not None else os.environ


def origin(ctx: click.Context, param: click.Parameter) -> Origin:
    """Where ``param``'s value came from, as click saw it (``ctx.get_parameter_source``)."""
    source = ctx.get_parameter_source(param.name or "")
    if source is ParameterSource.COMMANDLINE:
        return Origin(Source.FLAG, param.opts[0])
    if source is ParameterSource.ENVIRONMENT:
        env = environ_of(ctx)
        names = [param.envvar] if isinstance(param.envvar, str) else list(param.envvar or ())
        return Origin(Source.ENV, next(name for name in names if env.get(name)))
    if source is ParameterSource.DEFAULT_MAP:
        config = ctx.meta[CONFIG]
        return Origin(Source.FILE, f"{config.path}: {config.keys[param.name]}")
    return Origin(Source.DEFAULT)


class SettingType(click.ParamType):
    """A setting's value: :meth:`text` parses a flag's or a variable's text, :meth:`toml` a
    config file value (by default a TOML string, parsed as text). ``convert`` leaves a value that
    is not text alone (a default, a file value: already parsed), and names the flag or the
    variable of a bad one."""

    name = "text"

    def __init__(self, text: Callable[[str], Any] | None = None, toml: Callable[[Any], Any] | None = None) -> None:
        if text is not None:
            self.text = text  # type: ignore[method-assign]
        if toml is not None:
            self.toml = toml  # type: ignore[method-assign]

    def text(self, text: str) -> Any:
        return text

    def toml(self, value: Any) -> Any:
        _expect(value, str, "a string")
        return self.text(value)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        given = ctx.get_parameter_source(param.name or "") if ctx is not None and param is not None else None
        if not isinstance(value, str) or given in (ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP):
            return value
        try:
            return self.text(value)
        except ValueError as error:
            where = origin(ctx, param).detail if ctx is not None and param is not None else self.name
            raise SettingsError(f"{where}: {error}") from None


class Int(SettingType):
    """An integer in ``[low, high]``; the config file's must be a TOML integer."""

    name = "integer"

    def __init__(self, low: int, high: int) -> None:
        super().__init__(_int_text(low, high), _int_file(low, high))
        self.low, self.high = low, high


class Bool(SettingType, click.types.BoolParamType):
    """true/false, yes/no, on/off, 1/0 as text; a TOML boolean in the file."""

    name = "boolean"

    def __init__(self) -> None:
        super().__init__(_bool_text, _bool_file)


class Duration(SettingType):
    """Seconds from ``90``, ``90s``, ``30m``, ``8h`` or ``1d``, in ``[low, high]``."""

    name = "duration"

    def __init__(self, low: float, high: float) -> None:
        super().__init__(_duration_text(low, high), _duration_file(low, high))


class Url(SettingType):
    """A URL of one of ``schemes`` with a host; the password is masked in every message."""

    name = "url"

    def __init__(self, schemes: tuple[str, ...], what: str, strip_slash: bool = False) -> None:
        super().__init__(_url_text(schemes, what, strip_slash))


class Json(SettingType):
    """A JSON object as text, or a TOML table (or a JSON string) in the file."""

    name = "json"

    def __init__(self, parse: Callable[[Any], dict]) -> None:
        super().__init__(parse, parse)


TOKEN = SettingType(_token_text)
SHARD_IDS = SettingType(_shard_ids_text, _shard_ids_file)
AMQP_URLS = SettingType(_amqp_urls_text, _amqp_urls_file)
QUEUE_TYPE = SettingType(_queue_type_text)
PATH = SettingType(_path_text)
EXCHANGE_NAME = SettingType(_group_text)
NODE_NAME = SettingType(_node_name_text)
EVENTS = SettingType(_events_text, _events_file)
INTENTS = SettingType(parse_intents, _intents_file)
COMPRESS = SettingType(_compress_text, _compress_file)
LOG_LEVEL = SettingType(_log_level_text)
LOG_FORMAT = SettingType(_log_format_text)
METRICS_ADDR = SettingType(_metrics_addr_text)
PRESENCE = Json(_presence)
IDENTIFY_EXTRA = Json(_identify_extra)
