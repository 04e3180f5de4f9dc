"""Publisher-confirm bookkeeping of the AMQP bridge, without a broker (fake channel and frames).

RabbitMQ may confirm one tag or every tag up to one (``multiple``), in any interleaving; the
bridge must settle exactly the confirmed messages, republish nacked ones, and report as resumable
only a seq whose every predecessor was confirmed.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pika
from hypothesis import given
from hypothesis import strategies as st

from shard_worker.broker import AmqpBridge


class FakeChannel:
    def __init__(self) -> None:
        self.published: list[tuple[str, bytes]] = []

    def publish(self, routing_key, body, props_prefix, message_id):
        self.published.append((routing_key, body))


def make_bridge() -> tuple[AmqpBridge, FakeChannel]:
    bridge = AmqpBridge("amqp://x", "g", [0, 1], 2, lambda *a: None, max_buffered=1000)
    channel = FakeChannel()
    bridge._pub = channel
    return bridge, channel


def ack(tag: int, multiple: bool = False, nack: bool = False):
    cls = pika.spec.Basic.Nack if nack else pika.spec.Basic.Ack
    return SimpleNamespace(method=cls(delivery_tag=tag, multiple=multiple))


def run(fn):
    async def main():
        return fn()

    return asyncio.run(main())


def test_multiple_ack_after_a_single_one_settles_both():
    def scenario():
        bridge, _ = make_bridge()
        for seq in (1, 2):
            bridge.publish_event(0, "s", "T", seq, b"{}")
        bridge._on_confirm(ack(2))  # out of order
        assert bridge.buffered == 2 and bridge.first_unconfirmed_seq(0, "s") == 1
        bridge._on_confirm(ack(1, multiple=True))
        return bridge

    bridge = run(scenario)
    assert bridge.buffered == 0 and bridge.confirmed == 2
    assert bridge.first_unconfirmed_seq(0, "s") is None


def test_nack_republishes_and_holds_the_seq():
    def scenario():
        bridge, channel = make_bridge()
        for seq in (1, 2, 3):
            bridge.publish_event(0, "s", "T", seq, f"{seq}".encode())
        bridge._on_confirm(ack(1))
        bridge._on_confirm(ack(2, nack=True))
        assert bridge.first_unconfirmed_seq(0, "s") == 2
        assert channel.published[-1] == ("T", b"2")  # sent again, as tag 4
        bridge._on_confirm(ack(3))
        assert bridge.first_unconfirmed_seq(0, "s") == 2
        bridge._on_confirm(ack(4))
        return bridge

    bridge = run(scenario)
    assert bridge.buffered == 0 and bridge.stats["nacked"] == 1
    assert bridge.first_unconfirmed_seq(0, "s") is None


@given(st.integers(1, 40), st.randoms(use_true_random=False), st.data())
def test_any_confirm_order_settles_everything_and_seq_never_overtakes(n, rnd, data):
    def scenario():
        bridge, _ = make_bridge()
        for seq in range(1, n + 1):
            bridge.publish_event(seq % 2, "s", "T", seq, b"{}")
        pending = list(range(1, n + 1))
        while pending:
            if data.draw(st.booleans()):
                tag = data.draw(st.sampled_from(pending))
                bridge._on_confirm(ack(tag, multiple=True))
                pending = [t for t in pending if t > tag]
            else:
                tag = rnd.choice(pending)
                bridge._on_confirm(ack(tag))
                pending.remove(tag)
            for shard in (0, 1):
                first = bridge.first_unconfirmed_seq(shard, "s")
                unconfirmed = [t for t in pending if t % 2 == shard]
                assert first == (min(unconfirmed) if unconfirmed else None)
        return bridge

    bridge = run(scenario)
    assert bridge.buffered == 0 and bridge.confirmed == n
