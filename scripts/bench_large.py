"""Benchmark: large dispatches (a GUILD_CREATE of several MB) must not block the worker's loop.

A real ``spectacles-supervisor start`` (one shard, its own process) is fed 5 MB dispatches by a
simulator in this process (``send_raw``, zlib-stream), one after the other, while heartbeats run
every second. The figure is the worst heartbeat delay: the largest gap between two heartbeats
the simulator received, minus the interval. Also: RSS of the worker under that load, and that
every big body reached RabbitMQ byte for byte.

    .venv/bin/python scripts/bench_large.py                 # 40 dispatches of 5 MB, 4 a second
    .venv/bin/python scripts/bench_large.py --mb 10 --count 10
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pika
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from supervisor.simulator import SimulatorThread  # noqa: E402

TOKEN = "bench-token-0123456789abcdef"
GROUP = "bench-large"
EVENT = "GUILD_CREATE_BIG"
INTERVAL_MS = 1000


def big_d(megabytes: float, n: int) -> bytes:
    member = '{"user":{"id":"%d","username":"m\\u00e9mber %d","avatar":null},"roles":["1","2"],"joined_at":"2020-01-01T00:00:00.000000+00:00","deaf":false,"mute":false,"x":2.50}'
    count = int(megabytes * 1024 * 1024 / len(member))
    members = ",".join(member % (10**17 + i, i) for i in range(count))
    return ('{"id":"%d","name":"big","members":[%s]}' % (n, members)).encode()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=5.0)
    parser.add_argument("--count", type=int, default=40)
    parser.add_argument("--every", type=float, default=0.25, help="seconds between two big dispatches")
    parser.add_argument("--amqp-url", default=os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F"))
    args = parser.parse_args()

    connection = pika.BlockingConnection(pika.URLParameters(args.amqp_url))
    channel = connection.channel()
    channel.exchange_declare(GROUP, "direct", durable=True)
    queue = f"{GROUP}:bench"
    channel.queue_declare(queue, durable=True)
    channel.queue_bind(queue, GROUP, EVENT)
    channel.queue_purge(queue)
    bodies = [big_d(args.mb, i) for i in range(args.count)]
    with SimulatorThread(token=TOKEN, shard_count=1, heartbeat_interval_ms=INTERVAL_MS) as sim, tempfile.TemporaryDirectory() as state:
        env = dict(os.environ, DISCORD_TOKEN=TOKEN, AMQP_URL=args.amqp_url)
        argv = [sys.executable, "-m", "supervisor", "start", "--api-url", sim.api_url, "--group", GROUP,
                "--state-dir", state, "--log-level", "WARNING"]  # fmt: skip
        proc = subprocess.Popen(argv, cwd=ROOT, env=env)
        try:
            sim.wait_until(lambda s: 0 in s["ready"], timeout=60)
            time.sleep(3 * INTERVAL_MS / 1000)
            rss = 0
            started = time.monotonic()
            for i, d in enumerate(bodies):
                frame = b'{"t":"%s","s":%d,"op":0,"d":%s}' % (EVENT.encode(), 10_000 + i, d)
                sim.call("send_raw", 0, frame, True)
                time.sleep(args.every)
                for p in [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]:
                    try:
                        rss = max(rss, p.memory_info().rss)
                    except psutil.NoSuchProcess:
                        pass
            deadline = time.monotonic() + 120
            while channel.queue_declare(queue, durable=True, passive=True).method.message_count < args.count:
                if time.monotonic() > deadline:
                    raise SystemExit("not every big dispatch arrived")
                time.sleep(0.2)
            elapsed = time.monotonic() - started
            time.sleep(2 * INTERVAL_MS / 1000)
            beats = sorted(p["time"] for p in sim.snapshot()["sent"] if p["op"] == 1)
        finally:
            proc.terminate()
            proc.wait(30)
    got = []
    while (frame := channel.basic_get(queue, auto_ack=True))[0] is not None:
        got.append(frame[2])
    channel.queue_delete(queue)
    connection.close()
    gaps = [b - a for a, b in zip(beats, beats[1:])]
    result = {
        "dispatch_mb": args.mb,
        "dispatches": args.count,
        "seconds": round(elapsed, 1),
        "worst_heartbeat_delay_ms": round((max(gaps) - INTERVAL_MS / 1000) * 1000, 1),
        "heartbeats": len(beats),
        "rss_mb_peak": round(rss / 2**20, 1),
        "byte_identical": sorted(got) == sorted(bodies),
    }
    print(json.dumps(result))
    return 0 if result["byte_identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
