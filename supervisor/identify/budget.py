"""The identify budget the arbiter asks: who may IDENTIFY now, and how many are left today.

One interface, two strategies, chosen once in the composition root instead of ``if coordinator``
branches in the loop:

* :class:`LocalBudget` (no Redis): the gate counts Discord's ``session_start_limit`` down with
  every grant; at Discord's reset it refills itself and asks ``GET /gateway/bot`` (off the loop,
  :mod:`supervisor.identify.refresh`) what is really left. A supervisor restarted on the same
  state dir paces its first grants from the last ones logged there.
* :class:`SharedBudget` (``--redis-url``): every grant also takes the bucket's lock in Redis and
  spends the shared budget in the same atomic step (:mod:`supervisor.coord.coordinator`), asked
  off the loop (:mod:`supervisor.coord.shared_state`); the figure shown is the one last read.

Both hold identifies once only the reserve is left (:mod:`supervisor.identify.hold`) and say so.
The arbiter calls :meth:`IdentifyBudget.step` once a pass and sends the grants it returns.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable
from typing import Any

from supervisor.coord.coordinator import BUDGET_UNKNOWN
from supervisor.coord.log_every import LogEvery
from supervisor.coord.shared_state import Answer, SharedState
from supervisor.core.state_store import IDENTIFY_WINDOW_S, StateStore
from supervisor.core.state_writer import StateWriter
from supervisor.identify.gate import DAILY_TOTAL, Grant, IdentifyGate
from supervisor.identify.hold import BudgetHold
from supervisor.identify.refresh import BudgetRefresher, Refresh

log = logging.getLogger("supervisor.identify.budget")

#: A try of a bucket's shared lock that Redis did not answer is made again this much later.
REDIS_RETRY_S = 1.0
#: While the shared budget is unknown (being refreshed from Discord), a bucket asks again this
#: often: identifies continue about this long after the refresh.
BUDGET_UNKNOWN_RETRY_S = 2.0
#: The shared budget shown by ``status`` and ``/metrics`` is read at most this often.
BUDGET_READ_S = 2.0
#: A budget estimated from the shared grant log (Discord not reachable) lasts this long in Redis.
ESTIMATE_TTL_S = 60.0


class IdentifyBudget:
    """What both strategies share: the gate, the hold at the reserve, the refresh thread."""

    def __init__(self, gate: IdentifyGate, store: StateStore, writer: StateWriter, logs: LogEvery,
                 refresher: BudgetRefresher | None) -> None:
        self.gate = gate
        self.store = store
        self.writer = writer
        self.logs = logs
        self.refresher = refresher
        #: Identifies held at the budget's reserve (status, /metrics, /readyz, one loud line).
        self.hold = BudgetHold(gate.reserve)
        #: A refresh from Discord is wanted (started as soon as the refresher allows).
        self.refresh_wanted = False
        #: ``gate.total_granted`` when the running refresh started (its answer is older).
        self._granted_at_refresh = 0

    # -- what the children ask ----------------------------------------------------------------
    @property
    def reserve(self) -> int:
        return self.gate.reserve

    @property
    def waiting(self) -> int:
        return self.gate.waiting

    def request(self, requester: Hashable, shard: int) -> None:
        self.gate.request(requester, shard)

    def cancel(self, requester: Hashable, now: float) -> None:
        """A child died: its requests go, a grant it held counts as written at its death."""
        self.gate.cancel(requester, now)

    def sent(self, shard: int, at: float, now: float) -> None:
        """A child wrote an IDENTIFY at ``at``: the bucket's next one is timed from there."""
        if at > now + 1.0:  # one clock for the host: a report from the future is a bug
            log.warning("shard %d: identify written at a time %.1f s ahead; using now", shard, at - now)
            at = now
        self.gate.sent(shard, at)

    def next_time(self, now: float) -> float | None:
        return self.gate.next_time(now)

    # -- once a pass --------------------------------------------------------------------------
    def step(self, now: float) -> list[Grant]:
        """The grants due now (logged in the state dir, off the loop); the hold re-checked."""
        grants = self.gate.due(now)
        for grant in grants:
            wall = time.time()
            self.writer.record_identify(self.store, wall, self.gate.bucket(grant.shard_id), wall + grant.expires - now)
        change = self.hold.update(self.gate.waiting, self.remaining(), self.held(now), now, self._reset_in(now))
        if change is not None:
            line, loud = change
            log.log(logging.ERROR if loud else logging.INFO, "%s", line)
        return grants

    def take_refreshes(self, now: float) -> None:
        """Handle Discord's answers since the last pass; start a refresh when one is wanted."""
        if self.refresher is None:
            return
        for refresh in self.refresher.answers():
            self._on_refresh(refresh, now)
        self._check_refill()
        if self.refresh_wanted and self.refresher.request(now):
            self.refresh_wanted = False
            self._granted_at_refresh = self.gate.total_granted

    # -- what each strategy says differently --------------------------------------------------
    def remaining(self) -> int | None:
        """The identifies left (never a Redis call)."""
        raise NotImplementedError

    def spent(self, now: float) -> bool:
        """Whether the budget is down to its reserve."""
        raise NotImplementedError

    def held(self, now: float) -> bool:
        """Whether identifies are being held at the reserve (for :attr:`hold`)."""
        return self.spent(now)

    def _reset_in(self, now: float) -> float | None:
        return None

    def _check_refill(self) -> None:
        pass

    def _on_refresh(self, refresh: Refresh, now: float) -> None:
        raise NotImplementedError

    def on_answer(self, answer: Answer, now: float) -> None:
        """Redis' answers (only the shared budget asks Redis)."""


