"""The supervisor's identify gate (pure): who may IDENTIFY now, across every child.

Discord admits one IDENTIFY per 5 s per bucket ``shard_id % max_concurrency`` and a daily
number of session starts (``session_start_limit``). Children ask before every IDENTIFY (a RESUME
needs no grant); the gate grants in request order within each bucket, one per interval, and
holds every grant while the daily budget is down to its reserve, until ``reset_after`` passes.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass

from shard_worker.gateway.protocol import IDENTIFY_INTERVAL_S, identify_bucket

#: A little over Discord's 5 s, so that arrival jitter never puts two identifies closer.
DEFAULT_INTERVAL_S = IDENTIFY_INTERVAL_S + 0.25
#: Identifies never spent automatically: left for a human who fixes things by hand.
DEFAULT_RESERVE = 5
#: Discord's default daily session starts and the period of their reset.
DAILY_TOTAL = 1000
RESET_PERIOD_S = 24 * 3600.0
#: How often to ask again while a shared (cross-host) budget holds identifies back.
SHARED_RETRY_S = 5.0


@dataclass(frozen=True)
class Grant:
    requester: Hashable
    shard_id: int


class IdentifyGate:
    def __init__(
        self,
        max_concurrency: int,
        *,
        interval: float = DEFAULT_INTERVAL_S,
        remaining: int | None = None,
        reset_at: float | None = None,
        reserve: int = DEFAULT_RESERVE,
        total: int = DAILY_TOTAL,
        shared_lock: Callable[[int], float] | None = None,
    ) -> None:
        """``shared_lock(bucket)``, when given, also takes the bucket across hosts (Redis): it
        returns 0 when taken, else the seconds to wait (``inf`` while a shared budget holds)."""
        self.max_concurrency = max(1, max_concurrency)
        self.interval = interval
        self.remaining = remaining
        self.reset_at = reset_at
        self.reserve = reserve
        self.total = total
        self.total_granted = 0
        self.shared_lock = shared_lock
        self._last: dict[int, float] = {}
        self._blocked_until: dict[int, float] = {}
        self._waiting: dict[int, deque[Grant]] = {}

    def request(self, requester: Hashable, shard_id: int) -> None:
        bucket = identify_bucket(shard_id, self.max_concurrency)
        queue = self._waiting.setdefault(bucket, deque())
        grant = Grant(requester, shard_id)
        if grant not in queue:
            queue.append(grant)

    def cancel(self, requester: Hashable) -> None:
        """Forget every request of a child that died."""
        for queue in self._waiting.values():
            for grant in [g for g in queue if g.requester == requester]:
                queue.remove(grant)

    @property
    def waiting(self) -> int:
        return sum(len(q) for q in self._waiting.values())

    def queued(self) -> dict[int, list[int]]:
        """The shard ids waiting for a grant, by bucket, in grant order (a copy)."""
        return {bucket: [g.shard_id for g in queue] for bucket, queue in self._waiting.items() if queue}

    def free_at(self) -> dict[int, float]:
        """For each bucket that granted before (or is held by another host): when it may again."""
        times = {bucket: at + self.interval for bucket, at in self._last.items()}
        for bucket, until in self._blocked_until.items():
            times[bucket] = max(times.get(bucket, until), until)
        return times

    def budget_exhausted(self, now: float) -> bool:
        if self.remaining is None:
            return False
        if self.reset_at is not None and now >= self.reset_at:
            # Discord refilled the budget: count down again from the total for the next day.
            self.remaining = self.total
            self.reset_at += RESET_PERIOD_S
        return self.remaining <= self.reserve

    def set_budget(self, remaining: int, reset_at: float) -> None:
        self.remaining, self.reset_at = remaining, reset_at

    def due(self, now: float) -> list[Grant]:
        """The grants to send now (each counts as an identify spent)."""
        grants: list[Grant] = []
        if self.budget_exhausted(now):
            return grants
        for bucket, queue in self._waiting.items():
            if not queue:
                continue
            last = self._last.get(bucket)
            if last is not None and now < last + self.interval:
                continue
            if now < self._blocked_until.get(bucket, 0.0):
                continue
            if self.shared_lock is not None:
                wait = self.shared_lock(bucket)
                if wait > 0:
                    # Another host has the bucket (or the shared budget is held): ask again later.
                    self._blocked_until[bucket] = now + min(wait, SHARED_RETRY_S if wait == float("inf") else wait)
                    continue
            self._last[bucket] = now
            grants.append(queue.popleft())
            self.total_granted += 1
            if self.remaining is not None:
                self.remaining -= 1
            if self.budget_exhausted(now):
                break
        return grants

    def next_time(self, now: float) -> float | None:
        """When ``due`` may next have a grant (None: nothing is waiting)."""
        times = []
        for bucket, queue in self._waiting.items():
            if queue:
                last = self._last.get(bucket)
                at = now if last is None else max(now, last + self.interval)
                times.append(max(at, self._blocked_until.get(bucket, 0.0)))
        if not times:
            return None
        if self.budget_exhausted(now):
            return self.reset_at
        return min(times)
