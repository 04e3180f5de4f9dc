"""What the threads that work off the supervisor's loop share (Redis, the state dir)."""

from __future__ import annotations

import threading
from collections.abc import Callable


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
