#!/usr/bin/env python3
"""What grew between two tracemalloc snapshots of a worker (``SPECTACLES_TRACEMALLOC``).

    .venv/bin/python scripts/heap_diff.py DIR/123-0002.snap DIR/123-0020.snap [--top 25]
"""

from __future__ import annotations

import argparse
import linecache
import tracemalloc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("before")
    parser.add_argument("after")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--by", choices=["lineno", "traceback", "filename"], default="lineno")
    args = parser.parse_args(argv)
    before = tracemalloc.Snapshot.load(args.before)
    after = tracemalloc.Snapshot.load(args.after)
    stats = after.compare_to(before, args.by)
    total = sum(s.size_diff for s in stats)
    print(f"traced memory {sum(s.size for s in stats) / 2**20:.2f} MB, {total / 2**20:+.3f} MB since the first")
    for stat in stats[: args.top]:
        frames = list(stat.traceback)  # oldest first
        where = " <- ".join(f"{f.filename.rsplit('/', 2)[-1]}:{f.lineno}" for f in reversed(frames))
        source = linecache.getline(frames[-1].filename, frames[-1].lineno).strip()
        where += f"  {source}" if source else ""
        print(f"{stat.size_diff / 1024:+10.1f} KiB {stat.count_diff:+8d} blocks  {where}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
