"""The I/O driver of one shard: a websocket, a clock and the broker around a ``ShardMachine``.

Per connection three small tasks run: the reader (frames → machine → publishes), the timer
(heartbeats, zombie and HELLO deadlines) and, once the session is ready, the sender (outbound
packets within Discord's send window). A connection's tasks simply end when the socket closes;
``run`` then asks the machine how to go on (resume, identify anew, or stop for good).

During a live reshard a runner has a :class:`~shard_worker.reshard.ShardCutover` that decides
what of its dispatches is published (held back, dropped, marked); outside one the read loop
pays a single attribute test per dispatch for it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import time as time_module  # ``time`` is shadowed by the loop's clock in ``_read``
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import websockets
from websockets.asyncio.client import ClientConnection, connect

from shard_worker import jsonlib
from shard_worker.event_selection import EventFilter, as_filter
from shard_worker.gateway.backoff import exponential_backoff
from shard_worker.gateway.protocol import (
    IDENTIFY_INTERVAL_S,
    IDENTIFY_MARGIN_S,
    RESUMABLE_CLOSE,
    identify_bucket,
)
from shard_worker.gateway.send_window import SendWindow
from shard_worker.gateway.state import (
    CloseConnection,
    Dispatch,
    Fatal,
    Phase,
    Reconnect,
    RequestIdentify,
    Send,
    SessionReady,
    ShardMachine,
    SkippedFrame,
)
from shard_worker.gateway.ws_connection import GatewayConnection
from shard_worker.logs import TRACE
from shard_worker.outbound import Packet
from shard_worker.reshard import Handover, Role, ShardCutover

log = logging.getLogger("shard_worker.shard")

#: ``SPECTACLES_REENCODE=1``: publish ``d`` decoded and re-encoded by the JSON codec instead of
#: Discord's own bytes (what every other gateway does; kept to measure what passthrough saves).
REENCODE = os.environ.get("SPECTACLES_REENCODE", "") not in ("", "0")
#: Largest websocket message accepted (uncompressed READY payloads of big bots are large).
MAX_FRAME_BYTES = 64 * 1024 * 1024
CONNECT_TIMEOUT_S = 15.0
#: A shard waiting for room in the broker buffer reports "stalled" only after this long: under a
#: full stream it waits for room many times a second, for milliseconds each.
STALL_REPORT_AFTER_S = 1.0
CLOSE_TIMEOUT_S = 3.0
#: Reconnects Discord asks for (op 7) in a row, without a READY or RESUMED between them, that
#: are made at once; past them the backoff applies (a gateway that keeps asking is failing).
ASKED_RECONNECTS_FREE = 3
#: After this many failed connections to ``resume_gateway_url``, resume via the main gateway URL.
RESUME_URL_ATTEMPTS = 3
#: Distinct event types counted by name in one process; later ones count as :data:`OTHER_TYPE`.
#: Discord sends about 80 types: the bound only stops a broken gateway from growing the
#: counters (and the metrics' ``type`` label) without limit.
MAX_EVENT_TYPES = 256
OTHER_TYPE = "_OTHER"


def count_type(counts: dict[str, int], t: str) -> None:
    """``counts[t] += 1`` for a type not counted yet, within :data:`MAX_EVENT_TYPES`."""
    if t in counts or len(counts) < MAX_EVENT_TYPES:
        counts[t] = counts.get(t, 0) + 1
    else:
        counts[OTHER_TYPE] = counts.get(OTHER_TYPE, 0) + 1


@dataclass(frozen=True)
class Permit:
    """Leave to send one IDENTIFY: not before ``not_before``, not after ``expires``
    (``time.monotonic()`` values; ``expires`` None: it does not expire)."""

    not_before: float = 0.0
    expires: float | None = None

    def expired(self, now: float) -> bool:
        return self.expires is not None and now > self.expires


class IdentifyGate(Protocol):
    async def acquire(self, shard_id: int) -> Permit:
        """Return a permit for this shard's next IDENTIFY (it may lie a little in the future)."""

    def identify_sent(self, shard_id: int, at: float) -> None:
        """The IDENTIFY of ``shard_id`` was written at ``at`` (``time.monotonic()``)."""


class Publisher(Protocol):
    def publish_event(self, shard_id: int, session_id: str | None, t: str, seq: int | None, body: bytes) -> None: ...
    def publish_marked(
        self, shard_id: int, session_id: str | None, t: str, seq: int | None, body: bytes, headers: dict[str, int]
    ) -> None: ...
    def has_room(self) -> bool: ...
    async def wait_room(self) -> None: ...


