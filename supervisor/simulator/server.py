"""The simulator: a local stand-in for Discord's gateway (API v10) and its ``/gateway/bot`` route.

One port serves:

* ``GET /api/v10/gateway/bot`` (and ``/api/v10/gateway``): Discord's REST answers, checked
  against ``Authorization: Bot <token>``; any other ``/api`` path is a 404 JSON error;
* ``GET /_sim/<command>?shard=N&...``: control endpoints (``stats``, ``snapshot``, ``reconnect``,
  ``invalidate_session``, ``close``, ``zombie``, ``request_heartbeat``, ``drop``, ``send_raw``,
  ``emit``, ``sharding_required``), each mapping to the :class:`Simulator` method of that name
  (``close``, ``emit`` and ``sharding_required`` take ``&count=M`` for a shard of another set),
  ``/_sim/set_recommended?shards=N`` (``shards`` in ``/gateway/bot`` from then on),
  ``/_sim/outage?down_s=&invalidate=&cut=&op7=&seed=`` (a whole-gateway outage, see
  :meth:`Simulator.outage`) and ``/_sim/history?session_id=`` (what a session retains);
* the websocket gateway on every other path (``/`` and ``/resume`` in practice: READY's
  ``resume_gateway_url`` is ``ws://host:port/resume``; the path each connection used is recorded).

Protocol rules enforced (Discord's facts as :mod:`supervisor.simulator.discord_facts` writes them,
independently of the client's protocol module):

* query ``v`` must be 10 (else close 4012); ``encoding`` must be ``json`` if given (else 4002);
  ``compress`` may be ``zlib-stream`` (one compressobj per connection, each message ends with
  ``00 00 ff ff``; with ``fragment`` each compressed message goes out as two websocket messages)
  or ``zstd-stream`` (one ZstdCompressor per connection, one zstd frame that is never ended, each
  message flushed at a block boundary and sent as one websocket message, as Discord does; needs
  a zstd library, else the connection is closed with 4002). Both compress with Discord's
  windows, not the libraries' defaults: zlib's 32 KiB, zstd's 64 KiB (``discord_facts``); the
  bytes sent are counted (``payload_bytes`` before compression, ``wire_bytes`` written);
* op 10 HELLO on connect; op 1 is answered with op 11 unless the connection is in zombie mode;
* heartbeat timeout: no op 1 for ``heartbeat_timeout_s`` (default 2 intervals + 1 s) closes the
  connection with 4000 (unknown error, so the session stays resumable, as Discord's missed
  heartbeat closes do) and records a violation;
* IDENTIFY/RESUME validation, the identify bucket rule, ``session_start_limit``, the send limit
  (sliding window per connection, heartbeats included) and the payload size limit, with the close
  codes of SPEC.md section 3 (see :meth:`Simulator._on_identify` and friends);
* sessions: READY, one GUILD_CREATE per guild, then the event stream; RESUME replays every
  dispatch after ``seq`` byte for byte, then RESUMED. A session survives its connection for
  ``resume_window_s`` unless the client closed with 1000/1001 or the server forgot it.

Several shard counts at once (``reshardable``, for live resharding): the bot's guilds are fixed
by ``shard_count`` and ``guilds_per_shard``; a session that identified as ``[id, n]`` owns the
guilds ``g`` with ``(g >> 22) % n == id``. Each session streams events for its own guilds, as
always, and each guild event also goes (byte-identical ``d``, the receiving session's own seq) to
the session of every other count that owns the guild: so a guild's events reach every session
owning it under that session's count. A copy for a session still sending READY/GUILD_CREATEs
(or a replay) waits until it is ready; a disconnected session keeps it for its RESUME.

Records (see :meth:`Simulator.snapshot`) tell tests what every client did.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import email.utils
import http
import itertools
import logging
import random
import secrets
import time
import zlib
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import ujson
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed, ConnectionClosedError
from websockets.http11 import Request, Response
from websockets.protocol import State

from shard_worker.gateway import inflate
from supervisor.simulator import discord_facts as facts
from supervisor.simulator import payloads
from supervisor.simulator.discord_facts import (
    API_VERSION,
    CLIENT_OPS,
    COMPRESS_CHOICES,
    COMPRESS_NONE,
    COMPRESS_ZLIB_STREAM,
    COMPRESS_ZSTD_STREAM,
    ENCODING,
    ZLIB_SUFFIX,
    Close,
    Op,
)
from supervisor.simulator.poll_clock import poll_clock

log = logging.getLogger("supervisor.simulator")

#: The path READY's ``resume_gateway_url`` points at.
RESUME_PATH = "/resume"
#: Stream event types with a realistic payload (any other name gets a generic one).
STREAM_EVENT_TYPES = tuple(t for t, _ in payloads.STREAM_MIX)
#: How many stream events are written before yielding to the loop (rate 0).
_BURST = 64


@dataclass
class SimulatorOptions:
    """Everything a :class:`Simulator` can be told. Defaults are Discord's own numbers."""

    #: The bot token clients must present (never logged, never returned).
    token: str = dataclasses.field(default="simulator-token", repr=False)
    host: str = "127.0.0.1"
    #: 0 picks a free port (read it back from :attr:`Simulator.port`).
    port: int = 0
    #: Host put in the URLs the simulator hands out (default: ``host``, or 127.0.0.1 for 0.0.0.0).
    advertise_host: str | None = None
    #: The fake bot's total shard count (``/gateway/bot`` ``shards``; IDENTIFY must match it
    #: unless ``reshardable``). It also fixes the bot's guilds: ``guilds_per_shard`` per shard of
    #: this count, whatever count a session identifies with.
    shard_count: int = 1
    #: Accept IDENTIFY with any shard count, several sets at once, as Discord does for
    #: zero-downtime resharding: a session ``[id, n]`` owns the bot's guilds ``g`` with
    #: ``(g >> 22) % n == id``, and every guild event goes to every ready session owning it.
    reshardable: bool = False
    #: With ``reshardable``: a count that is not a multiple of this is closed with 4010 (Discord's
    #: rule for large bots).
    shard_count_multiple: int = 1
    #: ``shards`` in ``/gateway/bot`` (Discord's recommendation; None: ``shard_count``);
    #: settable while running (:meth:`Simulator.set_recommended_shards`).
    recommended_shards: int | None = None
    max_concurrency: int = 1
    heartbeat_interval_ms: int = 41250
    #: Close (4000) a connection that sent no heartbeat for this long; None = 2 intervals + 1 s;
    #: 0 disables the check.
    heartbeat_timeout_s: float | None = None
    guilds_per_shard: int = 2
    #: Stream events per session after READY/GUILD_CREATE; 0 = none, -1 = endless.
    events_per_shard: int = 0
    #: Stream events per second per shard; 0 = as fast as the client reads.
    rate: float = 0.0
    #: Send each zlib-stream message as two websocket messages split at a random point
    #: (zstd-stream messages are never split: Discord sends each as one websocket message).
    fragment: bool = False
    identify_interval_s: float = facts.IDENTIFY_INTERVAL_S
    send_limit: int = facts.SEND_LIMIT
    send_window_s: float = facts.SEND_WINDOW_S
    max_payload_bytes: int = facts.MAX_PAYLOAD_BYTES
    session_start_total: int = 1000
    #: Identifies left today (default: ``session_start_total``).
    session_start_remaining: int | None = None
    #: Milliseconds until the daily identify budget resets.
    session_start_reset_after_ms: int = 86_400_000
    #: How long a disconnected session stays resumable.
    resume_window_s: float = 180.0
    #: After op 7, the server closes the connection itself (4000) if the client has not.
    reconnect_grace_s: float = 5.0
    #: Dispatches kept per session for RESUME; older ones cannot be replayed (op 9 false).
    replay_buffer: int = 10_000
    #: Keep at most this many ``sent`` records and ``dispatched`` entries per shard (None: all).
    record_limit: int | None = None
    #: Seed of the payload generator (None: random).
    seed: int | None = None
    zlib_level: int = zlib.Z_DEFAULT_COMPRESSION
    #: MESSAGE_CREATE's ``nonce`` carries the time the event was made, in µs since the epoch (a
    #: decimal string), instead of its snowflake: for latency benchmarks (``EventFactory.stamp``).
    stamp: bool = False

    def validate(self) -> None:
        """Raise ``ValueError`` with a one-line message naming the first bad option."""

        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ValueError(msg)

        need(isinstance(self.token, str) and self.token != "", "token must be a non-empty string")
        need(0 <= self.port <= 65535, f"port must be in 0..65535, not {self.port}")
        need(self.shard_count >= 1, f"shard count must be >= 1, not {self.shard_count}")
        need(self.shard_count_multiple >= 1, "shard count multiple must be >= 1")
        need(
            self.recommended_shards is None or self.recommended_shards >= 1,
            "recommended shards must be >= 1",
        )
        need(self.max_concurrency >= 1, f"max concurrency must be >= 1, not {self.max_concurrency}")
        need(
            self.heartbeat_interval_ms >= 10,
            f"heartbeat interval must be >= 10 ms, not {self.heartbeat_interval_ms}",
        )
        need(
            self.heartbeat_timeout_s is None or self.heartbeat_timeout_s >= 0,
            "heartbeat timeout must be >= 0",
        )
        need(
            0 <= self.guilds_per_shard <= 4096,
            f"guilds per shard must be in 0..4096, not {self.guilds_per_shard}",
        )
        need(
            self.events_per_shard >= -1,
            f"events per shard must be >= 0 (or -1 for endless), not {self.events_per_shard}",
        )
        need(self.rate >= 0, f"rate must be >= 0, not {self.rate}")
        need(self.identify_interval_s >= 0, "identify interval must be >= 0")
        need(self.send_limit >= 1, "send limit must be >= 1")
        need(self.send_window_s > 0, "send window must be > 0")
        need(self.max_payload_bytes >= 1, "max payload bytes must be >= 1")
        need(self.session_start_total >= 0, "session start total must be >= 0")
        need(
            self.session_start_remaining is None
            or 0 <= self.session_start_remaining <= self.session_start_total,
            "session start remaining must be in 0..total",
        )
        need(self.session_start_reset_after_ms >= 0, "session start reset_after must be >= 0")
        need(self.resume_window_s >= 0, "resume window must be >= 0")
        need(self.reconnect_grace_s >= 0, "reconnect grace must be >= 0")
        need(self.replay_buffer >= 1, "replay buffer must be >= 1")
        need(self.record_limit is None or self.record_limit >= 1, "record limit must be >= 1")
        need(-1 <= self.zlib_level <= 9, "zlib level must be in -1..9")

    @property
    def effective_heartbeat_timeout_s(self) -> float:
        """The heartbeat timeout in force (0 = disabled)."""
        if self.heartbeat_timeout_s is not None:
            return self.heartbeat_timeout_s
        return 2 * self.heartbeat_interval_ms / 1000 + 1.0


