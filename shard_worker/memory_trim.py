"""Give freed memory back to the kernel once a burst is over.

A broker outage makes a child hold what RabbitMQ has not confirmed (bounded by
``--buffer-events`` and ``--buffer-mb``), and its end makes it republish all of it at once while
the gateway reads catch up: frames, joined writes and transport buffers, several times the
bodies' bytes for a few seconds. All of that is malloc'd (objects over 512 bytes live in glibc's
heap, not in pymalloc's arenas), and glibc keeps the pages it grew into after they are freed:
without a trim a child's RSS stays at each outage's high-water mark for as long as it runs.
Measured by ``scripts/soak.py``: steps of 2-13 MB at each cut, never given back; a 7-minute run
with a 10-15 s cut every minute took a 20-shard child from 37.6 to 55.0 MB, and back to 41.8 MB
after each cut once trimmed. ``malloc_trim(0)`` returns every whole free page (10,000 freed
1.4 KB bodies: 27.8 -> 14.1 MB).

:class:`Trimmer` is the policy, pure: once a second it is told the publish buffer's bytes; when
the buffer is drained and the last trim is a minute old it reads how much malloc holds free
(glibc's ``mallinfo2``, at most every ``check_every_s``) and trims when that is at least
``threshold``. The reading is direct, so it catches what the buffer's own size does not (the
republish burst, the reads catching up; the buffer's size alone missed a 10 MB step). Without
``mallinfo2`` (glibc before 2.33) it trims once a minute while drained.

Costs, on the event loop: a trim about a millisecond per 10 MB released, and 3-4 ms when it
walks a fragmented heap (16,000 free chunks, 31 MB) with nothing left to release; a reading
0.4-1.6 ms there. A trim does not make the chunks less free (their pages are released, they
stay on malloc's lists), so after a burst a fragmented heap keeps reading over the threshold and
is trimmed once a minute: 3-4 ms a minute, which also gives back what later churn touched.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable

#: Free bytes held by malloc worth a trim: 4 MiB (about 3,000 buffered events' bodies).
TRIM_THRESHOLD_BYTES = 4 << 20
#: The buffer counts as drained below this (a busy child always has a few events in flight).
DRAINED_BYTES = 1 << 20
#: At most one trim a minute.
TRIM_MIN_INTERVAL_S = 60.0
#: While too little is free to trim, malloc is read again after this long.
CHECK_EVERY_S = 10.0


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]  # fmt: skip


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(None)
    except OSError:
        return None


def _libc_malloc_trim() -> Callable[[], object] | None:
    """glibc's ``malloc_trim(0)``, or None where there is none (musl, macOS)."""
    try:
        trim = _libc().malloc_trim  # type: ignore[union-attr]
    except AttributeError:
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return lambda: trim(0)


def _libc_free_bytes() -> Callable[[], int] | None:
    """The bytes malloc holds free (``mallinfo2().fordblks``: its heaps' free chunks, the top
    one included), or None where there is no ``mallinfo2`` (glibc < 2.33, musl, macOS)."""
    try:
        mallinfo2 = _libc().mallinfo2  # type: ignore[union-attr]
    except AttributeError:
        return None
    mallinfo2.argtypes, mallinfo2.restype = [], _MallInfo2
    return lambda: int(mallinfo2().fordblks)


class Trimmer:
    """``observe(buffered_bytes, now)`` once a second; it trims (and returns True) when malloc
    holds enough free memory after a burst."""

    def __init__(
        self,
        trim: Callable[[], object] | None = None,
        free_bytes: Callable[[], int] | None = None,
        *,
        threshold: int = TRIM_THRESHOLD_BYTES,
        drained: int = DRAINED_BYTES,
        min_interval_s: float = TRIM_MIN_INTERVAL_S,
        check_every_s: float = CHECK_EVERY_S,
    ) -> None:
        self._trim = trim if trim is not None else _libc_malloc_trim()
        self._free = free_bytes if free_bytes is not None else _libc_free_bytes()
        self.threshold, self.drained = threshold, drained
        self.min_interval_s, self.check_every_s = min_interval_s, check_every_s
        self._last: float | None = None
        self._next_check = float("-inf")
        #: trims done, and malloc's free bytes at the last reading (the child's sizes; None
        #: until read, or where it cannot be). Read after every trim too: what a trim leaves
        #: free is what it cannot give back (free chunks in pages still partly used), the
        #: heap's fragmentation, which the soak samples once a minute
        self.trims = 0
        self.free_bytes: int | None = None

    def trim(self, now: float) -> None:
        """Trim now (after a full collection freed garbage)."""
        if self._trim is not None:
            self._trim()
            self._last = now
            self.trims += 1
            if self._free is not None:
                self.free_bytes = self._free()

    def observe(self, buffered_bytes: int, now: float) -> bool:
        if (
            self._trim is None
            or buffered_bytes > self.drained  # still in use: the outage or its republish
            or (self._last is not None and now - self._last < self.min_interval_s)
            or now < self._next_check
        ):
            return False
        if self._free is not None:
            self.free_bytes = self._free()
            if self.free_bytes < self.threshold:
                self._next_check = now + self.check_every_s
                return False
        self.trim(now)
        return True
