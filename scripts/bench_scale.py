"""Scale benchmark: the supervisor at 100 to 5000 shards against a simulator in its own process.

Per shard count N (max_concurrency 256, one guild per shard, no event stream):

- start-up: from starting ``spectacles-supervisor start`` to the simulator seeing every shard READY,
  against the identify floor ``(ceil(N / 256) - 1) * 5 s`` (target: within 1.15x of it), and the
  smallest gap between two accepted IDENTIFYs of one bucket as the simulator saw them arrive;
- after ``--settle`` seconds idle: the RSS of every child and of the supervisor, the RSS per shard
  ``(sum of child RSS - children x base) / N`` (base: the idle RSS of a child with one shard,
  measured once by a 1-shard run first), the CPU of the supervisor and of the children over a
  ``--window`` seconds idle window;
- ``/metrics``: median and max of 5 scrapes (to the last byte), body size, number of series;
- ``status``: median of 3 runs of ``spectacles-supervisor status --json`` (a new interpreter each)
  and of 5 bare control requests (``supervisor.core.control.request``) in this process;
- the time from SIGTERM to the supervisor's exit.

    .venv/bin/python scripts/bench.py --scale                       # 100 500 1000 2500 5000 shards
    .venv/bin/python scripts/bench.py --scale --sizes 100 1000 --per-process 500

Results go to ``docs/bench/scale.json`` and ``docs/bench/scale.png``; a markdown table is printed.
A size that fails (a timeout, the supervisor exiting) is recorded with its error and the run goes on.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter, defaultdict
from pathlib import Path

import pika
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import OUT, PY, ROOT, TOKEN, cpu_seconds, drop_group, free_port, tree  # noqa: E402,F401

from supervisor.core.control import request  # noqa: E402
from supervisor.simulator.process import SimulatorProcess  # noqa: E402

MAX_CONCURRENCY = 256
SIZES = [100, 500, 1000, 2500, 5000]
TARGET = 1.15  # start-up within 1.15x the identify floor
MB = 2**20


def floor_s(n: int) -> float:
    return (math.ceil(n / MAX_CONCURRENCY) - 1) * 5.0


def exchange(amqp_url: str, name: str, delete: bool = False) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        channel = connection.channel()
        if delete:
            channel.exchange_delete(name)
        else:
            channel.exchange_declare(name, "direct", durable=True)
    finally:
        connection.close()


def min_bucket_gap(identifies: list[dict]) -> float | None:
    """The smallest gap between consecutive accepted IDENTIFYs of one bucket (None: no bucket had two)."""
    by_bucket: dict[int, list[float]] = defaultdict(list)
    for entry in identifies:
        if entry["accepted"]:
            by_bucket[entry["bucket"]].append(entry["time"])
    gaps = [b - a for times in by_bucket.values() for a, b in zip(sorted(times), sorted(times)[1:])]
    return round(min(gaps), 3) if gaps else None


def timed(fn, *args) -> tuple[float, object]:
    t0 = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - t0, result


def scrape(port: int) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=60) as response:
        return response.read()


def status_cli(state_dir: str) -> dict:
    argv = [PY, "-m", "supervisor", "status", "--json", "--state-dir", state_dir]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"status exited {done.returncode}: {done.stderr.strip()[-300:]}")
    return json.loads(done.stdout)


def rss(p: psutil.Process) -> int:
    try:
        return p.memory_info().rss
    except psutil.NoSuchProcess:
        return 0


class Run:
    """One simulator and one supervisor for ``n`` shards; ``close()`` leaves no process behind."""

    def __init__(
        self, n: int, amqp_url: str, group: str, per_process: int | None, work: Path,
        *, events_per_shard: int = 0, rate: float = 0.0, compress: str | None = None,
    ) -> None:  # fmt: skip
        """``events_per_shard``/``rate``: the simulator's stream (default none); ``compress``:
        the supervisor's ``--compress`` (default: its own default)."""
        self.n, self.work = n, work
        self.state_dir = str(work / "state")
        self.metrics_port = free_port()
        self.sim = SimulatorProcess(
            token=TOKEN, shard_count=n, max_concurrency=MAX_CONCURRENCY, guilds_per_shard=1,
            events_per_shard=events_per_shard, rate=rate, log_path=work / "simulator.log",
        )  # fmt: skip
        self.proc: subprocess.Popen | None = None
        self._log = None
        self.argv = [PY, "-m", "supervisor", "start", "--api-url", self.sim.api_url, "--group", group,
                "--state-dir", self.state_dir, "--metrics-addr", f"127.0.0.1:{self.metrics_port}",
                "--log-format", "json"]  # fmt: skip
        if per_process is not None:
            self.argv += ["--shards-per-process", str(per_process)]
        if compress is not None:
            self.argv += ["--compress", compress]
        self.env = dict(os.environ, DISCORD_TOKEN=TOKEN, AMQP_URL=amqp_url, PYTHONUNBUFFERED="1")
        self.started = 0.0

    def start(self) -> None:
        self.sim.__enter__()
        self._log = open(self.work / "supervisor.log", "wb")
        self.started = time.monotonic()
        self.started_wall = time.time()
        self.proc = subprocess.Popen(self.argv, cwd=ROOT, env=self.env, stdout=self._log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float) -> float:
        """Seconds from Popen to every shard READY at the simulator."""
        deadline = self.started + timeout
        ready = 0
        while True:
            try:
                ready = len(self.sim.stats()["ready"])
            except OSError:
                pass
            now = time.monotonic()
            if ready >= self.n:
                return now - self.started
            if self.proc.poll() is not None:
                raise RuntimeError(f"the supervisor exited {self.proc.returncode} with {ready}/{self.n} shards ready")
            if now > deadline:
                raise TimeoutError(f"{ready}/{self.n} shards ready after {timeout:.0f} s")
            time.sleep(0.25)

    def stop(self, timeout: float) -> float | None:
        """SIGTERM the supervisor; the seconds to its exit (None: killed after ``timeout``)."""
        if self.proc is None or self.proc.poll() is not None:
            return None
        procs = tree(self.proc.pid)
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
            return round(time.monotonic() - t0, 2)
        except subprocess.TimeoutExpired:
            return None
        finally:
            self._kill(procs)

    def _kill(self, procs: list[psutil.Process]) -> None:
        for p in [*procs[::-1], *(tree(self.proc.pid)[::-1] if self.proc.poll() is None else [])]:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass

    def close(self) -> None:
        try:
            if self.proc is not None and self.proc.poll() is None:
                self._kill(tree(self.proc.pid))
        finally:
            if self._log is not None:
                self._log.close()
            self.sim.close()


