"""A publish the broker can never take (issue 11, defect 3), against the real RabbitMQ.

A message over the broker's ``max_message_size`` makes RabbitMQ close the channel. Republished
first on every reconnect, it used to cost hundreds of reconnects a second and block everything
behind it. Now it is refused once (counted, logged), the broker's limit is learnt from its
error, and the next oversized message is refused before it is published.
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import pytest

from shard_worker import spectacles
from shard_worker.amqp.broker import AmqpBridge
from tests import rabbitmq_admin
from tests.tcp_proxy import TcpProxy

#: Changes the shared RabbitMQ node: runs alone, before the parallel part of the suite.
pytestmark = pytest.mark.exclusive

LIMIT = 64 * 1024


def test_a_message_over_the_broker_limit_is_refused_once_and_the_rest_goes(amqp_url, rabbit, group, caplog):
    rabbit.track(spectacles.shard_queue(group, 0), spectacles.send_queue(group))
    queue = spectacles.queue_name(group, "all", "refused")
    rabbit.bind(group, queue, "MESSAGE_CREATE")
    parts = urlsplit(amqp_url)
    with rabbitmq_admin.max_message_size(LIMIT, amqp_url), TcpProxy(parts.hostname, parts.port or 5672) as proxy:
        proxied = f"amqp://guest:guest@127.0.0.1:{proxy.port}/%2F"

        async def scenario() -> tuple[AmqpBridge, int, int]:
            bridge = AmqpBridge(proxied, group, [0], 1, lambda *a: None)
            run = asyncio.create_task(bridge.run())
            await asyncio.wait_for(bridge.connected.wait(), 30)
            for seq in range(1, 101):
                body = b'"' + b"x" * (LIMIT + 10) + b'"' if seq == 51 else b'{"n":%d}' % seq
                bridge.publish_event(0, "s", "MESSAGE_CREATE", seq, body)
            flushed = await bridge.flush(60)
            assert flushed, f"stuck with {bridge.buffered} unconfirmed after {proxy.connections} connections"
            first = proxy.connections
            # The limit is known now: the next one never reaches the broker.
            bridge.publish_event(0, "s", "MESSAGE_CREATE", 101, b"y" * (LIMIT + 1))
            bridge.publish_event(0, "s", "MESSAGE_CREATE", 102, b'{"n":102}')
            assert await bridge.flush(30)
            after = proxy.connections
            await bridge.stop()
            run.cancel()
            await asyncio.gather(run, return_exceptions=True)
            return bridge, first, after

        bridge, first, after = asyncio.run(scenario())
    assert bridge.stats["refused_too_large"] == 2 and bridge.ledger.max_message_size == LIMIT
    assert first <= 3, f"{first} connections for one oversized message"
    assert after == first  # refused before publishing: no channel error, no reconnect
    assert bridge.first_unconfirmed_seq(0, "s") is None  # the seq moved past both
    got = rabbit.get_all(queue, expect=100, timeout=20)
    ids = [props.message_id for _, props, _ in got]
    expected = {spectacles.message_id(0, "s", seq) for seq in range(1, 103) if seq not in (51, 101)}
    assert set(ids) == expected  # everything behind it went, nothing oversized did
    assert len(ids) - len(expected) <= 50  # republished at most once after the channel closed
    assert any("over the broker's 65536" in r.getMessage() for r in caplog.records)
