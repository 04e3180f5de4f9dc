"""Run a :class:`~supervisor.simulator.server.Simulator` on its own loop in a daemon thread.

For synchronous code (tests of multiprocess components, the demo, benchmarks)::

    with SimulatorThread(shard_count=4, token="t") as sim:
        ...  # point workers at sim.url / sim.api_url
        sim.call("reconnect", 2)
        snap = sim.wait_until(lambda s: s["ready"] == {0, 1, 2, 3}, timeout=30)
"""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
from collections.abc import Callable
from typing import Any

from supervisor.simulator.poll_clock import new_loop
from supervisor.simulator.server import Simulator, SimulatorOptions


class SimulatorThread:
    """A Simulator served from a background thread; a context manager.

    Takes a :class:`SimulatorOptions` and/or its fields as keyword arguments.
    """

    def __init__(self, options: SimulatorOptions | None = None, **overrides: Any) -> None:
        self.simulator = Simulator(options, **overrides)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None

    # -- lifecycle --
    def start(self, timeout: float = 10.0) -> SimulatorThread:
        """Start the thread and wait until the port is bound (re-raises a bind error)."""
        if self._thread is not None:
            return self
        self._thread = threading.Thread(target=self._run, name="discord-simulator", daemon=True)
        self._thread.start()
        if not self._started.wait(timeout):
            raise TimeoutError("the simulator did not start in time")
        if self._error is not None:
            raise self._error
        return self

    def _run(self) -> None:
        loop = new_loop()  # arrivals stamped by its polls (poll_clock)
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self.simulator.start())
        except BaseException as exc:  # noqa: BLE001 - handed to the starting thread
            self._error = exc
            self._started.set()
            loop.close()
            return
        self._started.set()
        try:
            loop.run_forever()
        finally:
            try:
                pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
                for task in pending:
                    task.cancel()
                if pending:
                    loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            finally:
                loop.close()

    def stop(self, timeout: float = 15.0) -> None:
        """Close every connection, stop the server and join the thread (idempotent)."""
        thread, loop = self._thread, self._loop
        if thread is None or loop is None or not thread.is_alive():
            return
        try:
            asyncio.run_coroutine_threadsafe(self.simulator.stop(), loop).result(timeout)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout)

    def __enter__(self) -> SimulatorThread:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- access --
    @property
    def url(self) -> str:
        """Gateway base URL, e.g. ``ws://127.0.0.1:PORT``."""
        return self.simulator.url

    @property
    def api_url(self) -> str:
        """REST base URL, e.g. ``http://127.0.0.1:PORT/api/v10``."""
        return self.simulator.api_url

    @property
    def port(self) -> int:
        """The bound port."""
        return self.simulator.port

    @property
    def options(self) -> SimulatorOptions:
        """The simulator's options."""
        return self.simulator.options

    def call(self, name: str, *args: Any, timeout: float = 30.0, **kwargs: Any) -> Any:
        """Run ``Simulator.<name>(*args, **kwargs)`` on the simulator's loop; return its result
        (awaited if it is a coroutine). Exceptions are re-raised here."""
        loop = self._loop
        if loop is None or self._thread is None or not self._thread.is_alive():
            raise RuntimeError("the simulator thread is not running")
        method = getattr(self.simulator, name)

        async def run() -> Any:
            result = method(*args, **kwargs)
            if inspect.isawaitable(result):
                result = await result
            return result

        return asyncio.run_coroutine_threadsafe(run(), loop).result(timeout)

    def snapshot(self) -> dict:
        """A deep copy of the records (see :meth:`Simulator.snapshot`)."""
        return self.call("snapshot")

    def stats(self) -> dict:
        """The JSON summary of ``/_sim/stats``."""
        return self.call("stats")

    def wait_until(
        self, pred: Callable[[dict], Any], timeout: float = 10.0, interval: float = 0.05
    ) -> dict:
        """Poll ``pred(snapshot)`` until it is true; return that snapshot.

        Raises ``TimeoutError`` (with the last counters) when ``timeout`` passes first.
        """
        deadline = time.monotonic() + timeout
        while True:
            snap = self.snapshot()
            if pred(snap):
                return snap
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"condition not met within {timeout:g} s; counters={snap['counters']} "
                    f"ready={sorted(snap['ready'])} violations={snap['violations'][-5:]}"
                )
            time.sleep(interval)
