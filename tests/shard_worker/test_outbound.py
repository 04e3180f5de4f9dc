"""Outbound packet validation: what may be sent to Discord from the shard and SEND queues."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shard_worker import outbound
from shard_worker.gateway.protocol import MAX_PAYLOAD_BYTES, shard_for_guild

GUILD = 81384788765712384  # a real-looking snowflake


def test_valid_packet_is_reencoded_to_op_and_d_only():
    body = json.dumps({"op": 4, "d": {"guild_id": str(GUILD), "channel_id": None}, "s": 9, "t": "X"}).encode()
    packet = outbound.parse_shard_packet(body)
    assert packet.op == 4
    assert json.loads(packet.text) == {"op": 4, "d": {"guild_id": str(GUILD), "channel_id": None}}


@pytest.mark.parametrize(
    "body, reason",
    [
        (b"not json", "not_json"),
        (b"\xff\xfe", "not_json"),
        (b"[1, 2]", "not_an_object"),
        (b'"text"', "not_an_object"),
        (b'{"d": {}}', "bad_op"),
        (b'{"op": "4", "d": {}}', "bad_op"),
        (b'{"op": true, "d": {}}', "bad_op"),
        (b'{"op": 1, "d": 5}', "reserved_op"),
        (b'{"op": 2, "d": {"token": "x"}}', "reserved_op"),
        (b'{"op": 6, "d": {}}', "reserved_op"),
        (b'{"op": 0, "d": {}}', "unknown_op"),
        (b'{"op": 99, "d": {}}', "unknown_op"),
        (b'{"op": 3}', "missing_d"),
    ],
)
def test_bad_shard_packets_are_rejected_with_a_reason(body, reason):
    with pytest.raises(outbound.Rejected) as info:
        outbound.parse_shard_packet(body)
    assert info.value.reason == reason


def test_oversize_packet_is_rejected_and_the_limit_is_inclusive():
    overhead = len(json.dumps({"op": 3, "d": ""}, separators=(",", ":")))
    exact = json.dumps({"op": 3, "d": "x" * (MAX_PAYLOAD_BYTES - overhead)}).encode()
    assert len(outbound.parse_shard_packet(exact).text.encode()) == MAX_PAYLOAD_BYTES
    over = json.dumps({"op": 3, "d": "x" * (MAX_PAYLOAD_BYTES - overhead + 1)}).encode()
    with pytest.raises(outbound.Rejected) as info:
        outbound.parse_shard_packet(over)
    assert info.value.reason == "oversize"


def test_size_counts_utf8_bytes_not_characters():
    overhead = len(json.dumps({"op": 3, "d": ""}, separators=(",", ":")))
    text = "é" * ((MAX_PAYLOAD_BYTES - overhead) // 2 + 1)  # fits in characters, not in bytes
    with pytest.raises(outbound.Rejected):
        outbound.parse_shard_packet(json.dumps({"op": 3, "d": text}, ensure_ascii=False).encode())


@pytest.mark.parametrize("guild_id", [str(GUILD), GUILD])
@pytest.mark.parametrize("count", [1, 2, 16, 1000])
def test_send_routes_by_guild(guild_id, count):
    body = json.dumps({"guild_id": guild_id, "packet": {"op": 8, "d": {"guild_id": str(GUILD)}}}).encode()
    [routed] = outbound.parse_send(body, count)
    assert routed.shard_id == (GUILD >> 22) % count
    assert json.loads(routed.packet.text)["op"] == 8


@pytest.mark.parametrize(
    "guild_id",
    [None, "", "abc", "12a", "-5", -5, 0, "0", 1.5, True, "１２３", str(1 << 64), [1], {"id": 1}],
)
def test_send_without_a_valid_snowflake_is_rejected(guild_id):
    body = json.dumps({"guild_id": guild_id, "packet": {"op": 4, "d": {}}}).encode()
    with pytest.raises(outbound.Rejected) as info:
        outbound.parse_send(body, 4)
    assert info.value.reason == "bad_guild_id"


def test_send_checks_its_packet_like_a_shard_packet():
    body = json.dumps({"guild_id": str(GUILD), "packet": {"op": 2, "d": {}}}).encode()
    with pytest.raises(outbound.Rejected) as info:
        outbound.parse_send(body, 4)
    assert info.value.reason == "reserved_op"
    with pytest.raises(outbound.Rejected):
        outbound.parse_send(json.dumps({"guild_id": str(GUILD)}).encode(), 4)


@given(st.binary(max_size=600))
def test_arbitrary_bytes_are_either_a_packet_or_rejected(body):
    for parse in (outbound.parse_shard_packet, lambda b: outbound.parse_send(b, 3)):
        try:
            result = parse(body)
        except outbound.Rejected as exc:
            assert exc.reason
        else:
            assert result is not None


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


@given(st.dictionaries(st.sampled_from(["op", "d", "guild_id", "packet", "x"]), json_values, max_size=5))
def test_arbitrary_json_objects_never_raise_anything_but_rejected(obj):
    body = json.dumps(obj).encode()
    for parse in (outbound.parse_shard_packet, lambda b: outbound.parse_send(b, 7)):
        try:
            result = parse(body)
        except outbound.Rejected:
            continue
        for packet in [r.packet for r in result] if isinstance(result, list) else [result]:
            decoded = json.loads(packet.text)
            assert set(decoded) == {"op", "d"} and decoded["op"] in (3, 4, 8, 31, 43)
            assert len(packet.text.encode()) <= MAX_PAYLOAD_BYTES


def test_shard_formula_matches_discord_example():
    # 197038439483310086 >> 22 == 46977624770 (worked out by hand); mod 1000 gives 770
    guild = 197038439483310086
    assert shard_for_guild(guild, 1000) == 770
    assert shard_for_guild(0, 5) == 0  # DMs have no guild: shard 0


@pytest.mark.parametrize(
    "body",
    [b'{"op":3,"d":NaN}', b'{"op":3,"d":Infinity}', b'{"op":3,"d":-Infinity}', b'{"op":3,"d":1e999}', b'{"op":3,"d":"\\ud800"}'],
)
def test_non_strict_json_never_reaches_discord(body):
    # Some fast decoders accept NaN/Infinity or overflow to inf; the frame we send must be strict.
    from shard_worker import jsonlib

    for codec in ("ujson", "orjson"):
        getattr(jsonlib, f"use_{codec}")()
        with pytest.raises(outbound.Rejected):
            outbound.parse_shard_packet(body)
        with pytest.raises(outbound.Rejected):
            outbound.parse_send(b'{"guild_id":"1","packet":' + body + b"}", 2)
    import importlib

    importlib.reload(jsonlib)


# -- commands that span guilds (issue 22) -----------------------------------------------------


def guild_on(shard: int, count: int, n: int = 0) -> int:
    """A guild id owned by ``shard`` under ``count`` (the ``n``-th such)."""
    return ((n * count + shard) << 22) | 12345


def test_a_send_with_guild_ids_is_split_by_shard_in_order():
    # tried before: guilds on shards 0, 3, 1, 3 all went to shard 0 with the whole array
    ids = [str(guild_on(0, 4)), str(guild_on(3, 4)), str(guild_on(1, 4)), str(guild_on(3, 4, 1))]
    body = json.dumps({"packet": {"op": 31, "d": {"guild_ids": ids}}}).encode()  # no guild_id needed
    parts = outbound.parse_send(body, 4)
    assert [(p.shard_id, json.loads(p.packet.text)) for p in parts] == [
        (0, {"op": 31, "d": {"guild_ids": [ids[0]]}}),
        (3, {"op": 31, "d": {"guild_ids": [ids[1], ids[3]]}}),
        (1, {"op": 31, "d": {"guild_ids": [ids[2]]}}),
    ]
    # the same on a shard queue, whatever queue it was put in; other fields of d kept
    packet = json.dumps({"op": 31, "d": {"guild_ids": ids, "x": 1}}).encode()
    parts = outbound.parse_shard_packet_routed(packet, 2, 4)
    assert [p.shard_id for p in parts] == [0, 3, 1]
    assert all(json.loads(p.packet.text)["d"]["x"] == 1 for p in parts)
    # under another count the split follows the count
    assert [p.shard_id for p in outbound.parse_send(body, 1)] == [0]


@pytest.mark.parametrize("guild_ids", [[], "1", [None], ["abc"], [0], [1, "x"], {"a": 1}])
def test_bad_guild_ids_are_rejected(guild_ids):
    body = json.dumps({"packet": {"op": 31, "d": {"guild_ids": guild_ids}}}).encode()
    with pytest.raises(outbound.Rejected) as info:
        outbound.parse_send(body, 4)
    assert info.value.reason == "bad_guild_ids"


def test_a_given_guild_id_is_still_checked_beside_guild_ids():
    body = json.dumps({"guild_id": "abc", "packet": {"op": 31, "d": {"guild_ids": [str(guild_on(1, 2))]}}}).encode()
    with pytest.raises(outbound.Rejected) as info:
        outbound.parse_send(body, 2)
    assert info.value.reason == "bad_guild_id"


@given(st.lists(st.integers(1, (1 << 63) - 1), min_size=1, max_size=40), st.integers(1, 64))
def test_the_parts_hold_every_guild_once_on_its_owner(guilds, count):
    body = json.dumps({"packet": {"op": 31, "d": {"guild_ids": [str(g) for g in guilds]}}}).encode()
    parts = outbound.parse_send(body, count)
    got = []
    for part in parts:
        own = [int(g) for g in json.loads(part.packet.text)["d"]["guild_ids"]]
        assert all((g >> 22) % count == part.shard_id for g in own)
        got += own
    assert sorted(got) == sorted(guilds) and len({p.shard_id for p in parts}) == len(parts)
