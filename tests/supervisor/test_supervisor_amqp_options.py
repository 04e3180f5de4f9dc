"""The AMQP options end to end: ``spectacles-supervisor start`` with several URLs (a dead node
first, a TLS node next), TLS files and ``--queue-type quorum`` reaches every child, and a queue of
the other type halts the supervisor with exit 2 and one clear line, never a restart loop."""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

from shard_worker import spectacles
from supervisor.simulator import SimulatorThread
from tests.helpers import TOKEN, wait_for
from tests.shard_worker.amqp.test_broker_quorum import queue_type
from tests.supervisor.supervisor_process import SupervisorProcess
from tests.tls_certs import make_tls_files
from tests.tls_proxy import TlsProxy

SHARDS = 2
EVENTS_PER_SHARD = 200


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_dead_node_then_a_tls_node_with_quorum_queues_carries_every_event(amqp_url, rabbit, group, tmp_path):
    tls = make_tls_files(tmp_path / "tls")
    parts = urlsplit(amqp_url)
    queue = spectacles.queue_name(group, "all", "e2e")
    rabbit.bind(group, queue, "MESSAGE_CREATE")
    own = [spectacles.shard_queue(group, s) for s in range(SHARDS)] + [spectacles.send_queue(group)]
    rabbit.track(*own)
    with TlsProxy(parts.hostname, parts.port or 5672, tls.server_context()) as node, SimulatorThread(
        token=TOKEN, shard_count=SHARDS, max_concurrency=SHARDS, heartbeat_interval_ms=2000,
        events_per_shard=EVENTS_PER_SHARD, rate=100,
    ) as sim:  # fmt: skip
        urls = f"amqp://guest:guest@127.0.0.1:{closed_port()}/%2F,amqps://guest:guest@localhost:{node.port}/%2F"
        sup = SupervisorProcess(
            sim, urls, group, tmp_path / "state", "--shards-per-process", "1", "--queue-type", "quorum",
            "--amqp-ca-file", str(tls.ca_file), "--amqp-cert-file", str(tls.client_cert_file),
            "--amqp-key-file", str(tls.client_key_file),
        )  # fmt: skip
        try:
            sim.wait_until(lambda s: s["ready"] == set(range(SHARDS)), timeout=60)
            final = sim.wait_until(
                lambda s: all(len([1 for *_, t in s["dispatched"].get(k, []) if t == "MESSAGE_CREATE"]) >= 1 for k in range(SHARDS))
                and sum(len(v) for v in s["dispatched"].values()) >= SHARDS * (EVENTS_PER_SHARD + 3),
                timeout=90,
            )
            expected = {
                spectacles.message_id(k, sid, seq)
                for k in range(SHARDS)
                for sid, seq, t in final["dispatched"][k]
                if t == "MESSAGE_CREATE"
            }
            ids: set[str] = set()
            wait_for(lambda: ids.update(p.message_id for _, p, _ in rabbit.get_all(queue)) or expected <= ids, 60,
                     what="every MESSAGE_CREATE in RabbitMQ")  # fmt: skip
            assert [queue_type(rabbit, q) for q in own] == ["quorum"] * 3
            assert node.connections == SHARDS and node.peer_names == ["spectacles-gateway"] * SHARDS
        finally:
            sup.stop()
        output = sup.log_path.read_text(errors="replace")
    assert "guest:guest" not in output and TOKEN not in output
    dead_lines = [line for line in output.splitlines() if "unavailable (ConnectionRefusedError" in line]
    assert len(dead_lines) == SHARDS, dead_lines  # one WARNING per child for the dead node, then TLS
    assert all("guest:***@127.0.0.1:" in line and "with amqps://guest:***@localhost:" in line for line in dead_lines)


def test_a_classic_queue_where_quorum_is_asked_halts_the_supervisor_with_exit_2(amqp_url, rabbit, group, tmp_path):
    existing = spectacles.shard_queue(group, 1)
    rabbit.track(*(spectacles.shard_queue(group, s) for s in range(SHARDS)), spectacles.send_queue(group))
    rabbit.channel.queue_declare(existing, durable=True)  # classic, as before this option
    with SimulatorThread(token=TOKEN, shard_count=SHARDS, max_concurrency=SHARDS, heartbeat_interval_ms=2000) as sim:
        sup = SupervisorProcess(sim, amqp_url, group, tmp_path / "state", "--shards-per-process", "1", "--queue-type", "quorum")
        try:
            assert sup.wait(60) == 2
        finally:
            sup.stop()
        output = sup.log_path.read_text(errors="replace")
    explained = [line for line in output.splitlines() if f"queue '{existing}' exists as a classic queue but --queue-type is quorum" in line]
    assert len(explained) == 1, output  # the child that owns the queue says it once
    assert "Delete the queue" in explained[0] and "--queue-type classic" in explained[0]
    assert "bad configuration (exit 2); stopping everything" in output
    assert "restarting" not in output.lower() and "unavailable" not in output
    assert queue_type(rabbit, existing) == "classic"
