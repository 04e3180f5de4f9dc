"""The cyclic garbage collector of a worker (``SPECTACLES_GC=tuned|default``).

A worker allocates one object per event that lives until RabbitMQ confirms it (the ledger's
``Entry``: milliseconds to a second, up to ``max_buffered`` of them). With Python's defaults
(a young collection every 700 net allocations) nearly every entry is still alive at a young
collection, so it is promoted, scanned again in the middle generation and then in full
collections, which also walk every module, class and function the process imported: measured
under a full stream, 2-8 % of the worker's CPU (docs/BENCHMARKS.md).

``tuned`` (the default):

- everything alive once the worker is set up is frozen (``gc.freeze``): the imported code is
  never scanned again;
- a young collection runs every :data:`YOUNG_THRESHOLD` net allocations, so that most entries
  are confirmed and freed before one runs: few are promoted, and the older generations are
  collected rarely.

What this costs: cyclic garbage waits longer. The hot path frees by reference counting, but a
closed websocket connection is a cycle (its protocol, transport, reader and the shard's inflater
with its 32 KiB window): with these thresholds a full collection came about once an hour under a
stream, and a soak under Discord's churn saw the connections of every reconnect pile up until
then (``SPECTACLES_TRACEMALLOC``: +234 ClientProtocols in 2 minutes, RSS rising 3-6 MB an hour).
So :class:`FullCollections` runs a full collection once a connection has closed, at most once a
:data:`FULL_COLLECT_EVERY_S` (the frozen code is not scanned: a few ms at 250 shards).
``default`` keeps Python's settings (to compare).
"""

from __future__ import annotations

import gc
import time
from collections import deque
from collections.abc import Callable

from shard_worker.switches import env_choice

CHOICES = ("tuned", "default")
#: Net container allocations between two young collections (Python's default: 700).
YOUNG_THRESHOLD = 50_000
#: Young collections per middle one, middle ones per full one (Python's defaults: 10, 10).
OLDER_THRESHOLDS = (20, 20)
#: At most one full collection this often, and only when a connection has closed since the last.
FULL_COLLECT_EVERY_S = 60.0
#: A closed connection is collected once it closed this long ago (its closing handshake is over).
SETTLE_S = 10.0


def choice() -> str:
    return env_choice("SPECTACLES_GC", CHOICES, "tuned")


def tune() -> str:
    """Apply the chosen settings once the process is set up; return the choice."""
    wanted = choice()
    if wanted == "tuned":
        gc.collect()  # what is garbage now is not frozen with the rest
        gc.freeze()
        gc.set_threshold(YOUNG_THRESHOLD, *OLDER_THRESHOLDS)
    return wanted


class FullCollections:
    """``observe(connections_closed, now)`` once a second: a full collection (``collect``) when
    connections closed at least :data:`SETTLE_S` ago have not been collected yet (by then their
    closing handshake, bounded by ``CLOSE_TIMEOUT_S``, is over and nothing refers to them), and
    the last collection is :data:`FULL_COLLECT_EVERY_S` old. Returns what the collection found
    unreachable (0: none ran)."""

    def __init__(
        self, collect: Callable[[], int] = gc.collect, every_s: float = FULL_COLLECT_EVERY_S, settle_s: float = SETTLE_S
    ) -> None:
        self._collect, self.every_s, self.settle_s = collect, every_s, settle_s
        self._seen = 0
        self._last: float | None = None
        #: (when, count) of the recent changes, oldest first: at most one per second of settle_s
        self._recent: deque[tuple[float, int]] = deque()
        self._settled = 0
        #: full collections run, and the objects they freed (reported in the child's sizes)
        self.runs = self.freed = 0
        #: the longest one, in ms: the event loop's pause (the frozen code is not scanned)
        self.max_ms = 0.0

    def observe(self, connections_closed: int, now: float) -> int:
        if not self._recent or self._recent[-1][1] != connections_closed:
            self._recent.append((now, connections_closed))
        while self._recent and now - self._recent[0][0] >= self.settle_s:
            self._settled = self._recent.popleft()[1]
        if self._settled == self._seen or (self._last is not None and now - self._last < self.every_s):
            return 0
        self._seen, self._last = self._settled, now
        began = time.perf_counter()
        found = self._collect()
        self.max_ms = max(self.max_ms, (time.perf_counter() - began) * 1000)
        self.runs += 1
        self.freed += found
        return found
