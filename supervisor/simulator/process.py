"""Run the simulator as its own process (``spectacles-supervisor simulate``), for scale tests and
benchmarks: thousands of connections need a core and an interpreter lock of their own, or the
simulator's loop runs late and what it records (identify arrival times) says more about it than
about the client.

    with SimulatorProcess(shard_count=2000, max_concurrency=256, token=TOKEN) as sim:
        sim.wait_until(lambda stats: len(stats["ready"]) == 2000, timeout=120)
        snap = sim.snapshot()

``stats()`` is the cheap summary (``/_sim/stats``); ``snapshot()`` has every record.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _raise_priority() -> None:
    """In the child before exec: Discord's servers are not starved by the bot's CPU, so the
    simulated one should not be either, or its arrival times lag (it records them when its loop
    reads them). Needs root or CAP_SYS_NICE; without them it runs at normal priority."""
    try:
        os.nice(-10)
    except OSError:
        pass


class SimulatorProcess:
    """``python -m supervisor simulate`` on a free port; a context manager."""

    def __init__(
        self,
        *,
        token: str,
        shard_count: int,
        max_concurrency: int = 1,
        heartbeat_interval_ms: int = 41250,
        guilds_per_shard: int = 1,
        events_per_shard: int = 0,
        rate: float = 0.0,
        record_limit: int = 100_000,
        session_start_total: int | None = None,
        log_path: str | os.PathLike | None = None,
        stamp: bool = False,
    ) -> None:
        self.port = _free_port()
        self.shard_count = shard_count
        self.max_concurrency = max_concurrency
        argv = [
            sys.executable, "-m", "supervisor", "simulate",
            "--port", str(self.port),
            "--shards", str(shard_count),
            "--max-concurrency", str(max_concurrency),
            "--heartbeat-interval", str(heartbeat_interval_ms),
            "--guilds-per-shard", str(guilds_per_shard),
            "--events-per-shard", str(events_per_shard),
            "--rate", str(rate),
            "--record-limit", str(record_limit),
            # enough daily identifies for every shard several times over, as Discord gives large bots
            "--session-start-total", str(session_start_total if session_start_total is not None else max(1000, 4 * shard_count)),
        ]  # fmt: skip
        if stamp:
            argv.append("--stamp")
        self._log = open(log_path, "wb") if log_path is not None else subprocess.DEVNULL
        env = dict(os.environ, DISCORD_TOKEN=token)  # the simulator's token: never argv
        self.proc = subprocess.Popen(
            argv, env=env, stdout=self._log, stderr=subprocess.STDOUT, preexec_fn=_raise_priority
        )
        self.url = f"ws://127.0.0.1:{self.port}"
        self.api_url = f"http://127.0.0.1:{self.port}/api/v10"

    def __enter__(self) -> SimulatorProcess:
        deadline = time.monotonic() + 30
        while True:
            try:
                self.stats()
                return self
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.close()
                    raise RuntimeError(f"the simulator did not start (exit {self.proc.poll()})") from None
                time.sleep(0.2)

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self._log is not subprocess.DEVNULL:
            self._log.close()

    def _get(self, command: str, timeout: float = 30.0, **query: Any) -> Any:
        url = f"http://127.0.0.1:{self.port}/_sim/{command}"
        if query:
            url += "?" + urllib.parse.urlencode(query)
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return json.loads(response.read())

    def stats(self) -> dict:
        return self._get("stats")

    def snapshot(self) -> dict:
        return self._get("snapshot", timeout=60.0)

    def call(self, command: str, **query: Any) -> Any:
        return self._get(command, **query)

    def wait_until(self, pred: Callable[[dict], Any], timeout: float, interval: float = 0.5) -> dict:
        """Poll ``stats()`` until ``pred`` is true; raise TimeoutError with the last stats."""
        deadline = time.monotonic() + timeout
        stats: dict = {}
        while True:
            try:
                stats = self.stats()
                if pred(stats):
                    return stats
            except OSError:
                pass
            if time.monotonic() >= deadline:
                ready = len(stats.get("ready", ()))
                raise TimeoutError(f"condition not met within {timeout:g} s; ready={ready} stats keys={sorted(stats)[:5]}")
            time.sleep(interval)
