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

The daily budget holds every grant while it is down to its reserve, until ``reset_after`` passes;
then the gate refills itself to Discord's ``total`` (counted in :attr:`IdentifyGate.refills`: the
arbiter then asks Discord what is really left, :mod:`supervisor.identify.refresh`).

**Across hosts** (``--redis-url``) each grant also needs the bucket's shared lock in Redis, and
Redis is asked off the loop (:mod:`supervisor.coord.shared_state`), so the lock is asynchronous: when a
bucket is due, the gate *asks* (``shared_ask``, at most one question per bucket outstanding) and
grants nothing yet; :meth:`IdentifyGate.shared_answer` brings the answer later. A lock taken is a
*lease* on the bucket until its hold runs out; the grant is issued on the next pass and made to
expire early enough that its write plus the interval still fall inside the lease. A busy bucket,
a held budget or a Redis that did not answer block the bucket for the wait given, then the gate
asks again. No IDENTIFY is ever granted without the lease.
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
#: A shared lock is held this much longer than its grant needs: the answer's trip back to the
#: loop (normally well under a second) must fit in it.
SHARED_ANSWER_SLACK_S = 5.0
#: A lease with less time than this left for the grant's write is let run out instead.
MIN_GRANT_S = 1.0
#: Ask again this soon when a question could not even be queued (never, by construction).
SHARED_REFUSED_RETRY_S = 1.0


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
        shared_ask: Callable[[int, float], bool] | None = None,
        shared_sent: Callable[[int], None] | None = None,
    ) -> None:
        """``shared_ask(bucket, hold_s)``, when given, asks to take the bucket across hosts
        (Redis) for ``hold_s`` seconds and returns at once (False: the question could not be
        queued); the answer comes through :meth:`shared_answer`. ``shared_sent(bucket)`` tells
        the other hosts the IDENTIFY was written: the bucket is theirs ``interval`` later.
        ``total`` is Discord's ``session_start_limit.total``, the budget after each reset."""
        self.max_concurrency = max(1, max_concurrency)
        self.interval = interval
        self.lead = min(lead, interval)
        self.validity = validity
        self.remaining = remaining
        self.reset_at = reset_at
        self.reserve = reserve
        self.total = total
        self.total_granted = 0
        self.shared_ask = shared_ask
        self.shared_sent = shared_sent
        #: times the budget refilled itself at ``reset_at`` (the arbiter then asks Discord)
        self.refills = 0
        #: bucket -> (when the shared lock was asked for, its hold): the answer is awaited
        self._asking: dict[int, tuple[float, float]] = {}
        #: bucket -> until when the shared lock is ours (for one grant)
        self._lease: dict[int, float] = {}
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

    def written(self, bucket: int, at: float) -> None:
        """An IDENTIFY of ``bucket`` was (or may have been) written at ``at`` by someone this
        gate never granted: a supervisor that ran before a restart (its state dir says when)."""
        self._last[bucket] = max(self._last.get(bucket, at), at)

    def _settle(self, bucket: int, written_at: float) -> None:
        del self._in_flight[bucket]
        self._last[bucket] = max(self._last.get(bucket, written_at), written_at)

    def _expire(self, now: float) -> None:
        for bucket, grant in list(self._in_flight.items()):
            if now >= grant.expires:
                self._settle(bucket, grant.expires)
        for bucket, until in list(self._lease.items()):
            if now >= until:
                del self._lease[bucket]

    @property
    def asking(self) -> int:
        """Buckets whose shared lock was asked for and not answered yet."""
        return len(self._asking)

    def shared_answer(self, bucket: int, wait: float, now: float, started_at: float | None = None) -> None:
        """The answer to ``shared_ask(bucket, ...)``: 0 when the lock was taken (``started_at``:
        when the attempt began, the lease's hold counts from there, else from the question),
        else the seconds to wait before asking again (``inf``: the shared budget holds)."""
        asked = self._asking.pop(bucket, None)
        if asked is None:
            return
        asked_at, hold = asked
        if wait == 0:
            # The key in Redis was set after the attempt began: its expiry is no earlier.
            self._lease[bucket] = max(asked_at, started_at if started_at is not None else asked_at) + hold
        else:
            self._blocked_until[bucket] = now + (SHARED_RETRY_S if wait == float("inf") else max(0.0, wait))

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
            # Discord refilled the budget: count down again from the total for the next day
            # (until Discord, asked again, says exactly what is left and when it resets next).
            self.remaining = self.total
            self.reset_at += RESET_PERIOD_S
            self.refills += 1
        return self.remaining <= self.reserve

    def set_budget(self, remaining: int, reset_at: float, total: int | None = None) -> None:
        """Discord's ``session_start_limit``: ``remaining`` until ``reset_at``, then ``total``."""
        self.remaining, self.reset_at = remaining, reset_at
        if total is not None:
            self.total = total

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
            if self.shared_ask is not None:
                lease = self._lease.pop(bucket, None)
                if lease is None:
                    if bucket not in self._asking:
                        # Held across hosts until the write is reported, or at the latest until
                        # the grant expires and the interval after it has passed (plus the
                        # answer's way back).
                        hold = expires + self.interval - now + SHARED_ANSWER_SLACK_S
                        if self.shared_ask(bucket, hold):
                            self._asking[bucket] = (now, hold)
                        else:
                            self._blocked_until[bucket] = now + SHARED_REFUSED_RETRY_S
                    continue
                # The write and the interval after it must fall inside the lease.
                expires = min(expires, lease - self.interval)
                if expires - not_before < MIN_GRANT_S:
                    # The answer came too late to use: let the lease run out, then ask again.
                    self._blocked_until[bucket] = lease
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
            if queue and bucket not in self._asking:  # an answer awaited wakes the loop itself
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
