"""When bytes reached the simulated Discord, as closely as its own loop can tell.

Discord counts identifies by their arrival at its edge. The simulator is one asyncio loop: when
it is busy (thousands of shards' heartbeats and dispatches), bytes that arrived wait in the
socket until the loop polls again, and a handler's own clock says *later* than they came. So
the loop runs on a :class:`PollClock` selector, which notes when each poll returned. Bytes a
handler reads in the pass after poll *k* arrived after poll *k-1* returned (else that poll would
have reported them) and before poll *k* returned: the arrival is known to lie in
``[previous, polled_at]``, a window as wide as the loop's last pass. The bucket rule judges with
both ends (see ``server._on_identify``): a gap short at both ends is the client's; one short
only by the loop's lateness is the simulator's, counted and said, never answered with op 9.
"""

from __future__ import annotations

import asyncio
import selectors
import time


class PollClock(selectors.DefaultSelector):  # type: ignore[misc,valid-type]
    """A selector that notes, in ``time.monotonic()`` (the loop's clock), when its polls return."""

    def __init__(self) -> None:
        super().__init__()
        now = time.monotonic()
        #: when the last poll returned, and the one before it
        self.polled_at = now
        self.previous = now
        #: the widest window seen (the loop's longest pass), for the summary
        self.widest = 0.0

    def select(self, timeout: float | None = None):  # type: ignore[override]
        ready = super().select(timeout)
        self.previous, self.polled_at = self.polled_at, time.monotonic()
        self.widest = max(self.widest, self.polled_at - self.previous)
        return ready

    def window(self) -> tuple[float, float]:
        """``(earliest, latest)`` arrival of bytes read now (loop time)."""
        return self.previous, self.polled_at


def new_loop() -> asyncio.AbstractEventLoop:
    """An event loop on a :class:`PollClock` (the simulator's loop, in a thread or a process)."""
    return asyncio.SelectorEventLoop(PollClock())


def poll_clock(loop: asyncio.AbstractEventLoop) -> PollClock | None:
    """The loop's :class:`PollClock`, if it runs on one."""
    selector = getattr(loop, "_selector", None)
    return selector if isinstance(selector, PollClock) else None
