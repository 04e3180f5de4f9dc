"""The ``spectacles-supervisor`` command line (console script ``supervisor.cli:main``).

Commands:

- ``start``: resolve the settings (flag > environment > config file > default, see
  :mod:`supervisor.config.settings`), ask ``GET /gateway/bot`` for the shard count and gateway URL if they
  were not given, then run the shards with :func:`shard_worker.worker.run_group`.
- ``config --show``: print every resolved ``start`` setting with its source (same options as
  ``start``; the token and the AMQP password are masked). Makes no network call.
- ``simulate``: the local Discord gateway simulator (:mod:`supervisor.simulator.cli`), loaded
  only when asked for, so a problem there never stops ``start``.
- ``status``, ``restart``, ``reshard``: ask the running supervisor over its control socket
  (:mod:`supervisor.core.control`); they need no token. ``reshard --shard-count N`` is answered by
  the supervisor's checks (:mod:`supervisor.reshard.shard_sets`): exit 2 for a bad N, 1 for any other
  refusal, one line each (the live handover itself is not implemented yet, issue 13).

Errors are reported as exactly one line on stderr, ``spectacles-supervisor: error: <reason>``,
never a traceback or click's usage block. The token is never printed.

Exit codes (the process contract of :mod:`shard_worker.exit_codes`, which a systemd unit can
use, e.g. ``RestartPreventExitStatus=2 44``):

=====  =========================================================================================
code   meaning
=====  =========================================================================================
0      success (``start``: the worker group ended cleanly; ``config --show``: printed)
1      a runtime failure before the shards started: Discord's API could not be reached or
       answered with an error other than 401, the daily identify budget is used up, the
       worker code could not be loaded, or the ``--metrics-addr`` port cannot be bound.
       Retrying later may help.
2      bad usage or configuration: unknown command or option, a bad value from a flag, an
       environment variable or the config file, an unreadable config file, a missing token,
       shard ids not below the shard count, ``status --shard`` ids this supervisor does not
       run. Fix the invocation; retrying will not help.
44     Discord rejected the token (HTTP 401 from GET /gateway/bot). The same code a worker
       exits with on close 4004 (see :mod:`shard_worker.exit_codes`): restarting will not
       help, fix the token.
130    interrupted (Ctrl-C) and the interrupt reached the command line.
other  ``start`` exits with the return code of ``run_group`` once the shards ran.
=====  =========================================================================================
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import logging
import os
import sys
import time
from collections.abc import Iterable, Sequence
from typing import Any

import click

from shard_worker import exit_codes
from shard_worker.gateway.intents import privileged_names
from shard_worker.gateway.protocol import Close
from shard_worker.shard_ranges import format_shard_ids, parse_shard_ids
from supervisor.config.options import DEFAULT_REDIS_PREFIX, DEFAULT_STATE_DIR
from supervisor.config.settings import (
    Origin,
    SettingsError,
    Source,
    StartSettings,
    build_worker_configs,
    format_duration,
    settings_from_context,
    settings_options,
)
from supervisor.discord.api import DiscordAPIError, GatewayBot, get_gateway_bot
from supervisor.identify.hold import default_reserve
from supervisor.observe.progress import format_elapsed

PROG = "spectacles-supervisor"

EXIT_OK = exit_codes.OK  # 0
EXIT_RUNTIME = exit_codes.ERROR  # 1
EXIT_USAGE = exit_codes.USAGE  # 2
#: A 401 means the same as a 4004 close: the token is bad (or was reset).
EXIT_UNAUTHORIZED = exit_codes.for_fatal_close(Close.AUTHENTICATION_FAILED)  # 44
EXIT_INTERRUPTED = 130

log = logging.getLogger("supervisor")


class StartError(Exception):
    """``start`` cannot go on; ``str()`` is the one-line reason, ``exit_code`` the code."""

    def __init__(self, message: str, exit_code: int = EXIT_RUNTIME) -> None:
        super().__init__(message)
        self.exit_code = exit_code


# -- the group: error mapping and lazy commands -----------------------------------------------

#: Commands living in modules that are imported only when the command is used.
LAZY_COMMANDS: dict[str, tuple[str, str]] = {
    "simulate": ("supervisor.simulator.cli", "simulate_command"),
}


def _secrets(args: Sequence[str] | None) -> list[str]:
    """Token values this invocation knows of, to scrub from any message before printing it."""
    found = [os.environ.get("DISCORD_TOKEN", "")]
    argv = list(sys.argv[1:] if args is None else args)
    for index, arg in enumerate(argv):
        if arg == "--token" and index + 1 < len(argv):
            found.append(argv[index + 1])
        elif arg.startswith("--token="):
            found.append(arg.partition("=")[2])
    return [secret for secret in found if len(secret.strip()) >= 4]


def _error(message: str, args: Sequence[str] | None) -> None:
    line = " ".join(str(message).split())
    for secret in _secrets(args):
        line = line.replace(secret.strip(), "<token>")
    click.echo(f"{PROG}: error: {line}", err=True)


def _load_lazy(name: str) -> click.Command | None:
    module_name, attribute = LAZY_COMMANDS[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name == module_name:
            return None  # not written (yet): the command does not exist
        raise click.ClickException(f"the {name} command cannot be loaded: {error}") from None
    except Exception as error:  # noqa: BLE001 - report it as one line, keep other commands usable
        raise click.ClickException(f"the {name} command cannot be loaded: {error}") from None
    command = getattr(module, attribute, None)
    if not isinstance(command, click.Command):
        raise click.ClickException(f"the {name} command cannot be loaded: no {attribute}")
    return command


class SupervisorGroup(click.Group):
    """A click group that reports every error as one line and loads some commands lazily.

    ``main`` always runs click with ``standalone_mode=False`` and maps the exceptions itself (see
    the exit code table of this module). With ``standalone_mode=True`` (the default, and what
    click's ``CliRunner`` uses) it then exits with the code; otherwise it returns it.
    """

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is None and cmd_name in LAZY_COMMANDS:
            command = _load_lazy(cmd_name)
            if command is not None:
                self.add_command(command, cmd_name)
        return command

    def list_commands(self, ctx: click.Context) -> list[str]:
        names = set(super().list_commands(ctx))
        for name in LAZY_COMMANDS:
            try:
                if _load_lazy(name) is not None:
                    names.add(name)
            except click.ClickException:
                pass  # shown as an error only when the command itself is asked for
        return sorted(names)

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> int:
        code = self._run(args, prog_name or PROG, complete_var, **extra)
        if standalone_mode:
            sys.exit(code)
        return code

    def _run(
        self,
        args: Sequence[str] | None,
        prog_name: str,
        complete_var: str | None,
        **extra: Any,
    ) -> int:
        run = super().main
        try:
            result = run(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.exceptions.NoArgsIsHelpError as error:
            click.echo(error.format_message(), err=True)
            return EXIT_USAGE
        except click.ClickException as error:
            _error(error.format_message(), args)
            return error.exit_code
        except SettingsError as error:
            _error(str(error), args)
            return EXIT_USAGE
        except DiscordAPIError as error:
            _error(str(error), args)
            return EXIT_UNAUTHORIZED if error.unauthorized else EXIT_RUNTIME
        except StartError as error:
            _error(str(error), args)
            return error.exit_code
        except (click.Abort, KeyboardInterrupt, EOFError):
            _error("interrupted", args)
            return EXIT_INTERRUPTED
        if isinstance(result, bool) or not isinstance(result, int):
            return EXIT_OK
        return result


def _version() -> str:
    try:
        return importlib.metadata.version("spectacles-supervisor")
    except importlib.metadata.PackageNotFoundError:
        return "0.1.0 (not installed)"


@click.group(cls=SupervisorGroup, name=PROG)
@click.version_option(version=_version(), prog_name=PROG)
def cli() -> None:
    """Run Discord gateway shards in worker processes and bridge them to RabbitMQ (Spectacles)."""


# -- start ------------------------------------------------------------------------------------


def _configure_logging(settings: StartSettings) -> None:
    """The worker's logging setup (stderr, token redacted) for the supervisor's own lines."""
    from shard_worker.logs import add_secret, setup_logging

    add_secret(settings.token)
    setup_logging(settings.log_level, fmt=settings.log_format)


def _check_identify_budget(gateway_bot: GatewayBot | None, shards: int, reserve: int) -> None:
    """Refuse to start with no identify left (going over the limit resets the token); say so
    when the budget above the ``reserve`` cannot identify every shard."""
    if gateway_bot is None:
        return
    limit = gateway_bot.session_start_limit
    reset_in = f"{limit.reset_after / 1000:.0f} s"
    if limit.remaining <= 0:
        raise StartError(
            f"the session start limit is used up (0 of {limit.total} identifies left); "
            f"it resets in {reset_in}"
        )
    if limit.remaining - reserve < shards:
        log.warning(
            "only %d of %d identifies left for %d shards, %d of them kept in reserve "
            "(--identify-reserve; resets in %s): shards without a session to resume will wait",
            limit.remaining,
            limit.total,
            shards,
            reserve,
            reset_in,
        )


def _check_saved_shard_count(settings: StartSettings) -> StartSettings:
    """The shard count to start with, given the sessions saved in the state dir.

    Without ``--shard-count``, the saved count wins over Discord's recommendation: after a
    reshard (or a change of Discord's advice) a restart resumes the sessions it has instead of
    identifying every shard anew; resharding is ``reshard``'s job. An explicit count other than
    the saved one is refused (exit 2). No sessions worth resuming: nothing changes."""
    from supervisor.core.state_store import saved_shard_count

    saved = saved_shard_count(settings.state_dir)
    if settings.shard_count is None:
        if saved is None:
            return settings
        log.info("shard count %d, from the sessions saved in %s (to resume them)", saved, settings.state_dir)
        sources = {**settings.sources, "shard_count": Origin(Source.DEFAULT, f"saved in {settings.state_dir}")}
        return dataclasses.replace(settings, shard_count=saved, sources=sources)
    if saved is not None and saved != settings.shard_count:
        raise StartError(
            f"--shard-count {settings.shard_count} ({settings.sources.get('shard_count')}) disagrees "
            f"with the {saved} shards whose sessions are saved in {settings.state_dir}: start with "
            f"--shard-count {saved} to resume them, or delete {settings.state_dir}/sessions.json to "
            "identify every shard anew",
            EXIT_USAGE,
        )
    return settings


def _start(settings: StartSettings) -> int:
    settings.require_token()
    settings = _check_saved_shard_count(settings)
    from shard_worker.amqp.frames import check_pika

    try:
        check_pika()  # before anything starts: one line, not a crash loop of every child
    except RuntimeError as error:
        raise StartError(str(error), exit_codes.USAGE) from None
    _configure_logging(settings)
    coordinator = _coordinator(settings)
    ratelimiter = None
    if coordinator is not None:
        from supervisor.discord.ratelimits import RedisRatelimiter

        ratelimiter = RedisRatelimiter(coordinator.redis, prefix=settings.redis_prefix)
    asked_at = time.monotonic()
    gateway_bot = _gateway_bot(settings, ratelimiter)
    configs = build_worker_configs(settings, gateway_bot)
    shard_ids = [s for config in configs for s in config.shard_ids]
    reserve = settings.identify_reserve if settings.identify_reserve is not None else default_reserve(len(shard_ids))
    _check_identify_budget(gateway_bot, len(shard_ids), reserve)
    privileged = privileged_names(configs[0].intents)
    if privileged:
        log.info(
            "privileged intents requested (enable them in the developer portal): %s",
            ", ".join(privileged),
        )
    from shard_worker.proctitle import set_title
    from supervisor.core.arbiter import Arbiter, ArbiterOptions

    limit = gateway_bot.session_start_limit if gateway_bot else None
    options = ArbiterOptions(
        state_dir=str(settings.state_dir),
        max_memory_mb=settings.max_memory_mb,
        heartbeat_timeout=float(settings.child_timeout),
        session_start_remaining=limit.remaining if limit else None,
        session_start_reset_after=limit.reset_after / 1000 if limit else None,
        session_start_total=limit.total if limit else None,
        # The budget is asked again off the loop: at Discord's reset, or when Redis lost it.
        fetch_gateway_bot=lambda: get_gateway_bot(settings.api_url, settings.token, ratelimiter=ratelimiter),
        metrics_addr=settings.metrics_addr,
        log_format=settings.log_format,
        coordinator=coordinator,
        shard_count_multiple=settings.shard_count_multiple,
        identify_reserve=reserve,
        auto_reshard_interval=settings.auto_reshard_interval if settings.auto_reshard else None,
        cluster=_cluster_node(settings, coordinator, len(configs)) if settings.cluster else None,
    )
    if coordinator is not None and limit is not None:
        coordinator.set_budget(limit.remaining, limit.reset_after / 1000, limit.total, asked_ago_s=time.monotonic() - asked_at)
    set_title(f"master [{format_shard_ids(shard_ids)}]")
    log.info(
        "starting %d of %d shards in %d processes, group %r",
        len(shard_ids),
        configs[0].shard_count,
        len(configs),
        configs[0].group,
    )
    return Arbiter(configs, options).run()


def _cluster_node(settings: StartSettings, coordinator: Any, groups: int) -> Any:
    """The node's rounds in Redis (``--cluster``); its thread starts with the arbiter's loop."""
    import socket
    import uuid

    from supervisor.cluster.node import ClusterNode
    from supervisor.cluster.store import ClusterStore

    name = settings.node_name or socket.gethostname()
    store = ClusterStore(coordinator.redis, settings.redis_prefix, name, uuid.uuid4().hex)
    assert settings.shard_count is not None and settings.shards_per_process is not None
    return ClusterNode(
        store, shard_count=settings.shard_count, per_group=settings.shards_per_process,
        groups=groups, capacity=float(settings.capacity),
    )  # fmt: skip


def _coordinator(settings: StartSettings) -> Any:
    """The Redis coordinator of a multi-host deployment, or None without ``--redis-url``."""
    if not settings.redis_url:
        return None
    from supervisor.coord.coordinator import RedisCoordinator

    try:
        return RedisCoordinator.from_url(settings.redis_url, settings.redis_prefix)
    except Exception as error:  # noqa: BLE001 - any redis/connection error: one line, exit 1
        from shard_worker.logs import mask_url

        raise StartError(f"cannot reach Redis at {mask_url(settings.redis_url)}: {error}") from None


def _gateway_bot(settings: StartSettings, ratelimiter: Any = None) -> GatewayBot | None:
    """GET /gateway/bot: needed for the shard count or URL if not given; always wanted for the
    identify concurrency and budget. When both were given and Discord cannot be reached, go on
    with max_concurrency 1 (slower start, never wrong)."""
    try:
        return get_gateway_bot(settings.api_url, settings.token, ratelimiter=ratelimiter)
    except DiscordAPIError as error:
        if settings.needs_gateway_bot or error.unauthorized:
            raise
        log.warning("GET /gateway/bot failed (%s): identifying one shard at a time", error)
        return None


@cli.command("start")
@settings_options
@click.pass_context
def start_command(ctx: click.Context, **_params: Any) -> int:
    """Run the shards (all of them unless --shards says otherwise)."""
    return _start(settings_from_context(ctx))


# -- config -----------------------------------------------------------------------------------


def format_settings_table(settings: StartSettings) -> str:
    """The ``config --show`` table: setting, value (secrets masked) and source, one per line."""
    rows = [("SETTING", "VALUE", "SOURCE"), *settings.describe()]
    name_width = max(len(row[0]) for row in rows)
    value_width = max(len(row[1]) for row in rows)
    return "\n".join(
        f"{name:<{name_width}}  {value:<{value_width}}  {source}".rstrip()
        for name, value, source in rows
    )


@cli.command("config")
@click.option("--show", is_flag=True, help="Print each resolved setting and where it came from.")
@settings_options
@click.pass_context
def config_command(ctx: click.Context, show: bool, **_params: Any) -> int:
    """Show the settings `start` would use, and their sources (no network call)."""
    if not show:
        raise click.UsageError("nothing to do: pass --show")
    click.echo(format_settings_table(settings_from_context(ctx)))
    return EXIT_OK


# -- status / restart (the control socket of a running supervisor) -----------------------------

_state_dir_option = click.option(
    "--state-dir",
    envvar="SPECTACLES_STATE_DIR",
    default=DEFAULT_STATE_DIR,
    show_default=True,
    type=click.Path(file_okay=False),
    help="The state dir of the running supervisor (its control socket lives there).",
)


def _ask(state_dir: str, event: str, data: Any = None) -> Any:
    from supervisor.core.control import ControlError, request

    try:
        return request(state_dir, event) if data is None else request(state_dir, event, data=data)
    except (ControlError, OSError) as error:
        raise StartError(str(error)) from None


#: Up to this many shards, plain ``status`` prints one row per shard (a screenful); beyond it, a
#: summary plus the shards that are not ready (at most this many rows of them).
SCREEN_ROWS = 64

_SHARD_HEADER = (
    "SHARD", "GROUP", "PID", "STATE", "SEQ", "LATENCY", "PUBLISHED", "RECONNECTS", "RSS"
)
_GROUP_HEADER = ("GROUP", "SHARDS", "PID", "READY", "RESTARTS", "RSS", "CPU")


def _megabytes(rss: Any) -> str:
    return "-" if not rss else f"{rss / 2**20:.0f} MB"


def _shard_row(shard: dict[str, Any]) -> tuple[str, ...]:
    latency = shard.get("latency_ms")
    return (
        str(shard["shard"]),
        str(shard["group"]),
        str(shard["pid"] or "-"),
        shard["state"],
        "-" if shard["seq"] is None else str(shard["seq"]),
        "-" if latency is None else f"{latency:.0f} ms",
        str(shard["published"]),
        str(shard["reconnects"]),
        _megabytes(shard.get("rss")),
    )


def _table(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows
    ]


def _final_line(status: dict[str, Any]) -> str:
    budget = status.get("identify_budget_remaining")
    hold = status.get("identify_hold") if isinstance(status.get("identify_hold"), dict) else {}
    line = (
        f"{len(status['shards'])} shards of {status['shard_count']} in {len(status['groups'])} "
        f"processes; up {status['uptime']:.0f} s; identify budget left: "
        f"{'unknown' if budget is None else budget}"
    )
    if hold.get("reserve") is not None:
        line += f" (reserve {hold['reserve']})"
    if hold.get("held"):
        line += "; IDENTIFIES HELD at the reserve"
    return line


def reshard_line(status: dict[str, Any]) -> str | None:
    """The ``status`` line of a reshard (running, or the last one), else None."""
    reshard = status.get("reshard")
    if not isinstance(reshard, dict):
        return None
    line = f"reshard: {reshard.get('old_count')} -> {reshard.get('new_count')}, {reshard.get('phase')}"
    if reshard.get("phase") == "preparing" and isinstance(reshard.get("new_ready"), int):
        line += f", {reshard['new_ready']}/{reshard.get('new_count')} new shards READY"
        if isinstance(reshard.get("eta_s"), (int, float)):
            line += f", ETA {reshard['eta_s']:.0f} s"
    if reshard.get("phase") == "draining" and reshard.get("old_behind"):
        line += f", old shards not caught up yet: {format_shard_ids(reshard['old_behind'])}"
    if reshard.get("reason"):
        line += f" ({reshard['reason']})"
    return line


def auto_reshard_line(status: dict[str, Any]) -> str | None:
    """The ``status`` line of ``--auto-reshard`` (None: off)."""
    auto = status.get("auto_reshard")
    if not isinstance(auto, dict):
        return None
    due = auto.get("next_check_in")
    line = f"auto-reshard: on, every {format_duration(auto.get('interval_s') or 0)}"
    if due is None:
        line += ", first check once every shard is READY"
    else:
        line += f", next check in {format_elapsed(due) if due < 3600 else f'{int(due // 3600)} h {int(due % 3600 // 60):02d} min'}"
    if auto.get("held"):
        line += f"; held down after a 4011: shards {format_shard_ids(auto['held'])}"
    return line


def select_shards(
    status: dict[str, Any], shard_ids: Iterable[int]
) -> tuple[list[dict[str, Any]], list[int]]:
    """The shards of ``status`` whose id is in ``shard_ids`` (in status order), and the ids asked
    for that this supervisor does not run. Raises :class:`StartError` (exit 2) if none match."""
    wanted = set(shard_ids)
    selected = [shard for shard in status["shards"] if shard["shard"] in wanted]
    missing = sorted(wanted.difference(shard["shard"] for shard in selected))
    if not selected:
        runs = status.get("shards_label") or "no shards"
        raise StartError(
            f"shards {format_shard_ids(missing)} are not run by this supervisor (it runs {runs})",
            EXIT_USAGE,
        )
    return selected, missing


def _summary(status: dict[str, Any]) -> list[str]:
    """Counts by state, one row per process and the first shards that are not ready: one pass
    over the shards, and no formatting for the ready ones."""
    states: dict[str, int] = {}
    ready_in: dict[Any, int] = {}
    total_in: dict[Any, int] = {}
    not_ready: list[dict[str, Any]] = []
    for shard in status["shards"]:
        state = shard["state"]
        group = shard["group"]
        states[state] = states.get(state, 0) + 1
        total_in[group] = total_in.get(group, 0) + 1
        if state == "ready":
            ready_in[group] = ready_in.get(group, 0) + 1
        elif len(not_ready) < SCREEN_ROWS:
            not_ready.append(shard)
    ready = states.pop("ready", 0)
    counts = [f"{ready} ready"] + [f"{states[name]} {name}" for name in sorted(states)]
    lines = ["states: " + ", ".join(counts), ""]
    groups = [_GROUP_HEADER]
    for group in status["groups"]:
        cpu = group.get("cpu_percent")
        index = group["group"]
        groups.append(
            (
                str(index),
                str(group["shards"]),
                str(group["pid"] or "-"),
                f"{ready_in.get(index, 0)}/{total_in.get(index, 0)}",
                str(group["restarts"]),
                _megabytes(group.get("rss")),
                "-" if cpu is None else f"{cpu:.0f}%",
            )
        )
    lines += _table(groups)
    if not_ready:
        not_ready_count = len(status["shards"]) - ready
        lines += ["", f"not ready ({not_ready_count}):"]
        lines += _table([_SHARD_HEADER, *map(_shard_row, not_ready)])
        if not_ready_count > SCREEN_ROWS:
            lines.append(f"... and {not_ready_count - SCREEN_ROWS} more; use --all or --shard")
    return lines


def format_status(
    status: dict[str, Any], *, all_rows: bool = False, shard_ids: Iterable[int] | None = None
) -> str:
    """What ``spectacles-supervisor status`` prints.

    With ``shard_ids``, one row for each of those shards (and a line naming the ids this
    supervisor does not run; :class:`StartError` if it runs none of them). Otherwise one row per
    shard if ``all_rows`` or if they fit a screen (:data:`SCREEN_ROWS`), else a summary: counts by
    state, one row per process, and the shards that are not ready.
    """
    shards = status["shards"]
    if shard_ids is not None:
        selected, missing = select_shards(status, shard_ids)
        lines = _table([_SHARD_HEADER, *map(_shard_row, selected)])
        if missing:
            lines.append(
                f"not run by this supervisor: {format_shard_ids(missing)} "
                f"(it runs {status.get('shards_label') or 'no shards'})"
            )
    elif all_rows or len(shards) <= SCREEN_ROWS:
        lines = _table([_SHARD_HEADER, *map(_shard_row, shards)])
    else:
        lines = _summary(status)
    lines.append(_final_line(status))
    lines.extend(line for line in (reshard_line(status), auto_reshard_line(status)) if line is not None)
    return "\n".join(lines)


def _parse_shard_option(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    if value is None:
        return None
    try:
        return parse_shard_ids(value)
    except ValueError as error:
        raise click.BadParameter(str(error), ctx=ctx, param=param) from None


@cli.command("status")
@_state_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print the raw status as JSON.")
@click.option(
    "--all", "all_rows", is_flag=True, help=f"One row per shard even beyond {SCREEN_ROWS} shards."
)
@click.option(
    "--shard",
    "shard_ids",
    metavar="IDS",
    default=None,
    callback=_parse_shard_option,
    help="Only these shards, e.g. 3,10-12.",
)
@click.option("--cluster", "cluster", is_flag=True, help="Every node and group of the cluster, from Redis.")
@click.option("--redis-url", "redis_url", envvar="REDIS_URL", default=None, metavar="URL",
              help="With --cluster: the cluster's Redis. [env: REDIS_URL]")
@click.option("--redis-prefix", "redis_prefix", envvar="SPECTACLES_REDIS_PREFIX", default=DEFAULT_REDIS_PREFIX,
              metavar="PREFIX", help="With --cluster: its key prefix. [env: SPECTACLES_REDIS_PREFIX]")
def status_command(
    state_dir: str, as_json: bool, all_rows: bool, shard_ids: list[int] | None,
    cluster: bool, redis_url: str | None, redis_prefix: str,
) -> int:
    """Show the shards of the running supervisor (a summary beyond a screenful), or with
    --cluster every node and group of the cluster."""
    if cluster:
        return _cluster_status(redis_url, redis_prefix, as_json)
    if all_rows and shard_ids is not None:
        raise click.UsageError("--all and --shard cannot be used together")
    status = _ask(state_dir, "status")
    if as_json:
        import json

        if shard_ids is not None:
            status = {**status, "shards": select_shards(status, shard_ids)[0]}
        click.echo(json.dumps(status, indent=2, sort_keys=True))
    else:
        click.echo(format_status(status, all_rows=all_rows, shard_ids=shard_ids))
    return EXIT_OK


def _cluster_status(redis_url: str | None, prefix: str, as_json: bool) -> int:
    if not redis_url:
        raise click.UsageError("--cluster needs --redis-url (or REDIS_URL)")
    import json

    import redis

    from shard_worker.logs import mask_url
    from supervisor.cluster.status import format_cluster, read

    try:
        client = redis.Redis.from_url(redis_url, socket_timeout=2.0, socket_connect_timeout=2.0)
        state = read(client, prefix)
    except (redis.RedisError, ValueError) as error:
        raise StartError(f"cannot read the cluster from Redis at {mask_url(redis_url)}: {error}") from None
    click.echo(json.dumps(state, indent=2, sort_keys=True) if as_json else format_cluster(state))
    return EXIT_OK


@cli.command("restart")
@_state_dir_option
def restart_command(state_dir: str) -> int:
    """Rolling restart of the running supervisor: one group at a time, each resuming."""
    answer = _ask(state_dir, "restart")
    click.echo("rolling restart started" if answer.get("started") else "a rolling restart is already running")
    return EXIT_OK


@cli.command("reshard")
@_state_dir_option
@click.option("--shard-count", "shard_count", type=int, required=True, metavar="N",
              help="The new total number of shards.")
def reshard_command(state_dir: str, shard_count: int) -> int:
    """Move the running supervisor to N shards (refusals: one line; exit 2 for a bad N)."""
    answer = _ask(state_dir, "reshard", {"shard_count": shard_count})
    if not isinstance(answer, dict):
        raise StartError("the supervisor's answer to reshard could not be read")
    if answer.get("ok"):
        click.echo(str(answer.get("message") or "reshard started"))
        return _follow_reshard(state_dir, shard_count)
    kind = answer.get("kind")
    raise StartError(str(answer.get("message") or "reshard refused"), EXIT_USAGE if kind == "invalid" else EXIT_RUNTIME)


#: How often ``reshard`` asks the supervisor how its reshard goes.
RESHARD_POLL_S = 0.5


def _follow_reshard(state_dir: str, target: int) -> int:
    """Print the reshard's progress (a line per change of phase or of the new set's READY
    count) until it is done (exit 0) or aborted (exit 1, with the supervisor's reason)."""
    import time

    shown = None
    while True:
        reshard = _ask(state_dir, "status").get("reshard") or {}
        phase = reshard.get("phase")
        line = f"reshard {reshard.get('old_count')} -> {reshard.get('new_count')}: {phase}"
        if phase == "preparing" and reshard.get("new_ready") is not None:
            line += f", {reshard['new_ready']}/{target} new shards READY"
        if line != shown:  # a line per change; the ETA (from the identify gate) rides along
            eta = reshard.get("eta_s") if phase == "preparing" else None
            click.echo(line if eta is None else f"{line}, ETA {eta:.0f} s")
            shown = line
        if phase == "done":
            return EXIT_OK
        if phase == "aborted":
            raise StartError(f"reshard aborted: {reshard.get('reason')}; the old set keeps serving", EXIT_RUNTIME)
        time.sleep(RESHARD_POLL_S)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``) and return the exit code."""
    return cli.main(args=argv, prog_name=PROG, standalone_mode=False)
