"""Validation of packets consumed from the outbound queues (pure: bytes in, verdict out).

A shard queue carries a full gateway packet ``{"op": .., "d": ..}``; the SEND queue carries
``{"guild_id": .., "packet": {..}}``. Anything else is rejected with a reason that is logged and
counted; only ops a bot may send on its own are let through (1, 2 and 6 would break or hijack the
connection's session), and the packet is re-encoded to exactly ``{op, d}`` so nothing else rides
along.

**Commands that span guilds** (issue 22): a packet whose ``d`` carries ``guild_ids`` (op 31
Request Soundboard Sounds; its guilds may live on different shards) is split by shard under the
current count: each owning shard gets one packet with exactly its own guild ids, in their
order (``guild_id`` is optional in such a SEND). Every parse returns the list of its parts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from shard_worker import jsonlib
from shard_worker.gateway.protocol import MAX_PAYLOAD_BYTES, USER_SENDABLE_OPS, Op, shard_for_guild
from shard_worker.reshard import shard_of_packet

MAX_SNOWFLAKE = (1 << 64) - 1
CONNECTION_OPS = frozenset({Op.HEARTBEAT, Op.IDENTIFY, Op.RESUME})


class Rejected(ValueError):
    """The message cannot be sent; ``reason`` is a short label used in logs and metrics."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Packet:
    op: int
    text: str  # the exact frame to write: {"op":..,"d":..}


@dataclass(frozen=True, slots=True)
class Routed:
    shard_id: int
    packet: Packet


def _decode(body: bytes) -> object:
    try:
        return jsonlib.loads(body)
    except (ValueError, TypeError, OverflowError, RecursionError):
        raise Rejected("not_json") from None


def check_packet(obj: object) -> Packet:
    """Validate a decoded ``{op, d}`` packet and encode the frame to send."""
    if not isinstance(obj, dict):
        raise Rejected("not_an_object")
    op = obj.get("op")
    if type(op) is not int:
        raise Rejected("bad_op", f"op must be an integer, got {type(op).__name__}")
    if op in CONNECTION_OPS:
        raise Rejected("reserved_op", f"op {op} belongs to the connection itself")
    if op not in USER_SENDABLE_OPS:
        raise Rejected("unknown_op", f"op {op}")
    if "d" not in obj:
        raise Rejected("missing_d")
    try:
        # The stdlib here on purpose: strict JSON (no NaN/Infinity, which some fast decoders
        # accept), and outbound packets are few (120 per minute per shard at most).
        text = json.dumps({"op": op, "d": obj["d"]}, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        size = len(text.encode())  # a lone surrogate fails here
    except (ValueError, TypeError, OverflowError, RecursionError):
        raise Rejected("unencodable") from None
    if size > MAX_PAYLOAD_BYTES:
        raise Rejected("oversize", f"{size} bytes > {MAX_PAYLOAD_BYTES}")
    return Packet(op, text)


def parse_shard_packet(body: bytes) -> Packet:
    """A message from a ``<group>:<shard_id>`` queue."""
    return check_packet(_decode(body))


def split_by_guilds(obj: dict, shard_count: int) -> list[Routed] | None:
    """A checked packet whose ``d`` carries ``guild_ids``: one part per owning shard (in the
    order of their first guild) with exactly its guild ids, in their order. None: no
    ``guild_ids``. Refused when it is not a non-empty list of snowflakes."""
    d = obj.get("d")
    if not isinstance(d, dict) or "guild_ids" not in d:
        return None
    ids = d["guild_ids"]
    if not isinstance(ids, list) or not ids:
        raise Rejected("bad_guild_ids", "guild_ids must be a non-empty array of snowflakes")
    by_shard: dict[int, list] = {}
    for guild in ids:
        try:
            snowflake = parse_snowflake(guild)
        except Rejected:
            raise Rejected("bad_guild_ids", "guild_ids must be a non-empty array of snowflakes") from None
        by_shard.setdefault(shard_for_guild(snowflake, shard_count), []).append(guild)
    return [Routed(shard, check_packet({**obj, "d": {**d, "guild_ids": own}})) for shard, own in by_shard.items()]


def parse_shard_packet_routed(body: bytes, addressed_to: int, shard_count: int) -> list[Routed]:
    """A message from the ``<group>:<addressed_to>`` queue and the shards it goes to under
    ``shard_count``: split by ``d.guild_ids`` when it has them, else to its guild's owner when
    its ``d`` has a ``guild_id``, else to ``addressed_to`` (``reshard.shard_of_packet``);
    refused when that id does not exist under the count."""
    obj = _decode(body)
    packet = check_packet(obj)
    parts = split_by_guilds(obj, shard_count)  # type: ignore[arg-type]
    if parts is not None:
        return parts
    target = shard_of_packet(obj, addressed_to, shard_count)
    if target is None:
        raise Rejected("no_such_shard", f"shard {addressed_to} does not exist under {shard_count} shards")
    return [Routed(target, packet)]


def parse_snowflake(value: object) -> int:
    if type(value) is str and value.isdigit() and value.isascii():
        n = int(value)
    elif type(value) is int:
        n = value
    else:
        raise Rejected("bad_guild_id", "guild_id must be a snowflake (digits)")
    if not 0 < n <= MAX_SNOWFLAKE:
        raise Rejected("bad_guild_id", "guild_id out of range")
    return n


def parse_send(body: bytes, shard_count: int) -> list[Routed]:
    """A message from the ``<group>:SEND`` queue, routed to its guild's shard (split by shard
    when its packet's ``d`` has ``guild_ids``; ``guild_id`` may then be left out)."""
    obj = _decode(body)
    if not isinstance(obj, dict):
        raise Rejected("not_an_object")
    packet_obj = obj.get("packet")
    packet = check_packet(packet_obj)
    parts = split_by_guilds(packet_obj, shard_count)  # type: ignore[arg-type]
    if parts is None or "guild_id" in obj:  # needed without guild_ids; checked whenever given
        guild_id = parse_snowflake(obj.get("guild_id"))
    if parts is not None:
        return parts
    return [Routed(shard_for_guild(guild_id, shard_count), packet)]
