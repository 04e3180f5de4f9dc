"""The README demo: a simulated Discord, a real supervisor, a real RabbitMQ, and what flows.

Starts the gateway simulator (4 shards, a live event stream), declares Spectacles consumer queues
``<group>:demo:<EVENT>`` on the local RabbitMQ, runs ``spectacles-supervisor start`` as a real
process, prints what arrives, sends a packet back through ``SEND``, shows ``status``, then stops
everything gracefully. Run it with ``scripts/demo.sh`` (which also sets up the venv).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import pika

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from shard_worker import spectacles  # noqa: E402
from supervisor.simulator import SimulatorThread  # noqa: E402
from supervisor.simulator.payloads import DISPATCH_TYPES, guild_ids_for_shard  # noqa: E402

TOKEN = "demo-token-not-a-real-one-0123456789"
EVENTS = [t for t in DISPATCH_TYPES if t not in ("RESUMED", "GUILD_MEMBERS_CHUNK")]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--amqp-url", default=os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F"))
    parser.add_argument("--seconds", type=float, default=15.0, help="how long to watch the stream")
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--rate", type=float, default=5.0, help="events per second per shard")
    args = parser.parse_args()

    group = "gateway-demo"
    state_dir = Path(tempfile.mkdtemp(prefix="spectacles-demo-"))
    connection = pika.BlockingConnection(pika.URLParameters(args.amqp_url))
    channel = connection.channel()
    channel.exchange_declare(group, "direct", durable=True)
    queues = {}
    for event in EVENTS:
        queue = spectacles.queue_name(group, event, "demo")
        channel.queue_declare(queue, durable=True)
        channel.queue_bind(queue, group, event)
        channel.queue_purge(queue)
        queues[event] = queue

    with SimulatorThread(
        token=TOKEN, shard_count=args.shards, max_concurrency=2, heartbeat_interval_ms=5000, events_per_shard=-1, rate=args.rate
    ) as sim:
        print(f"demo: simulator on {sim.url}, RabbitMQ exchange {group!r}")
        env = dict(os.environ, DISCORD_TOKEN=TOKEN, AMQP_URL=args.amqp_url)
        argv = [sys.executable, "-m", "supervisor", "start", "--api-url", sim.api_url, "--group", group,
                "--shards-per-process", "2", "--state-dir", str(state_dir)]  # fmt: skip
        print("demo: $ DISCORD_TOKEN=... " + " ".join(["spectacles-supervisor", *argv[3:]]))
        supervisor = subprocess.Popen(argv, env=env)
        try:
            sim.wait_until(lambda s: s["ready"] == set(range(args.shards)), timeout=60)
            print(f"demo: all {args.shards} shards READY; watching the queues for {args.seconds:.0f} s")
            counts: Counter[str] = Counter()
            shown: set[str] = set()
            deadline = time.monotonic() + args.seconds
            next_report = time.monotonic() + 5
            while time.monotonic() < deadline:
                got_any = False
                for event, queue in queues.items():
                    method, props, body = channel.basic_get(queue, auto_ack=True)
                    if method is None:
                        continue
                    got_any = True
                    counts[event] += 1
                    if event not in shown:
                        shown.add(event)
                        d = json.loads(body)
                        print(f"  {event:<20} shard {props.headers['shard_id']}  id {props.message_id}  "
                              f"{len(body)} bytes  keys {sorted(d)[:6]}")  # fmt: skip
                if not got_any:
                    connection.sleep(0.05)
                if time.monotonic() > next_report:
                    next_report += 5
                    print("  so far: " + ", ".join(f"{e} {n}" for e, n in sorted(counts.items())))

            guild = guild_ids_for_shard(1, args.shards, 1)[0]
            presence = {"op": 3, "d": {"since": None, "activities": [], "status": "idle", "afk": False}}
            channel.basic_publish(group, spectacles.SEND_EVENT, json.dumps({"guild_id": str(guild), "packet": presence}))
            snap = sim.wait_until(lambda s: any(r["op"] == 3 for r in s["sent"]), timeout=15)
            sent = next(r for r in snap["sent"] if r["op"] == 3)
            print(f"demo: SEND for guild {guild} went out on shard {sent['shard']} as op 3 {sent['d']}")

            status = subprocess.run(
                [sys.executable, "-m", "supervisor", "status", "--state-dir", str(state_dir)],
                capture_output=True, text=True, timeout=15,
            )  # fmt: skip
            print("demo: $ spectacles-supervisor status\n" + status.stdout.rstrip())
        finally:
            supervisor.send_signal(signal.SIGTERM)
            code = supervisor.wait(20)
        stats = sim.stats()
        print(
            f"demo: supervisor exited {code}; simulator: {stats['dispatched']} dispatched, "
            f"{stats['identifies']} identifies, {stats['violations']} violations; "
            f"received here: {sum(counts.values())}"
        )
    for queue in queues.values():
        channel.queue_delete(queue)
    connection.close()
    return 0 if code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
