#!/usr/bin/env python3
"""Months of running, measured in hours (issue 23, item 1): a real supervisor under Discord's churn
and broker cuts, every process sampled once a minute, the memory slope of each.

    .venv/bin/python scripts/soak.py --shards 500 --duration 2h
    .venv/bin/python scripts/soak.py --shards 20 --duration 3m --sample 10s   # a quick look

What runs: the simulator in a process of its own with a live stream on every shard, RabbitMQ behind
a TCP proxy (so the broker can be cut), and ``spectacles-supervisor start``. A churn thread applies,
at ``--churn`` faults a second (realistic: 0.05; pressed: 2), one of: op 7, a server close 4000,
op 9 resumable, op 9 not resumable, a heartbeat request, a zombie connection for a few seconds, a
malformed frame, a burst of GUILD_CREATEs; every ``--broker-cut-every`` the proxy cuts RabbitMQ
for a few seconds. Every ``--sample`` the supervisor and each child are sampled: RSS, USS, open
fds, threads, and each child's own sizes from ``status --json`` (asyncio tasks, the publish
ledger's queues, consumers, outboxes: ``Worker.sizes``).

After ``--duration`` the churn stops, every shard is READY again (``--settle`` at most) and one
last sample is taken. The verdict: the least-squares RSS slope of every process after
``--warmup`` under ``--max-slope`` MB an hour; fds, threads and asyncio tasks flat (the settled
sample no higher than the first, taken with every shard READY, plus a small allowance); no child
replaced; and with ``--account``, 0 events lost: a consumer (straight to RabbitMQ, not through
the proxy) keeps one bit per (session, seq) it receives, and every seq of every session alive at
the end, from 1 to the simulator's last, must have arrived (a session Discord invalidated takes
its unsent events with it, as Discord's do). Results: ``--out`` (JSON) and an SVG plot beside it.
``tests/test_soak.py`` runs a 3-minute version.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterable
from pathlib import Path

import pika
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_common import PY, ROOT, TOKEN, drop_group, free_port, tree  # noqa: E402

from shard_worker import spectacles  # noqa: E402
from supervisor.simulator.payloads import DISPATCH_TYPES  # noqa: E402
from supervisor.simulator.process import SimulatorProcess  # noqa: E402

MB = 1024 * 1024
FAULTS = ("reconnect", "close", "invalidate_resumable", "invalidate", "request_heartbeat", "zombie",
          "malformed", "guild_create_burst")  # fmt: skip
#: Allowances of the flatness checks: a sample may catch a connection being replaced.
FDS_SLACK, THREADS_SLACK, TASKS_SLACK = 4, 2, 4


def duration(text: str) -> float:
    match = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)\s*([smh]?)", text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 90s, 3m, 2h)")
    return float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2)]


def slope_mb_per_hour(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, bytes), in MB an hour."""
    if len(points) < 3:
        return None
    n = len(points)
    mx = sum(t for t, _ in points) / n
    my = sum(v for _, v in points) / n
    var = sum((t - mx) ** 2 for t, _ in points)
    if var == 0:
        return None
    cov = sum((t - mx) * (v - my) for t, v in points)
    return cov / var * 3600 / MB


