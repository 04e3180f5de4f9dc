"""Discord's gateway as the simulator knows it, written down from Discord's documentation
(docs.discord.com: Gateway, Opcodes and Status Codes, Gateway Events; ``../shared/SPEC.md``),
independently of the client's ``shard_worker/gateway/protocol.py``.

A test oracle that imported the constants of the code under test could not catch a wrong
constant: if the client had 4008 for "invalid seq", a simulator sharing it would agree.
``tests/test_layers.py`` checks that the simulator does not import the client's protocol
module, and ``tests/supervisor/simulator/test_discord_facts.py`` compares the two copies.
"""

from __future__ import annotations

import enum

#: Gateway version in the URL's ``v`` query parameter; any other is closed with 4012.
API_VERSION = 10
#: The only payload encoding served here (``encoding=json``; etf is not simulated).
ENCODING = "json"
#: Transport compressions (the ``compress`` query parameter) and the ``none`` of a client that
#: asks for none (never a valid query value).
COMPRESS_ZLIB_STREAM = "zlib-stream"
COMPRESS_ZSTD_STREAM = "zstd-stream"
COMPRESS_NONE = "none"
COMPRESS_CHOICES = (COMPRESS_ZLIB_STREAM, COMPRESS_ZSTD_STREAM, COMPRESS_NONE)
#: Every zlib-stream message ends with the Z_SYNC_FLUSH suffix.
ZLIB_SUFFIX = b"\x00\x00\xff\xff"
#: zlib-stream is one zlib (RFC 1950) deflate stream per connection. Discord's stream starts with
#: the byte 0x78 (CINFO 7: a 32 KiB window, deflate's largest), so the compressor's window is
#: 2**15 bytes and so must the client's inflate window be (wbits 15).
ZLIB_WBITS = 15
#: zstd-stream's compressor parameters. Discord's documentation gives none (Gateway, "zstd-stream":
#: one frame per connection, never ended); its engineering blog ("How Discord reduced websocket
#: traffic by 40%", 2024) says they tuned windowlog, hashlog and chainlog to fit the compression
#: contexts in their hosts' memory. These values are the ones a third-party client library
#: (freya022/discord-zstd-java, its test-data generator) gives as "the parameters Discord uses":
#: level 7, a 64 KiB window (window log 16), hash log 15, chain log 15. A real connection's first
#: frame header carries its window (its Window_Descriptor); these are what the simulator sends.
ZSTD_LEVEL = 7
ZSTD_WINDOW_LOG = 16
ZSTD_HASH_LOG = 15
ZSTD_CHAIN_LOG = 15

#: One IDENTIFY per this many seconds per bucket (``shard_id % max_concurrency``).
IDENTIFY_INTERVAL_S = 5.0
#: At most this many payloads per window per connection, else close 4008.
SEND_LIMIT = 120
SEND_WINDOW_S = 60.0
#: A payload larger than this (bytes) is closed with 4002.
MAX_PAYLOAD_BYTES = 4096


class Op(enum.IntEnum):
    DISPATCH = 0
    HEARTBEAT = 1
    IDENTIFY = 2
    PRESENCE_UPDATE = 3
    VOICE_STATE_UPDATE = 4
    RESUME = 6
    RECONNECT = 7
    REQUEST_GUILD_MEMBERS = 8
    INVALID_SESSION = 9
    HELLO = 10
    HEARTBEAT_ACK = 11
    REQUEST_SOUNDBOARD_SOUNDS = 31
    REQUEST_CHANNEL_INFO = 43


#: What a client may send; anything else is closed with 4001 (unknown opcode).
CLIENT_OPS = frozenset({
    Op.HEARTBEAT, Op.IDENTIFY, Op.PRESENCE_UPDATE, Op.VOICE_STATE_UPDATE, Op.RESUME,
    Op.REQUEST_GUILD_MEMBERS, Op.REQUEST_SOUNDBOARD_SOUNDS, Op.REQUEST_CHANNEL_INFO,
})  # fmt: skip


class Close(enum.IntEnum):
    NORMAL = 1000
    GOING_AWAY = 1001
    UNKNOWN_ERROR = 4000
    UNKNOWN_OPCODE = 4001
    DECODE_ERROR = 4002
    NOT_AUTHENTICATED = 4003
    AUTHENTICATION_FAILED = 4004
    ALREADY_AUTHENTICATED = 4005
    INVALID_SEQ = 4007
    RATE_LIMITED = 4008
    SESSION_TIMED_OUT = 4009
    INVALID_SHARD = 4010
    SHARDING_REQUIRED = 4011
    INVALID_API_VERSION = 4012
    INVALID_INTENTS = 4013
    DISALLOWED_INTENTS = 4014


#: Discord's table says "reconnect: false" for these: the session and the connection are over.
FATAL_CLOSE_CODES = frozenset({
    Close.AUTHENTICATION_FAILED, Close.INVALID_SHARD, Close.SHARDING_REQUIRED,
    Close.INVALID_API_VERSION, Close.INVALID_INTENTS, Close.DISALLOWED_INTENTS,
})  # fmt: skip
#: The session cannot be resumed after these (a new IDENTIFY is needed).
REIDENTIFY_CLOSE_CODES = frozenset({Close.INVALID_SEQ, Close.SESSION_TIMED_OUT})


def shard_for_guild(guild_id: int, shard_count: int) -> int:
    """``shard_id = (guild_id >> 22) % num_shards``."""
    return (guild_id >> 22) % shard_count


def identify_bucket(shard_id: int, max_concurrency: int) -> int:
    """``rate_limit_key = shard_id % max_concurrency``."""
    return shard_id % max_concurrency
