"""Spectacles AMQP naming: exchanges, queues, routing keys and message ids, in one place.

From the Spectacles spec: a group is a durable direct exchange; a consumer queue is
``<group>:[<subgroup>:]<event>``; the routing key of an inbound event is Discord's ``t``; the
queue of outbound packets for a shard is named after the shard id, and ``SEND`` carries packets
that only know their guild.
"""

from __future__ import annotations

EXCHANGE_TYPE = "direct"
SEND_EVENT = "SEND"
CONTENT_TYPE = "application/json"
#: AMQP header carrying the shard id of an inbound event.
SHARD_HEADER = "shard_id"
PERSISTENT = 2  # AMQP delivery_mode


def queue_name(group: str, event: str, subgroup: str | None = None) -> str:
    """``<group>:[<subgroup>:]<event>``."""
    return f"{group}:{subgroup}:{event}" if subgroup else f"{group}:{event}"


def shard_routing_key(shard_id: int) -> str:
    return str(shard_id)


def shard_queue(group: str, shard_id: int) -> str:
    """The queue a gateway consumes the outbound packets of one shard from."""
    return queue_name(group, shard_routing_key(shard_id))


def send_queue(group: str) -> str:
    """The queue shared by every gateway of the group for guild-addressed packets."""
    return queue_name(group, SEND_EVENT)


def message_id(shard_id: int, session_id: str | None, seq: int | None) -> str:
    """Unique per (shard, session, seq): consumers drop duplicate deliveries by it."""
    return f"{shard_id}:{session_id}:{seq}"