#: The longest idle wait between two polls of the simulator's loop (see ``_tick``).
POLL_TICK_S = 0.05


class _StampedConnection(ServerConnection):
    """Records when bytes last arrived, before any handler runs: under a burst of identifies the
    handlers run one after another, and their own clock would lag arrival. On a
    :class:`~supervisor.simulator.poll_clock.PollClock` loop the arrival is the window
    ``[received_earliest, received_at]`` between the loop's last two polls."""

    received_at: float | None = None
    received_earliest: float | None = None

    def data_received(self, data: bytes) -> None:
        clock = poll_clock(self.loop)
        if clock is None:
            self.received_earliest = self.received_at = self.loop.time()
        else:
            self.received_earliest, self.received_at = clock.window()
        super().data_received(data)


# -- per-session / per-connection state --------------------------------------------------------

_T_CACHE: dict[str, bytes] = {}


def _t_bytes(t: str) -> bytes:
    b = _T_CACHE.get(t)
    if b is None:
        b = _T_CACHE[t] = ujson.dumps(t).encode()
    return b


class _Session:
    __slots__ = (
        "id", "shard", "seq", "history", "conn", "disconnected_at", "ready", "ended",
        "emitq", "emit_pending", "base_remaining", "wake", "factory", "stream_task", "count",
        "held",
    )

    def __init__(self, sid: str, shard: int, factory: payloads.EventFactory, buffer: int,
                 base_remaining: int, count: int = 0) -> None:
        self.id = sid
        self.shard = shard
        #: the shard count this session identified with
        self.count = count
        #: copies of other sets' guild events that came while this session was connected but not
        #: ready yet (READY, GUILD_CREATEs or a replay going out): sent once it is ready
        self.held: list[tuple[str, bytes]] = []
        self.seq = 0
        self.history: deque[bytes] = deque(maxlen=buffer)
        self.conn: _Conn | None = None
        self.disconnected_at: float | None = None
        self.ready = False
        self.ended = False
        self.emitq: deque[list] = deque()  # [t or None, count]
        self.emit_pending = 0
        self.base_remaining = base_remaining
        self.wake = asyncio.Event()
        self.factory = factory
        self.stream_task: asyncio.Task | None = None

    @property
    def first_retained(self) -> int:
        return self.seq - len(self.history) + 1

    def available(self) -> int:
        if self.base_remaining < 0:
            return 1 << 30
        return self.emit_pending + self.base_remaining

    def take(self) -> str | None:
        if self.emitq:
            item = self.emitq[0]
            item[1] -= 1
            self.emit_pending -= 1
            if item[1] <= 0:
                self.emitq.popleft()
            return item[0]
        if self.base_remaining > 0:
            self.base_remaining -= 1
        return None


def zstd_compressor() -> Any:
    """A zstd-stream connection's compressor, with Discord's parameters (a 64 KiB window; see
    :data:`supervisor.simulator.discord_facts.ZSTD_WINDOW_LOG`), not zstd's defaults (level 3:
    a 2 MiB window, which every client would then have to hold per connection)."""
    zstd = inflate.zstd_module()
    p = zstd.CompressionParameter
    return zstd.ZstdCompressor(
        options={
            p.compression_level: facts.ZSTD_LEVEL,
            p.window_log: facts.ZSTD_WINDOW_LOG,
            p.hash_log: facts.ZSTD_HASH_LOG,
            p.chain_log: facts.ZSTD_CHAIN_LOG,
        }
    )


class _Conn:
    __slots__ = (
        "id", "ws", "path", "query", "record", "comp", "zstd", "fragment", "rng", "shard",
        "session", "zombie", "last_heartbeat", "window", "server_close", "dropped", "closing",
        "reconnect_deadline", "hb_timeout", "count", "totals",
    )

    def __init__(
        self, cid: int, ws: ServerConnection, path: str, query: dict, record: dict,
        totals: dict[str, int] | None = None,
    ):  # fmt: skip
        self.id = cid
        #: where the bytes sent are counted (the server's counters: ``payload_bytes``, the
        #: gateway messages before compression; ``wire_bytes``, the websocket frames written)
        self.totals: dict[str, int] = totals if totals is not None else {}
        self.ws = ws
        self.path = path
        self.query = query
        self.record = record
        #: The connection's compressor: a zlib compressobj, or a ZstdCompressor if ``zstd``.
        self.comp: Any = None
        self.zstd = False
        self.fragment = False
        self.rng = random.Random(cid)
        self.shard: int | None = None
        #: the shard count of the session on this connection (None until identified/resumed)
        self.count: int | None = None
        self.session: _Session | None = None
        self.zombie = False
        self.last_heartbeat = 0.0
        self.window: deque[float] = deque()
        self.server_close: tuple[int, str] | None = None
        self.dropped = False
        self.closing = False
        self.reconnect_deadline: float | None = None
        self.hb_timeout = 0.0

    def _write(self, frames: Iterable[bytes]) -> bool:
        """Frame (and compress) ``frames`` and hand them to the transport in ONE write.

        Nothing here yields, so concurrent senders can never interleave inside the zlib stream
        or between the two halves of a fragmented message. False if the connection is not open.
        """
        ws = self.ws
        proto = ws.protocol
        if proto.state is not State.OPEN:
            return False
        comp = self.comp
        raw = 0
        if comp is None:
            for frame in frames:
                raw += len(frame)
                proto.send_text(frame)
        elif self.zstd:
            flush = comp.FLUSH_BLOCK  # the message is complete, the frame goes on
            for frame in frames:
                raw += len(frame)
                proto.send_binary(comp.compress(frame, flush))
        elif not self.fragment:
            for frame in frames:
                raw += len(frame)
                proto.send_binary(comp.compress(frame) + comp.flush(zlib.Z_SYNC_FLUSH))
        else:
            rng = self.rng
            for frame in frames:
                raw += len(frame)
                data = comp.compress(frame) + comp.flush(zlib.Z_SYNC_FLUSH)
                cut = rng.randrange(1, len(data))
                while cut > 1 and data[:cut].endswith(ZLIB_SUFFIX):
                    cut -= 1
                proto.send_binary(data[:cut])
                proto.send_binary(data[cut:])
        out = proto.data_to_send()
        totals = self.totals
        totals["payload_bytes"] = totals.get("payload_bytes", 0) + raw
        if out:
            data = out[0] if len(out) == 1 else b"".join(out)
            totals["wire_bytes"] = totals.get("wire_bytes", 0) + len(data)
            ws.transport.write(data)
        return True

    async def send_many(self, frames: Iterable[bytes]) -> None:
        """Send gateway messages in order (one transport write), then wait for the buffer to
        drain. Raises ``ConnectionClosed`` when the connection is closing or closed."""
        if not self._write(frames):
            await self.ws.send(b"", text=True)  # raises ConnectionClosed
            raise ConnectionClosedError(None, None)  # pragma: no cover - not reached
        await self._drain()

    async def send(self, frame: bytes) -> None:
        """Send one gateway message (compressed through this connection's stream, if any)."""
        await self.send_many((frame,))

    async def _drain(self) -> None:
        drain = getattr(self.ws, "drain", None)
        if drain is not None:
            await drain()
        else:  # pragma: no cover - websockets without Connection.drain
            await asyncio.sleep(0)


