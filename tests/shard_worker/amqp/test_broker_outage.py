"""A RabbitMQ outage in the middle of a stream: bounded memory, a resumable stall, no gap."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

from shard_worker import spectacles
from supervisor.simulator import SimulatorThread
from supervisor.simulator.payloads import DISPATCH_TYPES
from tests.helpers import TOKEN, WorkerThread, wait_for, worker_config
from tests.tcp_proxy import TcpProxy

EVENTS = DISPATCH_TYPES
OUTAGE_S = 20.0
BUFFER_EVENTS = 400
BUFFER_BYTES = 2 * 1024 * 1024
FIGURES = Path(__file__).resolve().parents[3] / "docs" / "reliability" / "outage.json"


def test_broker_outage_buffers_within_bounds_stalls_resumably_and_loses_nothing(amqp_url, rabbit, group):
    parts = urlsplit(amqp_url)
    total = 6000
    with TcpProxy(parts.hostname, parts.port or 5672) as proxy, SimulatorThread(
        token=TOKEN, shard_count=1, heartbeat_interval_ms=2000, events_per_shard=total, rate=150
    ) as sim:
        queue = spectacles.queue_name(group, "all", "outage")
        for event in EVENTS:
            rabbit.bind(group, queue, event)
        proxied = f"amqp://guest:guest@127.0.0.1:{proxy.port}/%2F"
        config = worker_config(
            sim, proxied, group, [0], buffer_events=BUFFER_EVENTS, buffer_bytes=BUFFER_BYTES, stall_timeout=5.0
        )
        with WorkerThread(config) as worker:
            bridge = lambda: worker.worker.bridge  # noqa: E731
            sim.wait_until(lambda s: len(s["dispatched"].get(0, [])) > 500, timeout=30)
            session = sim.snapshot()["shards"][0]["session_id"]

            peak = {"events": 0, "bytes": 0}
            sampling = threading.Event()

            def sample() -> None:
                while not sampling.is_set():
                    b = bridge()
                    peak["events"] = max(peak["events"], b.buffered)
                    peak["bytes"] = max(peak["bytes"], b.buffered_bytes)
                    time.sleep(0.02)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            cut_at = time.monotonic()
            proxy.cut()
            time.sleep(OUTAGE_S)
            outage_s = time.monotonic() - cut_at
            during = sim.snapshot()
            proxy.restore()

            # the shard stalled, closed resumably and resumed (no identify); the stream went on
            final = sim.wait_until(lambda s: len(s["dispatched"][0]) >= total + 3 and 0 in s["ready"], timeout=120)
            wait_for(lambda: bridge().buffered == 0, 60, what="every message confirmed")
            sampling.set()
            sampler.join()
            stats = bridge().counters()
        assert [i["accepted"] for i in final["identifies"]] == [True]
        stall_closes = [c for c in during["connections"] if c["closed_by"] == "client" and c["close_code"] not in (1000, 1001)]
        assert stall_closes, "the stalled shard closed its connection resumably"
        assert any(r["result"] == "ok" and r["session_id"] == session for r in final["resumes"])

        # bounded: never more than the configured buffer (+1: the publish that filled it)
        assert peak["events"] <= BUFFER_EVENTS + 1
        assert peak["bytes"] <= BUFFER_BYTES + 16 * 1024
        assert peak["events"] >= BUFFER_EVENTS - 1, "the outage did fill the buffer"

        # no gap: every dispatch of the session is in RabbitMQ at least once
        got = rabbit.get_all(queue, expect=total + 3, timeout=60)
        ids = [props.message_id for _, props, _ in got]
        expected = {spectacles.message_id(0, sid, seq) for sid, seq, _ in final["dispatched"][0]}
        assert expected <= set(ids)
        figures = {
            "events": len(expected),
            "outage_s": round(outage_s, 1),
            "buffer_limit_events": BUFFER_EVENTS,
            "peak_buffer_events": peak["events"],
            "peak_buffer_bytes": peak["bytes"],
            "duplicates": len(ids) - len(set(ids)),
            "republished": stats.get("republished", 0),
            "resumes": len([r for r in final["resumes"] if r["result"] == "ok"]),
        }
        FIGURES.parent.mkdir(parents=True, exist_ok=True)
        FIGURES.write_text(json.dumps(figures, indent=1) + "\n")
