"""The config file (``--config FILE``): the one Spectacles TOML file shared by all Spectacles
services (SPEC.md, "Config"), plus a ``[supervisor]`` table for this project. Its keys are the
settings' (:data:`supervisor.config.options.SETTINGS`)::

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
    state_dir = "/var/lib/spectacles"           # relative paths are relative to the working directory
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

Its values, parsed by each setting's type (:meth:`supervisor.config.types.SettingType.toml`),
become the click context's ``default_map`` (:func:`supervisor.config.options.settings_options`).
"""

from __future__ import annotations

import difflib
import json
import os
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from supervisor.config.options import SETTINGS
from supervisor.config.types import SettingsError, _type_name

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

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
                values[expected.name] = expected.type.toml(value)
            except ValueError as error:
                raise SettingsError(f"{where(*prefix, key)}: {dotted}: {error}") from None
            keys[expected.name] = dotted

    walk(document, _SCHEMA, ())
    return ConfigFile(Path(path), MappingProxyType(values), MappingProxyType(keys))

