"""What the arbiter's loop waits on: one selector over the children's pipes (read, and write
while orders wait for room), the control socket and its clients, and a wake-up pipe.

Signal handlers only enqueue the signal and write to the wake-up pipe (``signal.set_wakeup_fd``);
other threads (Redis, Discord's REST, the cluster rounds) wake the loop through :meth:`LoopIO.wake`.
:meth:`LoopIO.wait` returns what became ready as ``(kind, object)`` pairs.
"""

from __future__ import annotations

import os
import selectors
import signal
from collections import deque
from collections.abc import Iterable
from typing import Any


class LoopIO:
    def __init__(self) -> None:
        self.selector = selectors.DefaultSelector()
        #: signals received, handled by the loop in order
        self.signals: deque[int] = deque()
        self._wake_r = self._wake_w = -1

    # -- signals and the wake-up pipe ---------------------------------------------------------
    def install(self, signals: Iterable[int]) -> None:
        self._wake_r, self._wake_w = os.pipe()
        for fd in (self._wake_r, self._wake_w):
            os.set_blocking(fd, False)
        signal.set_wakeup_fd(self._wake_w)
        for sig in signals:
            signal.signal(sig, self._on_signal)
        self.selector.register(self._wake_r, selectors.EVENT_READ, ("wake", None))

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.signals.append(signum)  # only enqueue: the loop does the work

    def wake(self) -> None:
        """Wake the loop from another thread (an answer is ready); never blocks."""
        fd = self._wake_w
        if fd < 0:
            return
        try:
            os.write(fd, b"\0")
        except OSError:  # full (the loop wakes anyway) or closed at the end
            pass

    def _drain(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def close(self) -> None:
        signal.set_wakeup_fd(-1)

    # -- what is watched ----------------------------------------------------------------------
    def watch(self, fileobj: Any, kind: str, obj: Any) -> None:
        self.selector.register(fileobj, selectors.EVENT_READ, (kind, obj))

    def unwatch(self, fileobj: Any) -> None:
        try:
            self.selector.unregister(fileobj)
        except (KeyError, ValueError):
            pass

    def watch_child(self, child: Any) -> None:
        self.watch(child.read_fd, "child", child)

    def unwatch_child(self, child: Any) -> None:
        self.unwatch(child.read_fd)
        self._unwatch_writes(child)

    def _sync_writers(self, children: Iterable[Any]) -> None:
        """Watch a child's stdin for room only while orders wait for it (a large ``config``)."""
        for child in children:
            if child.out and not child.write_watched:
                self.selector.register(child.write_fd, selectors.EVENT_WRITE, ("child-write", child))
                child.write_watched = True
            elif not child.out and child.write_watched:
                self._unwatch_writes(child)

    def _unwatch_writes(self, child: Any) -> None:
        if child.write_watched:
            self.unwatch(child.write_fd)
            child.write_watched = False

    # -- the wait -----------------------------------------------------------------------------
    def wait(self, timeout: float, children: Iterable[Any]) -> list[tuple[str, Any]]:
        """Wait up to ``timeout``; flush the children whose stdin has room; return the rest of
        what is ready (``child``, ``control``, ``control-conn``)."""
        self._sync_writers(children)
        try:
            ready = self.selector.select(timeout)
        except InterruptedError:
            return []
        out = []
        for key, _ in ready:
            kind, obj = key.data
            if kind == "wake":
                self._drain()
            elif kind == "child-write":
                obj.flush()
            else:
                out.append((kind, obj))
        return out
