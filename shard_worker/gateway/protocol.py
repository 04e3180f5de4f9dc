"""The Discord gateway protocol rules (API v10), in one place.

Every opcode, close code, limit and URL rule the worker and the simulator rely on is named here,
so that no other module carries a magic number of Discord's. Source: Discord's developer docs,
"Gateway" and "Opcodes and Status Codes" (summarised in SPEC.md section 3).
"""

from __future__ import annotations

import enum
from urllib.parse import urlencode, urlsplit, urlunsplit

API_VERSION = 10
ENCODING = "json"
COMPRESS_ZLIB_STREAM = "zlib-stream"
#: One zstd frame per connection that never ends; each message is flushed (ZSTD_e_flush).
COMPRESS_ZSTD_STREAM = "zstd-stream"
#: No transport compression: text frames (the ``compress`` query parameter is left out).
COMPRESS_NONE = "none"
#: The transport compressions a connection can ask for, by their ``compress`` setting name.
COMPRESS_CHOICES = (COMPRESS_ZLIB_STREAM, COMPRESS_ZSTD_STREAM, COMPRESS_NONE)
#: A zlib-stream message is complete when the buffer ends with this Z_SYNC_FLUSH marker.
ZLIB_SUFFIX = b"\x00\x00\xff\xff"


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


#: Ops a client may send on behalf of a bot (the outbound queues). 1, 2 and 6 are excluded on
#: purpose: they belong to the connection's own lifecycle and would break or hijack the session.
USER_SENDABLE_OPS = frozenset(
    {
        Op.PRESENCE_UPDATE,
        Op.VOICE_STATE_UPDATE,
        Op.REQUEST_GUILD_MEMBERS,
        Op.REQUEST_SOUNDBOARD_SOUNDS,
        Op.REQUEST_CHANNEL_INFO,
    }
)
#: Every op a client may send at all (the simulator closes with 4001 on anything else).
CLIENT_OPS = USER_SENDABLE_OPS | {Op.HEARTBEAT, Op.IDENTIFY, Op.RESUME}


class Close(enum.IntEnum):
    """Gateway close event codes."""

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


#: Never reconnect after these: the token, shard or intents are wrong and retrying burns identifies.
FATAL_CLOSE_CODES = frozenset(
    {
        Close.AUTHENTICATION_FAILED,
        Close.INVALID_SHARD,
        Close.SHARDING_REQUIRED,
        Close.INVALID_API_VERSION,
        Close.INVALID_INTENTS,
        Close.DISALLOWED_INTENTS,
    }
)
#: The session is gone: reconnect with a new IDENTIFY.
REIDENTIFY_CLOSE_CODES = frozenset({Close.INVALID_SEQ, Close.SESSION_TIMED_OUT})

CLOSE_MEANINGS = {
    Close.UNKNOWN_ERROR: "unknown error",
    Close.UNKNOWN_OPCODE: "unknown opcode",
    Close.DECODE_ERROR: "decode error",
    Close.NOT_AUTHENTICATED: "not authenticated",
    Close.AUTHENTICATION_FAILED: "authentication failed (bad token)",
    Close.ALREADY_AUTHENTICATED: "already authenticated",
    Close.INVALID_SEQ: "invalid seq",
    Close.RATE_LIMITED: "rate limited",
    Close.SESSION_TIMED_OUT: "session timed out",
    Close.INVALID_SHARD: "invalid shard",
    Close.SHARDING_REQUIRED: "sharding required",
    Close.INVALID_API_VERSION: "invalid API version",
    Close.INVALID_INTENTS: "invalid intents",
    Close.DISALLOWED_INTENTS: "disallowed intents (enable them in the developer portal)",
}

#: The code we close with when we reconnect on our own (zombie, op 7, bad frame): anything but
#: 1000/1001 keeps the session resumable.
RESUMABLE_CLOSE = 4900
#: The code we close with when we stop for good (the session is ended on Discord's side).
SESSION_ENDING_CLOSE = Close.NORMAL


