"""``amqps://`` for real: a worker publishes through a TLS listener that requires a client
certificate, and a missing certificate or a CA that did not sign the server's fails clearly.

The listener is :class:`tests.tls_proxy.TlsProxy` in front of the machine's RabbitMQ, with
certificates made for the test (``tests.tls_certs``): the TLS a RabbitMQ node with
``listeners.ssl`` and ``ssl_options.fail_if_no_peer_cert = true`` speaks.
"""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

import pytest

from shard_worker import spectacles
from supervisor.simulator import SimulatorThread
from supervisor.simulator.payloads import DISPATCH_TYPES
from tests.helpers import TOKEN, WorkerThread, wait_for, worker_config
from tests.tls_certs import make_tls_files
from tests.tls_proxy import TlsProxy


@pytest.fixture
def tls(tmp_path):
    return make_tls_files(tmp_path / "tls")


@pytest.fixture
def listener(amqp_url, tls):
    parts = urlsplit(amqp_url)
    with TlsProxy(parts.hostname, parts.port or 5672, tls.server_context(require_client_cert=True)) as proxy:
        yield proxy


def test_events_are_published_through_tls_with_a_client_certificate(listener, tls, rabbit, group):
    total = 1000
    queue = spectacles.queue_name(group, "all", "tls")
    for event in DISPATCH_TYPES:
        rabbit.bind(group, queue, event)
    rabbit.track(spectacles.shard_queue(group, 0), spectacles.send_queue(group))
    with SimulatorThread(token=TOKEN, shard_count=1, heartbeat_interval_ms=2000, events_per_shard=total, rate=200) as sim:
        config = worker_config(
            sim, f"amqps://guest:guest@localhost:{listener.port}/%2F", group, [0],
            amqp_ca_file=str(tls.ca_file), amqp_cert_file=str(tls.client_cert_file),
            amqp_key_file=str(tls.client_key_file),
        )  # fmt: skip
        with WorkerThread(config) as worker:
            bridge = worker.worker.bridge
            final = sim.wait_until(lambda s: len(s["dispatched"].get(0, [])) >= total + 3, timeout=60)
            wait_for(lambda: bridge.buffered == 0, 30, what="every message confirmed")
            # outbound too: a packet for the shard comes back through the same TLS connection
            rabbit.publish(group, "0", b'{"op": 3, "d": {"since": 7, "activities": [], "status": "idle", "afk": true}}')
            sim.wait_until(lambda s: any(p["op"] == 3 and p["d"]["since"] == 7 for p in s["sent"]), timeout=20)
    expected = {spectacles.message_id(0, sid, seq) for sid, seq, _ in final["dispatched"][0]}
    ids = [props.message_id for _, props, _ in rabbit.get_all(queue, expect=len(expected), timeout=30)]
    assert expected <= set(ids) and len(expected) == total + 3
    assert len(ids) == len(set(ids)), "no reconnect, so no copy"
    assert listener.connections == 1 and listener.tls_failures == [] and listener.stream_errors == []
    assert listener.peer_names == ["spectacles-gateway"]  # the listener saw our client certificate


@pytest.mark.parametrize(
    ("case", "hint", "server_says"),
    [
        ("no client certificate", "the server wants a client certificate: pass --amqp-cert-file and --amqp-key-file",
         "PEER_DID_NOT_RETURN_A_CERTIFICATE"),
        ("wrong CA", "the server's certificate is not signed by a trusted CA (--amqp-ca-file)", "UNKNOWN_CA"),
    ],
)  # fmt: skip
def test_a_tls_failure_is_a_clear_warning_and_nothing_starts(listener, tls, group, caplog, case, hint, server_says):
    caplog.set_level(logging.WARNING, logger="shard_worker.amqp.broker")
    if case == "no client certificate":
        files = {"amqp_ca_file": str(tls.ca_file)}
    else:
        files = {"amqp_ca_file": str(tls.other_ca_file), "amqp_cert_file": str(tls.client_cert_file),
                 "amqp_key_file": str(tls.client_key_file)}  # fmt: skip
    with SimulatorThread(token=TOKEN, shard_count=1, heartbeat_interval_ms=2000) as sim:
        config = worker_config(sim, f"amqps://guest:guest@localhost:{listener.port}/%2F", group, [0], **files)
        with WorkerThread(config) as worker:
            wait_for(lambda: len(_warnings(caplog)) >= 2, 30, what="two attempts")
            assert not worker.worker.bridge.connected.is_set()
            # no gateway connection, so no IDENTIFY spent while RabbitMQ cannot be reached
            assert sim.snapshot()["identifies"] == []
    warnings = _warnings(caplog)
    assert all(hint in line for line in warnings), warnings
    assert all(line.startswith(f"RabbitMQ amqps://guest:***@localhost:{listener.port}/%2F unavailable (") for line in warnings)
    assert all("guest:guest" not in r.getMessage() for r in caplog.records)
    assert any(server_says in failure for failure in listener.tls_failures), listener.tls_failures
    assert listener.connections == 0  # nothing reached RabbitMQ


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "shard_worker.amqp.broker" and r.levelno == logging.WARNING]
