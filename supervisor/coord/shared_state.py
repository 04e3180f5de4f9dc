"""Redis off the supervisor's loop: one worker thread and a bounded set of pending requests.

The arbiter runs everything on one ``select`` loop: children's IPC, heartbeats, the control socket
(``status``), grants. A Redis call blocks its caller until Redis answers or the 2 s socket timeout
passes, so a Redis that accepts connections and never answers (hung, swapped out, a half-open
link) used to stall the loop for seconds per call: children were replaced for heartbeat timeouts
in the middle of a mass identify and ``status`` timed out. Here every Redis call of the running
supervisor is made on one daemon thread instead, and the loop only hands requests over and picks
answers up, never waiting.

- :class:`Mailbox` (pure: no sockets, no threads, no clock of its own) holds the pending work by
  *what it is about*, so it is bounded by construction: at most one identify try per bucket
  (pending or running: the gate waits for the answer before it asks again), one write report per
  bucket (a newer one replaces it), one session save (the latest snapshot wins; sessions to
  forget are merged) and one budget read. That is at most ``2 × max_concurrency + 2`` entries;
  :data:`MAX_PENDING` refuses anything beyond as a guard against a bug. Work is taken in order of
  urgency: write reports (they free buckets for other hosts), identify tries, sessions, budget
  reads. A failed save is kept (unless a newer snapshot came) and retried
  :data:`SESSION_RETRY_S` later.
- :class:`SharedState` is the thread. Its methods never block the caller for more than a lock
  held for microseconds; each finished job leaves an :class:`Answer` (the result or the error)
  for :meth:`SharedState.answers` and calls ``wake()`` (the arbiter writes its wake-up pipe, so
  the answer is handled on the next pass, not after the select timeout).

Identifies stay safe: no IDENTIFY is granted without the shared bucket, so while Redis does not
answer, identifies wait, and they continue as soon as it answers again (the next try is at most
about a second behind). RESUMEs need nothing from Redis: the arbiter has every session in memory.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from supervisor.coord.offloop import Answers, OffLoopThread

log = logging.getLogger("supervisor.coord.shared_state")

#: A save that failed is tried again this long after (unless a newer snapshot replaced it).
SESSION_RETRY_S = 2.0
#: A guard: more pending entries than this is a bug (the limit by construction is far lower).
MAX_PENDING = 4096

#: Job kinds, in the order they are taken.
SENT, IDENTIFY, SESSIONS, BUDGET = "sent", "identify", "sessions", "budget"
_ORDER = (SENT, IDENTIFY, SESSIONS, BUDGET)


@dataclass(frozen=True)
class Job:
    """One unit of Redis work: ``kind``, ``key`` (a bucket, or None) and its arguments."""

    kind: str
    key: Any
    args: tuple


@dataclass(frozen=True)
class Answer:
    """What a job gave: ``value`` (the call's result) or ``error``; ``started`` is the
    ``time.monotonic()`` just before the call (an identify lock's hold counts from there);
    ``recovered`` marks the first success after failures (Redis answers again)."""

    kind: str
    key: Any
    value: Any = None
    error: BaseException | None = None
    started: float = 0.0
    finished: float = 0.0
    recovered: bool = False


class Mailbox:
    """The pending Redis work, keyed so that it stays bounded (pure; see the module docstring).

    Not thread-safe by itself: :class:`SharedState` holds its lock around every call.
    """

    def __init__(self, max_pending: int = MAX_PENDING) -> None:
        self.max_pending = max_pending
        #: (kind, key) -> Job, for every kind but sessions
        self._pending: dict[tuple[str, Any], Job] = {}
        #: identify tries and budget reads taken and not answered yet: no second one meanwhile
        self._running: set[tuple[str, Any]] = set()
        #: the latest session snapshot to save: (shard_count, {shard: session}) or None
        self._save: tuple[int, dict[int, Any]] | None = None
        #: ``(shard_count, shard)`` whose session is to be deleted (never one of the
        #: snapshot's); by count, since a reshard changes the count the snapshots are saved under
        self._forget: set[tuple[int, int]] = set()
        self._shard_count = 0
        self._sessions_running = False
        self._sessions_not_before = 0.0

    def __len__(self) -> int:
        return len(self._pending) + (1 if self._save is not None or self._forget else 0)

    @property
    def idle(self) -> bool:
        """Nothing pending and nothing running."""
        return not len(self) and not self._running and not self._sessions_running

    def _room(self) -> bool:
        if len(self) >= self.max_pending:
            log.error("%d Redis requests pending: refusing more (a bug)", len(self))
            return False
        return True

    def ask_identify(self, bucket: int, hold_s: float, reserve: int) -> bool:
        """Queue one try of ``bucket``; False if one is pending or running already (or no room)."""
        key = (IDENTIFY, bucket)
        if key in self._pending or key in self._running or not self._room():
            return False
        self._pending[key] = Job(IDENTIFY, bucket, (hold_s, reserve))
        return True

    def identify_sent(self, bucket: int, interval_s: float) -> None:
        """Queue the write report of ``bucket`` (replacing one not sent yet: the same key, set
        from the later write, is what counts)."""
        key = (SENT, bucket)
        if key in self._pending or self._room():
            self._pending[key] = Job(SENT, bucket, (interval_s,))

    def read_budget(self) -> bool:
        """Queue one read of the shared budget; False if one is pending or running."""
        key = (BUDGET, None)
        if key in self._pending or key in self._running or not self._room():
            return False
        self._pending[key] = Job(BUDGET, None, ())
        return True

    def save_sessions(
        self, shard_count: int, sessions: dict[int, Any], forget: list[int] | set[int] = ()
    ) -> None:
        """Replace the snapshot to save (latest wins) and add ``forget`` (shards of
        ``shard_count``) to the sessions to delete."""
        self._shard_count = shard_count
        self._save = (shard_count, dict(sessions))
        self._forget |= {(shard_count, shard) for shard in forget}
        self._forget -= {(shard_count, shard) for shard in sessions}

    def forget_sessions(self, shard_count: int, shards: list[int] | set[int]) -> None:
        """Delete the sessions of ``shards`` under ``shard_count`` (another count than the
        snapshot's: the old set's after a reshard), without touching the snapshot."""
        self._forget |= {(shard_count, shard) for shard in shards}

    def take(self, now: float) -> Job | None:
        """The most urgent job that may run at ``now`` (it counts as running until :meth:`done`)."""
        for kind in _ORDER:
            if kind == SESSIONS:
                waiting = self._save is not None or self._forget
                if waiting and not self._sessions_running and now >= self._sessions_not_before:
                    save, forget = self._save, sorted(self._forget)
                    self._save, self._forget = None, set()
                    self._sessions_running = True
                    count = save[0] if save is not None else self._shard_count
                    return Job(SESSIONS, None, (count, save[1] if save is not None else {}, forget))
                continue
            for key, job in self._pending.items():
                if key[0] == kind:
                    del self._pending[key]
                    if kind in (IDENTIFY, BUDGET):
                        self._running.add(key)
                    return job
        return None

    def done(self, job: Job, ok: bool, now: float) -> None:
        """``job`` finished (``ok`` False: it failed); a failed save is kept for a retry."""
        self._running.discard((job.kind, job.key))
        if job.kind != SESSIONS:
            return
        self._sessions_running = False
        if ok:
            return
        count, saved, forget = job.args
        if self._save is None and saved:
            self._save = (count, saved)  # nothing newer came meanwhile: this one is still the latest
        newer = {(self._save[0], shard) for shard in self._save[1]} if self._save is not None else set()
        self._forget |= set(forget) - newer
        self._sessions_not_before = now + SESSION_RETRY_S

    def next_time(self, now: float) -> float | None:
        """When a job may be taken (``now`` if one may now; None: nothing is pending)."""
        if self._pending:
            return now
        if (self._save is not None or self._forget) and not self._sessions_running:
            return max(now, self._sessions_not_before)
        return None


class SharedState(OffLoopThread):
    """Runs a :class:`~supervisor.coord.coordinator.RedisCoordinator`'s calls on one daemon thread.

    ``wake()`` is called (from the thread) after each answer; it must not block.
    """

    def __init__(
        self,
        coordinator: Any,
        wake: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__("redis", clock)
        self.coordinator = coordinator
        self.wake = wake
        self._mailbox = Mailbox()
        self._answers: Answers[Answer] = Answers(wake)
        self._busy = False
        #: the last call failed (Redis unreachable or not answering)
        self.failing = False
        self._thread.start()

    # -- the loop's side (never blocks) ---------------------------------------------------------
    def ask_identify(self, bucket: int, hold_s: float, reserve: int) -> bool:
        """Queue a try of ``bucket`` (see :meth:`Mailbox.ask_identify`); the answer comes later."""
        return self._submit(self._mailbox.ask_identify, bucket, hold_s, reserve)

    def identify_sent(self, bucket: int, interval_s: float) -> None:
        """Queue the report that ``bucket``'s IDENTIFY was written (fire and forget)."""
        self._submit(self._mailbox.identify_sent, bucket, interval_s)

    def read_budget(self) -> bool:
        """Queue a read of the shared budget (one at a time)."""
        return self._submit(self._mailbox.read_budget)

    def save_sessions(
        self, shard_count: int, sessions: dict[int, Any], forget: list[int] | set[int] = ()
    ) -> None:
        """Queue a save of ``sessions`` (the latest snapshot wins) and the deletion of ``forget``."""
        self._submit(self._mailbox.save_sessions, shard_count, sessions, forget)

    def forget_sessions(self, shard_count: int, shards: list[int] | set[int]) -> None:
        """Queue the deletion of sessions of another count (:meth:`Mailbox.forget_sessions`)."""
        self._submit(self._mailbox.forget_sessions, shard_count, shards)

    def _submit(self, method: Callable[..., Any], *args: Any) -> Any:
        with self._cond:
            if self._closed:
                return False
            result = method(*args)
            self._cond.notify()
            return result

    def answers(self) -> list[Answer]:
        """The answers that arrived since the last call, oldest first."""
        return self._answers.take()

    @property
    def pending(self) -> int:
        """Requests waiting for the thread (the one running not counted)."""
        with self._cond:
            return len(self._mailbox)

    def _idle(self) -> bool:
        return self._mailbox.idle and not self._busy

    # -- the thread -----------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._closed:
                        return
                    now = self.clock()
                    job = self._mailbox.take(now)
                    if job is not None:
                        self._busy = True
                        break
                    at = self._mailbox.next_time(now)
                    self._cond.wait(None if at is None else max(0.01, at - now))
            started = self.clock()
            value: Any = None
            error: BaseException | None = None
            try:
                value = self._execute(job)
            except Exception as exc:  # noqa: BLE001 - timeouts, refused connections, anything
                error = exc
            finished = self.clock()
            with self._cond:
                recovered = error is None and self.failing
                self.failing = error is not None
                self._mailbox.done(job, error is None, finished)
                # kept before the job counts as done: a flush() that returns finds its answer
                self._answers.put(Answer(job.kind, job.key, value, error, started, finished, recovered))
                self._busy = False
                self._cond.notify_all()

    def _execute(self, job: Job) -> Any:
        c = self.coordinator
        if job.kind == IDENTIFY:
            hold_s, reserve = job.args
            return c.try_identify(job.key, hold_s, reserve)
        if job.kind == SENT:
            return c.identify_sent(job.key, *job.args)
        if job.kind == SESSIONS:
            count, sessions, forget = job.args
            by_count: dict[int, list[int]] = {}
            for shard_count, shard in forget:
                by_count.setdefault(shard_count, []).append(shard)
            for shard_count, shards in by_count.items():
                c.delete_sessions(shard_count, shards)
            if sessions:
                c.save_sessions(count, sessions)
            return len(sessions)
        if job.kind == BUDGET:
            return c.budget()
        raise ValueError(f"unknown job {job.kind!r}")
