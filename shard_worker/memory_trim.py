"""Give the publish buffer's pages back once it has drained.

During a broker outage a child holds what RabbitMQ has not confirmed (bounded by
``--buffer-events`` and ``--buffer-mb``). The bodies are bytes objects over 512 bytes, so they
live in glibc's heap, not in pymalloc's arenas, and glibc keeps the pages it grew into after
they are freed: the child's RSS then stays at the outage's high-water mark for as long as it
runs (measured by ``scripts/soak.py``: steps of 2-13 MB at each cut, never given back). After a
drain, ``malloc_trim(0)`` returns every whole free page to the kernel (10,000 freed 1.4 KB bodies:
27.8 -> 14.1 MB).

:class:`Trimmer` is the policy, pure: it watches the buffered bytes once a second and asks for a
trim when at least ``threshold`` bytes have been freed since the last high-water mark, and the
buffer is nearly empty, at most once a ``min_interval_s``. A trim takes about a millisecond per
10 MB released, on the event loop.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable

#: Bytes freed (high-water mark minus now) worth a trim: 4 MiB of bodies (about 3,000 events).
TRIM_THRESHOLD_BYTES = 4 << 20
#: The buffer counts as drained below this (a busy child always has a few events in flight).
DRAINED_BYTES = 1 << 20
#: At most one trim a minute.
TRIM_MIN_INTERVAL_S = 60.0


def _libc_malloc_trim() -> Callable[[], object] | None:
    """glibc's ``malloc_trim(0)``, or None where there is none (musl, macOS)."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return lambda: trim(0)


class Trimmer:
    """``observe(buffered_bytes, now)`` once a second; it trims (and returns True) after a drain."""

    def __init__(
        self,
        trim: Callable[[], object] | None = None,
        *,
        threshold: int = TRIM_THRESHOLD_BYTES,
        drained: int = DRAINED_BYTES,
        min_interval_s: float = TRIM_MIN_INTERVAL_S,
    ) -> None:
        self._trim = trim if trim is not None else _libc_malloc_trim()
        self.threshold, self.drained, self.min_interval_s = threshold, drained, min_interval_s
        self._peak = 0
        self._last: float | None = None
        #: trims done (reported in the child's sizes)
        self.trims = 0

    def trim(self, buffered_bytes: int, now: float) -> None:
        """Trim now (after a full collection freed garbage): the drain's watch starts again."""
        if self._trim is not None:
            self._trim()
            self._peak, self._last = buffered_bytes, now
            self.trims += 1

    def observe(self, buffered_bytes: int, now: float) -> bool:
        self._peak = max(self._peak, buffered_bytes)
        if (
            self._trim is None
            or buffered_bytes > self.drained
            or self._peak - buffered_bytes < self.threshold
            or (self._last is not None and now - self._last < self.min_interval_s)
        ):
            return False
        self.trim(buffered_bytes, now)
        return True