class CloseAction(enum.Enum):
    RESUME = "resume"
    REIDENTIFY = "reidentify"
    FATAL = "fatal"


def close_action(code: int | None) -> CloseAction:
    """What a client must do after the server closed the connection with ``code``."""
    if code in FATAL_CLOSE_CODES:
        return CloseAction.FATAL
    if code in REIDENTIFY_CLOSE_CODES:
        return CloseAction.REIDENTIFY
    # Everything else, 1000/1001 from the server included (Discord's nodes go away with 1001
    # when they restart): try to resume. A RESUME that cannot work costs one op 9, while a new
    # IDENTIFY costs budget and a gap. (A *client* closing with 1000/1001 ends its session:
    # that is why our own reconnects use RESUMABLE_CLOSE.)
    return CloseAction.RESUME


def describe_close(code: int | None) -> str:
    if code is None:
        return "connection lost"
    meaning = CLOSE_MEANINGS.get(code)  # type: ignore[call-overload]
    return f"{code} {meaning}" if meaning else str(code)


# -- limits -----------------------------------------------------------------------------------
#: At most this many payloads per connection per window (heartbeats and identify included).
SEND_LIMIT = 120
SEND_WINDOW_S = 60.0
#: Slots of each window kept free for heartbeats, identify and resume.
SEND_RESERVED_FOR_CONTROL = 5
#: A payload larger than this many bytes (encoded) is never sent.
MAX_PAYLOAD_BYTES = 4096
#: One identify per this many seconds per bucket ``shard_id % max_concurrency``.
IDENTIFY_INTERVAL_S = 5.0
#: Our margin over it, from one IDENTIFY's write to the next of its bucket: Discord counts
#: arrivals, and networks jitter. 0.5 s: at 5000 shards (max_concurrency 256) the simulated
#: Discord, which knows each arrival to within its loop's last pass (its poll clock), saw no gap
#: under 5 s at both ends of that window; the stamps under 5 s (down to 4.74 s) were all its own
#: lateness (passes up to 0.77 s). A 1 s margin cost 19 s of start-up there (1.22x the floor).
IDENTIFY_MARGIN_S = 0.5
#: After op 9 with ``d=false``: wait a random time in this range before identifying again.
INVALID_SESSION_WAIT_S = (1.0, 5.0)


def shard_for_guild(guild_id: int, shard_count: int) -> int:
    """Discord's sharding formula. Note the parentheses: ``>>`` binds looser than ``%``."""
    return (guild_id >> 22) % shard_count


def identify_bucket(shard_id: int, max_concurrency: int) -> int:
    return shard_id % max_concurrency


def compress_name(value: bool | str | None) -> str:
    """The canonical name of a transport compression setting: one of :data:`COMPRESS_CHOICES`.

    ``True`` and ``False`` (and ``None``) are what the setting was before zstd-stream existed:
    zlib-stream or none. They are still accepted, so an older configuration keeps its meaning.
    Raises ``ValueError`` for anything else.
    """
    if value is True:
        return COMPRESS_ZLIB_STREAM
    if value is False or value is None:
        return COMPRESS_NONE
    if isinstance(value, str) and value in COMPRESS_CHOICES:
        return value
    raise ValueError(f"expected zlib-stream, zstd-stream or none, got {value!r}")


def gateway_url(base: str, *, compress: bool | str) -> str:
    """``base`` with the query Discord v10 expects (any query ``base`` had is replaced).
    ``compress`` is a name of :data:`COMPRESS_CHOICES` (or a bool: zlib-stream / none)."""
    params = {"v": str(API_VERSION), "encoding": ENCODING}
    name = compress_name(compress)
    if name != COMPRESS_NONE:
        params["compress"] = name
    parts = urlsplit(base)
    path = parts.path or "/"
    return urlunsplit((parts.scheme, parts.netloc, path, urlencode(params), ""))
