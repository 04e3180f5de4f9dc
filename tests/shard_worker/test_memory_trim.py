"""Freed memory goes back to the kernel after a burst: the policy without a clock or libc, and
glibc's mallinfo2 and malloc_trim really seeing and releasing 10,000 freed bodies (a child
process, its RSS measured)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from shard_worker.memory_trim import (
    CHECK_EVERY_S,
    DRAINED_BYTES,
    TRIM_MIN_INTERVAL_S,
    TRIM_THRESHOLD_BYTES,
    Trimmer,
    _libc_free_bytes,
    _libc_malloc_trim,
)

MB = 1 << 20


class Heap:
    """malloc's free bytes as a test sets them."""

    def __init__(self) -> None:
        self.free = 0
        self.reads = 0

    def __call__(self) -> int:
        self.reads += 1
        return self.free


def make(free: Heap | None = None) -> tuple[Trimmer, list[float]]:
    calls: list[float] = []
    heap = free if free is not None else Heap()
    trimmer = Trimmer(lambda: calls.append(1), heap, threshold=4 * MB, drained=1 * MB, min_interval_s=60,
                      check_every_s=10)  # fmt: skip
    return trimmer, calls


def test_a_drain_with_enough_free_trims_once():
    heap = Heap()
    t, calls = make(heap)
    assert not t.observe(0, 0.0)  # nothing free: no trim
    heap.free = 12 * MB
    assert not t.observe(10 * MB, 1.0)  # the outage: the buffer is in use
    assert not t.observe(3 * MB, 2.0)  # republishing, not drained yet
    assert t.free_bytes == 0
    assert t.observe(512 * 1024, 12.0)  # drained, 12 MB free, the reading due again
    assert calls == [1] and t.trims == 1 and t.free_bytes == 12 * MB
    assert not t.observe(0, 13.0)  # a minute between trims, whatever is free


def test_the_free_bytes_decide_not_the_buffer():
    """The 10 MB step the buffer's own size missed: a short outage (under 4 MiB buffered)
    whose republish and catching-up reads left malloc holding 10 MB."""
    heap = Heap()
    t, calls = make(heap)
    t.observe(2 * MB, 0.0)
    heap.free = 10 * MB
    assert t.observe(0, 1.0)
    assert calls == [1]


def test_an_ordinary_busy_child_never_trims():
    heap = Heap()
    heap.free = 3 * MB  # fragmentation below the threshold
    t, calls = make(heap)
    for second in range(600):  # 0-3 MB in flight, drained a quarter of the time
        t.observe((second % 4) * MB, float(second))
    assert calls == []
    assert heap.reads <= 61  # read at most every 10 s, not every second


def test_at_most_one_trim_a_minute():
    heap = Heap()
    heap.free = 8 * MB
    t, calls = make(heap)
    assert t.observe(0, 1.0)
    assert not t.observe(0, 3.0)  # too soon, though 8 MB are still free
    assert not t.observe(0, 60.0)
    assert t.observe(0, 61.5)  # the minute is up
    assert len(calls) == 2


def test_after_a_collection_the_trim_is_immediate_and_counts_for_the_minute():
    heap = Heap()
    heap.free = 8 * MB
    t, calls = make(heap)
    t.trim(5.0)  # the collection's
    assert t.free_bytes == 8 * MB  # read after the trim: what it could not give back
    assert not t.observe(0, 6.0) and calls == [1]
    assert t.observe(0, 65.0) and calls == [1, 1]


def test_without_mallinfo2_it_trims_once_a_minute_while_drained():
    calls: list[int] = []
    t = Trimmer(lambda: calls.append(1), None, threshold=4 * MB, drained=1 * MB, min_interval_s=60)
    t._free = None  # glibc < 2.33: _libc_free_bytes() found none
    assert t.free_bytes is None
    assert not t.observe(2 * MB, 0.0)  # not drained
    assert t.observe(0, 1.0)
    assert not t.observe(0, 30.0)
    assert t.observe(0, 61.0) and len(calls) == 2


def test_without_malloc_trim_nothing_happens():
    t = Trimmer(None, lambda: 100 * MB, threshold=1, drained=10, min_interval_s=0)
    t._trim = None  # e.g. musl or macOS: _libc_malloc_trim() found none
    assert not t.observe(0, 1.0) and t.trims == 0


def test_the_defaults_are_the_documented_bounds():
    assert TRIM_THRESHOLD_BYTES == 4 * MB and DRAINED_BYTES == 1 * MB
    assert TRIM_MIN_INTERVAL_S == 60 and CHECK_EVERY_S == 10


FILL_DRAIN_TRIM = r"""
import random, psutil
from shard_worker.memory_trim import _libc_free_bytes, _libc_malloc_trim
rss = lambda: psutil.Process().memory_info().rss
free = _libc_free_bytes()
before = free()
buf = [random.randbytes(1400) for _ in range(10_000)]  # a full publish buffer: 10,000 bodies
full = rss()
del buf
drained, held = rss(), free()
_libc_malloc_trim()()
print(full, drained, rss(), before, held)
"""


@pytest.mark.skipif(_libc_malloc_trim() is None, reason="no glibc malloc_trim on this platform")
def test_glibc_keeps_a_drained_buffer_until_it_is_trimmed():
    out = subprocess.run([sys.executable, "-c", FILL_DRAIN_TRIM], capture_output=True, text=True, check=True)
    full, drained, trimmed, free_before, free_held = map(int, out.stdout.split())
    assert drained > full - 2 * MB  # freed, but glibc kept the pages: the soak's steps
    assert trimmed < drained - 8 * MB  # 14 MB of bodies: most of them given back
    if _libc_free_bytes() is not None:  # glibc >= 2.33 (this machine's and CI's: 2.36)
        assert free_held - free_before > 12 * MB  # mallinfo2 sees what a trim can give back
