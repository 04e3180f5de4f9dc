"""Benchmark: CPU per forwarded event for each variant of the project, side by side in one run.

Variants: the JSON codec (ujson / orjson), the transport compression (zlib / zstd), raw
passthrough on / off (``SPECTACLES_REENCODE=1`` decodes and re-encodes ``d`` as before) and the
loop (asyncio / uvloop). Each is ``scripts/bench.py --project-only`` at 1 shard, repeated and
interleaved (A B C ... A B C ...) so that the machine's drift hits all alike; medians reported.

    .venv/bin/python scripts/bench_variants.py            # 3 rounds, about 10 minutes
    .venv/bin/python scripts/bench_variants.py --rounds 1 --window 8

Writes ``docs/bench/variants.json`` and ``docs/bench/variants.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "bench"

#: name -> (bench.py arguments, environment)
VARIANTS: dict[str, tuple[list[str], dict[str, str]]] = {
    "ujson zlib re-encode": (["--json", "ujson"], {"SPECTACLES_REENCODE": "1", "SPECTACLES_LOOP": "asyncio"}),
    "ujson zlib passthrough": (["--json", "ujson"], {"SPECTACLES_LOOP": "asyncio"}),
    "ujson zlib passthrough python-gc": (["--json", "ujson"], {"SPECTACLES_LOOP": "asyncio", "SPECTACLES_GC": "default"}),
    "ujson zstd passthrough": (["--json", "ujson", "--compress", "zstd-stream"], {"SPECTACLES_LOOP": "asyncio"}),
    "orjson zlib re-encode": (["--json", "orjson"], {"SPECTACLES_REENCODE": "1", "SPECTACLES_LOOP": "asyncio"}),
    "orjson zlib passthrough": (["--json", "orjson"], {"SPECTACLES_LOOP": "asyncio"}),
    "orjson zstd passthrough": (["--json", "orjson", "--compress", "zstd-stream"], {"SPECTACLES_LOOP": "asyncio"}),
    "orjson zlib passthrough uvloop": (["--json", "orjson"], {"SPECTACLES_LOOP": "uvloop"}),
}
_LINE = re.compile(r"([0-9.]+) events/s\s+([0-9.]+) µs/event")


def run(args: list[str], env: dict[str, str], window: float, shards: int) -> tuple[float, float]:
    argv = [sys.executable, str(ROOT / "scripts" / "bench.py"), "--project-only", "--shards", str(shards),
            "--repeat", "1", "--window", str(window), "--tag", "variant-scratch", *args]  # fmt: skip
    for attempt in (1, 2):  # a noisy machine: one retry, then the error with its output
        done = subprocess.run(argv, cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True)
        match = _LINE.search(done.stdout)
        if done.returncode == 0 and match is not None:
            return float(match.group(1)), float(match.group(2))
        print(f"run failed (exit {done.returncode}, attempt {attempt}): {done.stderr[-600:]}", file=sys.stderr)
    raise RuntimeError(f"bench.py failed twice: {argv}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--window", type=float, default=10.0)
    parser.add_argument("--shards", type=int, default=1)
    parser.add_argument("--only", nargs="*", help="variant names to run (default: all)")
    opts = parser.parse_args()
    names = opts.only or list(VARIANTS)
    samples: dict[str, list[tuple[float, float]]] = {n: [] for n in names}
    for i in range(opts.rounds):
        for name in names:
            args, env = VARIANTS[name]
            rate, cpu = run(args, env, opts.window, opts.shards)
            samples[name].append((rate, cpu))
            print(f"round {i + 1}: {name:<32} {rate:>8.0f} events/s {cpu:>6.1f} µs/event", flush=True)
    summary = {
        n: {"events_per_s": statistics.median(r for r, _ in s), "cpu_us_per_event": statistics.median(c for _, c in s),
            "samples": s}
        for n, s in samples.items()
    }  # fmt: skip
    (OUT / "variant-scratch.json").unlink(missing_ok=True)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "variants.json").write_text(json.dumps({"shards": opts.shards, "variants": summary}, indent=1) + "\n")
    for n, s in summary.items():
        print(f"median: {n:<32} {s['events_per_s']:>8.0f} events/s {s['cpu_us_per_event']:>6.1f} µs/event")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return 0
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(summary) + 1.5))
    labels = list(summary)
    ax.barh(labels, [summary[n]["cpu_us_per_event"] for n in labels], color="tab:blue")
    ax.invert_yaxis()
    ax.set_xlabel("CPU µs per forwarded event (median; lower is better)")
    ax.set_title(f"spectacles-supervisor variants, {opts.shards} shard(s), 2-core machine")
    fig.tight_layout()
    fig.savefig(OUT / "variants.png", dpi=110)
    return 0


if __name__ == "__main__":
    sys.exit(main())