def _close_reason(reason: str) -> str:
    # A close reason is at most 123 bytes of UTF-8.
    data = reason.encode()[:123]
    return data.decode(errors="ignore")


def _json_response(status: int, obj: Any) -> Response:
    body = ujson.dumps(obj).encode()
    headers = Headers(
        [
            ("Date", email.utils.formatdate(usegmt=True)),
            ("Connection", "close"),
            ("Content-Length", str(len(body))),
            ("Content-Type", "application/json"),
        ]
    )
    return Response(status, http.HTTPStatus(status).phrase, headers, body)


def _as_bool(value: str | None, default: bool) -> bool:
    if value is None or value == "":
        return default
    v = value.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a boolean: {value!r}")


#: Ended sessions remembered (``Simulator.ended_sessions``): far more than a soak ends.
ENDED_SESSIONS_KEPT = 100_000

class _Limited(list):
    """A list that drops its oldest items beyond ``limit`` (None: unbounded)."""

    __slots__ = ("limit",)

    def __init__(self, limit: int | None) -> None:
        super().__init__()
        self.limit = limit

    def add(self, item: Any) -> None:
        self.append(item)
        if self.limit is not None and len(self) > self.limit * 2:
            del self[: len(self) - self.limit]

    def view(self) -> list:
        if self.limit is not None and len(self) > self.limit:
            return self[len(self) - self.limit:]
        return list(self)


