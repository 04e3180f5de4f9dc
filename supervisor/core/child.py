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
from shard_worker.config import CONFIG_ENV, TOKEN_ENV, SavedSession, WorkerConfig
from shard_worker.ipc_vocabulary import Order
from shard_worker.logs import LOG_FORMAT_ENV, LOG_GROUP_ENV
from shard_worker.shard_ranges import format_shard_ids
from shard_worker.supervised import IPC_FD_ENV
from supervisor.observe.sd_notify import ENV_VARS as NOTIFY_ENV

log = logging.getLogger("supervisor.core.child")

#: Bytes read from one child's pipe per call: a child that writes fast cannot keep the loop.
READ_BUDGET_BYTES = 1 << 20


class Child:
    """A running ``python -m shard_worker`` for one group of shards."""

    def __init__(self, group: int, config: WorkerConfig, *, log_format: str | None = None) -> None:
        self.group = group
        self.shard_ids = list(config.shard_ids)
        self.shard_set = frozenset(self.shard_ids)
        self.decoder = ipc.Decoder()
        read_fd, write_fd = os.pipe()
        env = dict(os.environ)
        env.pop(CONFIG_ENV, None)  # the configuration goes through stdin (no size limit)
        for name in NOTIFY_ENV:  # systemd's notify socket and watchdog are the supervisor's
            env.pop(name, None)
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
                bufsize=0,
            )
        finally:
            os.close(write_fd)
        os.set_blocking(read_fd, False)
        self.read_fd = read_fd
        assert self.proc.stdin is not None
        self.write_fd = self.proc.stdin.fileno()
        os.set_blocking(self.write_fd, False)
        #: Orders not written yet (the pipe was full); the arbiter writes them when it may.
        self.out = bytearray()
        self.write_watched = False  # registered with the arbiter's selector for EVENT_WRITE
        self.pid = self.proc.pid
        self.started_at = time.monotonic()
        self.last_heartbeat = self.started_at
        #: The child's process-wide figures (its last ``heartbeat``).
        self.report: dict[str, Any] = {}
        #: Each shard's last report (``shards`` messages).
        self.shard_reports: dict[str, dict[str, Any]] = {}
        self.sessions: dict[int, SavedSession] = {}
        self.ready: set[int] = set()
        #: The shard Discord closed fatally (its last ``fatal`` state), if one was.
        self.fatal_shard: int | None = None
        self.stopping_since: float | None = None
        #: How long a stop may take before the kill (None: the arbiter's ``stop_grace``).
        self.grace: float | None = None
        self.killed = False
        self.exit_code: int | None = None
        self.rss = 0
        self.cpu_percent = 0.0
        self._ps: psutil.Process | None = None
        # The first order: its configuration, whatever its size (a session per shard).
        self.send(Order.CONFIG, config.to_dict())

    @property
    def label(self) -> str:
        return f"group {self.group} (shards {format_shard_ids(self.shard_ids)}, pid {self.pid})"

    def uptime(self, now: float) -> float:
        return now - self.started_at

    def read(self) -> list[ipc.Message] | None:
        """Messages available on the pipe; ``None`` once the child closed it."""
        messages: list[ipc.Message] = []
        budget = READ_BUDGET_BYTES
        while budget > 0:
            try:
                chunk = os.read(self.read_fd, 65536)
            except BlockingIOError:
                return messages
            except OSError:
                return messages or None
            if not chunk:
                return messages or None
            budget -= len(chunk)
            messages += self.decoder.feed(chunk)
        return messages  # more is waiting: the selector reports the pipe again

    def send(self, event: Order, data: Any = None) -> bool:
        """Queue an order and write what the pipe takes now; never blocks."""
        if self.proc.stdin is None or self.proc.stdin.closed:
            return False
        self.out += ipc.encode(event, data)
        return self.flush()

    def flush(self) -> bool:
        """Write queued orders; False once the child's stdin is gone."""
        return ipc.write_pending(self.write_fd, self.out)

    def stop(self, now: float) -> None:
        """Ask for a graceful stop (sessions kept); the arbiter kills it if it takes too long."""
        if self.stopping_since is None:
            self.stopping_since = now
            self.send(Order.STOP)
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
