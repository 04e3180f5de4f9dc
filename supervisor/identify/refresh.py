"""Refresh the daily identify budget from Discord (``GET /gateway/bot``) off the supervisor's loop.

Discord's ``session_start_limit`` (``total``, ``remaining``, ``reset_after``) is read once at
start. It must be read again:

- with ``--redis-url``, when the shared key ``<prefix>:identify:remaining`` is missing: it
  expires at Discord's reset (by design: the answer is only valid until then), or a restarted
  Redis lost it. Until it is back, no identify is granted (:mod:`supervisor.coord.coordinator`);
- without Redis, when the local ``reset_at`` passed: the gate refills itself to ``total``, and
  Discord then says what is really left and when the next reset is.

The request goes through the ratelimiter and may take seconds (a timeout, a 429), so it runs on a
short-lived daemon thread: at most one at a time, and at most once per ``min_interval`` (60 s)
whatever asks for it, so a Discord that cannot be reached is not hammered. In shared mode the
thread also publishes the answer to Redis (``publish``) or, when Discord could not be asked, a
conservative estimate from the shared grant log (``fallback``). The loop picks the
:class:`Refresh` answers up with :meth:`BudgetRefresher.answers`; ``wake()`` tells it to.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from supervisor.coord.offloop import Answers

log = logging.getLogger("supervisor.identify.refresh")

#: At most one ``GET /gateway/bot`` this often for the budget.
REFRESH_INTERVAL_S = 60.0


@dataclass(frozen=True)
class Refresh:
    """One refresh: Discord's ``limit`` (a :class:`~supervisor.discord.api.SessionStartLimit`)
    or the ``error`` that prevented it; ``estimated``: the budget set from the grant log instead;
    ``publish_error``: the limit could not be written to Redis; ``recommended``: Discord's
    ``shards`` (for ``--auto-reshard``). ``started``/``finished`` are ``time.monotonic()``
    values (``reset_after`` counts from ``finished``)."""

    limit: Any = None
    error: BaseException | None = None
    estimated: int | None = None
    publish_error: BaseException | None = None
    started: float = 0.0
    finished: float = 0.0
    recommended: int | None = None


class BudgetRefresher:
    """Runs ``fetch()`` (returns a :class:`~supervisor.discord.api.GatewayBot`) in a thread.

    ``publish(limit, asked_ago_s)`` runs in the thread after a successful fetch (``asked_ago_s``:
    how long ago Discord was asked, so its count can be aged), ``fallback()`` (returns the
    estimated budget) after a failed one or when there is no ``fetch``.
    """

    def __init__(
        self,
        fetch: Callable[[], Any] | None,
        *,
        publish: Callable[[Any, float], Any] | None = None,
        fallback: Callable[[], int] | None = None,
        wake: Callable[[], None] = lambda: None,
        min_interval: float = REFRESH_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.fetch = fetch
        self.publish = publish
        self.fallback = fallback
        self.min_interval = min_interval
        self.clock = clock
        self._answers: Answers[Refresh] = Answers(wake)
        self._thread: threading.Thread | None = None
        self._next_at = float("-inf")
        #: refreshes started so far
        self.started = 0

    @property
    def running(self) -> bool:
        thread = self._thread
        return thread is not None and thread.is_alive()

    def request(self, now: float) -> bool:
        """Start a refresh unless one runs or the last one started under ``min_interval`` ago."""
        if self.running or now < self._next_at:
            return False
        self._next_at = now + self.min_interval
        self.started += 1
        self._thread = threading.Thread(target=self._run, name="budget-refresh", daemon=True)
        self._thread.start()
        return True

    def answers(self) -> list[Refresh]:
        """The refreshes finished since the last call."""
        return self._answers.take()

    def join(self, timeout: float) -> None:
        """Wait for a running refresh (tests, the end of a run)."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def _run(self) -> None:
        started = self.clock()
        limit = error = publish_error = None
        estimated = recommended = None
        if self.fetch is not None:
            try:
                bot = self.fetch()
                limit, recommended = bot.session_start_limit, getattr(bot, "shards", None)
            except Exception as exc:  # noqa: BLE001 - DiscordAPIError, a Redis ratelimiter error
                error = exc
        else:
            error = RuntimeError("Discord is not asked (no API access configured)")
        if limit is not None and self.publish is not None:
            try:
                self.publish(limit, self.clock() - started)  # how old Discord's count is
            except Exception as exc:  # noqa: BLE001 - Redis errors
                publish_error = exc
        elif limit is None and self.fallback is not None:
            try:
                estimated = self.fallback()
            except Exception as exc:  # noqa: BLE001 - Redis errors
                publish_error = exc
        self._answers.put(Refresh(limit, error, estimated, publish_error, started, self.clock(), recommended))
