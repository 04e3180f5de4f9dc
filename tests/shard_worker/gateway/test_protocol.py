"""The Discord protocol table: close codes, URLs, the sharding formula."""

from __future__ import annotations

import pytest

from shard_worker.gateway import protocol
from shard_worker.gateway.protocol import (
    CLIENT_OPS,
    RESUMABLE_CLOSE,
    SESSION_ENDING_CLOSE,
    USER_SENDABLE_OPS,
    Close,
    CloseAction,
    Op,
    close_action,
    describe_close,
    gateway_url,
    identify_bucket,
    shard_for_guild,
)

# -- close codes --------------------------------------------------------------------------------
CLOSE_TABLE = [
    (1000, CloseAction.RESUME),  # from the server: try to resume (a failed RESUME costs one op 9)
    (1001, CloseAction.RESUME),  # Discord nodes going away on restart
    (4000, CloseAction.RESUME),
    (4001, CloseAction.RESUME),
    (4002, CloseAction.RESUME),
    (4003, CloseAction.RESUME),
    (4004, CloseAction.FATAL),
    (4005, CloseAction.RESUME),
    (4007, CloseAction.REIDENTIFY),
    (4008, CloseAction.RESUME),
    (4009, CloseAction.REIDENTIFY),
    (4010, CloseAction.FATAL),
    (4011, CloseAction.FATAL),
    (4012, CloseAction.FATAL),
    (4013, CloseAction.FATAL),
    (4014, CloseAction.FATAL),
    # Not Discord codes: a lost connection, abnormal closure, our own code, an unknown 4xxx.
    (None, CloseAction.RESUME),
    (1006, CloseAction.RESUME),
    (1011, CloseAction.RESUME),
    (4006, CloseAction.RESUME),
    (4900, CloseAction.RESUME),
    (4999, CloseAction.RESUME),
]


@pytest.mark.parametrize(("code", "expected"), CLOSE_TABLE)
def test_close_action_table(code, expected):
    assert close_action(code) is expected


def test_close_table_covers_every_named_close_code():
    covered = {code for code, _ in CLOSE_TABLE}
    assert {int(c) for c in Close} <= covered


def test_close_action_accepts_plain_ints_and_enum_members_alike():
    assert close_action(Close.AUTHENTICATION_FAILED) is close_action(4004) is CloseAction.FATAL
    assert close_action(Close.SESSION_TIMED_OUT) is close_action(4009) is CloseAction.REIDENTIFY


def test_fatal_and_reidentify_sets_are_exactly_the_spec_ones():
    assert {int(c) for c in protocol.FATAL_CLOSE_CODES} == {4004, 4010, 4011, 4012, 4013, 4014}
    assert {int(c) for c in protocol.REIDENTIFY_CLOSE_CODES} == {4007, 4009}


def test_our_own_close_codes():
    # Reconnecting on our own must keep the session: anything but 1000/1001.
    assert RESUMABLE_CLOSE not in (1000, 1001)
    assert close_action(RESUMABLE_CLOSE) is CloseAction.RESUME
    # A valid application close code range for a websocket close frame.
    assert 4000 <= RESUMABLE_CLOSE <= 4999
    assert SESSION_ENDING_CLOSE == 1000


@pytest.mark.parametrize(
    ("code", "text"),
    [
        (None, "connection lost"),
        (4004, "4004 authentication failed (bad token)"),
        (4014, "4014 disallowed intents (enable them in the developer portal)"),
        (4009, "4009 session timed out"),
        (1006, "1006"),
        (4900, "4900"),
    ],
)
def test_describe_close(code, text):
    assert describe_close(code) == text


# -- ops ------------------------------------------------------------------------------------------
def test_opcode_values():
    assert [int(o) for o in (Op.DISPATCH, Op.HEARTBEAT, Op.IDENTIFY, Op.PRESENCE_UPDATE)] == [0, 1, 2, 3]
    assert [int(o) for o in (Op.VOICE_STATE_UPDATE, Op.RESUME, Op.RECONNECT)] == [4, 6, 7]
    assert [int(o) for o in (Op.REQUEST_GUILD_MEMBERS, Op.INVALID_SESSION, Op.HELLO)] == [8, 9, 10]
    assert int(Op.HEARTBEAT_ACK) == 11
    assert int(Op.REQUEST_SOUNDBOARD_SOUNDS) == 31


