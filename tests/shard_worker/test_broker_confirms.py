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

from shard_worker import nack_policy
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


def test_a_nack_is_republished_after_a_delay_and_holds_the_seq(monkeypatch):
    monkeypatch.setattr(nack_policy, "FIRST_RETRY_DELAY_S", 0.05)

    async def scenario():
        bridge, channel = make_bridge()
        for seq in (1, 2, 3):
            bridge.publish_event(0, "s", "T", seq, f"{seq}".encode())
        bridge._on_confirm(ack(1))
        bridge._on_confirm(ack(2, nack=True))
        assert bridge.first_unconfirmed_seq(0, "s") == 2
        assert len(channel.published) == 3  # not at once: the broker said no
        await asyncio.sleep(0.2)
        assert channel.published[-1] == ("T", b"2")  # sent again, as tag 4
        bridge._on_confirm(ack(3))
        assert bridge.first_unconfirmed_seq(0, "s") == 2
        bridge._on_confirm(ack(4))
        return bridge

    bridge = asyncio.run(scenario())
    assert bridge.buffered == 0 and bridge.stats["nacked"] == 1 and bridge.stats["refused"] == 0
    assert bridge.first_unconfirmed_seq(0, "s") is None


def test_a_message_nacked_past_its_retries_is_refused_and_the_buffer_drains(monkeypatch):
    monkeypatch.setattr(nack_policy, "FIRST_RETRY_DELAY_S", 0.01)

    async def scenario():
        bridge, channel = make_bridge()
        bridge.publish_event(0, "s", "T", 1, b"1")
        bridge.publish_event(0, "s", "T", 2, b"2")
        bridge._on_confirm(ack(2))
        tag = 1
        for _ in range(nack_policy.MAX_NACK_RETRIES + 1):
            bridge._on_confirm(ack(tag, nack=True))
            await asyncio.sleep(0.2)
            tag = len(channel.published)
        return bridge, channel

    bridge, channel = asyncio.run(scenario())
    # published once, then MAX_NACK_RETRIES more times: never a storm
    assert [body for _, body in channel.published].count(b"1") == 1 + nack_policy.MAX_NACK_RETRIES
    assert bridge.stats["refused"] == 1 and bridge.stats["nacked"] == 1 + nack_policy.MAX_NACK_RETRIES
    assert bridge.buffered == 0 and bridge.buffered_bytes == 0 and bridge.confirmed == 1
    assert bridge.first_unconfirmed_seq(0, "s") is None  # the seq moved past it


def test_the_nack_policy_backs_off_then_refuses():
    assert [nack_policy.on_nack(n) for n in (1, 2, 3)] == [
        nack_policy.Retry(0.5), nack_policy.Retry(1.0), nack_policy.Retry(2.0)
    ]  # fmt: skip
    assert type(nack_policy.on_nack(4)) is nack_policy.Refuse


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
