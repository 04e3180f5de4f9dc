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

What this costs: cyclic garbage (rare on the hot path, which frees by reference counting) waits
longer, at most about :data:`YOUNG_THRESHOLD` container objects, a few MB. ``default`` keeps
Python's settings (to compare).
"""

from __future__ import annotations

import gc

from shard_worker.switches import env_choice

CHOICES = ("tuned", "default")
#: Net container allocations between two young collections (Python's default: 700).
YOUNG_THRESHOLD = 50_000
#: Young collections per middle one, middle ones per full one (Python's defaults: 10, 10).
OLDER_THRESHOLDS = (20, 20)


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
