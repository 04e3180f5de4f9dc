"""``simulate``: serve the Discord gateway simulator from the command line (offline load tests).

The main CLI adds :data:`simulate_command` to its group. It prints one line with the gateway and
API URLs, serves until SIGINT/SIGTERM, then prints a one-line summary. Bad option values print one
``spectacles-supervisor: error: ...`` line and exit with status 2.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from typing import Any

import click

from supervisor.simulator.poll_clock import new_loop
from supervisor.simulator.server import Simulator, SimulatorOptions


class _OneLineErrorsCommand(click.Command):
    """A click command whose usage errors are one ``spectacles-supervisor: error: ...`` line (exit status 2)."""

    def make_context(self, info_name: Any, args: list[str], parent: Any = None, **extra: Any):
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.UsageError as exc:
            click.echo(f"spectacles-supervisor: error: {exc.format_message()}", err=True)
            raise click.exceptions.Exit(2) from None


@click.command("simulate", cls=_OneLineErrorsCommand)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option(
    "--port", type=click.IntRange(0, 65535), default=8765, show_default=True,
    help="Port (0: any free).",
)
@click.option(
    "--token", envvar="DISCORD_TOKEN", required=True, show_envvar=True,
    help="The bot token clients must present.",
)
@click.option("--shards", type=click.IntRange(min=1), default=1, show_default=True,
              help="Total shard count of the fake bot.")
@click.option("--max-concurrency", type=click.IntRange(min=1), default=1, show_default=True,
              help="Identify buckets (session_start_limit.max_concurrency).")
@click.option("--heartbeat-interval", type=click.IntRange(min=10), default=41250, show_default=True,
              help="HELLO heartbeat_interval in ms.")
@click.option("--guilds-per-shard", type=click.IntRange(0, 4096), default=2, show_default=True)
@click.option("--events-per-shard", type=click.IntRange(min=-1), default=0, show_default=True,
              help="Stream events per session: 0 none, -1 endless.")
@click.option("--rate", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Events per second per shard (0: as fast as the client reads).")
@click.option("--fragment", is_flag=True,
              help="Split each zlib-stream message over two frames (zstd-stream: never split, "
              "as Discord does; clients pick the compression in the gateway URL).")
@click.option("--stamp", is_flag=True,
              help="MESSAGE_CREATE's nonce is the time the event was made, in µs since the epoch "
              "(for latency benchmarks).")
@click.option("--replay-buffer", type=click.IntRange(min=1), default=10_000, show_default=True,
              help="Dispatches kept per session for RESUME.")
@click.option("--session-start-total", type=click.IntRange(min=0), default=1000, show_default=True,
              help="Daily identifies (session_start_limit.total; large bots get more).")
@click.option("--record-limit", type=click.IntRange(min=1), default=100_000, show_default=True,
              help="Records kept per list (bounds memory of endless runs).")
@click.option("--reshardable", is_flag=True,
              help="Accept IDENTIFY with any shard count, several sets at once (live resharding): "
              "each guild's events go to every session owning it under its own count.")
@click.option("--recommended-shards", type=click.IntRange(min=1), default=None,
              help="shards in /gateway/bot (default: --shards; /_sim/set_recommended changes it).")
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
    default="warning",
    show_default=True,
)
def simulate_command(
    host: str,
    port: int,
    token: str,
    shards: int,
    max_concurrency: int,
    heartbeat_interval: int,
    guilds_per_shard: int,
    events_per_shard: int,
    rate: float,
    fragment: bool,
    stamp: bool,
    replay_buffer: int,
    session_start_total: int,
    record_limit: int,
    reshardable: bool,
    recommended_shards: int | None,
    log_level: str,
) -> None:
    """Serve a local Discord gateway (v10) and /api/v10/gateway/bot for offline tests."""
    options = SimulatorOptions(
        token=token,
        host=host,
        port=port,
        shard_count=shards,
        max_concurrency=max_concurrency,
        heartbeat_interval_ms=heartbeat_interval,
        guilds_per_shard=guilds_per_shard,
        events_per_shard=events_per_shard,
        rate=rate,
        fragment=fragment,
        stamp=stamp,
        replay_buffer=replay_buffer,
        record_limit=record_limit,
        session_start_total=session_start_total,
        reshardable=reshardable,
        recommended_shards=recommended_shards,
    )
    try:
        options.validate()
    except ValueError as exc:
        click.echo(f"spectacles-supervisor: error: {exc}", err=True)
        raise click.exceptions.Exit(2) from None
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        with asyncio.Runner(loop_factory=new_loop) as runner:  # arrivals stamped by its polls
            summary = runner.run(_serve(options))
    except OSError as exc:
        click.echo(f"spectacles-supervisor: error: cannot serve on {host}:{port}: {exc.strerror or exc}", err=True)
        raise click.exceptions.Exit(1) from None
    click.echo(summary)


async def _serve(options: SimulatorOptions) -> str:
    sim = Simulator(options)
    await sim.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # pragma: no cover - not on Unix
            signal.signal(sig, lambda *_: loop.call_soon_threadsafe(stop.set))
    click.echo(f"simulator: gateway {sim.url} api {sim.api_url}")
    sys.stdout.flush()
    try:
        await stop.wait()
    finally:
        await sim.stop()
    c = sim.counters
    return (
        f"simulator: stopped: connections={c['connections']} identifies={c['identifies']} "
        f"resumes={c['resumes']} dispatched={c['dispatched']} violations={c['violations']}"
    )


def main() -> None:  # pragma: no cover - convenience entry point
    """Run ``simulate`` standalone (``python -m supervisor.simulator.cli``)."""
    simulate_command()


if __name__ == "__main__":  # pragma: no cover
    main()
