"""Run ``spectacles-supervisor start`` as a real process against a simulator, for tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from tests.helpers import TOKEN, wait_for


class SupervisorProcess:
    def __init__(
        self, sim: Any, amqp_url: str, group: str, state_dir: Path, *args: str, log: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.log_path = log or state_dir.parent / f"supervisor-{time.monotonic_ns()}.log"
        self.state_dir = state_dir
        # The default codec (ujson) end to end here; in-process tests run the orjson speedup.
        env = dict(os.environ, DISCORD_TOKEN=TOKEN, AMQP_URL=amqp_url, PYTHONUNBUFFERED="1", SPECTACLES_JSON="ujson", **(env or {}))
        self.argv = [
            sys.executable,
            "-m",
            "supervisor",
            "start",
            "--api-url",
            sim.api_url,
            "--group",
            group,
            "--state-dir",
            str(state_dir),
            *args,
        ]
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.argv, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        self.pid = self.proc.pid

    def children(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.pid).children()
        except psutil.NoSuchProcess:
            return []

    def wait_children(self, n: int, timeout: float = 20.0) -> list[psutil.Process]:
        return wait_for(lambda: (c := self.children()) and len(c) == n and c, timeout, what=f"{n} children")

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "supervisor", *args, "--state-dir", str(self.state_dir)],
            capture_output=True,
            text=True,
            timeout=30,
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            kids = self.children()
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
            for kid in kids:
                try:
                    kid.kill()
                except psutil.NoSuchProcess:
                    pass
        self._log.close()
