"""The drained buffer's pages go back to the kernel: the policy without a clock or libc, and
glibc's malloc_trim really releasing 10,000 freed bodies (a child process, its RSS measured)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from shard_worker.memory_trim import DRAINED_BYTES, TRIM_THRESHOLD_BYTES, Trimmer, _libc_malloc_trim

MB = 1 << 20


def make() -> tuple[Trimmer, list[float]]:
    calls: list[float] = []
    return Trimmer(lambda: calls.append(1), threshold=4 * MB, drained=1 * MB, min_interval_s=60), calls


def test_a_drain_after_a_high_water_mark_trims_once():
    t, calls = make()
    assert not t.observe(0, 0.0)
    assert not t.observe(10 * MB, 1.0)  # the outage: the buffer grows
    assert not t.observe(3 * MB, 2.0)  # draining, not drained yet
    assert t.observe(512 * 1024, 3.0)  # drained: 9.5 MB freed since the peak
    assert calls == [1] and t.trims == 1
    assert not t.observe(0, 4.0)  # nothing freed since
    assert not t.observe(200 * 1024, 100.0)


def test_small_swings_never_trim():
    t, calls = make()
    for second in range(600):  # an ordinary busy child: 0-3 MB in flight
        t.observe((second % 4) * MB, float(second))
    assert calls == []


def test_at_most_one_trim_a_minute_and_the_peak_waits_for_it():
    t, calls = make()
    t.observe(8 * MB, 0.0)
    assert t.observe(0, 1.0)
    t.observe(8 * MB, 2.0)  # a second cut right after the first
    assert not t.observe(0, 3.0)  # too soon
    assert not t.observe(0, 60.0)
    assert t.observe(0, 61.5)  # the minute is up: the second drain is trimmed too
    assert len(calls) == 2


def test_without_malloc_trim_nothing_happens():
    t = Trimmer(None, threshold=1, drained=10, min_interval_s=0)
    t._trim = None  # e.g. musl or macOS: _libc_malloc_trim() found none
    t.observe(100, 0.0)
    assert not t.observe(0, 1.0) and t.trims == 0


def test_the_defaults_are_the_documented_bounds():
    assert TRIM_THRESHOLD_BYTES == 4 * MB and DRAINED_BYTES == 1 * MB


FILL_DRAIN_TRIM = r"""
import random, psutil
from shard_worker.memory_trim import _libc_malloc_trim
rss = lambda: psutil.Process().memory_info().rss
buf = [random.randbytes(1400) for _ in range(10_000)]  # a full publish buffer: 10,000 bodies
full = rss()
del buf
drained = rss()
_libc_malloc_trim()()
print(full, drained, rss())
"""


@pytest.mark.skipif(_libc_malloc_trim() is None, reason="no glibc malloc_trim on this platform")
def test_glibc_keeps_a_drained_buffer_until_it_is_trimmed():
    out = subprocess.run([sys.executable, "-c", FILL_DRAIN_TRIM], capture_output=True, text=True, check=True)
    full, drained, trimmed = map(int, out.stdout.split())
    assert drained > full - 2 * MB  # freed, but glibc kept the pages: the soak's steps
    assert trimmed < drained - 8 * MB  # 14 MB of bodies: most of them given back
