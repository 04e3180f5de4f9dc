"""What the benchmarks share: where the repository and the results are, the bench token, a free
port, a process tree and its CPU time (``scripts/bench.py`` and ``scripts/bench_scale.py``)."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
TOKEN = "bench-token-0123456789abcdef"
OUT = ROOT / "docs" / "bench"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def cpu_seconds(procs: list[psutil.Process]) -> float:
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total
