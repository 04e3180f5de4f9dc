"""Benchmark: the project's forwarding cost against the leanest pipeline (``bench_reference.py``).

One run measures, on the local RabbitMQ and a simulator in its own process (realistic dispatches,
mostly MESSAGE_CREATE of about 1.5 KB, zlib-stream; persistent publishes with confirms):

- events per second landed in RabbitMQ (the depth of a queue bound to every event type),
- CPU microseconds per event of the forwarding processes (psutil, the whole process tree),
- RSS per child process, idle and under load,
- time from ``start`` to every shard READY for 16 and 64 shards (max_concurrency 16),

alternating project (A) and reference (B) runs, and prints the ratios A/B (medians).

    .venv/bin/python scripts/bench.py                  # the full run (about 6 minutes)
    .venv/bin/python scripts/bench.py --quick          # one repetition, 1 and 4 shards
    .venv/bin/python scripts/bench.py --project-only --shards 4 --window 20   # for profiling
    .venv/bin/python scripts/bench.py --scale --sizes 100 500   # scripts/bench_scale.py
    .venv/bin/python scripts/bench.py --latency                 # scripts/bench_latency.py

Results go to ``docs/bench/results.json`` and a plot to ``docs/bench/throughput.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pika
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench_common import (  # noqa: E402,F401
    OUT,
    PY,
    TOKEN,
    cpu_seconds,
    free_port,
    profile_tree,
    summarize_profile,
    tree,
)

from supervisor.simulator.payloads import DISPATCH_TYPES  # noqa: E402

EXCHANGE = "bench"
QUEUE = "bench:all"
EVENTS = DISPATCH_TYPES


class Simulator:
    """``spectacles-supervisor simulate`` in its own process (its CPU is not counted)."""

    def __init__(self, shards: int, max_concurrency: int, stream: bool) -> None:
        self.port = free_port()
        argv = [PY, "-m", "supervisor", "simulate", "--port", str(self.port), "--token", TOKEN,
                "--shards", str(shards), "--max-concurrency", str(max_concurrency),
                "--events-per-shard", "-1" if stream else "0", "--rate", "0", "--log-level", "WARNING"]  # fmt: skip
        self.proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                self.stats()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("simulator did not start")

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/v10"

    def stats(self) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/_sim/stats", timeout=5) as r:
            return json.loads(r.read())

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class Rabbit:
    def __init__(self, url: str) -> None:
        self.connection = pika.BlockingConnection(pika.URLParameters(url))
        self.channel = self.connection.channel()
        self.channel.exchange_declare(EXCHANGE, "direct", durable=True)
        self.channel.queue_declare(QUEUE, durable=True)
        for event in EVENTS:
            self.channel.queue_bind(QUEUE, EXCHANGE, event)

    def depth(self) -> int:
        return self.channel.queue_declare(QUEUE, durable=True, passive=True).method.message_count

    def purge(self) -> None:
        self.channel.queue_purge(QUEUE)

    def close(self) -> None:
        self.channel.queue_delete(QUEUE)
        self.connection.close()




JSON = "ujson"  # set from --json
PROJECT_JSON = "ujson"  # set from --project-json (default: --json)
COMPRESS = "zlib-stream"  # set from --compress (the project only: the reference speaks zlib-stream)
PROFILE: Path | None = None  # set from --profile


def start_project(sim: Simulator, shards: int, amqp_url: str, state_dir: str) -> subprocess.Popen:
    env = dict(os.environ, DISCORD_TOKEN=TOKEN, AMQP_URL=amqp_url, SPECTACLES_JSON=PROJECT_JSON)
    argv = [PY, "-m", "supervisor", "start", "--api-url", sim.api_url, "--group", EXCHANGE,
            "--shards-per-process", str(shards), "--state-dir", state_dir, "--log-level", "WARNING",
            "--compress", COMPRESS]  # fmt: skip
    return subprocess.Popen(argv, cwd=ROOT, env=env)


def start_reference(sim: Simulator, shards: int, amqp_url: str, batched: bool = False) -> subprocess.Popen:
    argv = [PY, str(ROOT / "scripts" / "bench_reference.py"), "--gateway", sim.url, "--token", TOKEN,
            "--shards", str(shards), "--amqp-url", amqp_url, "--exchange", EXCHANGE, "--json", JSON]  # fmt: skip
    if batched:
        argv.append("--batched")
    return subprocess.Popen(argv, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))


KINDS = ("project", "reference", "reference-batched")


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        for p in tree(proc.pid)[::-1]:
            p.kill()
        proc.wait(5)


def broker_processes() -> list[psutil.Process]:
    """The local RabbitMQ node (beam.smp), whose CPU decides the rate on one host."""
    return [p for p in psutil.process_iter(["name"]) if p.info["name"] == "beam.smp"]


def measure_stream(kind: str, shards: int, rabbit: Rabbit, amqp_url: str, warmup: float, window: float) -> dict:
    sim = Simulator(shards, max_concurrency=16, stream=True)
    rabbit.purge()
    state_dir = tempfile.mkdtemp(prefix="bench-state-")
    if kind == "project":
        proc = start_project(sim, shards, amqp_url, state_dir)
    else:
        proc = start_reference(sim, shards, amqp_url, batched=kind == "reference-batched")
    try:
        deadline = time.monotonic() + 60
        while len(sim.stats()["ready"]) < shards:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"{kind}: shards not ready")
            time.sleep(0.1)
        time.sleep(warmup)
        procs = tree(proc.pid)
        spy = None
        if PROFILE is not None:
            raw = PROFILE / f"profile-{kind}-{shards}.txt"
            spy = profile_tree(proc.pid, window, raw)
        broker = broker_processes()
        d0, c0, t0, b0 = rabbit.depth(), cpu_seconds(procs), time.monotonic(), cpu_seconds(broker)
        time.sleep(window)
        d1, c1, t1, b1 = rabbit.depth(), cpu_seconds(procs), time.monotonic(), cpu_seconds(broker)
        profile = None
        if spy is not None:
            spy.wait(30)
            profile = summarize_profile(raw) if raw.exists() else None
        rss = [p.memory_info().rss for p in procs[1:]] if kind == "project" else [procs[0].memory_info().rss]
        events = d1 - d0
        return {
            "kind": kind,
            "shards": shards,
            "events": events,
            "events_per_s": events / (t1 - t0),
            "cpu_us_per_event": (c1 - c0) * 1e6 / max(1, events),
            # RabbitMQ's own CPU per event (the whole node: other clients' work counts too)
            "broker_cpu_us_per_event": (b1 - b0) * 1e6 / max(1, events) if broker else None,
            "rss_mb_under_load": [round(r / 2**20, 1) for r in rss],
            **({"profile": profile} if profile else {}),
        }
    finally:
        stop(proc)
        sim.stop()
        rabbit.purge()


def measure_startup(shards: int, max_concurrency: int, amqp_url: str) -> dict:
    sim = Simulator(shards, max_concurrency=max_concurrency, stream=False)
    state_dir = tempfile.mkdtemp(prefix="bench-state-")
    started = time.monotonic()
    proc = start_project(sim, max(1, shards // 2), amqp_url, state_dir)
    try:
        while len(sim.stats()["ready"]) < shards:
            if time.monotonic() - started > 120 or proc.poll() is not None:
                raise RuntimeError("startup did not finish")
            time.sleep(0.02)
        elapsed = time.monotonic() - started
        buckets = -(-shards // max_concurrency)
        return {"shards": shards, "max_concurrency": max_concurrency, "seconds_to_all_ready": round(elapsed, 2),
                "floor_s": 5.0 * (buckets - 1)}  # fmt: skip
    finally:
        stop(proc)
        sim.stop()


def measure_idle_rss(amqp_url: str) -> dict:
    sim = Simulator(4, max_concurrency=4, stream=False)
    state_dir = tempfile.mkdtemp(prefix="bench-state-")
    proc = start_project(sim, 4, amqp_url, state_dir)
    try:
        while len(sim.stats()["ready"]) < 4:
            time.sleep(0.05)
        time.sleep(3)
        children = tree(proc.pid)[1:]
        return {"shards_per_child": 4, "rss_mb": [round(p.memory_info().rss / 2**20, 1) for p in children],
                "master_rss_mb": round(psutil.Process(proc.pid).memory_info().rss / 2**20, 1)}  # fmt: skip
    finally:
        stop(proc)
        sim.stop()


def plot(summary: dict, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("bench: matplotlib not installed (pip install -e '.[bench]'): no plot")
        return
    shards = sorted({int(k) for k in summary})
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    xs = range(len(shards))
    width = 0.27
    for offset, kind, color in ((-width, "project", "tab:blue"), (0.0, "reference", "tab:gray"), (width, "reference-batched", "tab:olive")):
        if any(kind not in summary[str(s)] for s in shards):
            continue
        ax1.bar([x + offset for x in xs], [summary[str(s)][kind]["events_per_s"] for s in shards], width, label=kind, color=color)
        ax2.bar([x + offset for x in xs], [summary[str(s)][kind]["cpu_us_per_event"] for s in shards], width, label=kind, color=color)
    for ax, title in ((ax1, "events/s landed in RabbitMQ"), (ax2, "CPU µs per event (process tree)")):
        ax.set_xticks(list(xs), [f"{s} shard{'s' if s > 1 else ''}" for s in shards])
        ax.set_title(title)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"bench: plot written to {path}")


def main() -> int:
    if "--scale" in sys.argv[1:]:
        import bench_scale

        return bench_scale.main([a for a in sys.argv[1:] if a != "--scale"])
    if "--latency" in sys.argv[1:]:
        import bench_latency

        return bench_latency.main([a for a in sys.argv[1:] if a != "--latency"])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--amqp-url", default=os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F"))
    parser.add_argument("--shards", type=int, nargs="*", default=[1, 4, 16])
    parser.add_argument("--repeat", type=int, default=3, help="A B pairs per shard count")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--window", type=float, default=8.0)
    parser.add_argument("--quick", action="store_true", help="one pair, 1 and 4 shards, no startup runs")
    parser.add_argument("--project-only", action="store_true", help="only the project (for profiling)")
    parser.add_argument("--json", choices=["ujson", "orjson"], default="ujson", help="the codec of both sides")
    parser.add_argument("--project-json", choices=["ujson", "orjson"], default=None,
                        help="the project's codec only (default: --json), e.g. orjson against the ujson reference")
    parser.add_argument("--compress", choices=["zlib-stream", "zstd-stream"], default="zlib-stream",
                        help="the project's transport compression (the reference always uses zlib-stream)")
    parser.add_argument("--tag", default=None, help="results file suffix (default: the codec)")
    parser.add_argument("--profile", type=Path, default=None,
                        help="py-spy the whole process tree during each window (raw stacks and a summary in this folder)")
    parser.add_argument("--scale", action="store_true", help="the scale benchmark instead (scripts/bench_scale.py --help)")
    parser.add_argument("--latency", action="store_true",
                        help="the latency benchmark instead (scripts/bench_latency.py --help)")
    args = parser.parse_args()
    global JSON, PROJECT_JSON, COMPRESS, PROFILE
    PROFILE = args.profile
    if PROFILE is not None:
        PROFILE.mkdir(parents=True, exist_ok=True)
    JSON = args.json
    PROJECT_JSON = args.project_json or args.json
    COMPRESS = args.compress
    if args.quick:
        args.repeat, args.shards = 1, [1, 4]

    OUT.mkdir(parents=True, exist_ok=True)
    rabbit = Rabbit(args.amqp_url)
    runs: list[dict] = []
    try:
        for shards in args.shards:
            for _ in range(args.repeat):
                for kind in ("project",) if args.project_only else KINDS:
                    result = measure_stream(kind, shards, rabbit, args.amqp_url, args.warmup, args.window)
                    runs.append(result)
                    print(f"bench: {kind:<9} {shards:>2} shards  {result['events_per_s']:>8.0f} events/s  "
                          f"{result['cpu_us_per_event']:>6.1f} µs/event  broker {result['broker_cpu_us_per_event'] or 0:5.1f} µs/event  "
                          f"RSS {result['rss_mb_under_load']} MB")  # fmt: skip
                    for name, share in (result.get("profile") or {}).get("top_functions", [])[:12]:
                        print(f"bench:     {share:5.1f} %  {name}")
        summary: dict = {}
        for shards in args.shards:
            row = {}
            for kind in KINDS:
                mine = [r for r in runs if r["kind"] == kind and r["shards"] == shards]
                if mine:
                    row[kind] = {
                        "events_per_s": statistics.median(r["events_per_s"] for r in mine),
                        "cpu_us_per_event": statistics.median(r["cpu_us_per_event"] for r in mine),
                        "broker_cpu_us_per_event": statistics.median(r.get("broker_cpu_us_per_event") or 0 for r in mine),
                    }
            for ref in KINDS[1:]:
                if "project" in row and ref in row:
                    cpu = row["project"]["cpu_us_per_event"] / row[ref]["cpu_us_per_event"]
                    eps = row["project"]["events_per_s"] / row[ref]["events_per_s"]
                    row[f"ratio_cpu_vs_{ref}"], row[f"ratio_events_per_s_vs_{ref}"] = cpu, eps
                    print(f"bench: {shards:>2} shards: project/{ref}: CPU/event {cpu:.2f}, events/s {eps:.2f}")
            summary[str(shards)] = row
        extra: dict = {}
        if not args.quick and not args.project_only:
            extra["idle_rss"] = measure_idle_rss(args.amqp_url)
            print(f"bench: idle RSS, 4 shards in one child: {extra['idle_rss']}")
            extra["startup"] = [measure_startup(16, 16, args.amqp_url), measure_startup(64, 16, args.amqp_url)]
            for s in extra["startup"]:
                print(f"bench: startup {s['shards']} shards (max_concurrency {s['max_concurrency']}): "
                      f"{s['seconds_to_all_ready']} s (floor {s['floor_s']} s)")  # fmt: skip
    finally:
        rabbit.close()
    machine = {
        "cpus": os.cpu_count(),
        "cpu_model": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "json": JSON,
        "project_json": PROJECT_JSON,
    }
    tag = args.tag or (JSON if PROJECT_JSON == JSON else f"{PROJECT_JSON}-vs-{JSON}")
    (OUT / f"results-{tag}.json").write_text(json.dumps({"machine": machine, "runs": runs, "summary": summary, **extra}, indent=1) + "\n")
    if len(args.shards) > 1 and not args.project_only:
        plot(summary, OUT / f"throughput-{tag}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