class LocalBudget(IdentifyBudget):
    """No Redis: the gate counts the budget itself (see the module docstring)."""

    def __init__(self, gate: IdentifyGate, store: StateStore, writer: StateWriter, logs: LogEvery,
                 refresher: BudgetRefresher | None, now: float) -> None:
        super().__init__(gate, store, writer, logs, refresher)
        self._refills_seen = 0
        self.refresh_wanted = gate.remaining is None and refresher is not None
        self._restore_bucket_writes(now)

    def remaining(self) -> int | None:
        return self.gate.remaining

    def spent(self, now: float) -> bool:
        return self.gate.budget_exhausted(now)

    def _reset_in(self, now: float) -> float | None:
        return None if self.gate.reset_at is None else self.gate.reset_at - now

    def _check_refill(self) -> None:
        if self.gate.refills != self._refills_seen:
            self._refills_seen = self.gate.refills
            self.refresh_wanted = True  # Discord's reset passed: ask what is really left

    def _on_refresh(self, refresh: Refresh, now: float) -> None:
        limit = refresh.limit
        if limit is None:
            self.refresh_wanted = self.gate.remaining is None  # keep trying while unknown
            log.warning("cannot refresh the identify budget from Discord: %s", refresh.error)
            return
        # Grants since the request are not in Discord's count yet (some may be: the lower
        # figure is the safe one).
        since = self.gate.total_granted - self._granted_at_refresh
        remaining = max(0, limit.remaining - since)
        self.gate.set_budget(remaining, refresh.finished + limit.reset_after / 1000, limit.total)
        log.info("identify budget from Discord: %d of %d left, resets in %.0f s",
                 remaining, limit.total, limit.reset_after / 1000)  # fmt: skip

    def _restore_bucket_writes(self, now: float) -> None:
        """The buckets a previous supervisor of this state dir granted lately (it may have been
        killed a moment after an IDENTIFY): each counts as written at the latest its grant
        allowed, so the first grant here keeps Discord's 5 s (Redis does this across hosts)."""
        wall = time.time()
        for bucket, written_by in self.store.bucket_writes(wall).items():
            if bucket < self.gate.max_concurrency:
                self.gate.written(bucket, now - (wall - written_by))
                log.info(
                    "identify bucket %d paced from the state dir (the last grant's write: by %+.1f s from now)",
                    bucket, written_by - wall,
                )  # fmt: skip


