"""The state dir's writes off the supervisor's loop (issue 20, defect 7).

Every write to the state dir is a temporary file, an fsync and a rename
(:func:`supervisor.core.state_store.write_json_atomic`): on a disk that stalls (a saturated volume, a
network disk, a hung controller) one fsync can take seconds. The arbiter's loop used to make
them itself, on every identify grant and every second of session saves: a stall of more than
4 s stopped the pings, so every worker of a cluster node stopped itself while the node's leases
were still renewed, and the groups stayed down for the whole stall.

:class:`StateWriter` is one daemon thread. The loop hands it work and never waits:

- **sessions**: one snapshot per state file, the latest wins (older ones are never written);
- **identify grants**: each kept, in order, until written; the ones pending are written in one
  go (the identify log and each bucket's last grant, ``StateStore.record_identifies``).

A write that fails (``OSError``: a full disk, a read-only remount) is logged at most once a
minute and tried again :data:`RETRY_S` later, unless a newer snapshot replaced it. Pending work
is bounded: the snapshots by the number of state files (one or two, during a reshard), the
grants by what the gate grants while the disk stalls (one per bucket per 5 s).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from supervisor.coord.offloop import OffLoopThread

log = logging.getLogger("supervisor.state")

#: A failed write is tried again this long after.
RETRY_S = 1.0
#: A failing state dir is logged at most this often.
LOG_EVERY_S = 60.0


class StateWriter(OffLoopThread):
    """Writes sessions snapshots and identify grants on its own thread (module docstring)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__("state-writer", clock)
        #: state file -> (store, sessions): the latest snapshot of each
        self._sessions: dict[Any, tuple[Any, dict]] = {}
        #: (store, wall time, bucket, written_by) of each grant not written yet
        self._grants: list[tuple[Any, float, int | None, float | None]] = []
        self._busy = False
        self._not_before = 0.0
        self._logged_at = float("-inf")
        #: writes that failed (an OSError), and those done
        self.failures = 0
        self.writes = 0
        self._thread.start()

    # -- the loop's side (never blocks for more than the lock) ---------------------------------
    def save_sessions(self, store: Any, sessions: dict) -> None:
        with self._cond:
            self._sessions[store.dir] = (store, dict(sessions))
            self._cond.notify()

    def record_identify(self, store: Any, wall: float, bucket: int | None = None, written_by: float | None = None) -> None:
        with self._cond:
            self._grants.append((store, wall, bucket, written_by))
            self._cond.notify()

    @property
    def pending(self) -> int:
        with self._cond:
            return len(self._sessions) + len(self._grants)

    def _idle(self) -> bool:
        return not (self._sessions or self._grants or self._busy)

    # -- the thread -----------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closed and (not (self._sessions or self._grants) or self.clock() < self._not_before):
                    wait = max(0.01, self._not_before - self.clock()) if self._sessions or self._grants else None
                    self._cond.wait(wait)
                if self._closed and not (self._sessions or self._grants):
                    return
                sessions, self._sessions = self._sessions, {}
                grants, self._grants = self._grants, []
                self._busy = True
            failed_sessions: dict[Any, tuple[Any, dict]] = {}
            failed_grants: list = []
            error: OSError | None = None
            by_store: dict[Any, tuple[Any, list]] = {}
            for store, wall, bucket, written_by in grants:
                by_store.setdefault(store.dir, (store, []))[1].append((wall, bucket, written_by))
            for store, records in by_store.values():
                try:
                    store.record_identifies(records)
                    self.writes += 1
                except OSError as exc:
                    error = exc
                    failed_grants += [(store, *r) for r in records]
            for key, (store, snapshot) in sessions.items():
                try:
                    store.save_sessions(snapshot)
                    self.writes += 1
                except OSError as exc:
                    error = exc
                    failed_sessions[key] = (store, snapshot)
            with self._cond:
                self._busy = False
                if error is not None:
                    self.failures += 1
                    for key, item in failed_sessions.items():
                        self._sessions.setdefault(key, item)  # unless a newer snapshot came
                    self._grants[:0] = failed_grants
                    self._not_before = self.clock() + RETRY_S
                    if self.clock() >= self._logged_at:
                        self._logged_at = self.clock() + LOG_EVERY_S
                        log.error("cannot write the state dir (%s); retrying every %.0f s", error, RETRY_S)
                self._cond.notify_all()


__all__ = ["StateWriter", "RETRY_S"]
