"""Latency benchmark (issue 23): from the simulated Discord writing a dispatch to a consumer
receiving it from RabbitMQ, for the project and for the lean reference (``bench_reference.py``).

The simulator runs with ``--stamp``: every MESSAGE_CREATE's ``nonce`` is the wall time, in µs,
at which the event was made, immediately before the one transport write of its batch (the rest of
the stream mix carries no stamp and is forwarded like any event). A consumer thread in this process
(pika, auto-ack, a durable queue bound to every dispatch type on the group's exchange, as a bot's
consumer would be) takes ``time.time_ns() // 1000`` when pika hands it the delivery and keeps
``receive - stamp``. Both clocks are this host's. Only the deliveries of the measuring window
(after every shard is READY and ``--warmup`` seconds) count.

Per case (shards x events/s per shard), project and reference alternate ``--repeat`` times; each
run reports the count and p50 / p90 / p99 / max in ms, the events/s the simulator offered and the
consumer received in the window, the forwarder's CPU (process tree, % of one core), the host's
busy CPU share and load average (the machine may be shared), and for the
project the p50 / p99 of its own publish-confirm histogram over the window (``/metrics``, as the
Grafana panel computes it).

    .venv/bin/python scripts/bench.py --latency                      # the three default cases
    .venv/bin/python scripts/bench.py --latency --case issue:16:100 --repeat 1 --window 10
    .venv/bin/python scripts/bench.py --latency --case s16:16:500 --kinds project   # a sweep step

A case is ``name:shards:rate[:shards_per_process]``. A rate ``auto`` first runs the project alone
at ``--sweep-shards`` through the ``--sweep`` rates (stopping at the first it cannot sustain:
the simulator held back, or the consumer got less than it wrote) and runs the case at
``NEAR_LIMIT`` (85 %) of the highest rate sustained. Results go to ``docs/bench/latency.json``
(``--out``); a markdown table is printed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import pika
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import OUT, PY, ROOT, TOKEN, cpu_seconds, drop_group, free_port, tree  # noqa: E402

from shard_worker import spectacles  # noqa: E402
from supervisor.simulator.payloads import DISPATCH_TYPES  # noqa: E402
from supervisor.simulator.process import SimulatorProcess  # noqa: E402

#: name, shards, events/s per shard, shards per process (see the README section for the choice)
DEFAULT_CASES = ("issue:16:100:16", "shards-2000:2000:2:500", "near-limit:16:auto:16")
#: ``--sweep``: the share of the highest sustained rate the ``auto`` case runs at
NEAR_LIMIT = 0.85
KINDS = ("project", "reference")
CONFIRM_METRIC = "spectacles_publish_confirm_latency_seconds"

_NONCE = re.compile(rb'"nonce"\s*:\s*"(\d{13,19})"')


# -- pure helpers (tests/scripts/test_bench_latency.py) -------------------------------------------


def parse_stamp(body: bytes) -> int | None:
    """The µs stamp the simulator put in a MESSAGE_CREATE's nonce, or None (another event, or a
    nonce that is not a stamp)."""
    m = _NONCE.search(body)
    return int(m.group(1)) if m else None


def percentile(ordered: list[float], q: float) -> float:
    """The nearest-rank ``q``-quantile (0 < q <= 1) of an ascending list: the smallest value with
    at least ``q`` of the values at or below it."""
    if not ordered:
        raise ValueError("no values")
    if not 0 < q <= 1:
        raise ValueError(f"q must be in (0, 1], not {q}")
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def summarize(latencies_us: list[int]) -> dict:
    """count, p50, p90, p99, max and mean in ms (3 decimals); count 0 alone when empty."""
    if not latencies_us:
        return {"count": 0}
    ordered = sorted(latencies_us)
    ms = {f"p{int(q * 100)}_ms": round(percentile(ordered, q) / 1000, 3) for q in (0.5, 0.9, 0.99)}
    return {"count": len(ordered), **ms, "max_ms": round(ordered[-1] / 1000, 3),
            "mean_ms": round(sum(ordered) / len(ordered) / 1000, 3)}  # fmt: skip


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """Prometheus' ``histogram_quantile`` over cumulative ``(le, count)`` buckets (``+Inf`` last):
    linear within the bucket the rank falls in; the highest finite bound if it falls in +Inf;
    None without observations."""
    buckets = sorted(buckets)
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower_le, lower_count = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if math.isinf(le):
                return lower_le
            if count == lower_count:
                return le
            return lower_le + (le - lower_le) * (rank - lower_count) / (count - lower_count)
        lower_le, lower_count = le, count
    return lower_le


def confirm_buckets(metrics_text: str) -> dict[float, float]:
    """The publish-confirm histogram of a ``/metrics`` body, summed over every series, by ``le``."""
    out: dict[float, float] = {}
    pattern = re.compile(rf'^{CONFIRM_METRIC}_bucket\{{(.*)\}} (\S+)$')
    for line in metrics_text.splitlines():
        m = pattern.match(line)
        if m:
            le = re.search(r'le="([^"]+)"', m.group(1))
            if le:
                key = float(le.group(1))
                out[key] = out.get(key, 0.0) + float(m.group(2))
    return out


def parse_case(text: str) -> dict:
    """``name:shards:rate[:per_process]`` (per_process default: shards); rate ``auto`` (None):
    ``NEAR_LIMIT`` of the limit ``--sweep`` finds."""
    parts = text.split(":")
    if len(parts) not in (3, 4) or not parts[0]:
        raise ValueError(f"a case is name:shards:rate[:shards_per_process], not {text!r}")
    shards = int(parts[1])
    rate = None if parts[2] == "auto" else float(parts[2])
    per_process = int(parts[3]) if len(parts) == 4 else shards
    if shards < 1 or (rate is not None and rate <= 0) or per_process < 1:
        raise ValueError(f"shards, rate and shards per process must be positive in {text!r}")
    return {"name": parts[0], "shards": shards, "rate": rate, "per_process": per_process}


def sustained(step: dict, nominal_per_s: float) -> bool:
    """A sweep step kept up: the simulator wrote at least 95 % of the nominal rate (the forwarder
    did not push back) and the consumer received at least 98 % of what it wrote."""
    if "error" in step or not step.get("offered_per_s"):
        return False
    return step["offered_per_s"] >= 0.95 * nominal_per_s and step["received_per_s"] >= 0.98 * step["offered_per_s"]


def limit_of(steps: list[dict]) -> float | None:
    """The highest received events/s of the sustained steps of a sweep (None: none kept up)."""
    kept = [s["received_per_s"] for s in steps if sustained(s, s["shards"] * s["rate_per_shard"])]
    return max(kept) if kept else None


# -- the run --------------------------------------------------------------------------------------


class Consumer(threading.Thread):
    """Receives every dispatch of the group from a durable queue; keeps latencies while recording."""

    def __init__(self, amqp_url: str, group: str) -> None:
        super().__init__(daemon=True)
        self.amqp_url, self.group = amqp_url, group
        self.queue = spectacles.queue_name(group, "bench-latency")
        self.recording = False
        self.samples: list[int] = []
        self.received = 0
        self.window_received = 0
        self.ready = threading.Event()
        self.stopping = False
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            connection = pika.BlockingConnection(pika.URLParameters(self.amqp_url))
            channel = connection.channel()
            channel.exchange_declare(self.group, spectacles.EXCHANGE_TYPE, durable=True)
            channel.queue_declare(self.queue, durable=True)
            channel.queue_purge(self.queue)
            for event in DISPATCH_TYPES:
                channel.queue_bind(self.queue, self.group, event)
            channel.basic_consume(self.queue, self._on_message, auto_ack=True)
            self.ready.set()
            while not self.stopping:
                connection.process_data_events(time_limit=0.2)
            channel.queue_delete(self.queue)
            connection.close()
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            self.error = exc
            self.ready.set()

    def _on_message(self, channel, method, properties, body: bytes) -> None:
        now = time.time_ns() // 1000
        self.received += 1
        if self.recording:
            self.window_received += 1
            stamp = parse_stamp(body)
            if stamp is not None:
                self.samples.append(now - stamp)


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as r:
        return r.read().decode()


def start_forwarder(kind: str, case: dict, sim: SimulatorProcess, amqp_url: str, group: str,
                    work: Path, metrics_port: int, max_concurrency: int) -> subprocess.Popen:  # fmt: skip
    env = dict(os.environ, DISCORD_TOKEN=TOKEN, AMQP_URL=amqp_url, PYTHONPATH=str(ROOT))  # the token: never argv
    log = open(work / f"{kind}.log", "wb")
    if kind == "project":
        argv = [PY, "-m", "supervisor", "start", "--api-url", sim.api_url, "--group", group,
                "--shards-per-process", str(case["per_process"]), "--state-dir", str(work / "state"),
                "--metrics-addr", f"127.0.0.1:{metrics_port}", "--log-level", "WARNING"]  # fmt: skip
    else:
        argv = [PY, str(ROOT / "scripts" / "bench_reference.py"), "--gateway", sim.url, "--shards", str(case["shards"]),
                "--amqp-url", amqp_url, "--exchange", group, "--max-concurrency", str(max_concurrency)]  # fmt: skip
    try:
        return subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    finally:
        log.close()


def stop(proc: subprocess.Popen) -> None:
    procs = tree(proc.pid)
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        pass
    for p in procs[::-1]:
        try:
            p.kill()
        except Exception:  # noqa: BLE001 - already gone
            pass
    proc.wait(10)


def measure(kind: str, case: dict, args: argparse.Namespace, group: str) -> dict:
    shards = case["shards"]
    max_concurrency = 256 if shards > 64 else 16
    work = Path(tempfile.mkdtemp(prefix=f"bench-latency-{kind}-"))
    row: dict = {"case": case["name"], "kind": kind, "shards": shards, "rate_per_shard": case["rate"],
                 "per_process": case["per_process"] if kind == "project" else shards}  # fmt: skip
    consumer = Consumer(args.amqp_url, group)
    consumer.start()
    consumer.ready.wait(30)
    if consumer.error is not None:
        raise RuntimeError(f"consumer: {consumer.error}")
    sim = SimulatorProcess(token=TOKEN, shard_count=shards, max_concurrency=max_concurrency, guilds_per_shard=1,
                           events_per_shard=-1, rate=case["rate"], record_limit=1000, stamp=True,
                           log_path=work / "simulator.log")  # fmt: skip
    proc = None
    metrics_port = free_port()
    try:
        sim.__enter__()
        started = time.monotonic()
        proc = start_forwarder(kind, case, sim, args.amqp_url, group, work, metrics_port, max_concurrency)
        floor = (math.ceil(shards / max_concurrency) - 1) * 5.0
        deadline = started + 2 * floor + 90
        while True:
            ready = len(sim.stats()["ready"])
            if ready >= shards:
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{ready}/{shards} shards ready (exit {proc.poll()}); logs in {work}")
            time.sleep(0.5)
        row["startup_s"] = round(time.monotonic() - started, 1)
        time.sleep(args.warmup)
        procs = tree(proc.pid)
        before = confirm_buckets(scrape(metrics_port)) if kind == "project" else {}
        psutil.cpu_percent()  # the host's busy share over the window: from here
        s0, c0, t0 = sim.stats()["dispatched"], cpu_seconds(procs), time.monotonic()
        spy = None
        if args.profile is not None:  # py-spy over the window, the whole forwarder tree
            args.profile.mkdir(parents=True, exist_ok=True)
            spy = subprocess.Popen([str(Path(PY).parent / "py-spy"), "record", "--subprocesses", "--nonblocking",
                                    "-p", str(proc.pid), "-r", "100", "-d", str(int(args.window)), "-f", "raw",
                                    "-o", str(args.profile / f"profile-{case['name']}-{kind}-{int(time.time())}.txt")],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        consumer.recording = True
        time.sleep(args.window)
        consumer.recording = False
        if spy is not None:
            spy.wait(60)
        s1, c1, t1 = sim.stats()["dispatched"], cpu_seconds(procs), time.monotonic()
        # The machine is shared: what else ran in the window is part of the figure.
        row["host_cpu_busy_pct"] = psutil.cpu_percent()
        row["load_1m"] = round(os.getloadavg()[0], 2)
        if kind == "project":
            after = confirm_buckets(scrape(metrics_port))
            delta = [(le, after[le] - before.get(le, 0.0)) for le in after]
            for q in (0.5, 0.99):
                v = histogram_quantile(q, delta)
                row[f"confirm_p{int(q * 100)}_ms"] = None if v is None else round(v * 1000, 2)
        row.update(summarize(consumer.samples))
        row["offered_per_s"] = round((s1 - s0) / (t1 - t0))
        row["received_per_s"] = round(consumer.window_received / (t1 - t0))
        row["forwarder_cpu_pct"] = round(100 * (c1 - c0) / (t1 - t0), 1)
        row["logs"] = None
    except Exception as exc:  # noqa: BLE001 - a failed run is recorded and the bench goes on
        row["error"] = f"{type(exc).__name__}: {exc}"
        row["logs"] = str(work)
    finally:
        consumer.recording = False
        if proc is not None:
            stop(proc)
        sim.close()
        consumer.stopping = True
        consumer.join(30)
        try:  # the reference declares the exchange too: drop it after either
            drop_group(args.amqp_url, group, shards if kind == "project" else 0)
        except Exception as exc:  # noqa: BLE001
            row["cleanup_error"] = str(exc)
    if row.get("logs") is None:
        row.pop("logs", None)
        shutil.rmtree(work, ignore_errors=True)
    return row


def table(rows: list[dict]) -> str:
    head = ("| case | shards | events/s offered (received) | forwarder | p50 ms | p90 ms | p99 ms | max ms | count "
            "| forwarder CPU % | confirm p50 / p99 ms | host busy % / load |")  # fmt: skip
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['case']} | {r['shards']} | {r['shards'] * r['rate_per_shard']:.0f} | {r['kind']} | error: {r['error']} ||||||||")
            continue
        confirm = f"{r['confirm_p50_ms']} / {r['confirm_p99_ms']}" if "confirm_p99_ms" in r else "-"
        lines.append(
            f"| {r['case']} | {r['shards']} | {r['offered_per_s']} ({r['received_per_s']}) | {r['kind']} | {r.get('p50_ms', '-')} "
            f"| {r.get('p90_ms', '-')} | {r.get('p99_ms', '-')} | {r.get('max_ms', '-')} | {r['count']} "
            f"| {r['forwarder_cpu_pct']} | {confirm} | {r['host_cpu_busy_pct']:.0f} / {r['load_1m']} |"
        )
    return "\n".join(lines)


def _sigterm(*_: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--amqp-url", default=os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F"))
    parser.add_argument("--case", action="append", default=None,
                        help=f"name:shards:rate[:shards_per_process], repeatable (default: {' '.join(DEFAULT_CASES)})")
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    parser.add_argument("--repeat", type=int, default=2, help="runs of each kind per case, alternating")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds after all READY before measuring")
    parser.add_argument("--window", type=float, default=20.0, help="measuring window in seconds")
    parser.add_argument("--out", type=Path, default=OUT / "latency.json")
    parser.add_argument("--sweep", type=float, nargs="+", default=[200, 300, 450, 600, 750, 900],
                        help="events/s per shard of the project-only steps at --sweep-shards that find the "
                        "broker's limit for 'auto' cases (default: %(default)s)")
    parser.add_argument("--sweep-shards", type=int, default=16)
    parser.add_argument("--profile", type=Path, default=None,
                        help="py-spy each forwarder over the window (raw stacks in this folder)")
    args = parser.parse_args(argv)
    try:
        cases = [parse_case(c) for c in (args.case or DEFAULT_CASES)]
    except ValueError as exc:
        parser.error(str(exc))
    signal.signal(signal.SIGTERM, _sigterm)
    rows: list[dict] = []
    sweep: list[dict] = []
    limit = None
    interrupted = False
    try:
        if any(c["rate"] is None for c in cases):
            for rate in sorted(args.sweep):
                case = {"name": f"sweep-{rate:g}", "shards": args.sweep_shards, "rate": rate, "per_process": args.sweep_shards}
                step = measure("project", case, args, f"bench-latency-{os.getpid()}-sweep")
                step["sustained"] = sustained(step, args.sweep_shards * rate)
                sweep.append(step)
                print(f"bench: sweep {json.dumps(step)}", flush=True)
                if not step["sustained"]:
                    break
            limit = limit_of(sweep)
            if limit is None:
                print("bench: no sweep step kept up: the 'auto' cases are left out", file=sys.stderr)
                cases = [c for c in cases if c["rate"] is not None]
            for c in cases:
                if c["rate"] is None:
                    c["rate"] = round(NEAR_LIMIT * limit / c["shards"])
            print(f"bench: limit {limit} events/s; near it ({NEAR_LIMIT:.0%}): {[c for c in cases]}", flush=True)
        for case in cases:
            for i in range(args.repeat):
                for kind in args.kinds:
                    group = f"bench-latency-{os.getpid()}-{case['name']}"
                    row = measure(kind, case, args, group)
                    row["repeat"] = i
                    rows.append(row)
                    print(f"bench: {json.dumps(row)}", flush=True)
    except KeyboardInterrupt:
        interrupted = True
        print("bench: interrupted", file=sys.stderr)
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if not rows and not sweep:
        return 130 if interrupted else 1
    machine = {
        "cpus": os.cpu_count(),
        "cpu_model": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "warmup_s": args.warmup,
        "window_s": args.window,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    out = {"machine": machine, "cases": cases, "runs": rows}
    if sweep:
        out["sweep"] = {"limit_per_s": limit, "near_limit_share": NEAR_LIMIT, "steps": sweep}
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(f"bench: results written to {args.out}")
    print()
    print(table(sweep + rows))
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
