"""What the threads that work off the supervisor's loop share (Redis, the state dir, Discord's
REST API, the cluster rounds): a daemon thread around one condition, whose owner hands it work
under the lock and never waits for it (``flush``, for the end of a run and for tests, waits until
the work is done; ``close`` stops it), and :class:`Answers`, the way back: what a thread puts
there wakes the loop, which takes it on its next pass."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


def wait_until(cond: threading.Condition, done: Callable[[], bool], timeout: float, clock: Callable[[], float]) -> bool:
    """With ``cond`` held by the caller: wait until ``done()`` (True) or ``timeout`` seconds
    passed (False). Blocks: for the end of a run and for tests, never the running loop."""
    deadline = clock() + timeout
    while not done():
        left = deadline - clock()
        if left <= 0:
            return False
        cond.wait(min(left, 0.1))
    return True


class OffLoopThread:
    """One daemon thread running ``self._run`` around ``self._cond``; subclasses say when they
    are idle (:meth:`_idle`, called with the lock held)."""

    def __init__(self, name: str, clock: Callable[[], float]) -> None:
        self.clock = clock
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self) -> None:  # pragma: no cover - the subclasses'
        raise NotImplementedError

    def _idle(self) -> bool:  # pragma: no cover - the subclasses'
        raise NotImplementedError

    def flush(self, timeout: float) -> bool:
        """Wait up to ``timeout`` until nothing is pending or running; False if time ran out.
        Blocks: for the end of a run and for tests, never the running loop."""
        with self._cond:
            return wait_until(self._cond, self._idle, timeout, self.clock)

    def close(self, timeout: float = 0.0) -> bool:
        """Let pending work finish for up to ``timeout`` seconds, then stop the thread (a call
        still running is abandoned: the thread is a daemon)."""
        flushed = self.flush(timeout) if timeout > 0 else False
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(0.5)
        return flushed


class Answers(Generic[T]):
    """From threads to the loop: :meth:`put` (any thread) keeps an answer and wakes the loop
    (``wake`` must not block; if it fails the loop still finds the answer on its next pass);
    :meth:`take` (the loop) returns what came since, oldest first. Unbounded by design: each
    owner bounds what it asks (one question per bucket, one refresh at a time, one round)."""

    def __init__(self, wake: Callable[[], None] = lambda: None) -> None:
        self.wake = wake
        self._lock = threading.Lock()
        self._items: deque[T] = deque()

    def put(self, item: T) -> None:
        with self._lock:
            self._items.append(item)
        try:
            self.wake()
        except Exception:  # noqa: BLE001 - the loop takes answers every pass anyway
            pass

    def take(self) -> list[T]:
        with self._lock:
            taken = list(self._items)
            self._items.clear()
        return taken

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)
