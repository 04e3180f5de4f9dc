"""zstd-stream against zlib-stream at scale (issue 23): memory per shard, CPU per event and bytes
on the wire per event, at N shards (default 1000 = 4 children x 250) under a live event stream.

The simulator compresses as Discord does (zlib's 32 KiB window; zstd level 7 with a 64 KiB
window: ``supervisor/simulator/discord_facts.py``). Each run (one compression) starts the
supervisor against ``simulate --events-per-shard -1 --rate R`` (R events per second per shard,
from each shard's READY on), and measures:

- ``rss_ready``: the children's RSS, summed, once every shard is READY and ``--settle`` seconds
  have passed (the stream is already flowing: it starts at each READY);
- over a ``--window`` seconds stream window: the CPU (user + system) of the supervisor and its
  children (``cpu_us_per_event``: per event the workers published, the delta of /metrics
  ``spectacles_events_published_total``), and of the simulator separately (it is the server:
  not counted in the project's cost); the simulator's ``wire_bytes`` and ``payload_bytes``
  per dispatch it sent (websocket frames written, heartbeat ACKs included; JSON before
  compression);
- ``rss_stream``: the children's RSS at the window's end (each connection's decoder window is
  full by then: ``R x (settle + window)`` events of about 1.4 KB per shard).

Runs alternate A B A B ... for ``--rounds`` rounds (the first compression of each round
alternates too). RSS per shard is the children's RSS divided by N (the four children's base is
included, and the same in both). The events are published to an exchange with no queue bound
(RabbitMQ drops them after confirming): nothing piles up in the broker.

    flock /tmp/heavy.lock .venv/bin/python scripts/bench_zstd.py --shards 1000 --per-process 250 \\
        --rate 2 --rounds 2

Results go to ``docs/bench/zstd_scale.json``; a markdown table is printed.

``--decoders`` measures instead, in a fresh interpreter per kind, one decoder's memory: the RSS
that 200 decompression contexts add once 8,000 events (about 3 MB of JSON) went through each,
for zlib (32 KiB window) and zstd at Discord's parameters (window log 16) and at zstd's default
level 3 (window log 21): what a connection's decoder costs once its window is full; and the CPU
of decompressing those events in one context (median of 7, per event).

    .venv/bin/python scripts/bench_zstd.py --decoders
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import OUT, cpu_seconds, tree  # noqa: E402
from bench_scale import MB, Run, drop_group, exchange, floor_s, rss, scrape  # noqa: E402

from shard_worker.gateway.inflate import zstd_unavailable  # noqa: E402

COMPRESSIONS = ("zlib-stream", "zstd-stream")
_PUBLISHED = re.compile(rb"^spectacles_events_published_total\{[^}]*\} ([0-9.e+]+)$", re.M)


def published(port: int) -> float:
    """Dispatches the workers published to RabbitMQ, all groups and types (/metrics)."""
    return sum(float(v) for v in _PUBLISHED.findall(scrape(port)))


def sim_cpu(run: Run) -> float:
    try:
        return cpu_seconds([psutil.Process(run.sim.proc.pid)])
    except psutil.NoSuchProcess:
        return 0.0


def measure(compress: str, args: argparse.Namespace, group: str) -> dict:
    n = args.shards
    work = Path(tempfile.mkdtemp(prefix=f"bench-zstd-{compress}-"))
    row: dict = {"compress": compress, "shards": n, "rate": args.rate}
    run = None
    group = f"{group}-{compress}"
    exchange(args.amqp_url, group)
    try:
        run = Run(n, args.amqp_url, group, args.per_process, work,
                  events_per_shard=-1, rate=args.rate, compress=compress)  # fmt: skip
        run.start()
        row["startup_s"] = round(run.wait_ready(2 * floor_s(n) + 90), 1)
        time.sleep(args.settle)
        procs = tree(run.proc.pid)
        sup, children = procs[0], procs[1:]
        row["children"] = len(children)
        row["rss_ready_mb"] = round(sum(rss(c) for c in children) / MB, 1)
        row["supervisor_rss_mb"] = round(rss(sup) / MB, 1)

        s0, p0, c0, sc0, t0 = run.sim.stats(), published(run.metrics_port), cpu_seconds(procs), sim_cpu(run), time.monotonic()
        time.sleep(args.window)
        procs1 = tree(run.proc.pid)
        if [p.pid for p in procs1] != [p.pid for p in procs]:
            raise RuntimeError("a process of the tree changed during the window")
        s1, p1, c1, sc1, wall = run.sim.stats(), published(run.metrics_port), cpu_seconds(procs), sim_cpu(run), time.monotonic() - t0
        events = p1 - p0
        sent = s1["dispatched"] - s0["dispatched"]
        row["window_s"] = round(wall, 1)
        row["events_published"] = int(events)
        row["events_sent"] = sent
        row["events_per_s"] = round(events / wall, 1)
        row["cpu_us_per_event"] = round(1e6 * (c1 - c0) / events, 2) if events else None
        row["tree_cpu_pct"] = round(100 * (c1 - c0) / wall, 1)
        row["sim_cpu_us_per_event"] = round(1e6 * (sc1 - sc0) / sent, 2) if sent else None
        row["wire_bytes_per_event"] = round((s1["wire_bytes"] - s0["wire_bytes"]) / sent, 1) if sent else None
        row["payload_bytes_per_event"] = round((s1["payload_bytes"] - s0["payload_bytes"]) / sent, 1) if sent else None
        row["reconnects"] = s1["connections"] - n
        child_rss = [rss(c) for c in children]
        row["rss_stream_mb"] = round(sum(child_rss) / MB, 1)
        row["child_rss_mb"] = [round(r / MB, 1) for r in child_rss]
        row["rss_ready_kb_per_shard"] = round(row["rss_ready_mb"] * 1024 / n, 1)
        row["rss_stream_kb_per_shard"] = round(row["rss_stream_mb"] * 1024 / n, 1)
        row["stop_s"] = run.stop(timeout=60 + n / 50)
    except Exception as exc:  # noqa: BLE001 - a failed run is recorded and the rounds go on
        row["error"] = f"{type(exc).__name__}: {exc}"
        row["logs"] = str(work)
    finally:
        if run is not None:
            run.close()
        try:
            drop_group(args.amqp_url, group, n)
        except Exception as exc:  # noqa: BLE001 - reported, the run goes on
            row["cleanup_error"] = str(exc)
    if "error" not in row and not row.get("reconnects"):
        shutil.rmtree(work, ignore_errors=True)
    elif "error" not in row:
        row["logs"] = str(work)  # shards connected more than once: keep the logs to see why
    return row


KEYS = ("rss_ready_kb_per_shard", "rss_stream_kb_per_shard", "cpu_us_per_event", "sim_cpu_us_per_event",
        "wire_bytes_per_event", "payload_bytes_per_event", "events_per_s", "tree_cpu_pct")  # fmt: skip


def summary(rows: list[dict]) -> dict:
    """Per compression: the median of each figure over its runs (and the runs' values)."""
    out: dict = {}
    for compress in COMPRESSIONS:
        good = [r for r in rows if r["compress"] == compress and "error" not in r]
        if good:
            out[compress] = {k: {"median": statistics.median(r[k] for r in good), "runs": [r[k] for r in good]}
                             for k in KEYS if all(r.get(k) is not None for r in good)}  # fmt: skip
    return out


def table(summ: dict) -> str:
    names = [c for c in COMPRESSIONS if c in summ]
    lines = ["| figure (median of the runs; each run) | " + " | ".join(names) + " |",
             "|---|" + "---|" * len(names)]  # fmt: skip
    for k in KEYS:
        cells = []
        for c in names:
            v = summ[c].get(k)
            cells.append("-" if v is None else f"{v['median']:g} ({', '.join(f'{x:g}' for x in v['runs'])})")
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


_DECODER_PROBE = r"""
import gc, json, random, sys, zlib
import psutil
from shard_worker.gateway import inflate
from supervisor.simulator.server import zstd_compressor
kind, n = sys.argv[1], 200
rng = random.Random(1)
msgs = [json.dumps({"t": "MESSAGE_CREATE", "s": i, "op": 0, "d": {"id": str(rng.getrandbits(62)),
        "content": "".join(rng.choice("abcdefghij klmnop") for _ in range(300))}}).encode()
        for i in range(8000)]
if kind == "zlib-stream":
    c = zlib.compressobj(6, zlib.DEFLATED, 15)
    data = [c.compress(m) + c.flush(zlib.Z_SYNC_FLUSH) for m in msgs]
    new = inflate.ZlibStreamInflater
else:
    zstd = inflate.zstd_module()
    c = zstd_compressor() if kind == "zstd-discord" else zstd.ZstdCompressor(3)
    data = [c.compress(m, c.FLUSH_BLOCK) for m in msgs]
    new = inflate.ZstdStreamInflater
import statistics, time
def once():
    d = new()
    t0 = time.process_time()
    for x in data:
        d.feed(x)
    return time.process_time() - t0
us = round(1e6 * statistics.median(once() for _ in range(7)) / len(data), 2)
p = psutil.Process()
gc.collect()
r0 = p.memory_info().rss
decoders = [new() for _ in range(n)]
for d in decoders:
    for x in data:
        d.feed(x)
gc.collect()
print(json.dumps({"kind": kind, "kib_per_decoder": round((p.memory_info().rss - r0) / n / 1024, 1), "decode_us_per_event": us,
                  "json_kib_each": sum(map(len, msgs)) // 1024, "wire_kib_each": sum(map(len, data)) // 1024}))
"""


def decoders() -> list[dict]:
    """One decoder's RSS once its window is full, per kind (a fresh interpreter each)."""
    import subprocess

    from bench_common import PY, ROOT

    out = []
    for kind in ("zlib-stream", "zstd-discord", "zstd-level3"):
        done = subprocess.run([PY, "-c", _DECODER_PROBE, kind], cwd=ROOT, capture_output=True, text=True,
                              env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=600, check=True)  # fmt: skip
        out.append(json.loads(done.stdout))
        print(f"bench: {done.stdout.strip()}", flush=True)
    return out


def _sigterm(*_: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--amqp-url", default=os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F"))
    parser.add_argument("--shards", type=int, default=1000, help="shard count (default: %(default)s)")
    parser.add_argument("--per-process", type=int, default=250, help="--shards-per-process (default: %(default)s)")
    parser.add_argument("--rate", type=float, default=2.0, help="events per second per shard (default: %(default)s)")
    parser.add_argument("--settle", type=float, default=20.0, help="seconds after all READY before the first RSS")
    parser.add_argument("--window", type=float, default=60.0, help="stream window in seconds (CPU, bytes)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of one run per compression (A B, B A, ...)")
    parser.add_argument("--out", type=Path, default=OUT, help="where zstd_scale.json goes")
    parser.add_argument("--decoders", action="store_true", help="only measure one decoder's memory per kind")
    args = parser.parse_args(argv)
    if args.decoders:
        if missing := zstd_unavailable():
            parser.error(missing)
        decoders()
        return 0
    for name, value, low in (("--shards", args.shards, 1), ("--per-process", args.per_process, 1),
                             ("--rounds", args.rounds, 1)):  # fmt: skip
        if value < low:
            parser.error(f"{name} must be >= {low}, not {value}")
    if args.rate <= 0 or args.window <= 0 or args.settle < 0:
        parser.error("--rate and --window must be > 0, --settle >= 0")
    if missing := zstd_unavailable():
        parser.error(missing)
    signal.signal(signal.SIGTERM, _sigterm)
    group = f"bench-zstd-{os.getpid()}"
    rows: list[dict] = []
    interrupted = False
    try:
        for i in range(args.rounds):
            order = COMPRESSIONS if i % 2 == 0 else COMPRESSIONS[::-1]
            for compress in order:
                row = measure(compress, args, group)
                row["round"] = i + 1
                rows.append(row)
                print(f"bench: {json.dumps(row)}", flush=True)
    except KeyboardInterrupt:
        interrupted = True
        print("bench: interrupted; cleaned up", file=sys.stderr)
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if not rows:
        return 130
    machine = {
        "cpus": os.cpu_count(),
        "cpu_model": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "load_avg_at_end": os.getloadavg(),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "amqp_url"},
    }
    summ = summary(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "zstd_scale.json"
    path.write_text(json.dumps({"machine": machine, "summary": summ, "runs": rows}, indent=1) + "\n")
    print(f"bench: results written to {path}")
    print()
    print(table(summ))
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
