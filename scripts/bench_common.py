"""What the benchmarks share: where the repository and the results are, the bench token, a free
port, a process tree and its CPU time (``scripts/bench.py`` and ``scripts/bench_scale.py``)."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pika
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


def profile_tree(pid: int, seconds: float, out: Path, rate: int = 200) -> subprocess.Popen | None:
    """Start ``py-spy record`` on ``pid`` and its subprocesses (the supervisor and its children)
    for ``seconds``, raw collapsed stacks into ``out``; None without py-spy (``.[bench]``)."""
    spy = shutil.which("py-spy") or str(Path(PY).with_name("py-spy"))
    if not Path(spy).exists():
        return None
    argv = [spy, "record", "--subprocesses", "-p", str(pid), "-r", str(rate), "-d", str(int(seconds)),
            "-f", "raw", "-o", str(out), "--nonblocking"]  # fmt: skip
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


_FRAME = re.compile(r"^(?P<func>[^ ]+) \((?P<file>[^:)]+)(?::\d+)?\)$")


def summarize_profile(path: Path, top: int = 15) -> dict:
    """Self samples of py-spy's raw output: per process (its title) and per function (the
    innermost Python frame; time in C code counts for the Python function that called it)."""
    by_process: Counter[str] = Counter()
    by_leaf: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        total += n
        owner = [f for f in frames if f.startswith("process ")]  # py-spy nests a child's stacks
        by_process[re.sub(r"^process \d+:", "", owner[-1]).strip('"') if owner else "?"] += n
        leaf = frames[-1]
        m = _FRAME.match(leaf)
        by_leaf[f"{m['func']} ({Path(m['file']).name})" if m else leaf[:80]] += n
    pct = (lambda n: round(100.0 * n / total, 1)) if total else (lambda n: 0.0)
    return {
        "samples": total,
        "by_process": {k: pct(v) for k, v in by_process.most_common()},
        "top_functions": [[k, pct(v)] for k, v in by_leaf.most_common(top)],
    }


def drop_group(amqp_url: str, group: str, shards: int) -> None:
    """Delete the exchange and the durable queues (one per shard, SEND) a run of ``shards``
    declared for ``group``: they outlive the run otherwise."""
    sys.path.insert(0, str(ROOT))
    from shard_worker import spectacles

    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        channel = connection.channel()
        for queue in [spectacles.shard_queue(group, s) for s in range(shards)] + [spectacles.send_queue(group)]:
            channel.queue_delete(queue)
        channel.exchange_delete(group)
    finally:
        connection.close()
