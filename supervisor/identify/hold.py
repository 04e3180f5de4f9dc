"""Whether identifies are held at the daily budget's reserve, and the one loud line that says so.

Discord resets a bot's token when its daily session starts run out, so the supervisor keeps a
*reserve* it never spends on its own (``--identify-reserve``; by default one full restart of the
shards it runs: a human who fixes things by hand can still start everything once). Identifies
are *held* while some shard waits for one and the budget is down to the reserve. This module
only decides and words it; the arbiter shows it in ``status``, ``/metrics`` and ``/readyz``.
"""

from __future__ import annotations

from dataclasses import dataclass


def default_reserve(shards_run_here: int) -> int:
    """The default reserve: one IDENTIFY for every shard this supervisor runs (at least 1)."""
    return max(1, shards_run_here)


@dataclass
class BudgetHold:
    """Tracks the held state; :meth:`update` returns a log line on each change, else None."""

    reserve: int
    held: bool = False
    #: when the current hold began (monotonic), None when not held
    since: float | None = None

    def update(self, waiting: int, remaining: int | None, spent: bool, now: float,
               reset_in: float | None = None) -> tuple[str, bool] | None:
        """``waiting`` shards want an IDENTIFY; ``spent``: the budget is at its reserve.
        Returns ``(line, loud)`` when the state changes (loud: an error when holding begins)."""
        held = waiting > 0 and spent
        if held == self.held:
            return None
        self.held = held
        if held:
            self.since = now
            left = "unknown" if remaining is None else str(remaining)
            when = "" if reset_in is None else f"; Discord resets it in {reset_in:.0f} s"
            return (
                f"IDENTIFIES HELD: the daily identify budget is down to its reserve ({left} left, "
                f"reserve {self.reserve}, --identify-reserve); {waiting} shard(s) wait{when}. "
                "Spending the reserve risks a token reset: lower --identify-reserve only by hand",
                True,
            )
        held_for = 0.0 if self.since is None else now - self.since
        self.since = None
        return f"identifies no longer held (held {held_for:.0f} s)", False

    def describe(self, remaining: int | None) -> dict:
        """The ``identify_hold`` block of ``status`` and ``/readyz``."""
        return {"held": self.held, "reserve": self.reserve, "remaining": remaining}
