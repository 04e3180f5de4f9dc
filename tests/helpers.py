"""Test helpers: a worker on its own loop in a thread, worker configs pointed at a simulator."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from shard_worker.config import WorkerConfig
from shard_worker.worker import Worker

TOKEN = "test-token-0123456789abcdef"


def worker_config(sim: Any, amqp_url: str, group: str, shard_ids: list[int], **kw: Any) -> WorkerConfig:
    return WorkerConfig(
        shard_ids=shard_ids,
        shard_count=sim.options.shard_count,
        gateway_url=sim.url,
        token=TOKEN,
        amqp_url=amqp_url,
        group=group,
        max_concurrency=sim.options.max_concurrency,
        **kw,
    )


class WorkerThread:
    """Run a :class:`Worker` in a background thread; ``stop()`` returns its exit code."""

    def __init__(self, config: WorkerConfig, **worker_kw: Any) -> None:
        self.config = config
        self.worker_kw = worker_kw
        self.worker: Worker | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.exit_code: int | None = None
        self.error: BaseException | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="worker", daemon=True)

    def _run(self) -> None:
        async def main() -> int:
            self.loop = asyncio.get_running_loop()
            self.worker = Worker(self.config, **self.worker_kw)
            self._ready.set()
            return await self.worker.run()

        try:
            self.exit_code = asyncio.run(main())
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            self.error = exc
            self._ready.set()

    def __enter__(self) -> WorkerThread:
        self._thread.start()
        assert self._ready.wait(10), "worker did not start"
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the worker's loop and return its result (thread-safe reads)."""
        assert self.loop is not None

        async def run() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(10)

    def stop(self, timeout: float = 20.0) -> int | None:
        if self._thread.is_alive() and self.loop is not None and self.worker is not None:
            self.loop.call_soon_threadsafe(self.worker.stop)
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "worker did not stop in time"
        if self.error is not None:
            raise self.error
        return self.exit_code

    def wait_exit(self, timeout: float) -> int | None:
        self._thread.join(timeout)
        return None if self._thread.is_alive() else self.exit_code

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()


def wait_for(predicate: Callable[[], Any], timeout: float = 20.0, interval: float = 0.05, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")
        time.sleep(interval)


def free_port() -> int:
    """A TCP port of 127.0.0.1 free now (for ``--metrics-addr``)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