class Proxy:
    """A TCP proxy in front of RabbitMQ that can cut every connection (threads, no asyncio)."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.refusing = False
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            if self.refusing:
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.close()
                except OSError:
                    pass

    def cut(self, seconds: float) -> None:
        self.refusing = True
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
                conn.close()
            except OSError:
                pass
        time.sleep(seconds)
        self.refusing = False


def churn(sim: SimulatorProcess, shards: int, rate: float, stop: threading.Event, counts: dict[str, int],
          rng: random.Random, faults: tuple[str, ...] = FAULTS) -> None:
    while not stop.wait(rng.expovariate(rate) if rate > 0 else 3600):
        fault, shard = rng.choice(faults), rng.randrange(shards)
        try:
            if fault == "invalidate_resumable":
                sim.call("invalidate_session", shard=shard, resumable="true")
            elif fault == "invalidate":
                sim.call("invalidate_session", shard=shard, resumable="false")
            elif fault == "close":
                sim.call("close", shard=shard, code=4000)
            elif fault == "zombie":
                sim.call("zombie", shard=shard, on="true")
            elif fault == "malformed":
                sim.call("send_raw", shard=shard, data='{"op":0,"t":"MESSAGE_CREATE","s":', compressed="true")
            elif fault == "guild_create_burst":
                sim.call("emit", shard=shard, n=50, t="GUILD_CREATE")
            else:
                sim.call(fault, shard=shard)
            counts[fault] = counts.get(fault, 0) + 1
        except OSError:
            counts["refused"] = counts.get("refused", 0) + 1  # the shard was between connections


class Account:
    """What reached RabbitMQ, one bit per (shard, session, seq): a consumer thread on a queue
    bound to every dispatch type of the group (straight to RabbitMQ, not through the proxy).
    About one bit per event: 7.2 M events (2 hours at 1,000 a second) take under 1 MB."""

    def __init__(self, amqp_url: str, exchange: str) -> None:
        self.queue = f"{exchange}:soak-account"
        self.seen: dict[tuple[int, str], bytearray] = {}
        self.received = self.duplicates = self.foreign = self.reconnects = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._params = pika.URLParameters(amqp_url)
        conn = pika.BlockingConnection(self._params)
        ch = conn.channel()
        ch.exchange_declare(exchange, "direct", durable=True)
        # durable: a RabbitMQ restart (or another test's stop_app) keeps what it holds
        ch.queue_declare(self.queue, exclusive=False, auto_delete=False, durable=True)
        for t in DISPATCH_TYPES:
            ch.queue_bind(self.queue, exchange, routing_key=t)
        conn.close()
        self._thread = threading.Thread(target=self._consume, daemon=True)
        self._thread.start()

    def _consume(self) -> None:
        """Consume until closed; a lost connection (RabbitMQ restarted) is opened again."""
        while not self._stop.is_set():
            try:
                conn = pika.BlockingConnection(self._params)
                ch = conn.channel()
                ch.basic_qos(prefetch_count=2000)
                ch.basic_consume(self.queue, self._on_message, auto_ack=True)
                while not self._stop.is_set():
                    conn.process_data_events(time_limit=0.5)
                ch.queue_delete(self.queue)
                conn.close()
            except pika.exceptions.AMQPError:
                self.reconnects += 1
                self._stop.wait(1.0)

    def _on_message(self, _ch, _method, props, _body) -> None:
        try:
            shard, session, seq = (props.message_id or "").split(":")
            n = int(seq)
        except ValueError:
            self.foreign += 1  # not one of the workers' dispatches
            return
        with self._lock:
            bits = self.seen.get((int(shard), session))
            if bits is None:
                bits = self.seen[(int(shard), session)] = bytearray()
            if len(bits) <= n >> 3:
                bits.extend(bytes((n >> 3) + 1024 - len(bits)))
            mask = 1 << (n & 7)
            if bits[n >> 3] & mask:
                self.duplicates += 1
            bits[n >> 3] |= mask
            self.received += 1

    def missing(self, owed: dict[tuple[int, str], int]) -> list[str]:
        """Message ids of seqs 1..last of each session in ``owed`` not received."""
        out = []
        with self._lock:
            for (shard, session), last in owed.items():
                bits = self.seen.get((shard, session), b"")
                out += [spectacles.message_id(shard, session, n) for n in range(1, last + 1)
                        if n >> 3 >= len(bits) or not bits[n >> 3] & (1 << (n & 7))]  # fmt: skip
        return out

    def settle(self, owed: dict[tuple[int, str], int], timeout: float) -> list[str]:
        """Wait until nothing ``owed`` is missing (or ``timeout``); what is still missing."""
        deadline = time.monotonic() + timeout
        while (missing := self.missing(owed)) and time.monotonic() < deadline:
            time.sleep(1.0)
        return missing

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)


def sample(root_pid: int, started: float, state_dir: str, metrics_addr: str | None = None) -> dict:
    """Every process of the tree (RSS, USS, fds, threads), and each child's own sizes from
    ``status --json`` (asyncio tasks, the publish ledger, ... see ``Worker.sizes``). With
    ``metrics_addr`` /metrics is scraped first, as Prometheus would have been all along: a
    supervisor's first scrape of 500 shards raises its RSS once (2.8 MB, measured alone), which a
    run without scrapes would count as growth wherever someone first looked."""
    out: dict = {"t": round(time.monotonic() - started, 1), "processes": {}, "groups": {}}
    if metrics_addr is not None:
        try:
            with urllib.request.urlopen(f"http://{metrics_addr}/metrics", timeout=30) as reply:
                out["metrics_bytes"] = len(reply.read())
        except OSError as exc:
            out["metrics_error"] = str(exc)
    try:
        doc = status(state_dir)
    except (subprocess.TimeoutExpired, ValueError):
        doc = None
    for group in (doc or {}).get("groups", []):
        out["groups"][str(group["group"])] = {"pid": group["pid"], "sizes": group.get("sizes")}
    for proc in tree(root_pid):
        try:
            with proc.oneshot():
                mem = proc.memory_full_info()
                title = (" ".join(proc.cmdline()).replace("\0", " ").strip() or proc.name())[-60:]
                out["processes"][str(proc.pid)] = {
                    "title": title, "rss": mem.rss, "uss": getattr(mem, "uss", None),
                    "fds": proc.num_fds(), "threads": proc.num_threads(), **(memory_regions(proc.pid) or {}),
                }  # fmt: skip
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return out


def memory_regions(pid: int) -> dict[str, int] | None:
    """Where a process's RSS lives (:func:`smaps_regions` of ``/proc/PID/smaps``), or None
    where there is no smaps (not Linux) or the process is gone."""
    try:
        with open(f"/proc/{pid}/smaps") as f:
            return smaps_regions(f)
    except OSError:
        return None


def smaps_regions(lines: Iterable[str]) -> dict[str, int]:
    """The RSS (KB) of glibc's main heap, ``heap_kb`` (``[heap]``, grown by ``brk``: objects
    over 512 bytes, C allocations; what ``malloc_trim`` works on), and of the anonymous
    mappings, ``anon_kb`` (CPython's 1 MiB pymalloc arenas for objects up to 512 bytes, given
    back only when wholly empty; other threads' malloc arenas; large chunks), from smaps'
    lines: a mapping's line (``start-end perms offset dev inode [path]``) then its fields."""
    heap = anon = 0
    name = None
    for line in lines:
        if line[:1].isupper():  # a field of the mapping above: "Rss:   1234 kB"
            if line.startswith("Rss:") and name in ("[heap]", ""):
                kb = int(line.split()[1])
                if name == "[heap]":
                    heap += kb
                else:
                    anon += kb
        else:
            parts = line.split(None, 5)
            name = parts[5].strip() if len(parts) > 5 else ""
    return {"heap_kb": heap, "anon_kb": anon}


def status(state_dir: str) -> dict | None:
    done = subprocess.run([PY, "-m", "supervisor", "status", "--json", "--state-dir", state_dir],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)  # fmt: skip
    return json.loads(done.stdout) if done.returncode == 0 else None


def verdict(samples: list[dict], warmup: float, max_slope: float) -> dict:
    """Per process: RSS first/last and slope after ``warmup``; fds and threads of the first
    sample against the last (the settled one)."""
    by_pid: dict[str, list[dict]] = {}
    for s in samples:
        for pid, p in s["processes"].items():
            by_pid.setdefault(pid, []).append({"t": s["t"], **p})
    result = {}
    for pid, rows in by_pid.items():
        late = [r for r in rows if r["t"] >= warmup]
        slope = slope_mb_per_hour([(r["t"], r["rss"]) for r in late])
        half = slope_mb_per_hour([(r["t"], r["rss"]) for r in late[len(late) // 2 :]])
        first, last = rows[0], rows[-1]
        result[pid] = {
            "title": last["title"], "samples": len(rows), "rss_mb_first": round(first["rss"] / MB, 1),
            "rss_mb_last": round(last["rss"] / MB, 1), "rss_mb_max": round(max(r["rss"] for r in rows) / MB, 1),
            "rss_slope_mb_per_hour": None if slope is None else round(slope, 2),
            "rss_slope_second_half_mb_per_hour": None if half is None else round(half, 2),
            "fds_first": first["fds"], "fds_last": last["fds"], "fds_max": max(r["fds"] for r in rows),
            "threads_first": first["threads"], "threads_last": last["threads"],
            "slope_ok": slope is None or slope < max_slope,
            "fds_ok": last["fds"] <= first["fds"] + FDS_SLACK,
            "threads_ok": last["threads"] <= first["threads"] + THREADS_SLACK,
        }  # fmt: skip
        for region in ("heap_kb", "anon_kb"):  # where the growth lives (memory_regions)
            values = [(r["t"], r[region] * 1024) for r in late if r.get(region) is not None]
            if values:
                region_slope = slope_mb_per_hour(values)
                name = region.removesuffix("_kb")
                result[pid][f"{name}_mb_first"] = round(values[0][1] / MB, 1)
                result[pid][f"{name}_mb_last"] = round(values[-1][1] / MB, 1)
                result[pid][f"{name}_slope_mb_per_hour"] = None if region_slope is None else round(region_slope, 2)
    return result


def sizes_verdict(samples: list[dict]) -> dict:
    """Per group: each size (asyncio tasks, ledger queues...) first, max and settled, and whether
    the tasks came back (the other sizes are bounded by options and reported, not judged; a size
    not known yet, such as malloc's free bytes before the first reading, is None)."""
    by_group: dict[str, list[dict]] = {}
    for s in samples:
        for g, info in s.get("groups", {}).items():
            if info.get("sizes"):
                by_group.setdefault(g, []).append(info["sizes"])
    out = {}
    for g, rows in by_group.items():
        first, last = rows[0], rows[-1]
        out[g] = {
            "sizes": {k: {"first": first.get(k), "max": max(r.get(k) or 0 for r in rows), "last": last.get(k)}
                      for k in sorted(last)},  # fmt: skip
            "tasks_ok": last["asyncio_tasks"] <= first["asyncio_tasks"] + TASKS_SLACK,
        }
    return out


def plot(report: dict, path: Path) -> None:
    """RSS of every process over the run as an SVG (no plotting library needed), broker cuts
    marked; where sampled, the part of it in glibc's heap (dashed) and in anonymous mappings
    (dotted: pymalloc's arenas), in the process's colour."""
    width, height, left, bottom = 900, 420, 60, 40
    series = {}
    for s in report["samples"]:
        for pid, p in s["processes"].items():
            series.setdefault(pid, (p["title"], []))[1].append((s["t"], p["rss"] / MB))
    points = [pt for _, pts in series.values() for pt in pts]
    if not points:
        return
    t_max = max(t for t, _ in points) or 1.0
    lo, hi = 0.0, max(v for _, v in points) * 1.1
    x = lambda t: left + (width - left - 20) * t / t_max  # noqa: E731
    y = lambda v: height - bottom - (height - bottom - 20) * (v - lo) / (hi - lo or 1)  # noqa: E731
    colors = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
           f'font-size="11"><rect width="100%" height="100%" fill="white"/>',
           f'<text x="{left}" y="14">RSS (MB) of every process, {report["shards"]} shards, '
           f'{report["duration_s"] / 3600:.2f} h, {sum(report["faults"].values())} faults</text>']  # fmt: skip
    for i in range(6):
        v = lo + (hi - lo) * i / 5
        out.append(f'<line x1="{left}" x2="{width - 20}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#ddd"/>'
                   f'<text x="4" y="{y(v) + 4:.1f}">{v:.0f}</text>')  # fmt: skip
    for i in range(7):
        t = t_max * i / 6
        out.append(f'<text x="{x(t) - 10:.1f}" y="{height - bottom + 16}">{t / 60:.0f} min</text>')
    for t in report.get("broker_cuts_at", []):
        out.append(f'<line x1="{x(t):.1f}" x2="{x(t):.1f}" y1="20" y2="{height - bottom}" stroke="#bbb" '
                   f'stroke-dasharray="4 3"/>')  # fmt: skip
    regions: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for s in report["samples"]:
        for pid, p in s["processes"].items():
            for region in ("heap_kb", "anon_kb"):
                if p.get(region) is not None:
                    regions.setdefault(pid, {}).setdefault(region, []).append((s["t"], p[region] / 1024))
    for i, (pid, (title, pts)) in enumerate(sorted(series.items(), key=lambda item: item[1])):
        color = colors[i % len(colors)]
        line = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in pts)
        out.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{line}"/>')
        for region, dash in (("heap_kb", "6 3"), ("anon_kb", "1 3")):
            if len(part := regions.get(pid, {}).get(region, [])) > 1:
                line = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in part)
                out.append(f'<polyline fill="none" stroke="{color}" stroke-width="1" stroke-dasharray="{dash}" points="{line}"/>')
        out.append(f'<text x="{left + 10}" y="{34 + 14 * i}" fill="{color}">{title[-40:]}</text>')
    out.append(f'<text x="{width - 560}" y="{height - 6}">grey dashes: RabbitMQ cut through the proxy; thin dashed: '
               f'heap; dotted: anonymous</text></svg>')  # fmt: skip
    path.write_text("\n".join(out) + "\n")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=int, default=100)
    parser.add_argument("--per-process", type=int, default=None)
    parser.add_argument("--duration", type=duration, default=duration("10m"))
    parser.add_argument("--warmup", type=duration, default=None, help="ignored for the slopes (default: a tenth)")
    parser.add_argument("--sample", type=duration, default=duration("1m"))
    parser.add_argument("--rate", type=float, default=2.0, help="events a second per shard")
    parser.add_argument("--churn", type=float, default=0.5, help="faults a second, over all shards")
    parser.add_argument("--faults", default=",".join(FAULTS), help="the faults drawn from (comma-separated)")
    parser.add_argument("--heartbeat-ms", type=int, default=41250, help="the simulator's heartbeat interval")
    parser.add_argument("--broker-cut-every", type=duration, default=duration("10m"))
    parser.add_argument("--settle", type=duration, default=duration("2m"), help="for every shard READY at the end")
    parser.add_argument("--account", action="store_true", help="count events lost (a consumer of every type)")
    parser.add_argument("--max-slope", type=float, default=1.0, help="MB an hour, per process")
    parser.add_argument("--seed", type=int, default=23)
    parser.add_argument("--group", default=None, help="the exchange (default: soak-<pid>-<seed>)")
    parser.add_argument("--amqp-url", default=os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F"))
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "reliability" / "soak.json")
    parser.add_argument("--plot-only", action="store_true", help="draw --out's plot again, run nothing")
    args = parser.parse_args(argv)
    unknown = set(args.faults.split(",")) - set(FAULTS)
    if unknown:
        parser.error(f"unknown faults {sorted(unknown)}: choose from {', '.join(FAULTS)}")
    return args


