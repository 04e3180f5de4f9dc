"""When to restart a group's child after it exited (pure; circus-style flapping detection).

A child that ran for ``stable_after`` seconds is restarted at once and its failure count starts
over. Quicker exits back off exponentially with jitter. ``flap_max`` exits within ``flap_window``
seconds mean the group is flapping: it is held back for ``hold`` seconds, said loudly in the log,
then tried again.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class RestartDecision:
    delay: float
    flapping: bool
    failures: int


class RestartPolicy:
    def __init__(
        self,
        *,
        base: float = 1.0,
        cap: float = 60.0,
        stable_after: float = 60.0,
        flap_window: float = 120.0,
        flap_max: int = 5,
        hold: float = 300.0,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.base, self.cap, self.stable_after = base, cap, stable_after
        self.flap_window, self.flap_max, self.hold = flap_window, flap_max, hold
        self._rng = rng
        self.failures = 0
        self._exits: deque[float] = deque()

    def on_exit(self, now: float, uptime: float) -> RestartDecision:
        """A child exited at ``now`` after ``uptime`` seconds: how long until the next start."""
        if uptime >= self.stable_after:
            self.failures = 0
        self.failures += 1
        self._exits.append(now)
        while self._exits and self._exits[0] < now - self.flap_window:
            self._exits.popleft()
        if len(self._exits) >= self.flap_max:
            self._exits.clear()
            return RestartDecision(self.hold, True, self.failures)
        if self.failures == 1:
            return RestartDecision(0.0, False, 1)
        delay = min(self.cap, self.base * 2 ** (self.failures - 2))
        return RestartDecision(delay / 2 + self._rng() * delay / 2, False, self.failures)