class Simulator:
    """A fake Discord gateway on one asyncio loop. Use ``async with Simulator(opts) as sim``.

    Control methods (:meth:`reconnect`, :meth:`invalidate_session`, :meth:`close`,
    :meth:`zombie`, :meth:`request_heartbeat`, :meth:`drop`, :meth:`send_raw`, :meth:`emit`) act
    on the shard's current connection/session and raise ``LookupError`` when there is none.
    """

    def __init__(self, options: SimulatorOptions | None = None, **overrides: Any) -> None:
        opts = dataclasses.replace(options or SimulatorOptions(), **overrides)
        opts.validate()
        self.options = opts
        self._server: Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sweeper: asyncio.Task | None = None
        self._bg: set[asyncio.Task] = set()
        #: loop time until which the gateway refuses connections (:meth:`outage`)
        self._down_until = float("-inf")
        self._conn_ids = itertools.count(1)
        self._conns: dict[int, _Conn] = {}
        #: guild -> when all its members were last asked for (op 8, query "" and limit 0)
        self._all_members_at: dict[int, float] = {}
        #: connections still to get op 7 instead of HELLO (:meth:`reconnect_before_hello`)
        self._op7_before_hello = 0
        self._sessions: dict[str, _Session] = {}
        #: Sessions that ended (invalidated, or forgotten by an outage): id -> (shard, last seq),
        #: the oldest dropped past ENDED_SESSIONS_KEPT. A soak owes their events up to that seq.
        self.ended_sessions: dict[str, tuple[int, int]] = {}
        #: shard count -> shard -> its current session / connection. The base count's dicts
        #: are also ``_current`` and ``_shard_conn`` (the only ones without ``reshardable``).
        self._sets: dict[int, dict[int, _Session]] = {opts.shard_count: {}}
        self._set_conns: dict[int, dict[int, _Conn]] = {opts.shard_count: {}}
        self._current = self._sets[opts.shard_count]
        self._shard_conn = self._set_conns[opts.shard_count]
        self._factories: dict[int, payloads.EventFactory] = {}
        #: factories of the sessions of other counts, by (count, shard)
        self._foreign_factories: dict[tuple[int, int], payloads.EventFactory] = {}
        #: one snowflake source for every factory of another count: ids never collide
        self._foreign_flakes = payloads.SnowflakeFactory(worker=31, process=31)
        self._population: list[int] | None = None
        self._recommended = opts.recommended_shards
        #: bucket -> (earliest, latest) loop time its last accepted IDENTIFY arrived
        self._bucket_last: dict[int, tuple[float, float]] = {}
        self._remaining = (
            opts.session_start_total
            if opts.session_start_remaining is None
            else opts.session_start_remaining
        )
        self._limit_reset_at = 0.0
        self._started_at = time.time()
        # records
        self.sent = _Limited(opts.record_limit)
        self.identifies: list[dict] = []
        self.resumes: list[dict] = []
        self.connections: list[dict] = []
        self.dispatched: dict[int, _Limited] = {}
        #: the same for the sessions of other shard counts: count -> shard -> records
        self.dispatched_sets: dict[int, dict[int, _Limited]] = {}
        self._dispatch_count: dict[int, int] = {}
        self.violations: list[str] = []
        self.counters = {
            "connections": 0,
            "identifies": 0,
            "resumes": 0,
            "dispatched": 0,
            "replayed": 0,
            "violations": 0,
            # identifies whose bucket gap is under the interval only by the loop's lateness
            # (the arrival window of poll_clock): accepted, recorded with ``doubt``
            "pacing_doubts": 0,
            # whole-gateway outages (:meth:`outage`) and the connections refused while down
            "outages": 0,
            "refused_down": 0,
            # guild events sent to a session of another count than the one that made them
            "copies": 0,
            # op 8 for every member of a guild asked again within 30 s: answered RATE_LIMITED
            "rate_limited": 0,
            # what every connection was sent: the gateway messages (JSON) before transport
            # compression, and the websocket frames written (compressed, frame headers included)
            "payload_bytes": 0,
            "wire_bytes": 0,
        }
        interval = opts.heartbeat_interval_ms
        self._hello = ujson.dumps(
            {
                "t": None,
                "s": None,
                "op": int(Op.HELLO),
                "d": {"heartbeat_interval": interval, "_trace": ['["gateway-sim",{"micros":0}]']},
            }
        ).encode()
        self._ack = b'{"t":null,"s":null,"op":11,"d":null}'

    # -- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        """Bind the port and start serving."""
        if self._server is not None:
            return
        self._loop = asyncio.get_running_loop()
        opts = self.options
        self._limit_reset_at = self._loop.time() + opts.session_start_reset_after_ms / 1000
        self._server = await serve(
            self._handler,
            opts.host,
            opts.port,
            process_request=self._process_request,
            compression=None,
            ping_interval=None,
            ping_timeout=None,
            close_timeout=2,
            max_size=max(1 << 20, opts.max_payload_bytes * 4),
            max_queue=64,
            server_header="spectacles-simulator",
            create_connection=_StampedConnection,
        )
        self._sweeper = asyncio.create_task(self._sweep())
        if poll_clock(self._loop) is not None:
            # A quiet loop polls at least this often: an arrival window is then as wide as the
            # loop's busy pass, not as its idle wait (which would let a short gap pass as a doubt).
            self._bg.add(asyncio.create_task(self._tick()))
        log.info("simulator listening on %s (api %s)", self.url, self.api_url)

    async def stop(self) -> None:
        """Close every connection (1001) and stop serving."""
        if self._server is None:
            return
        server, self._server = self._server, None
        if self._sweeper:
            self._sweeper.cancel()
        try:
            server.close(close_connections=True, code=Close.GOING_AWAY, reason="simulator stopping")
        except TypeError:  # pragma: no cover - websockets < 14 has no code/reason here
            server.close(close_connections=True)
        try:
            await asyncio.wait_for(server.wait_closed(), 10)
        except asyncio.TimeoutError:  # pragma: no cover - a handler refused to finish
            log.warning("simulator: connections did not close in time")
        for task in list(self._bg):
            task.cancel()
        for session in list(self._sessions.values()):
            if session.stream_task:
                session.stream_task.cancel()

    async def __aenter__(self) -> Simulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()

    async def serve_forever(self) -> None:
        """Serve until cancelled."""
        await self.start()
        assert self._server is not None
        await self._server.wait_closed()

    @property
    def port(self) -> int:
        """The bound port."""
        if self._server is None:
            return self.options.port
        return self._server.sockets[0].getsockname()[1]

    @property
    def public_host(self) -> str:
        """The host used in handed-out URLs."""
        host = self.options.advertise_host or self.options.host
        if host in ("", "0.0.0.0", "::"):
            host = "127.0.0.1"
        return f"[{host}]" if ":" in host else host

    @property
    def url(self) -> str:
        """The gateway base URL (what ``/gateway/bot`` returns), e.g. ``ws://127.0.0.1:8765``."""
        return f"ws://{self.public_host}:{self.port}"

    @property
    def resume_url(self) -> str:
        """READY's ``resume_gateway_url``."""
        return f"ws://{self.public_host}:{self.port}{RESUME_PATH}"

    @property
    def api_url(self) -> str:
        """The REST base, e.g. ``http://127.0.0.1:8765/api/v10``."""
        return f"http://{self.public_host}:{self.port}/api/v{API_VERSION}"

    # -- records --------------------------------------------------------------------------------
    def _violation(self, text: str) -> None:
        self.violations.append(text)
        self.counters["violations"] += 1
        log.warning("violation: %s", text)

    def ready_shards(self) -> set[int]:
        """Shards whose current session is READY/RESUMED and attached to an open connection."""
        return {
            s for s, sess in self._current.items() if sess.ready and sess.conn is not None
        }

    def shard_states(self) -> dict[int, dict]:
        """Per shard: current ``session_id``, last ``seq``, ``connected``, ``connection`` id."""
        out: dict[int, dict] = {}
        for s, sess in sorted(self._current.items()):
            out[s] = {
                "session_id": sess.id,
                "seq": sess.seq,
                "connected": sess.conn is not None,
                "connection": sess.conn.id if sess.conn else None,
                "ready": sess.ready and sess.conn is not None,
            }
        return out

    def ready_sets(self) -> dict[int, list[int]]:
        """Per shard count in use: the shards whose current session is ready and connected."""
        return {
            count: sorted(s for s, sess in sessions.items() if sess.ready and sess.conn is not None)
            for count, sessions in sorted(self._sets.items())
            if sessions
        }

    def set_states(self) -> dict[int, dict[int, dict]]:
        """:meth:`shard_states` for every shard count in use (the base count included)."""
        return {
            count: {
                s: {
                    "session_id": sess.id,
                    "seq": sess.seq,
                    "connected": sess.conn is not None,
                    "connection": sess.conn.id if sess.conn else None,
                    "ready": sess.ready and sess.conn is not None,
                }
                for s, sess in sorted(sessions.items())
            }
            for count, sessions in sorted(self._sets.items())
            if sessions
        }

    def history(self, session_id: str) -> list[dict]:
        """The dispatches a session still retains for replay, decoded (``op``, ``t``, ``s``, ``d``).

        Tests compare what reached the broker with exactly what was sent.
        """
        session = self._sessions.get(session_id)
        if session is None:
            return []
        return [ujson.loads(frame) for frame in session.history]

    def snapshot(self) -> dict:
        """A deep, plain-data copy of every record. Times are ``time.time()`` floats.

        * ``sent``: every payload a client sent: ``{time, shard, conn, op, d}`` (``d["token"]``
          replaced by ``"<redacted>"``; ``shard`` None until the connection identified/resumed);
        * ``identifies``: ``{time, earliest, handled, shard, shard_count, bucket, conn, accepted,
          session_id}`` for every identify that passed validation (``accepted`` False: bucket rule
          or no starts left). ``time`` is when the loop's poll saw the bytes, ``earliest`` when the
          poll before returned (they arrived in between), ``handled`` when the handler ran; an
          entry whose bucket gap was short only by that window has ``doubt``: ``(shortest,
          longest)`` gap, and counts in ``counters["pacing_doubts"]``;
        * ``resumes``: ``{time, shard, session_id, seq, path, conn, result, replayed}``,
          ``result`` one of ``ok``, ``invalid_session``, ``invalid_seq``, ``too_old``;
        * ``connections``: ``{id, path, query, remote, compress, compression, shard, opened,
          closed, close_code, close_reason, closed_by}``, ``compress`` True for either stream
          compression, ``compression`` its name (``none`` without); ``closed_by`` ``server``,
          ``client`` or ``drop`` (server aborted TCP); ``close_code`` None when no close frame
          was exchanged;
        * ``dispatched``: ``{shard: [(session_id, seq, t), ...]}``, first-time dispatches only;
        * ``violations``: human-readable strings;
        * ``ready``: set of shards whose current session is READY/RESUMED and connected;
        * ``shards``: ``{shard: {session_id, seq, connected, connection, ready}}`` for each
          shard's current (not forgotten) session;
        * ``counters``: ``connections, identifies, resumes, dispatched, replayed, violations,
          copies`` (guild events also sent to a session of another shard count);
        * ``widest_pass_s``: the loop's longest pass between two polls (the widest arrival
          window; None when the loop has no poll clock);
        * ``session_start_limit``: as ``/gateway/bot`` returns it;
        * ``sets``: ``{count: {shard: {...}}}`` as ``shards``, for every shard count in use;
        * ``ready_sets``: ``{count: [ready shards]}``;
        * ``dispatched_sets``: ``{count: {shard: [(session_id, seq, t), ...]}}`` for the sessions
          of the counts other than ``shard_count`` (``dispatched`` has the base count's).
        """
        return {
            "sent": copy.deepcopy(self.sent.view()),
            "identifies": [dict(r) for r in self.identifies],
            "resumes": [dict(r) for r in self.resumes],
            "connections": [dict(r, query=dict(r["query"])) for r in self.connections],
            "dispatched": {s: v.view() for s, v in self.dispatched.items()},
            "violations": list(self.violations),
            "ready": self.ready_shards(),
            "shards": self.shard_states(),
            "counters": dict(self.counters),
            "widest_pass_s": None if (clock := poll_clock(self._loop)) is None else round(clock.widest, 3),
            "session_start_limit": self._session_start_limit(),
            "sets": self.set_states(),
            "ready_sets": self.ready_sets(),
            "dispatched_sets": {
                c: {s: v.view() for s, v in shards.items()} for c, shards in self.dispatched_sets.items()
            },
        }

    def stats(self) -> dict:
        """A JSON-ready summary (no token, no per-event lists)."""
        open_conns = sum(1 for r in self.connections if r["closed"] is None)
        return {
            **self.counters,
            "open_connections": open_conns,
            "dispatched_per_shard": {
                str(s): n for s, n in sorted(self._dispatch_counts().items())
            },
            "ready": sorted(self.ready_shards()),
            "shards": {str(s): v for s, v in self.shard_states().items()},
            "violation_list": self.violations[-50:],
            "session_start_limit": self._session_start_limit(),
            "shard_count": self.options.shard_count,
            "recommended_shards": self.recommended_shards,
            "ready_sets": {str(c): v for c, v in self.ready_sets().items()},
            "max_concurrency": self.options.max_concurrency,
            "url": self.url,
            "uptime_s": round(time.time() - self._started_at, 3),
        }

    def _dispatch_counts(self) -> dict[int, int]:
        return dict(self._dispatch_count)

    def _session_start_limit(self) -> dict:
        loop = self._loop
        now = loop.time() if loop else 0.0
        if loop is not None and now >= self._limit_reset_at:
            self._remaining = self.options.session_start_total
            self._limit_reset_at = now + self.options.session_start_reset_after_ms / 1000
        return {
            "total": self.options.session_start_total,
            "remaining": self._remaining,
            "reset_after": max(0, int((self._limit_reset_at - now) * 1000)),
            "max_concurrency": self.options.max_concurrency,
        }

    # -- HTTP -----------------------------------------------------------------------------------
    async def _process_request(self, ws: ServerConnection, request: Request) -> Response | None:
        parts = urlsplit(request.path)
        path = parts.path
        if path == "/api" or path.startswith("/api/"):
            return self._api(path, request)
        if path.startswith("/_sim/"):
            return await self._control_http(path[len("/_sim/"):], dict(parse_qsl(parts.query)))
        if self._loop is not None and self._loop.time() < self._down_until:
            self.counters["refused_down"] += 1
            return _json_response(503, {"message": "gateway outage", "code": 0})  # (outage)
        return None  # the websocket gateway

    def _api(self, path: str, request: Request) -> Response:
        prefix = f"/api/v{API_VERSION}"
        route = path[len(prefix):] if path.startswith(prefix + "/") else None
        if route not in ("/gateway/bot", "/gateway"):
            return _json_response(404, {"message": "404: Not Found", "code": 0})
        if route == "/gateway":
            return _json_response(200, {"url": self.url})
        auth = request.headers.get("Authorization", "")
        if not secrets.compare_digest(auth.encode(), f"Bot {self.options.token}".encode()):
            return _json_response(401, {"message": "401: Unauthorized", "code": 0})
        return _json_response(
            200,
            {
                "url": self.url,
                "shards": self.recommended_shards,
                "session_start_limit": self._session_start_limit(),
            },
        )

    async def _control_http(self, command: str, q: dict[str, str]) -> Response:
        try:
            if command == "stats":
                return _json_response(200, self.stats())
            if command == "snapshot":
                snap = self.snapshot()
                snap["ready"] = sorted(snap["ready"])
                return _json_response(200, snap)
            if command == "outage":
                result = await self.outage(
                    float(q.get("down_s", "5")), float(q.get("invalidate", "0.25")), float(q.get("cut", "0.5")),
                    int(q.get("op7", "0")), int(q.get("seed", "0")),
                )
                return _json_response(200, {"ok": True, "result": result})
            if command == "ended_sessions":
                return _json_response(200, {"ok": True, "result": self.ended_sessions})
            if command == "history":
                return _json_response(200, {"ok": True, "result": self.history(q.get("session_id", ""))})
            if command == "reconnect_before_hello":
                return _json_response(200, {"ok": True, "result": self.reconnect_before_hello(int(q.get("n", "1")))})
            if command == "set_recommended":
                if "shards" not in q:
                    return _json_response(400, {"error": "missing query parameter 'shards'"})
                return _json_response(
                    200, {"ok": True, "result": self.set_recommended_shards(int(q["shards"]))}
                )
            if command not in _CONTROL_COMMANDS:
                return _json_response(404, {"error": f"unknown command {command!r}"})
            if "shard" not in q:
                return _json_response(400, {"error": "missing query parameter 'shard'"})
            shard = int(q["shard"])
            # which set: the shard count its session identified with (default: the base count)
            count = int(q["count"]) if q.get("count") else None
            if command == "invalidate_session" or command == "invalidate":
                result = await self.invalidate_session(shard, _as_bool(q.get("resumable"), False))
            elif command == "close":
                result = await self.close(shard, int(q.get("code", Close.UNKNOWN_ERROR)),
                                          q.get("reason", ""), count=count)
            elif command == "sharding_required":
                result = await self.sharding_required(shard, count=count)
            elif command == "zombie":
                result = await self.zombie(shard, _as_bool(q.get("on"), True))
            elif command == "send_raw":
                if "data_hex" in q:
                    data: bytes | str = bytes.fromhex(q["data_hex"])
                else:
                    data = q.get("data", "")
                result = await self.send_raw(shard, data, _as_bool(q.get("compressed"), True))
            elif command == "emit":
                result = await self.emit(shard, int(q.get("n", "1")), q.get("t") or None, count=count)
            else:  # reconnect, request_heartbeat, drop
                result = await getattr(self, command)(shard)
        except LookupError as exc:
            return _json_response(404, {"error": str(exc)})
        except ConnectionClosed:
            return _json_response(409, {"error": "the connection closed meanwhile"})
        except (ValueError, TypeError) as exc:
            return _json_response(400, {"error": str(exc)})
        return _json_response(200, {"ok": True, "result": result})

    # -- websocket gateway ----------------------------------------------------------------------
    async def _handler(self, ws: ServerConnection) -> None:
        assert self._loop is not None
        request = ws.request
        parts = urlsplit(request.path if request else "/")
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        cid = next(self._conn_ids)
        remote = ws.remote_address
        record = {
            "id": cid,
            "path": parts.path or "/",
            "query": query,
            "remote": f"{remote[0]}:{remote[1]}" if remote else None,
            # True for any transport compression (what tests of zlib-stream check), and which.
            "compress": query.get("compress") in (COMPRESS_ZLIB_STREAM, COMPRESS_ZSTD_STREAM),
            "compression": query.get("compress", COMPRESS_NONE),
            "shard": None,
            "opened": time.time(),
            "closed": None,
            "close_code": None,
            "close_reason": None,
            "closed_by": None,
        }
        self.connections.append(record)
        self.counters["connections"] += 1
        conn = _Conn(cid, ws, record["path"], query, record, self.counters)
        self._conns[cid] = conn
        log.info("connection %d opened on %s", cid, record["path"])
        try:
            bad = self._check_query(query)
            if bad is not None:
                await self._close(conn, *bad)
                return
            if record["compression"] == COMPRESS_ZSTD_STREAM:
                conn.comp = zstd_compressor()
                conn.zstd = True
            elif record["compression"] == COMPRESS_ZLIB_STREAM:
                conn.comp = zlib.compressobj(self.options.zlib_level, zlib.DEFLATED, facts.ZLIB_WBITS)
                conn.fragment = self.options.fragment
            conn.last_heartbeat = self._loop.time()
            conn.hb_timeout = self.options.effective_heartbeat_timeout_s
            if self._op7_before_hello > 0:
                # Discord may send op 7 at any time, even before or instead of HELLO
                self._op7_before_hello -= 1
                record["op7_before_hello"] = True
                await conn.send(b'{"t":null,"s":null,"op":7,"d":null}')
                conn.reconnect_deadline = self._loop.time() + self.options.reconnect_grace_s
            else:
                await conn.send(self._hello)
            async for message in ws:
                if conn.closing:
                    continue
                await self._on_message(conn, message)
        except ConnectionClosed:
            pass
        except Exception:
            log.exception("simulator: connection %d handler failed", cid)
            await self._close(conn, Close.UNKNOWN_ERROR, "internal simulator error")
        finally:
            self._on_disconnect(conn)

    def _check_query(self, query: dict[str, str]) -> tuple[int, str] | None:
        v = query.get("v")
        if v != str(API_VERSION):
            return Close.INVALID_API_VERSION, f"Invalid API version: {v!r} (the simulator is v10)"
        encoding = query.get("encoding", ENCODING)
        if encoding != ENCODING:
            return Close.DECODE_ERROR, f"Unsupported encoding {encoding!r}: only json"
        compress = query.get("compress")
        if compress is not None and (compress == COMPRESS_NONE or compress not in COMPRESS_CHOICES):
            return (
                Close.DECODE_ERROR,
                f"Unsupported compress {compress!r}: only zlib-stream or zstd-stream",
            )
        if compress == COMPRESS_ZSTD_STREAM and (missing := inflate.zstd_unavailable()):
            return Close.DECODE_ERROR, missing
        return None

    async def _close(self, conn: _Conn, code: int, reason: str = "") -> None:
        """Close ``conn`` from the server side with ``code`` (idempotent)."""
        if conn.closing:
            return
        conn.closing = True
        conn.server_close = (int(code), reason)
        self._stop_stream(conn.session)
        log.info("closing connection %d (shard %s): %s %s", conn.id, conn.shard, int(code), reason)
        try:
            await conn.ws.close(int(code), _close_reason(reason))
        except Exception:  # pragma: no cover - closing an already broken connection
            pass

    def _close_soon(self, conn: _Conn, code: int, reason: str) -> None:
        self._spawn(self._close(conn, code, reason))

    def _spawn(self, coro: Any) -> asyncio.Task:
        task = asyncio.ensure_future(coro)
        self._bg.add(task)
        task.add_done_callback(self._bg.discard)
        return task

    def _on_disconnect(self, conn: _Conn) -> None:
        self._conns.pop(conn.id, None)
        p = conn.ws.protocol
        if conn.dropped:
            by, code, reason = "drop", None, None
        elif conn.server_close is not None:
            by, (code, reason) = "server", conn.server_close
        elif p.close_rcvd is not None and (p.close_rcvd_then_sent or p.close_sent is None):
            by, code, reason = "client", p.close_rcvd.code, p.close_rcvd.reason
        elif p.close_sent is not None:
            by, code, reason = "server", p.close_sent.code, p.close_sent.reason
        else:
            by, code, reason = "client", None, None
        rec = conn.record
        rec.update(closed=time.time(), close_code=code, close_reason=reason, closed_by=by)
        log.info("connection %d (shard %s) closed by %s: %s", conn.id, conn.shard, by, code)
        session = conn.session
        if session is not None:
            self._detach(session)
            if by == "client" and code in (Close.NORMAL, Close.GOING_AWAY):
                self._forget(session)
        conns = self._set_conns.get(conn.count if conn.count is not None else self.options.shard_count)
        if conn.shard is not None and conns is not None and conns.get(conn.shard) is conn:
            del conns[conn.shard]

    async def _on_message(self, conn: _Conn, message: str | bytes) -> None:
        opts = self.options
        now = self._loop.time()  # type: ignore[union-attr]
        window = conn.window
        window.append(now)
        cutoff = now - opts.send_window_s
        while window[0] <= cutoff:
            window.popleft()
        if isinstance(message, str):
            size = len(message) if message.isascii() else len(message.encode())
        else:
            size = len(message)
        if size > opts.max_payload_bytes:
            self._violation(
                f"connection {conn.id} (shard {conn.shard}) sent a {size}-byte payload "
                f"(limit {opts.max_payload_bytes}): closed {int(Close.DECODE_ERROR)}"
            )
            await self._close(conn, Close.DECODE_ERROR, "Payload too large")
            return
        try:
            payload = ujson.loads(message)
        except (ValueError, TypeError):
            await self._close(conn, Close.DECODE_ERROR, "Error while decoding payload")
            return
        op = payload.get("op") if isinstance(payload, dict) else None
        if not isinstance(op, int) or isinstance(op, bool):
            await self._close(conn, Close.DECODE_ERROR, "Error while decoding payload: no op")
            return
        d = payload.get("d")
        if isinstance(d, dict) and "token" in d:
            shown = dict(d)
            shown["token"] = "<redacted>"
        else:
            shown = d
        rec = {"time": time.time(), "shard": conn.shard, "conn": conn.id, "op": op, "d": shown}
        self.sent.add(rec)
        if len(window) > opts.send_limit:
            self._violation(
                f"connection {conn.id} (shard {conn.shard}) sent {len(window)} payloads in "
                f"{opts.send_window_s:g} s (limit {opts.send_limit}): closed "
                f"{int(Close.RATE_LIMITED)}"
            )
            await self._close(conn, Close.RATE_LIMITED, "You are being rate limited.")
            return
        if op not in CLIENT_OPS:
            await self._close(conn, Close.UNKNOWN_OPCODE, f"Unknown opcode {op}")
            return
        if op == Op.HEARTBEAT:
            conn.last_heartbeat = now
            if not conn.zombie:
                await conn.send(self._ack)
        elif op == Op.IDENTIFY or op == Op.RESUME:
            if op == Op.IDENTIFY:
                await self._on_identify(conn, d)
            else:
                await self._on_resume(conn, d)
            if rec["shard"] is None:
                rec["shard"] = conn.shard
        elif conn.session is None:
            await self._close(conn, Close.NOT_AUTHENTICATED, "Not authenticated.")
        elif op == Op.REQUEST_GUILD_MEMBERS and isinstance(d, dict):
            await self._on_request_members(conn, d)
        # ops 3, 4, 31, 43: accepted and recorded; nothing to answer.

    def _token_ok(self, token: Any) -> bool:
        if not isinstance(token, str):
            return False
        if token.startswith("Bot "):
            token = token[4:]
        return secrets.compare_digest(token.encode(), self.options.token.encode())

    async def _invalid_session(self, conn: _Conn, resumable: bool) -> None:
        await conn.send(
            b'{"t":null,"s":null,"op":9,"d":%s}' % (b"true" if resumable else b"false")
        )

    async def _on_identify(self, conn: _Conn, d: Any) -> None:
        opts = self.options
        if conn.session is not None:
            await self._close(conn, Close.ALREADY_AUTHENTICATED, "You sent more than one identify.")
            return
        if not isinstance(d, dict):
            await self._close(conn, Close.DECODE_ERROR, "IDENTIFY d must be an object")
            return
        if not self._token_ok(d.get("token")):
            await self._close(conn, Close.AUTHENTICATION_FAILED, "Authentication failed.")
            return
        shard = d.get("shard")
        count = opts.shard_count
        if shard is None:
            if count > 1:
                await self._close(conn, Close.SHARDING_REQUIRED, "Sharding required.")
                return
            shard_id = 0
        else:
            if (
                not isinstance(shard, (list, tuple))
                or len(shard) != 2
                or not all(isinstance(x, int) and not isinstance(x, bool) for x in shard)
                or not self._count_ok(shard[1])
                or not 0 <= shard[0] < shard[1]
            ):
                await self._close(conn, Close.INVALID_SHARD, "Invalid shard.")
                return
            shard_id, count = shard[0], shard[1]
        intents = d.get("intents")
        if not isinstance(intents, int) or isinstance(intents, bool) or intents < 0:
            await self._close(conn, Close.INVALID_INTENTS, "Invalid intent(s).")
            return
        if not isinstance(d.get("properties"), dict):
            await self._close(conn, Close.DECODE_ERROR, "IDENTIFY properties must be an object")
            return
        conn.shard = shard_id
        conn.count = count
        conn.record["shard"] = shard_id
        if count != opts.shard_count:
            conn.record["shard_count"] = count
        # The bucket rule counts arrivals, as Discord does: when the bytes came in, not when this
        # handler got its turn behind a burst of others. The loop knows the arrival to within its
        # last pass: [earliest, now] (poll_clock).
        handled = self._loop.time()  # type: ignore[union-attr]
        now = getattr(conn.ws, "received_at", None) or handled
        earliest = min(now, getattr(conn.ws, "received_earliest", None) or now)
        self._session_start_limit()  # refresh the daily budget
        bucket = facts.identify_bucket(shard_id, opts.max_concurrency)
        wall = time.time() - handled  # loop time -> wall time
        entry = {"time": now + wall, "earliest": earliest + wall, "handled": handled + wall, "shard": shard_id,
                 "shard_count": count, "bucket": bucket, "conn": conn.id, "accepted": False, "session_id": None}
        if self._remaining <= 0:
            self.identifies.append(entry)
            self._violation(
                f"shard {shard_id} identified with no session starts left: token reset, "
                f"closed {int(Close.AUTHENTICATION_FAILED)}"
            )
            await self._close(conn, Close.AUTHENTICATION_FAILED, "Authentication failed.")
            return
        last = self._bucket_last.get(bucket)
        if last is not None:
            # The gap lies in [shortest, longest]: short at both ends, the client wrote too early;
            # short only by the loop's lateness, it is the simulator's doubt, not the client's.
            longest, shortest = now - last[0], earliest - last[1]
            if longest < opts.identify_interval_s:
                self.identifies.append(entry)
                self._violation(
                    f"shard {shard_id} identified {now - last[1]:.3f} s after the previous identify of "
                    f"bucket {bucket} (at most one per {opts.identify_interval_s:g} s; at most "
                    f"{longest:.3f} s by the simulator's polls): op 9"
                )
                await self._invalid_session(conn, False)
                return
            if shortest < opts.identify_interval_s:
                self.counters["pacing_doubts"] += 1
                entry["doubt"] = round(shortest, 3), round(longest, 3)
        self._bucket_last[bucket] = (earliest, now)
        self._remaining -= 1
        old = self._sets.get(count, {}).get(shard_id)
        if old is not None and old.conn is not None and not old.conn.closing:
            self._violation(
                f"shard {shard_id} identified on connection {conn.id} while connection "
                f"{old.conn.id} still holds it (duplicate shard)"
            )
        session = _Session(
            secrets.token_hex(16),
            shard_id,
            self._factory(shard_id, count),
            opts.replay_buffer,
            opts.events_per_shard,
            count,
        )
        entry["accepted"] = True
        entry["session_id"] = session.id
        self.identifies.append(entry)
        self.counters["identifies"] += 1
        self._sessions[session.id] = session
        self._attach(conn, session)
        log.info("shard %d identified on connection %d (session %s)", shard_id, conn.id,
                 session.id)
        factory = session.factory
        ready = payloads.ready(
            session_id=session.id,
            resume_gateway_url=self.resume_url,
            shard_id=shard_id,
            shard_count=count,
            guild_ids=factory.guild_ids(),
        )
        await conn.send(self._dispatch(session, "READY", ujson.dumps(ready).encode()))
        for i in range(len(factory.guilds)):
            if session.conn is not conn:
                return
            d_bytes = ujson.dumps(factory.guild_create(i)).encode()
            await conn.send(self._dispatch(session, "GUILD_CREATE", d_bytes))
        if session.conn is conn:
            self._became_ready(session)

    async def _on_resume(self, conn: _Conn, d: Any) -> None:
        if conn.session is not None:
            await self._close(conn, Close.ALREADY_AUTHENTICATED, "Already authenticated.")
            return
        if not isinstance(d, dict):
            await self._close(conn, Close.DECODE_ERROR, "RESUME d must be an object")
            return
        if not self._token_ok(d.get("token")):
            await self._close(conn, Close.AUTHENTICATION_FAILED, "Authentication failed.")
            return
        sid = d.get("session_id")
        seq = d.get("seq")
        if seq is None:
            seq = 0
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
            await self._close(conn, Close.DECODE_ERROR, "RESUME seq must be an integer")
            return
        session = self._sessions.get(sid) if isinstance(sid, str) else None
        entry = {
            "time": time.time(),
            "shard": session.shard if session else None,
            "session_id": sid,
            "seq": seq,
            "path": conn.path,
            "conn": conn.id,
            "result": "ok",
            "replayed": 0,
        }
        self.resumes.append(entry)
        if session is not None:
            conn.shard = session.shard
            conn.count = session.count
            conn.record["shard"] = session.shard
            if session.count != self.options.shard_count:
                conn.record["shard_count"] = session.count
        if session is None or not self._resumable(session):
            entry["result"] = "invalid_session"
            await self._invalid_session(conn, False)
            return
        if seq > session.seq:
            entry["result"] = "invalid_seq"
            self._forget(session)
            await self._close(conn, Close.INVALID_SEQ, "Invalid seq.")
            return
        first = session.first_retained
        if seq + 1 < first:
            entry["result"] = "too_old"
            self._forget(session)
            await self._invalid_session(conn, False)
            return
        old = session.conn
        if old is not None and old is not conn:
            self._detach(session)
            self._close_soon(old, Close.UNKNOWN_ERROR, "Session resumed on another connection")
        self._attach(conn, session)
        frames = list(itertools.islice(session.history, seq + 1 - first, None))
        for i in range(0, len(frames), 256):
            await conn.send_many(frames[i:i + 256])
        entry["replayed"] = len(frames)
        self.counters["replayed"] += len(frames)
        self.counters["resumes"] += 1
        if session.conn is not conn:
            return
        log.info("shard %d resumed session %s on connection %d (%d replayed)", session.shard,
                 session.id, conn.id, len(frames))
        await conn.send(
            self._dispatch(session, "RESUMED", ujson.dumps(payloads.resumed()).encode())
        )
        if session.conn is conn:
            self._became_ready(session)

    async def _on_request_members(self, conn: _Conn, d: dict) -> None:
        session = conn.session
        assert session is not None
        try:
            gid = int(d.get("guild_id"))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return
        nonce = d.get("nonce") if isinstance(d.get("nonce"), str) else None
        if d.get("query") == "" and d.get("limit") == 0:
            # every member of a guild: at most once per 30 s per guild, else RATE_LIMITED (2025)
            assert self._loop is not None
            now = self._loop.time()
            last = self._all_members_at.get(gid)
            if last is not None and now - last < MEMBERS_ALL_INTERVAL_S:
                limited = {"opcode": int(Op.REQUEST_GUILD_MEMBERS), "retry_after": round(last + MEMBERS_ALL_INTERVAL_S - now, 3),
                           "meta": {"guild_id": str(gid), "nonce": nonce}}  # fmt: skip
                self.counters["rate_limited"] += 1
                await conn.send(self._dispatch(session, "RATE_LIMITED", ujson.dumps(limited).encode()))
                return
            self._all_members_at[gid] = now
        chunk = session.factory.members_chunk(gid, nonce)
        if chunk is not None:
            frame = self._dispatch(session, "GUILD_MEMBERS_CHUNK", ujson.dumps(chunk).encode())
            await conn.send(frame)

    # -- sessions -------------------------------------------------------------------------------
    def _count_ok(self, count: int) -> bool:
        """Whether IDENTIFY may use ``count`` (the base count; any valid one if reshardable)."""
        opts = self.options
        if count == opts.shard_count:
            return True
        return opts.reshardable and count >= 1 and count % opts.shard_count_multiple == 0

    def population(self) -> list[int]:
        """Every guild of the bot: ``guilds_per_shard`` for each shard of ``shard_count``."""
        if self._population is None:
            opts = self.options
            self._population = [
                g
                for s in range(opts.shard_count)
                for g in payloads.guild_ids_for_shard(s, opts.shard_count, opts.guilds_per_shard)
            ]
        return self._population

    def _factory(self, shard: int, count: int | None = None) -> payloads.EventFactory:
        if count is not None and count != self.options.shard_count:
            key = (count, shard)
            f = self._foreign_factories.get(key)
            if f is None:
                mine = [g for g in self.population() if facts.shard_for_guild(g, count) == shard]
                f = self._foreign_factories[key] = payloads.EventFactory(
                    shard, count, len(mine), self.options.seed, guild_ids=mine, flakes=self._foreign_flakes
                )
                f.stamp = self.options.stamp
            return f
        f = self._factories.get(shard)
        if f is None:
            f = self._factories[shard] = payloads.EventFactory(
                shard, self.options.shard_count, self.options.guilds_per_shard, self.options.seed
            )
            f.stamp = self.options.stamp
        return f

    def _resumable(self, session: _Session) -> bool:
        if session.ended:
            return False
        if session.conn is not None or session.disconnected_at is None:
            return True
        assert self._loop is not None
        return self._loop.time() - session.disconnected_at <= self.options.resume_window_s

    def _attach(self, conn: _Conn, session: _Session) -> None:
        conn.session = session
        session.conn = conn
        session.disconnected_at = None
        self._sets.setdefault(session.count, {})[session.shard] = session
        self._set_conns.setdefault(session.count, {})[session.shard] = conn

    def _detach(self, session: _Session) -> None:
        self._stop_stream(session)
        conn = session.conn
        if conn is not None:
            conn.session = None
        session.conn = None
        session.ready = False
        session.disconnected_at = self._loop.time() if self._loop else 0.0

    def _forget(self, session: _Session) -> None:
        if not session.ended and session.count == self.options.shard_count:
            self.ended_sessions[session.id] = (session.shard, session.seq)
            if len(self.ended_sessions) > ENDED_SESSIONS_KEPT:
                del self.ended_sessions[next(iter(self.ended_sessions))]
        session.ended = True
        self._sessions.pop(session.id, None)
        current = self._sets.get(session.count)
        if current is not None and current.get(session.shard) is session:
            del current[session.shard]
        if session.conn is not None:
            self._detach(session)
        session.history.clear()

    def _stop_stream(self, session: _Session | None) -> None:
        if session is not None and session.stream_task is not None:
            session.stream_task.cancel()
            session.stream_task = None

    def _start_stream(self, session: _Session) -> None:
        self._stop_stream(session)
        if session.conn is not None:
            session.stream_task = asyncio.ensure_future(self._stream(session, session.conn))

    def _dispatch(self, session: _Session, t: str, d: bytes) -> bytes:
        """Give ``d`` the session's next seq, keep it for replay, record it; returns the frame."""
        session.seq += 1
        seq = session.seq
        frame = b'{"t":%b,"s":%d,"op":0,"d":%b}' % (_t_bytes(t), seq, d)
        session.history.append(frame)
        shard = session.shard
        if session.count == self.options.shard_count:
            records = self.dispatched
            self._dispatch_count[shard] = self._dispatch_count.get(shard, 0) + 1
        else:
            records = self.dispatched_sets.setdefault(session.count, {})
        lst = records.get(shard)
        if lst is None:
            lst = records[shard] = _Limited(self.options.record_limit)
        lst.add((session.id, seq, t))
        self.counters["dispatched"] += 1
        return frame

    def _became_ready(self, session: _Session) -> None:
        """READY and GUILD_CREATEs (or RESUMED) are out: send the copies held meanwhile, then
        start the session's own stream."""
        session.ready = True
        held, session.held = session.held, []
        conn = session.conn
        if held and conn is not None:
            conn._write([self._dispatch(session, t, d) for t, d in held])
        self._start_stream(session)

    def _fan_out(self, origin: _Session, events: list[tuple[str, bytes, int | None]]) -> None:
        """Send copies of ``origin``'s guild events to the sessions of every other shard count
        that own the guild (DMs: their shard 0). Never yields: each copy keeps its place in the
        receiving session's seq order. A session that is not ready yet holds its copies; one
        that is disconnected keeps them for its RESUME, as Discord does."""
        for count, sessions in self._sets.items():
            if count == origin.count or not sessions:
                continue
            out: dict[int, list[bytes]] = {}
            for t, d, guild in events:
                shard = 0 if guild is None else facts.shard_for_guild(guild, count)
                target = sessions.get(shard)
                if target is None or target.ended:
                    continue
                self.counters["copies"] += 1
                if target.conn is not None and not target.ready:
                    target.held.append((t, d))
                    continue
                out.setdefault(shard, []).append(self._dispatch(target, t, d))
            for shard, frames in out.items():
                conn = sessions[shard].conn
                if conn is not None and not conn.closing:
                    conn._write(frames)

    async def _stream(self, session: _Session, conn: _Conn) -> None:
        rate = self.options.rate
        loop = self._loop
        assert loop is not None
        factory = session.factory
        started = loop.time()
        produced = 0
        try:
            while True:
                if session.conn is not conn or conn.closing:
                    return
                avail = session.available()
                if avail <= 0:
                    session.wake.clear()
                    await session.wake.wait()
                    started, produced = loop.time(), 0
                    continue
                if rate > 0:
                    elapsed = loop.time() - started
                    due = int(elapsed * rate) + 1 - produced
                    if due <= 0:
                        await asyncio.sleep(max(0.0, produced / rate - elapsed))
                        continue
                    k = min(due, avail, 1000)
                else:
                    k = min(avail, _BURST)
                frames = []
                fan = len(self._sets) > 1
                events: list[tuple[str, bytes, int | None]] = []
                for _ in range(k):
                    t, d = factory.make(session.take())
                    frames.append(self._dispatch(session, t, d))
                    if fan:
                        events.append((t, d, factory.last_guild))
                if events:
                    self._fan_out(session, events)
                await conn.send_many(frames)
                produced += k
                if rate <= 0:
                    await asyncio.sleep(0)
        except ConnectionClosed:
            return

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(POLL_TICK_S)

    async def _sweep(self) -> None:
        """Heartbeat timeouts, op 7 grace periods and session expiry, checked periodically."""
        loop = self._loop
        assert loop is not None
        opts = self.options
        hb = opts.effective_heartbeat_timeout_s
        period = min(0.25, hb / 4) if hb > 0 else 0.25
        period = min(period, max(0.05, opts.reconnect_grace_s / 4))
        while True:
            await asyncio.sleep(period)
            now = loop.time()
            for conn in list(self._conns.values()):
                if conn.closing:
                    continue
                if conn.hb_timeout > 0 and now - conn.last_heartbeat > conn.hb_timeout:
                    self._violation(
                        f"connection {conn.id} (shard {conn.shard}) sent no heartbeat for "
                        f"{now - conn.last_heartbeat:.1f} s (interval "
                        f"{opts.heartbeat_interval_ms} ms): closed {int(Close.UNKNOWN_ERROR)}"
                    )
                    self._close_soon(conn, Close.UNKNOWN_ERROR, "Heartbeat timeout")
                elif conn.reconnect_deadline is not None and now >= conn.reconnect_deadline:
                    self._close_soon(conn, Close.UNKNOWN_ERROR, "Reconnect requested")
            for session in list(self._sessions.values()):
                if (
                    session.conn is None
                    and session.disconnected_at is not None
                    and now - session.disconnected_at > opts.resume_window_s
                ):
                    log.info("session %s of shard %d expired", session.id, session.shard)
                    self._forget(session)

    # -- control --------------------------------------------------------------------------------
    def _conn_for(self, shard: int, count: int | None = None) -> _Conn:
        conns = self._set_conns.get(self.options.shard_count if count is None else count, {})
        conn = conns.get(shard)
        if conn is None or conn.closing:
            of = "" if count is None else f" of {count}"
            raise LookupError(f"shard {shard}{of} has no open connection")
        return conn

    @property
    def recommended_shards(self) -> int:
        """``shards`` in ``/gateway/bot`` now."""
        return self._recommended if self._recommended is not None else self.options.shard_count

    def set_recommended_shards(self, shards: int) -> dict:
        """Change Discord's recommended shard count (``/gateway/bot`` ``shards``)."""
        shards = int(shards)
        if shards < 1:
            raise ValueError(f"shards must be >= 1, not {shards}")
        self._recommended = shards
        return {"shards": shards}

    async def sharding_required(self, shard: int, count: int | None = None) -> dict:
        """Close the shard's connection with 4011 (sharding required), as Discord does when a
        shard holds too many guilds; the session is forgotten (a fatal code)."""
        return await self.close(shard, Close.SHARDING_REQUIRED, "Sharding required.", count=count)

    def reconnect_before_hello(self, n: int = 1) -> dict:
        """The next ``n`` connections get op 7 RECONNECT instead of HELLO (documented since
        2024: op 7 can come at any time); closed (4000) after ``reconnect_grace_s`` if the
        client has not."""
        self._op7_before_hello = max(0, n)
        return {"pending": self._op7_before_hello}

    async def reconnect(self, shard: int) -> dict:
        """Send op 7 RECONNECT; close (4000) after ``reconnect_grace_s`` if the client has not."""
        conn = self._conn_for(shard)
        self._stop_stream(conn.session)
        await conn.send(b'{"t":null,"s":null,"op":7,"d":null}')
        assert self._loop is not None
        conn.reconnect_deadline = self._loop.time() + self.options.reconnect_grace_s
        return {"connection": conn.id}

    async def invalidate_session(self, shard: int, resumable: bool = False) -> dict:
        """Send op 9 ``d=resumable``. The connection becomes unauthenticated (the client may
        IDENTIFY or RESUME on it, or reconnect); a non-resumable session is forgotten."""
        conn = self._shard_conn.get(shard)
        if conn is not None and conn.closing:
            conn = None
        session = self._current.get(shard)
        if conn is None and session is None:
            raise LookupError(f"shard {shard} has no connection or session")
        if session is not None:
            if session.conn is not None:
                self._detach(session)
            if not resumable:
                self._forget(session)
        if conn is not None:
            conn.session = None
            await self._invalid_session(conn, resumable)
        return {
            "connection": conn.id if conn else None,
            "session_id": session.id if session else None,
        }

    async def close(self, shard: int, code: int, reason: str = "", count: int | None = None) -> dict:
        """Close the shard's connection with ``code``; 4007/4009 (and fatal codes) also forget
        the session, any other code leaves it resumable. ``count``: the shard of that set (for
        a reshardable simulator; default the base count)."""
        conn = self._conn_for(shard, count)
        code = int(code)
        if not (code in (1000, 1001) or 3000 <= code <= 4999):
            raise ValueError(f"cannot close with code {code}")
        session = conn.session
        if session is not None and (
            code in facts.REIDENTIFY_CLOSE_CODES or code in facts.FATAL_CLOSE_CODES
        ):
            self._forget(session)
        await self._close(conn, code, reason)
        return {"connection": conn.id}

    async def zombie(self, shard: int, on: bool = True) -> dict:
        """Stop (or resume) answering heartbeats on the shard's current connection."""
        conn = self._conn_for(shard)
        conn.zombie = bool(on)
        return {"connection": conn.id, "zombie": conn.zombie}

    async def request_heartbeat(self, shard: int) -> dict:
        """Send server op 1: the client must heartbeat at once."""
        conn = self._conn_for(shard)
        await conn.send(b'{"t":null,"s":null,"op":1,"d":null}')
        return {"connection": conn.id}

    async def drop(self, shard: int) -> dict:
        """Abort the TCP connection without a close frame (the session stays resumable)."""
        conn = self._conn_for(shard)
        self._abort(conn)
        return {"connection": conn.id}

    def _abort(self, conn: _Conn) -> None:
        conn.dropped = True
        conn.closing = True
        self._stop_stream(conn.session)
        conn.ws.transport.abort()

    async def outage(self, down_s: float = 5.0, invalidate: float = 0.25, cut: float = 0.5,
                     op7: int = 0, seed: int = 0) -> dict:
        """A whole-gateway outage, as Discord has them: every connection ends at once (a ``cut``
        fraction without a close frame, the others closed 4000 "Unknown error", resumable), an
        ``invalidate`` fraction of the sessions is forgotten (their RESUME meets op 9), new
        connections are refused (HTTP 503) for ``down_s`` seconds, and the first ``op7``
        connections after that get op 7 instead of HELLO. Returns the shards of each kind."""
        if not (0.0 <= invalidate <= 1.0 and 0.0 <= cut <= 1.0 and down_s >= 0 and op7 >= 0):
            raise ValueError("outage: fractions in 0..1, down_s and op7 >= 0")
        assert self._loop is not None
        rng = random.Random(seed)
        self._down_until = self._loop.time() + down_s
        invalidated: list[int] = []
        for sessions in self._sets.values():
            for shard, session in sorted(sessions.items()):
                if rng.random() < invalidate:
                    invalidated.append(shard)
                    self._forget(session)
        dropped: list[int] = []
        closed: list[int] = []
        for conn in list(self._conns.values()):
            if conn.closing:
                continue
            if rng.random() < cut:
                dropped.append(conn.shard if conn.shard is not None else -1)
                self._abort(conn)
            else:
                closed.append(conn.shard if conn.shard is not None else -1)
                self._close_soon(conn, Close.UNKNOWN_ERROR, "gateway outage")
        self._op7_before_hello = int(op7)
        self.counters["outages"] += 1
        log.warning("simulated gateway outage: %d cut, %d closed, %d sessions invalidated, down %.1f s",
                    len(dropped), len(closed), len(invalidated), down_s)
        return {"invalidated": sorted(invalidated), "dropped": sorted(dropped), "closed": sorted(closed)}

    async def send_raw(self, shard: int, data: bytes | str, compressed: bool = True) -> dict:
        """Send an arbitrary frame. On a compressed connection with ``compressed`` the data goes
        through the connection's stream (zlib: compressobj and a sync flush; zstd: the
        ZstdCompressor and a block flush), as one binary message; otherwise it is sent as is
        (``str`` as a text frame, ``bytes`` as a binary frame)."""
        conn = self._conn_for(shard)
        if compressed and conn.comp is not None:
            raw = data.encode() if isinstance(data, str) else bytes(data)
            if conn.zstd:
                out = conn.comp.compress(raw, conn.comp.FLUSH_BLOCK)
            else:
                out = conn.comp.compress(raw) + conn.comp.flush(zlib.Z_SYNC_FLUSH)
            await conn.ws.send(out)
            size = len(out)
        else:
            await conn.ws.send(data)
            size = len(data)
        return {"connection": conn.id, "bytes": size}

    async def emit(self, shard: int, n: int, t: str | None = None, count: int | None = None) -> dict:
        """Queue ``n`` more stream events (type ``t``, or the usual mix) on the shard's current
        session; they go out at once if it is connected, else after it resumes."""
        n = int(n)
        if n < 1:
            raise ValueError("n must be >= 1")
        if t is not None and (not isinstance(t, str) or not t.replace("_", "").isalnum()):
            raise ValueError(f"bad event type {t!r}")
        session = self._sets.get(self.options.shard_count if count is None else count, {}).get(shard)
        if session is None:
            raise LookupError(f"shard {shard} has no session")
        session.emitq.append([t, n])
        session.emit_pending += n
        session.wake.set()
        return {"session_id": session.id, "seq": session.seq, "queued": session.emit_pending}


#: Discord answers an op 8 for every member of a guild (query "", limit 0) at most once per
#: this long per guild; sooner, with a RATE_LIMITED dispatch.
MEMBERS_ALL_INTERVAL_S = 30.0

_CONTROL_COMMANDS = frozenset(
    {
        "reconnect",
        "invalidate_session",
        "invalidate",
        "close",
        "zombie",
        "request_heartbeat",
        "drop",
        "send_raw",
        "emit",
        "sharding_required",
    }
)