class LocalIdentifyGate:
    """One IDENTIFY per ``interval`` per bucket ``shard_id % max_concurrency``, in one process,
    timed from each IDENTIFY's write."""

    def __init__(self, max_concurrency: int, interval: float = IDENTIFY_INTERVAL_S + IDENTIFY_MARGIN_S) -> None:
        self.max_concurrency = max(1, max_concurrency)
        self.interval = interval
        self._locks: dict[int, asyncio.Lock] = {}
        self._last: dict[int, float] = {}

    async def acquire(self, shard_id: int) -> Permit:
        bucket = identify_bucket(shard_id, self.max_concurrency)
        lock = self._locks.setdefault(bucket, asyncio.Lock())
        async with lock:
            while (wait := self._last.get(bucket, float("-inf")) + self.interval - time.monotonic()) > 0:
                await asyncio.sleep(wait)
            # Held until identify_sent moves it to the real write time.
            self._last[bucket] = time.monotonic()
        return Permit()

    def identify_sent(self, shard_id: int, at: float) -> None:
        bucket = identify_bucket(shard_id, self.max_concurrency)
        self._last[bucket] = max(self._last.get(bucket, at), at)


class Outbox:
    """Packets waiting for a shard's socket; a packet that failed to go is put back in front."""

    def __init__(self) -> None:
        self._items: deque[tuple[Packet, Callable[[], None]]] = deque()
        self._event = asyncio.Event()

    def __len__(self) -> int:
        return len(self._items)

    def put(self, packet: Packet, ack: Callable[[], None]) -> None:
        self._items.append((packet, ack))
        self._event.set()

    def take_all(self) -> list[tuple[Packet, Callable[[], None]]]:
        """Empty the outbox (the shard cannot send them: they go back to RabbitMQ)."""
        items = list(self._items)
        self._items.clear()
        return items

    def put_back(self, item: tuple[Packet, Callable[[], None]]) -> None:
        self._items.appendleft(item)
        self._event.set()

    async def get(self) -> tuple[Packet, Callable[[], None]]:
        while not self._items:
            self._event.clear()
            await self._event.wait()
        return self._items.popleft()