def cold_start(n: int, args: argparse.Namespace, group: str) -> float:
    """Seconds to every shard READY when RabbitMQ has none of the group's queues yet (a first
    start: each child declares and binds a durable queue per shard)."""
    work = Path(tempfile.mkdtemp(prefix=f"bench-scale-cold-{n}-"))
    run = Run(n, args.amqp_url, group, args.per_process, work)
    try:
        run.start()
        startup = run.wait_ready(2 * floor_s(n) + 60)
        run.stop(timeout=60 + n / 50)
        return round(startup, 2)
    finally:
        run.close()
        shutil.rmtree(work, ignore_errors=True)


def measure(n: int, args: argparse.Namespace, group: str, base_rss: int | None) -> dict:
    work = Path(tempfile.mkdtemp(prefix=f"bench-scale-{n}-"))
    row: dict = {"shards": n, "floor_s": floor_s(n)}
    run = None
    group = f"{group}-{n}"
    exchange(args.amqp_url, group)
    try:
        row["cold_startup_s"] = cold_start(n, args, group)
        # The measured start: the queues exist (every start but the first), new sessions.
        run = Run(n, args.amqp_url, group, args.per_process, work)
        run.start()
        timeout = 2 * row["floor_s"] + 60
        startup = run.wait_ready(timeout)
        row["startup_s"] = round(startup, 2)
        row["ratio"] = round(startup / row["floor_s"], 3) if row["floor_s"] else None
        row["within_target"] = startup <= TARGET * row["floor_s"] if row["floor_s"] else None
        snap = run.sim.snapshot()
        row["min_bucket_gap_s"] = min_bucket_gap(snap["identifies"])
        row["identifies"] = sum(1 for e in snap["identifies"] if e["accepted"])
        row["violations"] = len(snap.get("violations", []))
        # The simulator's own lateness: gaps short only by its arrival window, and its widest pass.
        row["pacing_doubts"] = snap["counters"].get("pacing_doubts", 0)
        row["widest_pass_s"] = snap.get("widest_pass_s")
        accepted = sorted(e["time"] for e in snap["identifies"] if e["accepted"])
        if accepted:  # where the start-up time went: before the first IDENTIFY, between, after
            row["first_identify_s"] = round(accepted[0] - run.started_wall, 2)
            row["identify_span_s"] = round(accepted[-1] - accepted[0], 2)

        time.sleep(args.settle)
        procs = tree(run.proc.pid)
        sup, children = procs[0], procs[1:]
        child_rss = [rss(c) for c in children]
        row["children"] = len(children)
        row["child_rss_mb"] = [round(r / MB, 1) for r in child_rss]
        row["supervisor_rss_mb"] = round(rss(sup) / MB, 1)
        row["base_child_rss_mb"] = round(base_rss / MB, 1) if base_rss else None
        row["rss_per_shard_kb"] = round((sum(child_rss) - len(children) * base_rss) / n / 1024, 1) if base_rss else None

        c_sup, c_kids, t0 = cpu_seconds([sup]), cpu_seconds(children), time.monotonic()
        time.sleep(args.window)
        c_sup1, c_kids1, wall = cpu_seconds([sup]), cpu_seconds(children), time.monotonic() - t0
        row["supervisor_cpu_pct"] = round(100 * (c_sup1 - c_sup) / wall, 2)
        row["children_cpu_pct"] = round(100 * (c_kids1 - c_kids) / wall, 2)

        scrapes = [timed(scrape, run.metrics_port) for _ in range(5)]
        body = scrapes[-1][1]
        row["metrics_ms_median"] = round(1000 * statistics.median(t for t, _ in scrapes), 1)
        row["metrics_ms_max"] = round(1000 * max(t for t, _ in scrapes), 1)
        row["metrics_bytes"] = len(body)
        row["metrics_series"] = sum(1 for line in body.decode().splitlines() if line and not line.startswith("#"))

        clis = [timed(status_cli, run.state_dir) for _ in range(3)]
        row["status_cli_ms_median"] = round(1000 * statistics.median(t for t, _ in clis), 1)
        reqs = [timed(request, run.state_dir, "status", 60.0) for _ in range(5)]
        row["status_request_ms_median"] = round(1000 * statistics.median(t for t, _ in reqs), 1)
        status = reqs[-1][1]
        per_group = Counter(s["group"] for s in status["shards"])
        row["per_process"] = max(per_group.values())
        row["groups"] = len(status["groups"])
        row["status_ready"] = sum(1 for s in status["shards"] if s["state"] == "ready")

        row["stop_s"] = run.stop(timeout=60 + n / 50)
    except Exception as exc:  # noqa: BLE001 - a failed size is recorded and the run goes on
        row["error"] = f"{type(exc).__name__}: {exc}"
        row["logs"] = str(work)
    finally:
        if run is not None:
            run.close()
        try:
            drop_group(args.amqp_url, group, n)
        except Exception as exc:  # noqa: BLE001 - reported, the run goes on
            row["cleanup_error"] = str(exc)
    if "error" not in row and not args.keep_logs:
        shutil.rmtree(work, ignore_errors=True)
    elif "error" not in row:
        row["logs"] = str(work)
    return row


