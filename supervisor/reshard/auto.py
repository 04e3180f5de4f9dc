"""``--auto-reshard``: when to ask Discord for its recommended shard count, and what to do with
the answer. Pure: no clock, no socket; the arbiter feeds in the times and the facts.

Two things start a reshard by themselves with ``--auto-reshard``:

* **the periodic check**: ``GET /gateway/bot`` once every shard is READY for the first time,
  then every ``interval`` (8 h by default, ``--auto-reshard-interval``). When Discord's
  ``shards`` (rounded up to ``--shard-count-multiple``) exceeds the current count, the
  supervisor reshards to it. Never to fewer shards by itself: a smaller recommendation is only
  logged.
* **a 4011 close** (sharding required: a shard holds too many guilds). Without
  ``--auto-reshard`` it halts everything, as it always did. With it, that shard is held down
  (identifying it again would only meet 4011 again) while its group's other shards resume at
  once in a new child; Discord is asked at once, and the
  supervisor reshards to :func:`~supervisor.reshard.shard_sets.after_sharding_required`'s target
  (Discord's recommendation when it is above the current count, else twice the count). If that
  reshard is refused or aborted, the supervisor halts with the 4011 as without the flag: it
  cannot serve that shard's guilds under this count.

A check that cannot reach Discord is tried again at the next interval (a 4011's check: the
target is twice the count, since waiting is not an option with a shard down).
"""

from __future__ import annotations

from dataclasses import dataclass

from supervisor.reshard.shard_sets import after_sharding_required, auto_target

#: The default interval between two checks of Discord's recommended shard count.
DEFAULT_INTERVAL_S = 8 * 3600.0
#: ``--auto-reshard-interval`` bounds: Discord's ``GET /gateway/bot`` is cheap but ratelimited;
#: a week covers any real use.
MIN_INTERVAL_S = 5.0
MAX_INTERVAL_S = 7 * 24 * 3600.0


@dataclass(frozen=True)
class Decision:
    """What to do with one answer: reshard to ``target`` (None: stay), and the log line why."""

    target: int | None
    why: str


class AutoReshard:
    """The ``--auto-reshard`` policy of one supervisor (see the module docstring)."""

    def __init__(self, interval_s: float = DEFAULT_INTERVAL_S, multiple: int = 1) -> None:
        self.interval_s = interval_s
        self.multiple = max(1, multiple)
        #: when the next periodic check is due (None: not before every shard was READY once)
        self.next_check: float | None = None
        #: the shard closed with 4011 whose reshard is being decided (None: none)
        self.sharding_required: int | None = None
        #: a check was asked for and its answer is awaited
        self.asking = False

    def all_ready(self, now: float) -> None:
        """Every shard is READY: the first check is due now (the count the supervisor started
        with may already be below Discord's recommendation), later ones every interval."""
        if self.next_check is None:
            self.next_check = now

    def on_sharding_required(self, shard: int) -> None:
        """A shard was closed with 4011: ask Discord now (whatever the interval says)."""
        if self.sharding_required is None:
            self.sharding_required = shard

    def due(self, now: float) -> bool:
        """Whether to ask Discord now."""
        if self.asking:
            return False
        if self.sharding_required is not None:
            return True
        return self.next_check is not None and now >= self.next_check

    def asked(self, now: float) -> None:
        """The question went out: the next periodic check is one interval from now."""
        self.asking = True
        self.next_check = now + self.interval_s

    def answer(self, current: int, recommended: int | None, error: str | None = None) -> Decision:
        """Discord answered ``recommended`` shards (None: it could not be asked, ``error``):
        where to go from ``current``."""
        self.asking = False
        shard, self.sharding_required = self.sharding_required, None
        if shard is not None:
            target = after_sharding_required(current, recommended or 0, self.multiple)
            seen = f"Discord recommends {recommended}" if recommended is not None else f"Discord not reachable: {error}"
            return Decision(target, f"shard {shard} was closed with 4011 (sharding required); {seen}")
        if recommended is None:
            return Decision(None, f"cannot ask Discord for its recommended shard count ({error}); trying again later")
        proposed = auto_target(current, recommended, self.multiple)
        if proposed is None:
            return Decision(None, f"Discord recommends {recommended} shards; staying at {current}")
        return Decision(proposed, f"Discord recommends {recommended} shards, {current} run")


__all__ = ["AutoReshard", "Decision", "DEFAULT_INTERVAL_S", "MIN_INTERVAL_S", "MAX_INTERVAL_S"]