class ShardRunner:
    """Keeps one shard connected until stopped or a fatal close."""

    def __init__(
        self,
        machine: ShardMachine,
        gateway: str,
        publisher: Publisher,
        gate: IdentifyGate,
        *,
        events: frozenset[str] | EventFilter | None = None,
        on_state: Callable[[ShardRunner, str], None] | None = None,
        stall_timeout: float = 30.0,
        received_by_type: dict[str, int] | None = None,
        published_by_type: dict[str, int] | None = None,
        rate_limited_by_opcode: dict[str, int] | None = None,
    ) -> None:
        """``events``: the types to publish (None: every one), or an ``EventFilter`` (usually one
        shared by every shard of the process: ``--events auto`` learns per process).
        ``received_by_type`` / ``published_by_type``: counters by event type, usually one pair
        shared by every shard of the process (per-shard counts by type do not scale)."""
        self.machine = machine
        self.shard_id = machine.shard_id
        self.gateway = gateway
        self.publisher = publisher
        self.gate = gate
        #: ``events[t]`` is True for a type not to publish: one dict lookup per dispatch.
        self.events = as_filter(events)
        self.on_state = on_state or (lambda runner, state: None)
        self.stall_timeout = stall_timeout
        self._stalled = False
        self.outbox = Outbox()
        self.ready = asyncio.Event()
        self.fatal: Fatal | None = None
        self._ws: ClientConnection | None = None
        self._window = SendWindow()
        self._stopping = False
        self._backoff = exponential_backoff()
        #: reconnects Discord asked for (op 7) since the last READY/RESUMED
        self._asked_in_a_row = 0
        self._wake = asyncio.Event()
        self._closing: set[asyncio.Task] = set()
        #: An identify permit taken before connecting (see ``run``).
        self._permit: Permit | None = None
        #: Cluster mode, a lease the supervisor cannot confirm: a lost connection is not
        #: reopened until this is cleared (another node may have resumed the session, and
        #: reconnecting would take it back); the supervisor then stops the shard.
        self.guarded = False
        # counters (reported over IPC and in status)
        self.received = 0
        self.published = 0
        #: dispatches received and published, by event type (``t``)
        self.received_by_type: dict[str, int] = {} if received_by_type is None else received_by_type
        self.published_by_type: dict[str, int] = {} if published_by_type is None else published_by_type
        #: RATE_LIMITED dispatches by the opcode Discord refused (shared like the counters above)
        self.rate_limited_by_opcode: dict[str, int] = {} if rate_limited_by_opcode is None else rate_limited_by_opcode
        self.filtered = 0
        self.reconnects = 0
        self.identifies = 0
        self.resumes = 0
        self.sent = 0
        #: A reshard's handover for this shard (``shard_worker.reshard``), else None.
        self.cutover: ShardCutover | None = None
        #: The cut-over of a reshard waits for a probe's ACK (:meth:`probe`); set when it came.
        self._probing = False
        self._probe_timer: asyncio.TimerHandle | None = None
        self.probe_answered = asyncio.Event()
        #: Called with this runner when its probe is answered (the worker reports it).
        self.on_probe_answered: Callable[[ShardRunner], None] | None = None

    # -- live reshard -------------------------------------------------------------------------
    @property
    def closing_tasks(self) -> int:
        """Connections being closed in the background (each ends within its close timeout)."""
        return len(self._closing)

    def hold_events(self, hold_s: float) -> ShardCutover:
        """A new set's shard: hold dispatches back until :meth:`cut` (returns the cut-over)."""
        self.cutover = ShardCutover(Role.NEW, self._publish_cut, hold_s=hold_s)
        return self.cutover

    def cut(self, role: Role, handover: Handover) -> ShardCutover | None:
        """The supervisor's cut-over order: a new set's shard publishes what it held back by
        the rule; an old set's shard starts applying it and probes at ``T`` (it publishes until
        the probe's ACK). Returns the cut-over, or None for a new set's shard that was not
        holding (nothing to do)."""
        cutover = self.cutover
        if role is Role.NEW:
            if cutover is None or not cutover.holding:
                return None
            cutover.cut(handover)
            return cutover
        self.cutover = ShardCutover(Role.OLD, self._publish_cut, handover=handover)
        self.probe_answered.clear()
        self.cancel_cut()
        delay = max(0.0, handover.cut_at - time.monotonic())
        self._probe_timer = asyncio.get_running_loop().call_later(delay, self.probe)
        return self.cutover

    def cancel_cut(self) -> None:
        """The reshard was aborted before ``T``: no probe, plain publishing again."""
        if self._probe_timer is not None:
            self._probe_timer.cancel()
            self._probe_timer = None
        self._probing = False

    def probe(self) -> None:
        """Send a heartbeat whose ACK proves everything Discord sent before it has been read
        (``ShardMachine.probe``); :attr:`probe_answered` is set once it came. Without a READY
        connection now, the probe goes once the session is READY again (a resume's replay
        comes before RESUMED)."""
        if self.probe_answered.is_set():
            return
        self._probing = True
        ws = self._ws
        if ws is None:
            return
        for action in self.machine.probe(asyncio.get_running_loop().time()):
            task = asyncio.ensure_future(self._send_control(ws, action))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    def _probe_done(self) -> None:
        self._probing = False
        cutover = self.cutover
        if cutover is not None and cutover.role is Role.OLD:
            cutover.catch_up()
            log.info("shard %d: caught up at the cut-over (everything Discord sent before T read)", self.shard_id)
        elif cutover is not None:
            cutover.old_done = True
        self.probe_answered.set()
        if self.on_probe_answered is not None:
            self.on_probe_answered(self)

    def _publish_cut(self, session_id: str | None, t: str, seq: int | None, body: bytes, headers: dict[str, int]) -> None:
        self.publisher.publish_marked(self.shard_id, session_id, t, seq, body, headers)
        self.published += 1
        try:
            self.published_by_type[t] += 1
        except KeyError:
            count_type(self.published_by_type, t)

    @property
    def state(self) -> str:
        return self.machine.phase.value

    # -- lifecycle ----------------------------------------------------------------------------
    async def run(self) -> Fatal | None:
        loop = asyncio.get_running_loop()
        failures = 0  # consecutive connection failures
        while not self._stopping:
            if not self.machine.resumable and (self._permit is None or self._permit.expired(time.monotonic())):
                # A new session: wait for our identify turn *before* connecting, so that a
                # thousand shards do not all hold idle sockets (and storm the gateway with
                # handshakes) while they queue. The permit comes a little early; the IDENTIFY
                # itself waits for its not_before.
                self.on_state(self, "identifying")
                self._permit = await self._next_permit()
                if self._stopping:
                    break
            url = self.machine.connect_url(self.gateway)
            self.on_state(self, "connecting")
            try:
                ws = await connect(
                    url,
                    compression=None,
                    max_size=MAX_FRAME_BYTES,
                    ping_interval=None,  # Discord heartbeats are the liveness check
                    open_timeout=CONNECT_TIMEOUT_S,
                    close_timeout=CLOSE_TIMEOUT_S,
                    user_agent_header="DiscordBot (spectacles-supervisor, 0.1)",
                    create_connection=GatewayConnection,  # the lean read path (ws_connection)
                )
            except (OSError, ValueError, asyncio.TimeoutError, websockets.exceptions.WebSocketException) as exc:
                failures += 1
                if failures >= RESUME_URL_ATTEMPTS and self.machine.resumable and not self.machine.resume_via_gateway:
                    log.warning("shard %d: resume URL unreachable %d times; resuming via the gateway URL", self.shard_id, failures)
                    self.machine.resume_via_gateway = True
                delay = next(self._backoff)
                log.warning("shard %d: cannot connect to %s (%s); retry in %.1f s", self.shard_id, url, type(exc).__name__, delay)
                await self._sleep(delay)
                continue
            if self._stopping:
                await ws.close(RESUMABLE_CLOSE)
                break
            failures = 0
            self._ws = ws
            self._window = SendWindow()
            self.machine.on_connect(loop.time())
            decision = await self._serve(ws)
            self._ws = None
            del ws  # a closed connection is a cycle: nothing here keeps it through the backoff
            self.ready.clear()
            if isinstance(decision, Fatal):
                self.fatal = decision
                log.error("shard %d: fatal close %s; not reconnecting", self.shard_id, decision.reason)
                self.on_state(self, "fatal")
                return decision
            if self._stopping:
                break
            self.reconnects += 1
            if self._stalled:
                self._stalled = False
                log.warning("shard %d: waiting for RabbitMQ to take messages before resuming", self.shard_id)
                self.on_state(self, "stalled")
                await self._room_or_stop(None)
            if decision.asked and self._asked_in_a_row < ASKED_RECONNECTS_FREE:
                # Discord asked (op 7): not a failure; the backoff grows only past a few in a
                # row without a READY (a gateway that keeps asking is one that fails).
                self._asked_in_a_row += 1
                delay = decision.delay
            else:
                delay = max(decision.delay, next(self._backoff))
            log.info(
                "shard %d: %s; %s in %.1f s",
                self.shard_id,
                decision.reason,
                "resuming" if decision.resume else "identifying anew",
                delay,
            )
            self.on_state(self, "disconnected")
            while self.guarded and not self._stopping:
                await self._sleep(0.25)  # wait for the supervisor: stop, or the lease confirmed
            await self._sleep(delay)
        self.on_state(self, "stopped")
        return None

    async def stop(self, end: bool = False) -> None:
        """Close with a code that keeps the session resumable (``end``: with 1000, which ends
        it: an old set after a reshard), and return from ``run``."""
        self._stopping = True
        ws = self._ws
        for action in self.machine.end() if end else self.machine.stop():
            if isinstance(action, CloseConnection) and ws is not None:
                await self._close(ws, action)
        self._wake.set()

    async def _sleep(self, delay: float) -> None:
        if delay <= 0 or self._stopping:
            return
        self._wake.clear()
        try:
            await asyncio.wait_for(self._wake.wait(), delay)
        except asyncio.TimeoutError:
            pass

    # -- one connection -----------------------------------------------------------------------
    async def _serve(self, ws: ClientConnection) -> Reconnect | Fatal:
        timer = asyncio.create_task(self._timer(ws), name=f"shard-{self.shard_id}-timer")
        tasks: list[asyncio.Task] = [timer]
        try:
            await self._read(ws, tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        return self.machine.on_close(ws.close_code if ws.close_code is not None else 1006)

    async def _read(self, ws: ClientConnection, tasks: list[asyncio.Task]) -> None:
        machine = self.machine
        publisher = self.publisher
        events = self.events
        shard_id = self.shard_id
        time = asyncio.get_running_loop().time
        trace = log.isEnabledFor(TRACE)
        reencode = REENCODE
        received_by_type = self.received_by_type
        published_by_type = self.published_by_type
        monotonic = time_module.monotonic  # the reshard's clock (one per host; see reshard)
        recv_batch = ws.recv_batch
        try:
            while True:
                batch = await recv_batch()
                for frame in batch:
                    if self._probing and machine.probe_answered:  # the ACK was the last frame
                        self._probe_done()
                    for action in machine.receive(frame, time()):
                        if type(action) is Dispatch:
                            t = action.t
                            self.received += 1
                            try:
                                received_by_type[t] += 1
                            except KeyError:
                                count_type(received_by_type, t)
                            if trace:
                                log.log(TRACE, "shard %d <- %s #%s %r", shard_id, action.t, action.seq, action.frame)
                            if events is not None and events[t]:  # filtered (event_selection)
                                self.filtered += 1
                                continue
                            body = action.body()  # Discord's own bytes of d, checked whole
                            if body is None:
                                self._bad_dispatch(action)
                                continue
                            if t == "RATE_LIMITED":  # rare: Discord refused a command
                                self._rate_limited(body)
                            if reencode:
                                body = jsonlib.dumps_bytes(jsonlib.loads(body))
                            if self.cutover is None:  # the one test a dispatch pays when no reshard runs
                                publisher.publish_event(shard_id, machine.session_id, t, action.seq, body)
                                self.published += 1
                                try:
                                    published_by_type[t] += 1
                                except KeyError:
                                    count_type(published_by_type, t)
                            elif self.cutover.offer(monotonic(), machine.session_id, t, action.seq, body):
                                self.cutover = None  # past the overlap window: plain publishing again
                            if not publisher.has_room() and not await self._wait_room(ws):
                                return
                        else:
                            await self._act(ws, action, tasks)
                if self._probing and machine.probe_answered:
                    self._probe_done()
                # Drop the last batch now: an idle shard's frame would keep its payload (a
                # GUILD_CREATE of tens of KB) alive until the next dispatch.
                batch = action = frame = None
        except websockets.exceptions.ConnectionClosed:
            pass

    def _rate_limited(self, body: bytes) -> None:
        """RATE_LIMITED (published like any dispatch): counted by the opcode refused, and said
        once per occurrence (a bot asking for all members of a guild too often)."""
        try:
            d = jsonlib.loads(body)
            opcode = str(int(d["opcode"]))
        except (ValueError, TypeError, KeyError, OverflowError):
            opcode = "unknown"
        count_type(self.rate_limited_by_opcode, opcode)
        log.warning("shard %d: Discord refused an op %s command (RATE_LIMITED)", self.shard_id, opcode)

    def _bad_dispatch(self, action: Dispatch) -> None:
        """A dispatch whose ``d`` is not one whole JSON value: counted and skipped like any bad
        frame (publishing part of it would hand consumers garbage; its seq is counted)."""
        self.machine.bad_frames += 1
        log.warning(
            "shard %d: skipped dispatch %s #%s: its d is not valid JSON (%d bytes)",
            self.shard_id, action.t, action.seq, len(action.frame),
        )  # fmt: skip

    async def _wait_room(self, ws: ClientConnection) -> bool:
        """The broker buffer is full: stop reading (TCP pushes back on Discord) but keep
        heartbeating. Past ``stall_timeout``, close resumably; ``run`` then waits for room
        before it resumes. Returns False when the connection was closed."""
        self.machine.reading_paused = True
        quiet = min(STALL_REPORT_AFTER_S, self.stall_timeout)
        try:
            if await self._room_or_stop(quiet) or self._stopping:
                return not self._stopping  # a short wait under a full stream: not worth a state
            self.on_state(self, "stalled")
            if await self._room_or_stop(self.stall_timeout - quiet) or self._stopping:
                if not self._stopping:
                    self.on_state(self, self.state)
                return not self._stopping
            self._stalled = True
            for action in self.machine.stop(f"broker stalled for {self.stall_timeout:.0f} s (session kept)"):
                if isinstance(action, CloseConnection):
                    await self._close(ws, action)
            return False
        finally:
            self.machine.reading_paused = False

    async def _room_or_stop(self, timeout: float | None) -> bool:
        """Wait until the publisher has room (True), ``stop`` is called or ``timeout`` passes."""
        if self.publisher.has_room() or self._stopping:
            return self.publisher.has_room()
        room = asyncio.ensure_future(self.publisher.wait_room())
        self._wake.clear()
        wake = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait({room, wake}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            room.cancel()
            wake.cancel()
        return self.publisher.has_room()

    async def _act(self, ws: ClientConnection, action: object, tasks: list[asyncio.Task]) -> None:
        if type(action) is Send:
            await self._send_control(ws, action)
        elif type(action) is CloseConnection:
            # Not awaited here: the reader keeps draining frames (ignored now) so that the
            # server's close frame is seen promptly; the read loop ends when the socket closes.
            task = asyncio.create_task(self._close(ws, action))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        elif type(action) is RequestIdentify:
            tasks.append(asyncio.create_task(self._identify(ws, tasks), name=f"shard-{self.shard_id}-identify"))
        elif type(action) is SkippedFrame:
            # Resuming would only have Discord send it again: count it, skip it, say so.
            log.warning(
                "shard %d: skipped a frame from Discord: %s%s",
                self.shard_id,
                action.reason,
                "" if action.seq is None else f"; seq moves on to {action.seq}",
            )
        elif type(action) is SessionReady:
            self._backoff = exponential_backoff()
            self._asked_in_a_row = 0
            if action.resumed:
                self.resumes += 1
            log.info("shard %d: %s (session %s)", self.shard_id, "resumed" if action.resumed else "ready", action.session_id)
            self.ready.set()
            self.on_state(self, "ready")
            tasks.append(asyncio.create_task(self._sender(ws), name=f"shard-{self.shard_id}-sender"))
            if self._probing:  # a probe lost with the last connection: ask again on this one
                self.probe()

    async def _send_control(self, ws: ClientConnection, action: Send) -> None:
        # The redacting log filter replaces the token of IDENTIFY/RESUME in this line.
        log.log(TRACE, "shard %d -> %s", self.shard_id, action.text)
        self._window.record(asyncio.get_running_loop().time(), control=True)
        try:
            await ws.send(action.text)
        except websockets.exceptions.ConnectionClosed:
            pass

    async def _close(self, ws: ClientConnection, action: CloseConnection) -> None:
        log.info("shard %d: closing (%d %s)", self.shard_id, action.code, action.reason)
        try:
            await ws.close(action.code, action.reason)
        except Exception:  # noqa: BLE001 - the socket may already be gone; the outcome is the same
            log.debug("shard %d: close failed", self.shard_id, exc_info=True)

    async def _timer(self, ws: ClientConnection) -> None:
        loop = asyncio.get_running_loop()
        machine = self.machine
        while True:
            deadline = machine.next_deadline
            now = loop.time()
            if deadline is None or deadline > now:
                await asyncio.sleep(1.0 if deadline is None else min(1.0, deadline - now))
                continue
            for action in machine.on_timer(now):
                await self._act(ws, action, [])

    async def _next_permit(self) -> Permit:
        """The gate's next permit that has not expired yet."""
        while True:
            permit = await self.gate.acquire(self.shard_id)
            if not permit.expired(time.monotonic()):
                return permit
            # This loop was too busy to use it in time: the gate has moved on; ask again.
            log.warning("shard %d: identify permit expired before it could be used; asking again", self.shard_id)

    async def _identify(self, ws: ClientConnection, tasks: list[asyncio.Task]) -> None:
        self.on_state(self, "identifying")
        while True:
            permit, self._permit = self._permit, None
            if permit is None or permit.expired(time.monotonic()):
                permit = await self._next_permit()
            wait = permit.not_before - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            if ws.close_code is not None or self.machine.phase is not Phase.IDENTIFYING:
                self._permit = permit  # unused: the next connection may still use it
                return
            if not permit.expired(time.monotonic()):
                break
        self.identifies += 1
        for action in self.machine.identify_granted(asyncio.get_running_loop().time()):
            await self._act(ws, action, tasks)
        # Discord counts arrivals: the bucket's next IDENTIFY is timed from this write.
        self.gate.identify_sent(self.shard_id, time.monotonic())

    async def _sender(self, ws: ClientConnection) -> None:
        loop = asyncio.get_running_loop()
        while True:
            item = await self.outbox.get()
            packet, ack = item
            if getattr(ack, "stale", False):
                continue  # its channel closed: RabbitMQ delivers it again, sending it would double it
            self._window.heartbeat_interval = self.machine.heartbeat_interval
            delay = self._window.delay(loop.time())
            if delay > 0:
                self.outbox.put_back(item)
                await asyncio.sleep(delay)
                continue
            log.log(TRACE, "shard %d -> %s", self.shard_id, packet.text)
            try:
                await ws.send(packet.text)
            except (websockets.exceptions.ConnectionClosed, asyncio.CancelledError):
                self.outbox.put_back(item)
                raise
            self._window.record(loop.time())
            self.sent += 1
            ack()

    def send(self, packet: Packet, ack: Callable[[], None]) -> None:
        """Queue an outbound packet; it goes out once the session is ready, then is acked."""
        self.outbox.put(packet, ack)
