"""Where a packet for one of this process's shards goes: to the shard now, or back to RabbitMQ.

RabbitMQ's prefetch is per consumer: every shard queue and the SEND queue may each have
``prefetch`` deliveries unacked with us. A delivery we hold for a shard that cannot send it
does harm twice: held from SEND, it takes a slot that every other shard of the process needs
(SEND stalls for all of them); held for long, it passes RabbitMQ's ``consumer_timeout`` (30 min
by default) and the broker closes the channel. So a packet is only held by a shard that is
READY, and the broker keeps the others, durably:

==============  ======  ===========================  ===============================================
came from       READY   waiting in the shard         goes
==============  ======  ===========================  ===============================================
its shard queue yes     any                          to the shard (its own prefetch bounds the wait)
its shard queue no      any                          back to the queue (nack, requeue); the queue's
                                                     consumer is paused until the shard is READY
SEND            yes     < :data:`SEND_HAND_OVER_MAX` to the shard
SEND            yes     >= :data:`SEND_HAND_OVER_MAX` parked: published to the shard's queue,
                                                     acked once RabbitMQ confirmed it
SEND            no      any                          parked
==============  ======  ===========================  ===============================================

A shard that leaves READY gives back what it holds by the same rules. The longest a READY shard
holds a delivery is its send window's pace (120 per 60 s) times ``prefetch``: 50 s at 100.
"""

from __future__ import annotations

from enum import Enum

#: Packets a shard may have waiting before SEND parks more in its queue instead: enough for a
#: burst, few enough that one busy shard cannot fill the SEND prefetch shared by all.
SEND_HAND_OVER_MAX = 10


class Route(Enum):
    HAND_OVER = "hand_over"
    GIVE_BACK = "give_back"  # nack with requeue: the shard queue keeps it
    PARK = "park"  # republish to the shard queue, then ack the SEND delivery


def route(from_send: bool, ready: bool, waiting: int) -> Route:
    """The table above: ``waiting`` is how many packets the shard already holds."""
    if not from_send:
        return Route.HAND_OVER if ready else Route.GIVE_BACK
    if ready and waiting < SEND_HAND_OVER_MAX:
        return Route.HAND_OVER
    return Route.PARK
