"""The settings of ``spectacles-supervisor start``, resolved: :class:`StartSettings`.

Each setting is declared once in :mod:`supervisor.config.options` and click resolves it: flag >
environment variable > config file (:mod:`supervisor.config.file`, the context's
``default_map``) > default; its :class:`Origin` comes from ``ctx.get_parameter_source``. Here:
the checks spanning several settings (shard ids below the count, ``--cluster``,
``--shards-from-ordinal``, the TLS files, read once so a bad one is one line and exit 2; the
IDENTIFY's size), ``config --show``'s rows (the token and every URL password masked), and the
worker configs.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import click

from shard_worker.amqp import params as amqp_params
from shard_worker.config import WorkerConfig
from shard_worker.event_selection import AUTO
from shard_worker.gateway.intents import format_intents
from shard_worker.logs import mask_url
from shard_worker.shard_ranges import (
    MAX_SHARD_COUNT,
    default_shards_per_process,
    format_shard_ids,
    split_groups,
)
from supervisor.config.file import find_key_line, load_config_file
from supervisor.config.options import (
    CONFIG_FLAG,
    SETTINGS,
    SETTINGS_BY_NAME,
    SettingOption,
)
from supervisor.config.types import (
    CONFIG,
    ENVIRON,
    Origin,
    SettingsError,
    Source,
    environ_of,
    format_metrics_addr,
    origin,
)
from supervisor.discord.api import GatewayBot

__all__ = ["SETTINGS", "Origin", "SettingsError", "Source", "StartSettings", "build_worker_config",
           "build_worker_configs", "find_key_line", "mask_url", "resolve_start_settings"]  # fmt: skip

TOKEN_MASK = "********"


@dataclass(frozen=True, kw_only=True)
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
    max_memory_mb: int | None
    child_timeout: int
    buffer_events: int
    buffer_mb: int
    stall_timeout: int
    metrics_addr: tuple[str, int] | None
    log_format: str
    large_threshold: int | None
    presence: dict | None
    identify_extra: dict | None
    identify_reserve: int | None
    queue_type: str
    amqp_ca_file: Path | None
    amqp_cert_file: Path | None
    amqp_key_file: Path | None
    redis_url: str | None = field(repr=False)  # may hold a password
    redis_prefix: str
    shard_count_multiple: int
    auto_reshard: bool
    auto_reshard_interval: float
    cluster: bool
    node_name: str | None
    capacity: int
    shards_from_ordinal: bool
    pods: int | None
    shards_per_pod: int | None
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



def _load_config(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """``--config``: the file's values (checked whole) become the context's ``default_map``."""
    if value:
        config = load_config_file(value)
        ctx.meta[CONFIG] = config
        ctx.default_map = {**(ctx.default_map or {}), **config.values}
    return value


def settings_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add one option per ``start`` setting, and ``--config``, to ``command``."""
    for setting in reversed(SETTINGS):
        shape: dict[str, Any] = (
            {"is_flag": True, "flag_value": True, "default": False}
            if setting.is_flag
            else {"metavar": setting.metavar, "default": setting.default}
        )
        command = click.option(
            setting.flag, setting.name, cls=SettingOption, type=setting.type,
            envvar=list(setting.envs), show_envvar=True, help=setting.help, **shape,
        )(command)  # fmt: skip
    return click.option(
        "--config",
        CONFIG_FLAG,
        type=str,
        default=None,
        metavar="FILE",
        is_eager=True,
        callback=_load_config,
        help="Spectacles TOML config file (values there lose to flags and environment).",
    )(command)


@click.command("start")
@settings_options
def _command(**_params: Any) -> None:
    """The ``start`` options alone, for :func:`resolve_start_settings`."""


def _args(flags: Mapping[str, Any]) -> list[str]:
    """Command-line arguments from setting names (and ``"config"``) to texts; ``None``: not given."""
    args = [f"--config={flags[CONFIG_FLAG]}"] if flags.get(CONFIG_FLAG) else []
    for setting in SETTINGS:
        value = flags.get(setting.name)
        if value is None:
            continue
        if not setting.is_flag:
            args.append(f"{setting.flag}={value}")
        elif setting.type.text(str(value)):
            args.append(setting.flag)
    return args


def resolve_start_settings(
    flags: Mapping[str, Any] | Sequence[str] = (), environ: Mapping[str, str] | None = None
) -> StartSettings:
    """Resolve every setting as ``start`` does: flag > environment > config file > default.

    ``flags`` is ``start``'s command line, or a mapping of setting names (see :data:`SETTINGS`)
    and ``"config"`` to the command-line texts, ``None`` when a flag was not given. ``environ``
    defaults to :data:`os.environ`. Raises :class:`SettingsError` (one line, naming the flag,
    variable or file key) for any bad value, including shard ids not below the shard count when
    both are known.
    """
    args = _args(flags) if isinstance(flags, Mapping) else list(flags)
    parent = click.Context(_command)
    if environ is not None:
        parent.meta[ENVIRON] = environ
    return settings_from_context(_command.make_context("start", args, parent=parent))


def settings_from_context(ctx: click.Context) -> StartSettings:
    """The settings click resolved in ``ctx`` (a command with :func:`settings_options`),
    their sources, and the checks that span several settings."""
    params = {param.name: param for param in ctx.command.params}
    config_path = ctx.params.get(CONFIG_FLAG)
    sources = {setting.name: origin(ctx, params[setting.name]) for setting in SETTINGS}
    sources[CONFIG_FLAG] = Origin(Source.FLAG, "--config") if config_path else Origin(Source.DEFAULT)
    settings = StartSettings(
        **{setting.name: ctx.params[setting.name] for setting in SETTINGS},
        config_file=Path(config_path) if config_path else None,
        sources=MappingProxyType(sources),
    )
    settings = _shards_from_ordinal(settings, environ_of(ctx))
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