def test_user_sendable_ops_exclude_the_lifecycle_ops():
    assert {1, 2, 6}.isdisjoint({int(o) for o in USER_SENDABLE_OPS})
    assert {3, 4, 8, 31} <= {int(o) for o in USER_SENDABLE_OPS}
    # Server-only ops are never client ops.
    assert {0, 7, 9, 10, 11}.isdisjoint({int(o) for o in CLIENT_OPS})
    assert {1, 2, 6} <= {int(o) for o in CLIENT_OPS}


def test_limits():
    assert protocol.SEND_LIMIT == 120
    assert protocol.SEND_WINDOW_S == 60.0
    assert 0 < protocol.SEND_RESERVED_FOR_CONTROL < protocol.SEND_LIMIT
    assert protocol.MAX_PAYLOAD_BYTES == 4096
    assert protocol.IDENTIFY_INTERVAL_S == 5.0
    assert protocol.INVALID_SESSION_WAIT_S == (1.0, 5.0)
    assert protocol.ZLIB_SUFFIX == b"\x00\x00\xff\xff"


# -- URLs -----------------------------------------------------------------------------------------
def test_gateway_url_compressed_adds_root_path():
    assert (
        gateway_url("wss://gateway.discord.gg", compress=True)
        == "wss://gateway.discord.gg/?v=10&encoding=json&compress=zlib-stream"
    )


def test_gateway_url_uncompressed_has_no_compress_param():
    url = gateway_url("wss://gateway.discord.gg", compress=False)
    assert url == "wss://gateway.discord.gg/?v=10&encoding=json"
    assert "compress" not in url


def test_gateway_url_replaces_an_existing_query():
    url = gateway_url("wss://gateway.discord.gg/?v=6&encoding=etf&compress=zlib-stream", compress=False)
    assert url == "wss://gateway.discord.gg/?v=10&encoding=json"


def test_gateway_url_keeps_path_and_port_and_drops_fragment():
    assert (
        gateway_url("ws://127.0.0.1:8765/some/path?x=1#frag", compress=True)
        == "ws://127.0.0.1:8765/some/path?v=10&encoding=json&compress=zlib-stream"
    )


def test_gateway_url_is_idempotent():
    once = gateway_url("wss://us-east1-b.gateway.discord.gg", compress=True)
    assert gateway_url(once, compress=True) == once
    assert gateway_url(once, compress=False) == "wss://us-east1-b.gateway.discord.gg/?v=10&encoding=json"


# -- sharding -------------------------------------------------------------------------------------
# 81384788765712384 = 19403645698 * 2**22 + 8192, so (guild_id >> 22) = 19403645698.
#   19403645698 is even                     -> shard 0 of 2
#   19403645698 = 16 * 1212727856 + 2       -> shard 2 of 16
GUILD = 81384788765712384


def test_shard_for_guild_known_snowflake():
    assert GUILD >> 22 == 19403645698
    assert shard_for_guild(GUILD, 1) == 0
    assert shard_for_guild(GUILD, 2) == 0
    assert shard_for_guild(GUILD, 16) == 2


def test_shard_for_guild_is_not_the_misparenthesised_formula():
    # `guild_id >> 22 % 16` would be `guild_id >> 6`: far beyond any shard id.
    wrong = GUILD >> 22 % 16
    assert wrong != 2 and wrong >= 16
    assert shard_for_guild(GUILD, 16) == 2


def test_shard_for_guild_other_snowflakes():
    # Built from the timestamp part: (k << 22) | anything lands on shard k % n.
    assert shard_for_guild((5 << 22) | 0x3FFFFF, 4) == 1
    assert shard_for_guild((1000 << 22) | 12345, 7) == 1000 % 7 == 6
    # Low 22 bits (worker, process, increment) never affect the shard.
    assert shard_for_guild(41771983423143937, 10) == shard_for_guild(41771983423143937 & ~0x3FFFFF, 10)


def test_dms_go_to_shard_zero():
    # A DM has no guild id; Discord routes it to shard 0 (guild id 0 gives the same result).
    for count in (1, 2, 16, 1000):
        assert shard_for_guild(0, count) == 0


def test_identify_bucket():
    assert identify_bucket(0, 1) == 0
    assert identify_bucket(7, 1) == 0
    assert identify_bucket(7, 16) == 7
    assert identify_bucket(17, 16) == 1
