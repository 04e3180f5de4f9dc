"""One worker child as the supervisor sees it: the process, its pipes and its last reports."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from typing import Any

import psutil

from shard_worker import ipc
from shard_worker.shard_ranges import format_shard_ids
from shard_worker.config import CONFIG_ENV, TOKEN_ENV, SavedSession, WorkerConfig
from shard_worker.logs import LOG_FORMAT_ENV, LOG_GROUP_ENV
from shard_worker.supervised import IPC_FD_ENV

log = logging.getLogger("supervisor.child")


class Child:
    """A running ``python -m shard_worker`` for one group of shards."""

    def __init__(self, group: int, config: WorkerConfig, *, log_format: str | None = None) -> None:
        self.group = group
        self.shard_ids = list(config.shard_ids)
        self.decoder = ipc.Decoder()
        read_fd, write_fd = os.pipe()
        env = dict(os.environ)
        env[CONFIG_ENV] = config.to_json()
        env[TOKEN_ENV] = config.token  # by environment, never argv
        env[IPC_FD_ENV] = str(write_fd)
        # WorkerConfig has no log format: the child's logging reads these (shard_worker.logs).
        if log_format is not None:
            env[LOG_FORMAT_ENV] = log_format
        env[LOG_GROUP_ENV] = str(group)
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "shard_worker"],
                stdin=subprocess.PIPE,
                env=env,
                pass_fds=(write_fd,),
                close_fds=True,
                start_new_session=False,
            )
        finally:
            os.close(write_fd)
        os.set_blocking(read_fd, False)
        self.read_fd = read_fd
        self.pid = self.proc.pid
        self.started_at = time.monotonic()
        self.last_heartbeat = self.started_at
        self.report: dict[str, Any] = {}
        self.sessions: dict[int, SavedSession] = {}
        self.ready: set[int] = set()
        self.stopping_since: float | None = None
        self.killed = False
        self.exit_code: int | None = None
        self.rss = 0
        self.cpu_percent = 0.0
        self._ps: psutil.Process | None = None

    @property
    def label(self) -> str:
        return f"group {self.group} (shards {format_shard_ids(self.shard_ids)}, pid {self.pid})"

    def uptime(self, now: float) -> float:
        return now - self.started_at

    def read(self) -> list[ipc.Message] | None:
        """Messages available on the pipe; ``None`` once the child closed it."""
        messages: list[ipc.Message] = []
        while True:
            try:
                chunk = os.read(self.read_fd, 65536)
            except BlockingIOError:
                return messages
            except OSError:
                return messages or None
            if not chunk:
                return messages or None
            messages += self.decoder.feed(chunk)

    def send(self, event: str, data: Any = None) -> bool:
        stdin = self.proc.stdin
        if stdin is None or stdin.closed:
            return False
        try:
            stdin.write(ipc.encode(event, data))
            stdin.flush()
            return True
        except (BrokenPipeError, OSError, ValueError):
            return False

    def stop(self, now: float) -> None:
        """Ask for a graceful stop (sessions kept); the arbiter kills it if it takes too long."""
        if self.stopping_since is None:
            self.stopping_since = now
            self.send("stop")
            self.signal(signal.SIGTERM)

    def signal(self, sig: int) -> None:
        try:
            os.kill(self.pid, sig)
        except ProcessLookupError:
            pass

    def kill(self) -> None:
        self.killed = True
        self.signal(signal.SIGKILL)

    def sample(self) -> None:
        """RSS and CPU of the child (psutil)."""
        try:
            if self._ps is None:
                self._ps = psutil.Process(self.pid)
                self._ps.cpu_percent(None)
            self.rss = self._ps.memory_info().rss
            self.cpu_percent = self._ps.cpu_percent(None)
        except psutil.Error:
            pass

    def close(self) -> None:
        try:
            os.close(self.read_fd)
        except OSError:
            pass
        if self.proc.stdin is not None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
