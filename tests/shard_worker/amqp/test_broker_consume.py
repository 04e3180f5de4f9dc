"""Consuming outbound queues without a broker: every message is acked, rejected or re-routed."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

from shard_worker import outbound
from shard_worker.amqp.broker import AmqpBridge
from shard_worker.amqp.hand_over import SEND_HAND_OVER_MAX, Route, route


class FakeChannel:
    is_open = True

    def __init__(self) -> None:
        self.rejected: list[tuple[int, bool]] = []
        self.acked: list[int] = []
        self.nacked: list[tuple[int, bool]] = []

    def basic_nack(self, tag, requeue=True):
        self.nacked.append((tag, requeue))

    def basic_reject(self, tag, requeue=True):
        self.rejected.append((tag, requeue))

    def basic_ack(self, tag):
        self.acked.append(tag)


def run(fn):
    async def main():
        return fn()

    return asyncio.run(main())


def make(monkeypatch=None):
    sent = []
    bridge = AmqpBridge("amqp://x", "g", [0], 2, lambda shard, packet, ack: sent.append((shard, packet, ack)))
    channel = FakeChannel()
    bridge._sub = channel
    bridge._queue_of_consumer = {"c-shard": 0, "c-send": None}
    return bridge, channel, sent


def deliver(bridge, channel, consumer, tag, body, message_id=None):
    method = SimpleNamespace(consumer_tag=consumer, delivery_tag=tag)
    bridge._on_message(channel, method, SimpleNamespace(message_id=message_id), body)


def test_a_crash_in_validation_rejects_the_message_and_counts_it(monkeypatch):
    def boom(*args):
        raise RuntimeError("unexpected")

    def scenario():
        bridge, channel, sent = make()
        monkeypatch.setattr(outbound, "parse_shard_packet_routed", boom)
        deliver(bridge, channel, "c-shard", 7, b'{"op":3,"d":{}}')
        return bridge, channel, sent

    bridge, channel, sent = run(scenario)
    assert channel.rejected == [(7, False)] and sent == []
    assert bridge.rejected == {"internal_error": 1}


def test_valid_packet_is_acked_only_once_sent():
    def scenario():
        bridge, channel, sent = make()
        deliver(bridge, channel, "c-shard", 1, json.dumps({"op": 3, "d": {"status": "idle"}}).encode())
        assert channel.acked == []
        [(shard, packet, ack)] = sent
        assert shard == 0 and packet.op == 3
        ack()
        return channel

    assert run(scenario).acked == [1]


def test_send_for_another_process_is_republished_and_acked_on_confirm():
    def scenario():
        bridge, channel, sent = make()
        published = []
        bridge._pub = SimpleNamespace(publish=lambda rk, body, props, mid: published.append((rk, body, mid)))
        bridge.ledger.open(bridge._send)
        guild = next(g for g in range(1 << 22, 1 << 40, 1 << 22) if (g >> 22) % 2 == 1)
        deliver(bridge, channel, "c-send", 5, json.dumps({"guild_id": str(guild), "packet": {"op": 8, "d": {}}}).encode(), "m-1")
        assert sent == [] and channel.acked == []
        [(rk, body, mid)] = published
        assert rk == "1" and json.loads(body) == {"op": 8, "d": {}} and mid == "m-1"
        bridge._on_confirm(SimpleNamespace(method=__import__("pika").spec.Basic.Ack(delivery_tag=1, multiple=False)))
        return channel

    assert run(scenario).acked == [5]


def test_deliveries_of_a_replaced_channel_are_given_back_and_their_packets_not_sent():
    Nackable = FakeChannel

    def scenario():
        bridge, channel, sent = make()
        deliver(bridge, channel, "c-shard", 1, json.dumps({"op": 3, "d": {}}).encode())
        [(_, _, ack)] = sent
        old = Nackable()
        deliver(bridge, old, "c-shard", 2, json.dumps({"op": 3, "d": {}}).encode())  # not our channel
        deliver(bridge, channel, "unknown-tag", 3, json.dumps({"op": 3, "d": {}}).encode())
        bridge._sub = Nackable()  # the consumer channel was replaced (broker reconnect)
        assert ack.stale
        ack()  # must not ack on any channel
        return channel, old, sent

    channel, old, sent = run(scenario)
    assert old.nacked == [(2, True)] and len(sent) == 1
    assert channel.nacked == [(3, True)]  # an unknown consumer tag is never parsed as SEND
    assert channel.acked == [] and channel.rejected == []


class ConsumingChannel(FakeChannel):
    def __init__(self) -> None:
        super().__init__()
        self.cancelled: list[str] = []
        self.consumed: list[str] = []

    def basic_cancel(self, tag, callback=None):
        # pika cancels with nowait (and keeps the tag for the channel's life) without a callback
        assert callback is not None, "basic_cancel without a callback leaks the tag in pika"
        self.cancelled.append(tag)

    def basic_consume(self, queue, callback):
        self.consumed.append(queue)
        return f"c-{queue}"


def make_held(ready: bool, waiting: int = 0):
    """A bridge whose shard 0 is (not) READY and holds ``waiting`` packets."""
    sent = []
    bridge = AmqpBridge(
        "amqp://x", "g", [0], 2, lambda shard, packet, ack: sent.append((shard, packet, ack)),
        shard_status=lambda shard: (ready, waiting),
    )  # fmt: skip
    channel = ConsumingChannel()
    bridge._sub = channel
    bridge._consuming = {0} if ready else set()
    bridge._queue_of_consumer = {"c-shard": 0, "c-send": None}
    published = []
    bridge._pub = SimpleNamespace(publish=lambda rk, body, props, mid: published.append((rk, body, mid)))
    bridge.ledger.open(bridge._send)
    return bridge, channel, sent, published


def send_for_shard_0() -> bytes:
    return json.dumps({"guild_id": str(2 << 22), "packet": {"op": 8, "d": {}}}).encode()  # shard 0 of 2


def test_the_hand_over_table():
    assert route(False, True, 500) is Route.HAND_OVER  # its own queue's prefetch bounds the wait
    assert route(False, False, 0) is Route.GIVE_BACK
    assert route(True, True, SEND_HAND_OVER_MAX - 1) is Route.HAND_OVER
    assert route(True, True, SEND_HAND_OVER_MAX) is Route.PARK  # one busy shard cannot fill SEND
    assert route(True, False, 0) is Route.PARK


def test_a_packet_from_its_queue_for_a_shard_not_ready_goes_back_and_the_queue_pauses():
    def scenario():
        bridge, channel, sent, _ = make_held(ready=False)
        bridge._consuming.add(0)  # a delivery that raced the pause
        deliver(bridge, channel, "c-shard", 4, json.dumps({"op": 3, "d": {}}).encode())
        return bridge, channel, sent

    bridge, channel, sent = run(scenario)
    assert sent == [] and channel.nacked == [(4, True)] and channel.cancelled == ["c-shard"]
    assert bridge.stats["outbound_given_back"] == 1 and 0 not in bridge._consuming


def test_a_send_for_a_shard_not_ready_is_parked_in_its_queue_and_acked_on_confirm():
    def scenario():
        bridge, channel, sent, published = make_held(ready=False)
        deliver(bridge, channel, "c-send", 9, send_for_shard_0(), "m-9")
        assert sent == [] and channel.acked == [] and published == [("0", b'{"op":8,"d":{}}', "m-9")]
        bridge._on_confirm(SimpleNamespace(method=__import__("pika").spec.Basic.Ack(delivery_tag=1, multiple=False)))
        return bridge, channel

    bridge, channel = run(scenario)
    assert channel.acked == [9] and bridge.stats["send_parked"] == 1


def test_what_a_shard_held_when_it_left_ready_goes_back_by_origin():
    def scenario():
        bridge, channel, sent, published = make_held(ready=True)
        deliver(bridge, channel, "c-shard", 1, json.dumps({"op": 3, "d": {}}).encode())
        deliver(bridge, channel, "c-send", 2, send_for_shard_0())
        assert len(sent) == 2 and published == []
        bridge.pause_shard(0)
        for shard, packet, ack in sent:
            bridge.give_back(shard, packet, ack)
        bridge.resume_shard(0)
        return bridge, channel, published

    bridge, channel, published = run(scenario)
    assert channel.nacked == [(1, True)]  # its queue keeps it
    assert [rk for rk, _, _ in published] == ["0"]  # the SEND one is parked in the queue
    assert channel.cancelled == ["c-shard"] and channel.consumed == ["g:0"]


def test_a_send_for_guilds_of_several_shards_is_split_and_acked_once_every_part_is_confirmed():
    # Issue 22: op 31's d.guild_ids may name guilds of several shards; each shard's queue gets
    # its own part, and the SEND delivery is acked once RabbitMQ confirmed all of them.
    import pika

    def scenario():
        bridge, channel, sent = make()
        published = []
        bridge._pub = SimpleNamespace(publish=lambda rk, body, props, mid: published.append((rk, body, mid)))
        bridge.ledger.open(bridge._send)
        on = {s: next(g for g in range(1 << 22, 1 << 40, 1 << 22) if (g >> 22) % 2 == s) for s in (0, 1)}
        ids = [str(on[1]), str(on[0]), str(on[1] + (2 << 22))]
        deliver(bridge, channel, "c-send", 9, json.dumps({"packet": {"op": 31, "d": {"guild_ids": ids}}}).encode())
        assert sent == [] and channel.acked == []  # both parts go through their shard queues
        assert [(rk, json.loads(body)["d"]["guild_ids"]) for rk, body, _ in published] == [
            ("1", [ids[0], ids[2]]), ("0", [ids[1]])
        ]
        bridge._on_confirm(SimpleNamespace(method=pika.spec.Basic.Ack(delivery_tag=1, multiple=False)))
        assert channel.acked == []  # one part confirmed of two
        bridge._on_confirm(SimpleNamespace(method=pika.spec.Basic.Ack(delivery_tag=2, multiple=False)))
        assert bridge.counters()["split_parts"] == 2
        return channel

    assert run(scenario).acked == [9]
