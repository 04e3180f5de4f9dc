"""scripts/soak.py's pure helpers: where the RSS lives, from literal smaps lines."""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

import soak  # noqa: E402

SMAPS = """\
55d0c0a00000-55d0c0b2c000 rw-p 00000000 00:00 0                          [heap]
Size:               1200 kB
Rss:                1100 kB
VmFlags: rd wr mr mw me ac
7f47ad653000-7f47ad953000 rw-p 00000000 00:00 0
Size:               3072 kB
Rss:                3024 kB
Pss:                3024 kB
7f47b0000000-7f47b0100000 r-xp 00000000 08:01 123456                     /usr/lib/x86_64-linux-gnu/libc.so.6
Size:               1024 kB
Rss:                 900 kB
7f47b0200000-7f47b0300000 rw-p 00000000 00:00 0
Rss:                   8 kB
7ffd1a000000-7ffd1a021000 rw-p 00000000 00:00 0                          [stack]
Rss:                  32 kB
"""


def test_smaps_regions_counts_the_heap_and_the_anonymous_mappings_only() -> None:
    assert soak.smaps_regions(SMAPS.splitlines(keepends=True)) == {"heap_kb": 1100, "anon_kb": 3032}
    assert soak.smaps_regions([]) == {"heap_kb": 0, "anon_kb": 0}


def test_memory_regions_of_this_process_are_parts_of_its_rss() -> None:
    regions = soak.memory_regions(os.getpid())
    assert regions is not None  # Linux, here and in CI
    with open(f"/proc/{os.getpid()}/status") as f:
        rss_kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    assert 0 < regions["heap_kb"] and 0 < regions["anon_kb"]
    assert regions["heap_kb"] + regions["anon_kb"] <= rss_kb
    assert soak.memory_regions(2**22 + 7) is None  # no such process