def measure_base(args: argparse.Namespace, group: str) -> dict:
    """The idle RSS of a child running one shard (and of its supervisor)."""
    work = Path(tempfile.mkdtemp(prefix="bench-scale-1-"))
    run = None
    try:
        run = Run(1, args.amqp_url, group, None, work)
        run.start()
        run.wait_ready(60)
        time.sleep(args.settle)
        procs = tree(run.proc.pid)
        if len(procs) != 2:
            raise RuntimeError(f"expected the supervisor and one child, found {len(procs)} processes")
        base = {"child_rss": sum(rss(c) for c in procs[1:]), "supervisor_rss": rss(procs[0]), "children": len(procs) - 1}
        base.update(child_rss_mb=round(base["child_rss"] / MB, 1), supervisor_rss_mb=round(base["supervisor_rss"] / MB, 1))
        run.stop(30)
        shutil.rmtree(work, ignore_errors=True)
        return base
    except Exception as exc:  # noqa: BLE001
        return {"error": f"{type(exc).__name__}: {exc}", "logs": str(work)}
    finally:
        if run is not None:
            run.close()


def table(rows: list[dict]) -> str:
    def f(v, fmt="{}"):
        return "-" if v is None else fmt.format(v)

    head = ("| shards | procs x shards | start-up s | floor s | ratio | first start s | min bucket gap s | RSS/shard KB "
            "| child base MB | supervisor MB | supervisor CPU % | children CPU % | /metrics ms (med/max) "
            "| series | status CLI ms | status request ms | stop s |")  # fmt: skip
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['shards']} | error: {r['error']} |" + " |" * 15)
            continue
        ratio = f(r["ratio"], "{:.2f}") + (" ✓" if r["within_target"] else " ✗" if r["within_target"] is False else "")
        lines.append(
            f"| {r['shards']} | {r['groups']} x {r['per_process']} | {r['startup_s']:.1f} | {r['floor_s']:.0f} | {ratio} | {f(r.get('cold_startup_s'), '{:.1f}')} "
            f"| {f(r['min_bucket_gap_s'], '{:.2f}')} | {f(r['rss_per_shard_kb'], '{:.0f}')} | {f(r['base_child_rss_mb'])} "
            f"| {r['supervisor_rss_mb']} | {r['supervisor_cpu_pct']:.1f} | {r['children_cpu_pct']:.1f} "
            f"| {r['metrics_ms_median']:.0f} / {r['metrics_ms_max']:.0f} | {r['metrics_series']} "
            f"| {r['status_cli_ms_median']:.0f} | {r['status_request_ms_median']:.1f} | {f(r['stop_s'])} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("bench: matplotlib not installed (pip install -e '.[bench]'): no plot")
        return
    ok = sorted((r for r in rows if "error" not in r), key=lambda r: r["shards"])
    if not ok:
        return
    xs = [r["shards"] for r in ok]

    def col(key):
        return [r.get(key) if r.get(key) is not None else float("nan") for r in ok]

    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    ax = axes[0][0]
    ax.plot(xs, col("startup_s"), "o-", label="start-up (all READY)")
    ax.plot(xs, col("cold_startup_s"), "s--", label="first start (queues created)")
    ax.plot(xs, col("floor_s"), "k--", label="identify floor")
    ax.plot(xs, [TARGET * v for v in col("floor_s")], ":", color="tab:red", label=f"{TARGET}x floor")
    ax.set(title="start-up time", ylabel="s")
    ax.legend()
    ax = axes[0][1]
    ax.plot(xs, col("rss_per_shard_kb"), "o-", color="tab:blue", label="RSS per shard (KB)")
    ax.set(title="memory", ylabel="KB per shard")
    twin = ax.twinx()
    twin.plot(xs, col("supervisor_rss_mb"), "s-", color="tab:orange", label="supervisor RSS (MB)")
    twin.set_ylabel("supervisor MB")
    handles = ax.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
    ax.legend(handles, [h.get_label() for h in handles], loc="upper left")
    ax = axes[1][0]
    ax.plot(xs, col("metrics_ms_median"), "o-", label="/metrics (median of 5)")
    ax.plot(xs, col("metrics_ms_max"), "o:", label="/metrics (max of 5)")
    ax.plot(xs, col("status_cli_ms_median"), "s-", label="status --json CLI (median of 3)")
    ax.plot(xs, col("status_request_ms_median"), "^-", label="status control request (median of 5)")
    ax.set(title="latency", ylabel="ms (log)", yscale="log")
    ax.legend()
    ax = axes[1][1]
    ax.plot(xs, col("supervisor_cpu_pct"), "o-", label="supervisor")
    ax.plot(xs, col("children_cpu_pct"), "s:", label="children (sum)")
    ax.set(title="idle CPU (% of one core)", ylabel="%")
    ax.legend()
    for ax in axes.flat:
        ax.set_xlabel("shards")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"bench: plot written to {path}")


