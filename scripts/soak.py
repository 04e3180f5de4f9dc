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
fds, threads, and the supervisor's status (restarts, buffered events).

The verdict (after ``--warmup``): the least-squares RSS slope of every process under
``--max-slope`` MB an hour, fds and threads flat (their last sample no higher than the highest of
the first third, plus a small allowance), and no child replaced. Results: ``--out`` (JSON), and a
plot when matplotlib is installed. Events lost are counted by the test suite's schedules, not here
(yet): see docs/RELIABILITY.md.
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
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_common import PY, ROOT, TOKEN, free_port, tree  # noqa: E402

from supervisor.simulator.process import SimulatorProcess  # noqa: E402

MB = 1024 * 1024
FAULTS = ("reconnect", "close", "invalidate_resumable", "invalidate", "request_heartbeat", "zombie",
          "malformed", "guild_create_burst")  # fmt: skip


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
          rng: random.Random) -> None:
    while not stop.wait(rng.expovariate(rate) if rate > 0 else 3600):
        fault, shard = rng.choice(FAULTS), rng.randrange(shards)
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


def sample(root_pid: int, started: float, state_dir: str) -> dict:
    """Every process of the tree (RSS, USS, fds, threads), and each child's own sizes from
    ``status --json`` (asyncio tasks, the publish ledger, ... see ``Worker.sizes``)."""
    out: dict = {"t": round(time.monotonic() - started, 1), "processes": {}, "groups": {}}
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
                    "fds": proc.num_fds(), "threads": proc.num_threads(),
                }  # fmt: skip
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return out


def status(state_dir: str) -> dict | None:
    done = subprocess.run([PY, "-m", "supervisor", "status", "--json", "--state-dir", state_dir],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)  # fmt: skip
    return json.loads(done.stdout) if done.returncode == 0 else None


def verdict(samples: list[dict], warmup: float, max_slope: float) -> dict:
    by_pid: dict[str, list[dict]] = {}
    for s in samples:
        for pid, p in s["processes"].items():
            by_pid.setdefault(pid, []).append({"t": s["t"], **p})
    result = {}
    for pid, rows in by_pid.items():
        late = [r for r in rows if r["t"] >= warmup]
        slope = slope_mb_per_hour([(r["t"], r["rss"]) for r in late])
        third = rows[: max(1, len(rows) // 3)]
        result[pid] = {
            "title": rows[-1]["title"], "samples": len(rows), "rss_mb_first": round(rows[0]["rss"] / MB, 1),
            "rss_mb_last": round(rows[-1]["rss"] / MB, 1),
            "rss_slope_mb_per_hour": None if slope is None else round(slope, 2),
            "fds_first_third_max": max(r["fds"] for r in third), "fds_last": rows[-1]["fds"],
            "threads_first_third_max": max(r["threads"] for r in third), "threads_last": rows[-1]["threads"],
            "slope_ok": slope is None or slope < max_slope,
            "fds_ok": rows[-1]["fds"] <= max(r["fds"] for r in third) + 4,
            "threads_ok": rows[-1]["threads"] <= max(r["threads"] for r in third) + 2,
        }  # fmt: skip
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=int, default=100)
    parser.add_argument("--per-process", type=int, default=None)
    parser.add_argument("--duration", type=duration, default=duration("10m"))
    parser.add_argument("--warmup", type=duration, default=None, help="ignored for the slopes (default: a tenth)")
    parser.add_argument("--sample", type=duration, default=duration("1m"))
    parser.add_argument("--rate", type=float, default=2.0, help="events a second per shard")
    parser.add_argument("--churn", type=float, default=0.5, help="faults a second, over all shards")
    parser.add_argument("--broker-cut-every", type=duration, default=duration("10m"))
    parser.add_argument("--max-slope", type=float, default=1.0, help="MB an hour, per process")
    parser.add_argument("--seed", type=int, default=23)
    parser.add_argument("--amqp-url", default=os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F"))
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "reliability" / "soak.json")
    args = parser.parse_args(argv)
    warmup = args.warmup if args.warmup is not None else args.duration / 10
    rng = random.Random(args.seed)
    print(f"soak: {args.shards} shards for {args.duration:.0f} s, seed {args.seed}", file=sys.stderr)
    work = Path(tempfile.mkdtemp(prefix="soak-"))
    target = re.match(r"amqps?://[^@]*@([^:/]+):?([0-9]*)", args.amqp_url)
    proxy = Proxy((target.group(1), int(target.group(2) or 5672))) if target else None
    amqp_url = args.amqp_url if proxy is None else re.sub(r"@[^/]+/", f"@127.0.0.1:{proxy.port}/", args.amqp_url)
    group = f"soak-{os.getpid()}"
    sim = SimulatorProcess(token=TOKEN, shard_count=args.shards, max_concurrency=min(16, args.shards),
                           guilds_per_shard=1, events_per_shard=-1, rate=args.rate, log_path=work / "sim.log")  # fmt: skip
    samples: list[dict] = []
    counts: dict[str, int] = {}
    stop = threading.Event()
    state_dir = str(work / "state")
    with sim, open(work / "supervisor.log", "wb") as log:
        argv = [PY, "-m", "supervisor", "start", "--api-url", sim.api_url, "--group", group, "--state-dir",
                str(work / "state"), "--metrics-addr", f"127.0.0.1:{free_port()}", "--log-format", "json"]  # fmt: skip
        if args.per_process:
            argv += ["--shards-per-process", str(args.per_process)]
        env = dict(os.environ, DISCORD_TOKEN=TOKEN, AMQP_URL=amqp_url, PYTHONUNBUFFERED="1")
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            sim.wait_until(lambda s: len(s["ready"]) == args.shards, timeout=60 + args.shards / 16 * 6)
            started = time.monotonic()
            threading.Thread(target=churn, args=(sim, args.shards, args.churn, stop, counts, rng), daemon=True).start()
            next_cut = started + args.broker_cut_every
            while (now := time.monotonic()) < started + args.duration:
                samples.append(sample(proc.pid, started, state_dir))
                if proxy is not None and now >= next_cut:
                    next_cut = now + args.broker_cut_every
                    counts["broker_cuts"] = counts.get("broker_cuts", 0) + 1
                    proxy.cut(rng.uniform(2, 8))
                time.sleep(max(0.0, args.sample - (time.monotonic() - now)))
            samples.append(sample(proc.pid, started, state_dir))
            stop.set()
            final = status(str(work / "state"))
        finally:
            stop.set()
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
        sim_stats = sim.stats()
    result = verdict(samples, warmup, args.max_slope)
    restarts = sum(g["restarts"] for g in (final or {}).get("groups", []))
    ok = all(v["slope_ok"] and v["fds_ok"] and v["threads_ok"] for v in result.values()) and restarts == 0
    report = {
        "shards": args.shards, "duration_s": args.duration, "warmup_s": warmup, "seed": args.seed,
        "faults": counts, "restarts": restarts, "simulator": sim_stats.get("counters"), "processes": result,
        "verdict": "ok" if ok else "grows", "samples": samples,
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    for _pid, v in sorted(result.items(), key=lambda kv: kv[1]["title"]):
        print(f"{v['title'][-40:]:>40}  rss {v['rss_mb_first']:6.1f} -> {v['rss_mb_last']:6.1f} MB  "
              f"slope {v['rss_slope_mb_per_hour']} MB/h  fds {v['fds_first_third_max']}->{v['fds_last']}  "
              f"threads {v['threads_first_third_max']}->{v['threads_last']}")  # fmt: skip
    print(f"soak: {counts}; restarts {restarts}; verdict {report['verdict']} ({args.out})")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