def run(args: argparse.Namespace) -> dict:
    """One soak; the report (also written to ``args.out``, with its plot beside it)."""
    warmup = args.warmup if args.warmup is not None else args.duration / 10
    rng = random.Random(args.seed)
    faults = tuple(args.faults.split(","))
    print(f"soak: {args.shards} shards for {args.duration:.0f} s, seed {args.seed}", file=sys.stderr)
    work = Path(tempfile.mkdtemp(prefix="soak-"))
    target = re.match(r"amqps?://[^@]*@([^:/]+):?([0-9]*)", args.amqp_url)
    proxy = Proxy((target.group(1), int(target.group(2) or 5672))) if target else None
    amqp_url = args.amqp_url if proxy is None else re.sub(r"@[^/]+/", f"@127.0.0.1:{proxy.port}/", args.amqp_url)
    group = args.group or f"soak-{os.getpid()}-{args.seed}"
    sim = SimulatorProcess(token=TOKEN, shard_count=args.shards, max_concurrency=min(16, args.shards),
                           heartbeat_interval_ms=args.heartbeat_ms, guilds_per_shard=1, events_per_shard=-1,
                           rate=args.rate, log_path=work / "sim.log")  # fmt: skip
    samples: list[dict] = []
    counts: dict[str, int] = {}
    cuts: list[float] = []
    stop = threading.Event()
    state_dir = str(work / "state")
    account = Account(args.amqp_url, group) if args.account else None
    lost: list[str] | None = None
    owed_events = 0
    ended_sessions = 0
    final = None
    with sim, open(work / "supervisor.log", "wb") as log:
        metrics_addr = f"127.0.0.1:{free_port()}"
        argv = [PY, "-m", "supervisor", "start", "--api-url", sim.api_url, "--group", group, "--state-dir",
                state_dir, "--metrics-addr", metrics_addr, "--log-format", "json"]  # fmt: skip
        if args.per_process:
            argv += ["--shards-per-process", str(args.per_process)]
        env = dict(os.environ, DISCORD_TOKEN=TOKEN, AMQP_URL=amqp_url, PYTHONUNBUFFERED="1")
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            all_ready = lambda s: len(s["ready"]) == args.shards  # noqa: E731
            sim.wait_until(all_ready, timeout=60 + args.shards / 16 * 6)
            time.sleep(3.0)  # every child's heartbeat report is from after its READYs
            started = time.monotonic()
            samples.append(sample(proc.pid, started, state_dir, metrics_addr))
            churner = threading.Thread(target=churn, args=(sim, args.shards, args.churn, stop, counts, rng, faults),
                                       daemon=True)  # fmt: skip
            churner.start()
            next_cut = started + args.broker_cut_every if proxy is not None else float("inf")
            next_sample = started + args.sample
            while (now := time.monotonic()) < started + args.duration:
                if now >= next_sample:
                    next_sample += args.sample
                    samples.append(sample(proc.pid, started, state_dir, metrics_addr))
                    partial = {"partial": True, "shards": args.shards, "faults": counts, "broker_cuts_at": cuts}
                    args.out.parent.mkdir(parents=True, exist_ok=True)
                    args.out.write_text(json.dumps({**partial, "samples": samples}))  # a run cut short keeps them
                if proxy is not None and now >= next_cut:
                    next_cut = now + args.broker_cut_every
                    cuts.append(round(now - started, 1))
                    proxy.cut(rng.uniform(2, 8))
                time.sleep(max(0.0, min(next_sample, next_cut, started + args.duration) - time.monotonic()))
            stop.set()
            churner.join(30)
            sim.wait_until(all_ready, timeout=args.settle)
            time.sleep(5.0)  # the last reconnects' closing handshakes end
            samples.append(sample(proc.pid, started, state_dir, metrics_addr))
            final = status(state_dir)
            if account is not None:
                shards_now = sim.stats()["shards"]
                owed = {(int(s), v["session_id"]): v["seq"] for s, v in shards_now.items() if v["session_id"]}
                # Sessions Discord ended (op 9 not resumable) owe what they sent before it: the
                # op 9 came on the same connection, after them.
                ended = sim.call("ended_sessions")["result"]
                owed.update({(int(shard), sid): seq for sid, (shard, seq) in ended.items()})
                ended_sessions = len(ended)
                owed_events = sum(owed.values())
                lost = account.settle(owed, timeout=120)
        finally:
            stop.set()
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
            if account is not None:
                account.close()
            drop_group(args.amqp_url, group, args.shards)
        sim_stats = sim.stats()
    result = verdict(samples, warmup, args.max_slope)
    sizes = sizes_verdict(samples)
    groups = (final or {}).get("groups", [])
    restarts = sum(g["restarts"] for g in groups)
    reconnects = sum(s.get("reconnects", 0) for s in (final or {}).get("shards", []))
    ok = (
        final is not None
        and all(v["slope_ok"] and v["fds_ok"] and v["threads_ok"] for v in result.values())
        and all(v["tasks_ok"] for v in sizes.values())
        and restarts == 0
        and not lost
    )
    report = {
        "shards": args.shards, "duration_s": args.duration, "warmup_s": warmup, "seed": args.seed,
        "rate_per_shard": args.rate, "faults": counts, "broker_cuts_at": cuts, "reconnects": reconnects,
        "restarts": restarts, "simulator": sim_stats.get("counters"), "processes": result, "groups": sizes,
        "events_owed": owed_events if account else None, "sessions_ended": ended_sessions,
        "events_received": account.received if account else None,
        "duplicates": account.duplicates if account else None,
        "lost": None if lost is None else len(lost), "lost_examples": (lost or [])[:20],
        "verdict": "ok" if ok else "grows", "samples": samples,
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    plot(report, args.out.with_suffix(".svg"))
    return report


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.plot_only:
        plot(json.loads(args.out.read_text()), args.out.with_suffix(".svg"))
        return 0
    report = run(args)
    for _pid, v in sorted(report["processes"].items(), key=lambda kv: kv[1]["title"]):
        print(f"{v['title'][-40:]:>40}  rss {v['rss_mb_first']:6.1f} -> {v['rss_mb_last']:6.1f} MB "
              f"(max {v['rss_mb_max']})  slope {v['rss_slope_mb_per_hour']} MB/h "
              f"(second half {v['rss_slope_second_half_mb_per_hour']})  fds {v['fds_first']}->{v['fds_last']}  "
              f"threads {v['threads_first']}->{v['threads_last']}")  # fmt: skip
    for g, v in sorted(report["groups"].items()):
        tasks = v["sizes"]["asyncio_tasks"]
        print(f"group {g}: asyncio tasks {tasks['first']} -> {tasks['last']} (max {tasks['max']})")
    print(f"soak: {report['faults']}; {report['reconnects']} reconnects; restarts {report['restarts']}; "
          f"events owed {report['events_owed']}, lost {report['lost']}, duplicates {report['duplicates']}; "
          f"verdict {report['verdict']} ({args.out})")  # fmt: skip
    return 0 if report["verdict"] == "ok" else 1


if __name__ == "__main__":
    raise SystemExit(main())