def _sigterm(*_: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--amqp-url", default=os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F"))
    parser.add_argument("--sizes", type=int, nargs="+", default=SIZES, help="shard counts (default: %(default)s)")
    parser.add_argument("--per-process", type=int, default=None, help="--shards-per-process (default: the supervisor's)")
    parser.add_argument("--settle", type=float, default=10.0, help="idle seconds after all READY before measuring")
    parser.add_argument("--window", type=float, default=10.0, help="idle CPU window in seconds")
    parser.add_argument("--out", type=Path, default=OUT, help="where scale.json and scale.png go")
    parser.add_argument("--keep-logs", action="store_true", help="keep each size's logs (their folder is in the results)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _sigterm)
    group = f"bench-scale-{os.getpid()}"
    exchange(args.amqp_url, group)
    rows: list[dict] = []
    base: dict = {}
    interrupted = False
    try:
        base = measure_base(args, group)
        print(f"bench: base (1 shard, 1 child): {json.dumps({k: v for k, v in base.items() if not k.endswith('rss')})}", flush=True)
        for n in args.sizes:
            row = measure(n, args, group, base.get("child_rss"))
            rows.append(row)
            print(f"bench: {json.dumps(row)}", flush=True)
    except KeyboardInterrupt:
        interrupted = True
        print("bench: interrupted; cleaned up", file=sys.stderr)
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        try:
            drop_group(args.amqp_url, group, 1)  # the base run's
        except Exception:  # noqa: BLE001
            pass
    machine = {
        "cpus": os.cpu_count(),
        "cpu_model": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "max_concurrency": MAX_CONCURRENCY,
        "settle_s": args.settle,
        "window_s": args.window,
    }
    base_out = {k: v for k, v in base.items() if not k.endswith("rss")}
    if interrupted and not rows:
        return 130  # nothing measured: leave earlier results alone
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scale.json").write_text(json.dumps({"machine": machine, "base": base_out, "runs": rows}, indent=1) + "\n")
    print(f"bench: results written to {args.out / 'scale.json'}")
    plot(rows, args.out / "scale.png")
    print()
    print(table(rows))
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
