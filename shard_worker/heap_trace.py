"""``SPECTACLES_TRACEMALLOC=DIR``: a leak hunt's tool, off by default.

When the variable names a folder, the worker starts ``tracemalloc`` (4 frames a traceback) and a
daemon thread writes a snapshot there every ``SPECTACLES_TRACEMALLOC_EVERY`` seconds (default
60): ``<pid>-<n>.snap``. ``scripts/heap_diff.py A.snap B.snap`` then lists what grew between two
of them, by the line that allocated it. tracemalloc slows allocation down (a few tens of per
cent) and keeps its own tables: use it on a test or soak run, not in production.
"""

from __future__ import annotations

import os
import threading
import tracemalloc
from collections.abc import Mapping
from pathlib import Path

ENV = "SPECTACLES_TRACEMALLOC"
EVERY_ENV = "SPECTACLES_TRACEMALLOC_EVERY"
FRAMES = 4


class HeapTrace:
    """The snapshot thread; :meth:`stop` ends it and tracing (tests)."""

    def __init__(self, out: Path, every: float) -> None:
        self.out, self.every = out, every
        self._stop = threading.Event()
        tracemalloc.start(FRAMES)
        self._thread = threading.Thread(target=self._dump, name="heap-trace", daemon=True)
        self._thread.start()

    def _dump(self) -> None:
        n = 0
        while not self._stop.wait(self.every):
            tracemalloc.take_snapshot().dump(str(self.out / f"{os.getpid()}-{n:04d}.snap"))
            n += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        tracemalloc.stop()


def start_from_env(environ: Mapping[str, str] = os.environ) -> HeapTrace | None:
    """Start tracing and the snapshot thread if ``SPECTACLES_TRACEMALLOC`` is set."""
    folder = environ.get(ENV)
    if not folder:
        return None
    try:
        every = float(environ.get(EVERY_ENV, "60"))
    except ValueError:
        every = -1.0
    if not every > 0:
        raise ValueError(f"{EVERY_ENV} must be a positive number of seconds, not {environ[EVERY_ENV]!r}")
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    return HeapTrace(out, every)