class SharedBudget(IdentifyBudget):
    """``--redis-url``: the buckets and the budget are Redis' (see the module docstring)."""

    def __init__(self, max_concurrency: int, reserve: int, total: int, coordinator: Any, shared: SharedState,
                 store: StateStore, writer: StateWriter, logs: LogEvery, fetch_gateway_bot: Any,
                 wake: Callable[[], None]) -> None:
        self.coordinator = coordinator
        self.shared = shared
        gate = IdentifyGate(max_concurrency, total=total, reserve=reserve,
                            shared_ask=self._ask, shared_sent=self._identify_sent)  # fmt: skip
        refresher = BudgetRefresher(fetch_gateway_bot, publish=self._publish, fallback=self._estimate, wake=wake)
        super().__init__(gate, store, writer, logs, refresher)
        #: The shared budget as last read from Redis, and when to read it again.
        self.cache: int | None = None
        self._next_read = 0.0
        #: Redis answered "down to the reserve" to the last identify asked.
        self._held = False

    def remaining(self) -> int | None:
        return self.cache

    def spent(self, now: float) -> bool:
        # as last read: another host may have spent it
        return self.cache is not None and self.cache <= self.gate.reserve

    def held(self, now: float) -> bool:
        return self.spent(now) or self._held

    def step(self, now: float) -> list[Grant]:
        grants = super().step(now)
        if now >= self._next_read:
            self._next_read = now + BUDGET_READ_S
            self.shared.read_budget()
        return grants

    def on_answer(self, answer: Answer, now: float) -> None:
        """Redis' answer to a question of the gate (``identify``) or a read of the budget."""
        if answer.kind == "identify":
            wait = REDIS_RETRY_S if answer.error is not None else answer.value
            if wait == BUDGET_UNKNOWN:
                self.logs.log(
                    "budget-unknown", logging.WARNING,
                    "the shared identify budget is unknown (expired at Discord's reset, or Redis lost it): "
                    "holding identifies until GET /gateway/bot refreshes it",
                )  # fmt: skip
                self.refresh_wanted = True
                wait = BUDGET_UNKNOWN_RETRY_S
            if answer.error is None:  # Redis down says nothing of the budget
                self._held = wait == float("inf")  # worded by the hold
            self.gate.shared_answer(answer.key, wait, now, started_at=answer.started)
        elif answer.kind == "budget" and answer.error is None:
            self.cache = answer.value
            if answer.value is None:
                self.refresh_wanted = True

    def _on_refresh(self, refresh: Refresh, now: float) -> None:
        limit = refresh.limit
        if refresh.publish_error is not None:
            self.logs.redis_failed(refresh.publish_error)
        if limit is not None:
            if refresh.publish_error is None:
                self.cache = limit.remaining
            log.info("identify budget from Discord: %d of %d left, resets in %.0f s%s", limit.remaining, limit.total,
                     limit.reset_after / 1000, " (shared in Redis)" if refresh.publish_error is None else "")  # fmt: skip
        elif refresh.estimated is not None:
            self.cache = refresh.estimated
            log.warning("cannot refresh the identify budget from Discord (%s): %d left by the shared grant log, "
                        "for %.0f s", refresh.error, refresh.estimated, ESTIMATE_TTL_S)  # fmt: skip
        else:
            log.warning("cannot refresh the identify budget from Discord: %s", refresh.error)

    # -- in the gate (the loop) and in the refresh thread ---------------------------------------
    def _ask(self, bucket: int, hold_s: float) -> bool:
        return self.shared.ask_identify(bucket, hold_s, self.gate.reserve)

    def _identify_sent(self, bucket: int) -> None:
        # If Redis does not answer, the bucket stays held until the grant's hold expires.
        self.shared.identify_sent(bucket, self.gate.interval)

    def _publish(self, limit: Any, asked_ago_s: float) -> None:
        """In the refresh thread: Discord's answer, less the grants since it was asked, becomes
        the shared budget."""
        self.coordinator.set_budget(limit.remaining, limit.reset_after / 1000, limit.total, asked_ago_s=asked_ago_s)

    def _estimate(self) -> int:
        """In the refresh thread, Discord not reachable: the budget from the shared grant log."""
        return self.coordinator.estimate_budget(ESTIMATE_TTL_S, default_total=self.gate.total)


def initial_budget(store: StateStore, remaining: int | None, reset_after: float | None,
                   total: int | None) -> tuple[int | None, float | None]:
    """Discord's ``session_start_limit`` when known (``remaining``, ``reset_after`` seconds from
    now), else what the state dir's identify log implies; ``(None, None)``: unknown."""
    granted = store.identifies()
    if remaining is not None:
        log.info("identify budget: %d left (Discord), %d granted here in the last 24 h", remaining, len(granted))
        return remaining, reset_after
    if not granted:
        return None, None
    estimate = max(0, (total or DAILY_TOTAL) - len(granted))
    log.info("identify budget: about %d left by the local log (Discord not asked)", estimate)
    return estimate, max(0.0, granted[0] + IDENTIFY_WINDOW_S - time.time())


def make_budget(*, max_concurrency: int, reserve: int, store: StateStore, writer: StateWriter, logs: LogEvery,
                session_start_remaining: int | None, session_start_reset_after: float | None,
                session_start_total: int | None, fetch_gateway_bot: Any, coordinator: Any = None,
                shared: SharedState | None = None, now: float, wake: Callable[[], None]) -> IdentifyBudget:
    """The strategy for this supervisor: :class:`SharedBudget` with Redis, else :class:`LocalBudget`."""
    total = session_start_total or DAILY_TOTAL
    if coordinator is not None:
        assert shared is not None
        return SharedBudget(max_concurrency, reserve, total, coordinator, shared, store, writer, logs, fetch_gateway_bot, wake)
    remaining, reset_after = initial_budget(store, session_start_remaining, session_start_reset_after, session_start_total)
    gate = IdentifyGate(max_concurrency, remaining=remaining, total=total, reserve=reserve,
                        reset_at=now + reset_after if reset_after is not None else None)  # fmt: skip
    refresher = BudgetRefresher(fetch_gateway_bot, wake=wake) if fetch_gateway_bot is not None else None
    return LocalBudget(gate, store, writer, logs, refresher, now)
