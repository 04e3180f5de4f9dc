"""Lines that would repeat every pass of the loop (Redis down, a budget unknown) at most once a
minute each, and the one line for a Redis that does not answer."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("supervisor.coord")

#: A Redis error or a held budget is logged at most this often.
LOG_EVERY_S = 60.0


class LogEvery:
    def __init__(self, every_s: float = LOG_EVERY_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.every_s = every_s
        self.clock = clock
        #: what -> when it may be logged again
        self._next: dict[str, float] = {}

    def log(self, what: str, level: int, message: str, *args: object) -> bool:
        """Log ``message`` unless ``what`` was logged in the last :attr:`every_s`; True if it was."""
        now = self.clock()
        if now < self._next.get(what, float("-inf")):
            return False
        self._next[what] = now + self.every_s
        log.log(level, message, *args)
        return True

    def redis_failed(self, exc: BaseException) -> None:
        self.log("redis", logging.ERROR, "Redis unavailable (%s): identifies wait, sessions are saved locally",
                 str(exc) or type(exc).__name__)  # fmt: skip

    def redis_back(self) -> None:
        """Redis answers again: the next failure is said at once."""
        self._next.pop("redis", None)

    def redis_answered(self, answer: Any) -> bool:
        """Say what one answer of the Redis thread means for Redis' health; True when Redis
        answers again after failing (every session is then written to it again)."""
        if answer.error is not None:
            self.redis_failed(answer.error)
            return False
        if answer.recovered:
            log.warning("Redis answers again: identifies continue; saving every session to it again")
            self.redis_back()
            return True
        return False
