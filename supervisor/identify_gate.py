"""The supervisor's identify gate (pure): who may IDENTIFY now, across every child.

Discord admits one IDENTIFY per 5 s per bucket ``shard_id % max_concurrency`` and a daily
number of session starts (``session_start_limit``). Discord counts *arrivals*, so the gate paces
by the time each IDENTIFY was **written**, not the time it was granted: a busy child may write a
grant late, and the next grant of that bucket must then wait longer.

A bucket's life:

1. Children ask before every IDENTIFY (a RESUME needs no grant); requests queue per bucket.
2. A grant is issued up to ``lead`` seconds before the bucket is free, so that IPC latency and the
   child's websocket handshake (it connects only once granted) are not on the critical path. It carries ``not_before`` (the child waits until then) and ``expires``
   (a child that could not write it by then drops it and asks again). Both are ``time.monotonic()``
   values: one clock for every process of the host.
3. The bucket is *in flight* until the child reports the write (:meth:`sent`); the next grant is
   timed ``interval`` after that write. If no report comes (a hung child), the write is assumed
   at ``expires``, the latest it can be; if the child died, at its death.

The daily budget holds every grant while it is down to its reserve, until ``reset_after`` passes.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass

from shard_worker.gateway.protocol import IDENTIFY_INTERVAL_S, IDENTIFY_MARGIN_S, identify_bucket

#: Discord's 5 s plus our margin, from one IDENTIFY's write to the next of its bucket.
DEFAULT_INTERVAL_S = IDENTIFY_INTERVAL_S + IDENTIFY_MARGIN_S
#: A grant leaves this long before its bucket is free: the child opens its connection on the
#: grant and waits for ``not_before`` to write the IDENTIFY.
DEFAULT_LEAD_S = 2.0
#: A grant not written this long after its ``not_before`` is void.
GRANT_VALIDITY_S = 5.0
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
    #: The child waits until this monotonic time before it writes the IDENTIFY.
    not_before: float = 0.0
    #: ... and drops the grant if it cannot write it by this time.
    expires: float = float("inf")


class IdentifyGate:
    def __init__(
        self,
        max_concurrency: int,
        *,
        interval: float = DEFAULT_INTERVAL_S,
        lead: float = DEFAULT_LEAD_S,
        validity: float = GRANT_VALIDITY_S,
        remaining: int | None = None,
        reset_at: float | None = None,
        reserve: int = DEFAULT_RESERVE,
        total: int = DAILY_TOTAL,
        shared_lock: Callable[[int, float], float] | None = None,
        shared_sent: Callable[[int], None] | None = None,
    ) -> None:
        """``shared_lock(bucket, hold_s)``, when given, also takes the bucket across hosts
        (Redis) for ``hold_s`` seconds: it returns 0 when taken, else the seconds to wait
        (``inf`` while a shared budget holds). ``shared_sent(bucket)`` then tells the other
        hosts the IDENTIFY was written: the bucket is theirs ``interval`` later."""
        self.max_concurrency = max(1, max_concurrency)
        self.interval = interval
        self.lead = min(lead, interval)
        self.validity = validity
        self.remaining = remaining
        self.reset_at = reset_at
        self.reserve = reserve
        self.total = total
        self.total_granted = 0
        self.shared_lock = shared_lock
        self.shared_sent = shared_sent
        #: bucket -> when its last IDENTIFY was written (or assumed written)
        self._last: dict[int, float] = {}
        #: bucket -> the grant issued and not reported written yet
        self._in_flight: dict[int, Grant] = {}
        self._blocked_until: dict[int, float] = {}
        self._waiting: dict[int, deque[Grant]] = {}

    def bucket(self, shard_id: int) -> int:
        return identify_bucket(shard_id, self.max_concurrency)

    def request(self, requester: Hashable, shard_id: int) -> None:
        queue = self._waiting.setdefault(self.bucket(shard_id), deque())
        grant = Grant(requester, shard_id)
        if grant not in queue:
            queue.append(grant)

    def cancel(self, requester: Hashable, now: float | None = None) -> None:
        """Forget every request of a child that died (at ``now``); a grant it held counts as
        written at its death, the latest it could have written it."""
        for queue in self._waiting.values():
            for grant in [g for g in queue if g.requester == requester]:
                queue.remove(grant)
        for bucket, grant in list(self._in_flight.items()):
            if grant.requester == requester:
                at = grant.expires if now is None else min(now, grant.expires)
                self._settle(bucket, max(at, grant.not_before))

    def sent(self, shard_id: int, at: float) -> bool:
        """The child wrote the IDENTIFY of ``shard_id`` at ``at``; False if no grant of that
        shard was in flight (a late report after the grant was voided changes nothing)."""
        bucket = self.bucket(shard_id)
        grant = self._in_flight.get(bucket)
        if grant is None or grant.shard_id != shard_id:
            return False
        self._settle(bucket, at)
        if self.shared_sent is not None:
            self.shared_sent(bucket)
        return True

    def _settle(self, bucket: int, written_at: float) -> None:
        del self._in_flight[bucket]
        self._last[bucket] = max(self._last.get(bucket, written_at), written_at)

    def _expire(self, now: float) -> None:
        for bucket, grant in list(self._in_flight.items()):
            if now >= grant.expires:
                self._settle(bucket, grant.expires)

    @property
    def waiting(self) -> int:
        return sum(len(q) for q in self._waiting.values())

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def queued(self) -> dict[int, list[int]]:
        """The shard ids waiting for a grant, by bucket, in grant order (a copy)."""
        return {bucket: [g.shard_id for g in queue] for bucket, queue in self._waiting.items() if queue}

    def free_at(self) -> dict[int, float]:
        """For each bucket that granted before (or is held by another host): when it may again.
        A bucket in flight counts as written at its grant's ``not_before``."""
        times = {bucket: at + self.interval for bucket, at in self._last.items()}
        for bucket, grant in self._in_flight.items():
            times[bucket] = max(times.get(bucket, 0.0), grant.not_before + self.interval)
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

    def _opens_at(self, bucket: int) -> float:
        """When the next grant of ``bucket`` may leave (its ``not_before`` is ``lead`` later)."""
        last = self._last.get(bucket)
        return float("-inf") if last is None else last + self.interval - self.lead

    def due(self, now: float) -> list[Grant]:
        """The grants to send now (each counts as an identify spent)."""
        grants: list[Grant] = []
        self._expire(now)
        if self.budget_exhausted(now):
            return grants
        for bucket, queue in self._waiting.items():
            if not queue or bucket in self._in_flight:
                continue
            if now < self._opens_at(bucket) or now < self._blocked_until.get(bucket, 0.0):
                continue
            last = self._last.get(bucket)
            not_before = now if last is None else max(now, last + self.interval)
            expires = not_before + self.validity
            if self.shared_lock is not None:
                # Held across hosts until the write is reported, or at the latest until the
                # grant expires and the interval after it has passed.
                wait = self.shared_lock(bucket, expires + self.interval - now)
                if wait > 0:
                    # Another host has the bucket (or the shared budget is held): ask again later.
                    self._blocked_until[bucket] = now + min(wait, SHARED_RETRY_S if wait == float("inf") else wait)
                    continue
            request = queue.popleft()
            grant = Grant(request.requester, request.shard_id, not_before, expires)
            self._in_flight[bucket] = grant
            grants.append(grant)
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
                grant = self._in_flight.get(bucket)
                if grant is not None:
                    # the write report usually comes first; at the latest the grant expires
                    times.append(grant.expires)
                    continue
                at = max(now, self._opens_at(bucket))
                times.append(max(at, self._blocked_until.get(bucket, 0.0)))
        if not times:
            return None
        if self.budget_exhausted(now):
            return self.reset_at
        return min(times)
