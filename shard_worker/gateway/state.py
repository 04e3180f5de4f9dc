"""The gateway state of one shard, without I/O: frames in, actions out.

The driver (``shard_worker.gateway.connection``) owns the socket and the clock; it feeds this
machine every received frame (``receive``), calls ``on_timer`` when ``next_deadline`` passes,
tells it when an IDENTIFY was granted, and when the socket closed (``on_close``). The machine
answers with actions: payloads to send, dispatches to publish, a close to perform, or a verdict
on how to reconnect. Every Discord rule about the session lives here, so it is tested with
literal payloads and a fake clock.
"""

from __future__ import annotations

import enum
import math
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from shard_worker import jsonlib
from shard_worker.config import SavedSession
from shard_worker.gateway import frames
from shard_worker.gateway.inflate import InflateError, Inflater, new_inflater
from shard_worker.gateway.protocol import (
    INVALID_SESSION_WAIT_S,
    MAX_PAYLOAD_BYTES,
    RESUMABLE_CLOSE,
    SESSION_ENDING_CLOSE,
    CloseAction,
    Op,
    close_action,
    compress_name,
    describe_close,
    gateway_url,
)

#: A seq at or above this is ignored: a heartbeat carrying it would not fit in 4096 bytes.
_MAX_SEQ = 2**63
#: The ``"s"`` of a dispatch whose JSON does not decode, found in its bytes.
_SEQ_IN_BAD_FRAME = re.compile(rb'"s"\s*:\s*([0-9]{1,18})\b')
_DISPATCH_IN_BAD_FRAME = re.compile(rb'"op"\s*:\s*0\b')
_FAST_PREFIX = frames.FAST_PREFIX.match
#: If HELLO does not arrive this long after the socket opened, drop the connection.
HELLO_TIMEOUT_S = 20.0
IDENTIFY_PROPERTIES = {"os": "linux", "browser": "spectacles-supervisor", "device": "spectacles-supervisor"}


class Phase(enum.Enum):
    DISCONNECTED = "disconnected"
    AWAITING_HELLO = "connecting"
    IDENTIFYING = "identifying"
    RESUMING = "resuming"
    READY = "ready"
    CLOSING = "closing"
    FATAL = "fatal"


#: Phases in which a received message is ignored (a tuple: ``in`` tests identity first, in C).
_NOT_READING = (Phase.CLOSING, Phase.DISCONNECTED, Phase.FATAL)


# -- actions ----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Send:
    """Write this text frame. Control payloads (heartbeat, identify, resume) may use the reserve."""

    text: str = field(repr=False)  # IDENTIFY and RESUME carry the token
    op: int = 0


@dataclass(slots=True)  # not frozen: built once per event, and frozen __init__ costs 3x
class Dispatch:
    """An op-0 event to publish: ``d`` is the bytes ``frame[start:end]`` as Discord sent them,
    not yet checked whole (``body()`` does, only for what is published; see ``frames``).
    ``start`` < 0: not located (another key order); ``body()`` takes the slow path."""

    t: str
    seq: int | None
    frame: bytes = field(repr=False)
    start: int = -1
    end: int = -1

    def body(self) -> bytes | None:
        """``d``'s exact bytes, one complete JSON value; None if they cannot be delimited."""
        if self.start >= 0:
            body = self.frame[self.start : self.end]
            if frames.is_json_value(body):
                return body
        return frames.slow_body(self.frame)

    def d(self) -> Any:
        """``d`` decoded (tests and READY; the hot path never decodes)."""
        body = self.body()
        return None if body is None else jsonlib.loads(body)


@dataclass(frozen=True, slots=True)
class RequestIdentify:
    """Ask the identify gate; call ``identify_granted`` once it admits this shard."""


@dataclass(frozen=True, slots=True)
class CloseConnection:
    """Close the socket with ``code``; then call ``on_close``."""

    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class SessionReady:
    """The session is usable (READY or RESUMED); reset backoff, start sending commands."""

    resumed: bool
    session_id: str


@dataclass(frozen=True, slots=True)
class SkippedFrame:
    """A frame that decoded to no gateway payload (bad JSON, not an object, no ``op``): it is
    counted and skipped, never published. ``seq`` is the seq found in it, if any (the session's
    seq moves past it, so a RESUME does not have Discord send it again)."""

    reason: str
    seq: int | None


@dataclass(frozen=True, slots=True)
class Reconnect:
    """Open a new connection after ``delay`` s; ``resume`` tells whether the session survives;
    ``asked``: Discord asked for it (op 7, at any time, even before or instead of HELLO): not a
    failure of the connection, so the driver's backoff does not grow."""

    resume: bool
    delay: float
    reason: str
    asked: bool = False


@dataclass(frozen=True, slots=True)
class Fatal:
    """Never reconnect this shard: ``code`` says why (bad token, shard, intents...)."""

    code: int
    reason: str


def _is_ws_url(url: Any) -> bool:
    """A ``resume_gateway_url`` we can connect to later (anything else: identify anew)."""
    if not isinstance(url, str):
        return False
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        return False
    return parts.scheme in ("ws", "wss") and bool(parts.hostname)


class ShardMachine:
    """Protocol state of one shard across all its connections."""

    def __init__(
        self,
        shard_id: int,
        shard_count: int,
        token: str,
        *,
        intents: int = 0,
        compress: bool | str = True,
        large_threshold: int | None = None,
        presence: dict | None = None,
        identify_extra: dict | None = None,
        session: SavedSession | None = None,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.shard_id = shard_id
        self.shard_count = shard_count
        self._token = token
        self.intents = intents
        #: The transport compression: zlib-stream, zstd-stream or none (a bool: zlib-stream/none).
        self.compress = compress_name(compress)
        self.large_threshold = large_threshold
        self.presence = presence
        #: Further IDENTIFY fields Discord may add (a ``capabilities`` bit field...): sent as
        #: given, never in place of the fields this machine owns.
        self.identify_extra = dict(identify_extra or {})
        self._rng = rng

        # Session state: survives reconnects while resumable.
        self.session_id: str | None = session.session_id if session else None
        self.seq: int | None = session.seq if session else None
        self.resume_url: str | None = session.resume_gateway_url if session else None
        #: Messages that were not a gateway payload, skipped (see ``receive``).
        self.bad_frames = 0

        # Connection state: reset by on_connect.
        self.phase = Phase.DISCONNECTED
        self.heartbeat_interval: float | None = None
        self._next_heartbeat: float | None = None
        self._hello_deadline: float | None = None
        self._acked = True
        self._last_heartbeat_sent: float | None = None
        #: Heartbeats written and ACKs read on this connection, and the count of ACKs that
        #: proves the last :meth:`probe` answered (None: no probe on this connection).
        self.heartbeats_sent = 0
        self.acks = 0
        self._probe: int | None = None
        self.latency: float | None = None
        self._inflater: Inflater | None = None
        self._pending_close: Reconnect | Fatal | None = None
        #: Set by the driver while it stops reading on purpose (the broker buffer is full): ACKs
        #: then wait unread in the socket, so a missing ACK proves nothing about the server.
        self.reading_paused = False
        #: Set by the driver when ``resume_gateway_url`` kept failing to connect.
        self.resume_via_gateway = False
        if presence is not None or self.identify_extra:
            self._encode(Op.IDENTIFY, self._identify_payload())  # an IDENTIFY too big fails here

    # -- queries ------------------------------------------------------------------------------
    @property
    def resumable(self) -> bool:
        return self.session_id is not None and self.resume_url is not None

    def saved_session(self) -> SavedSession | None:
        if self.session_id is None or self.resume_url is None:
            return None
        return SavedSession(self.session_id, self.seq, self.resume_url)

    def connect_url(self, gateway: str) -> str:
        """Where the next connection goes: the resume URL while the session is resumable
        (the main gateway once that URL proved unreachable; the RESUME is sent all the same)."""
        base = self.resume_url if self.resume_url and self.resumable and not self.resume_via_gateway else gateway
        return gateway_url(base, compress=self.compress)

    @property
    def next_deadline(self) -> float | None:
        """The earliest time ``on_timer`` has something to do."""
        if self._hello_deadline is not None:
            return self._hello_deadline
        return self._next_heartbeat

    # -- inputs -------------------------------------------------------------------------------
    def on_connect(self, now: float) -> None:
        """A new socket is open: per-connection state starts afresh."""
        self.phase = Phase.AWAITING_HELLO
        self.heartbeat_interval = None
        self._next_heartbeat = None
        self._hello_deadline = now + HELLO_TIMEOUT_S
        self._acked = True
        self._last_heartbeat_sent = None
        self.heartbeats_sent = self.acks = 0
        self._probe = None
        self._inflater = new_inflater(self.compress)  # a new stream context per connection
        self._pending_close = None

    def receive(self, frame: bytes | str, now: float) -> list:
        """Handle one websocket message. A bad frame never raises: a broken zlib stream ends in a
        resume (nothing after it can be read); a message that is not a gateway payload is
        skipped (:class:`SkippedFrame`), since resuming would only have it sent again."""
        if self.phase in _NOT_READING:
            return []
        text: bytes | str | None
        try:
            if isinstance(frame, bytes):
                if self._inflater is None:
                    text = frame  # uncompressed binary JSON: allowed, decode as is
                else:
                    text = self._inflater.feed(frame)
                    if text is None:
                        return []
            else:
                text = frame
        except InflateError as exc:
            return self._close(RESUMABLE_CLOSE, f"bad frame: {type(exc).__name__}", resume=True)
        if type(text) is not bytes:
            text = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else bytes(text)
        # The hot path: a dispatch in Discord's key order is not decoded at all (see frames).
        fast = _FAST_PREFIX(text)
        if fast is not None and text[-1:] == b"}":
            t = fast.group(1).decode()
            seq = int(fast.group(2))
            if seq < _MAX_SEQ and (self.seq is None or seq > self.seq):
                self.seq = seq
            if t != "READY" and t != "RESUMED":
                return [Dispatch(t, seq, text, fast.end(), len(text) - 1)]
            dispatch = Dispatch(t, seq, text, fast.end(), len(text) - 1)
            body = dispatch.body()
            if body is None:
                return [self._skip(text, "d cannot be delimited")]
            return self._on_dispatch(t, seq, jsonlib.loads(body), dispatch)
        try:
            payload = jsonlib.loads(text)
            op = payload["op"]
        except (ValueError, TypeError, KeyError, RecursionError) as exc:
            return [self._skip(text, f"{type(exc).__name__}")]
        if op == 0:  # Op.DISPATCH in another key order (or with whitespace): the slow path
            seq = payload.get("s")
            t = payload.get("t")
            if type(seq) is int and 0 <= seq < _MAX_SEQ and (self.seq is None or seq > self.seq):
                self.seq = seq
            return self._on_dispatch(t, seq, payload.get("d"), Dispatch(t, seq, text))
        return self._on_control(op, payload.get("d"), now)

    def _skip(self, text: bytes | str, why: str) -> SkippedFrame:
        self.bad_frames += 1
        raw = text.encode("utf-8", "replace") if isinstance(text, str) else bytes(text)
        seq = None
        if _DISPATCH_IN_BAD_FRAME.search(raw) and (found := _SEQ_IN_BAD_FRAME.search(raw)):
            seq = int(found.group(1))
            if self.seq is None or seq > self.seq:
                self.seq = seq
        return SkippedFrame(f"not a gateway payload ({why}, {len(raw)} bytes)", seq)

    def _on_dispatch(self, t: Any, seq: Any, d: Any, dispatch: Dispatch) -> list:
        """READY, RESUMED and dispatches off the fast path (``seq`` is already counted);
        ``d`` is decoded, ``dispatch`` carries its bytes."""
        if type(t) is not str:
            return []  # a dispatch without a name cannot be routed; seq is still counted
        if t == "READY" and isinstance(d, dict):
            sid, url = d.get("session_id"), d.get("resume_gateway_url")
            self.session_id = sid if isinstance(sid, str) else None
            self.resume_url = url if _is_ws_url(url) else None
            self.resume_via_gateway = False
            self.phase = Phase.READY
            return [dispatch, SessionReady(False, self.session_id or "")]
        if t == "RESUMED":
            self.phase = Phase.READY
            return [dispatch, SessionReady(True, self.session_id or "")]
        return [dispatch]

    def _on_control(self, op: Any, d: Any, now: float) -> list:
        if op == Op.HEARTBEAT_ACK:
            self._acked = True
            self.acks += 1
            if self._last_heartbeat_sent is not None:
                self.latency = now - self._last_heartbeat_sent
            return []
        if op == Op.HEARTBEAT:
            return [self._heartbeat(now)]
        if op == Op.HELLO:
            return self._on_hello(d, now)
        if op == Op.RECONNECT:
            return self._close(RESUMABLE_CLOSE, "server asked to reconnect (op 7)", resume=True, asked=True)
        if op == Op.INVALID_SESSION:
            if d is True and self.resumable:
                return self._close(RESUMABLE_CLOSE, "invalid session (resumable)", resume=True)
            self._forget_session()
            lo, hi = INVALID_SESSION_WAIT_S
            return self._close(
                RESUMABLE_CLOSE,
                "invalid session: identify anew",
                resume=False,
                delay=lo + self._rng() * (hi - lo),
            )
        return []  # ops we do not know are ignored: Discord may add some

    def _on_hello(self, d: Any, now: float) -> list:
        if self.phase is not Phase.AWAITING_HELLO:
            return []
        try:
            interval = float(d["heartbeat_interval"]) / 1000.0
            if not 0 < interval < math.inf:
                raise ValueError
        except (TypeError, KeyError, ValueError, OverflowError):
            return self._close(RESUMABLE_CLOSE, "bad HELLO", resume=True)
        self.heartbeat_interval = interval
        self._hello_deadline = None
        self._next_heartbeat = now + interval * self._rng()
        if self.resumable:
            self.phase = Phase.RESUMING
            return [self._encode(Op.RESUME, {"token": self._token, "session_id": self.session_id, "seq": self.seq})]
        self.phase = Phase.IDENTIFYING
        self._forget_session()  # a new session: its seq starts afresh
        return [RequestIdentify()]

    def identify_granted(self, now: float) -> list:
        """The identify gate admitted this shard: send IDENTIFY (if still on the same socket)."""
        if self.phase is not Phase.IDENTIFYING:
            return []
        return [self._encode(Op.IDENTIFY, self._identify_payload())]

    def _identify_payload(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            **self.identify_extra,
            "token": self._token,
            "properties": IDENTIFY_PROPERTIES,
            "intents": self.intents,
            "shard": [self.shard_id, self.shard_count],
        }
        if self.large_threshold is not None:
            d["large_threshold"] = self.large_threshold
        if self.presence is not None:
            d["presence"] = self.presence
        return d

    def on_timer(self, now: float) -> list:
        """Heartbeat when due; a heartbeat still unacknowledged at the next one means zombie."""
        if self._hello_deadline is not None and now >= self._hello_deadline:
            return self._close(RESUMABLE_CLOSE, "no HELLO", resume=True)
        if self._next_heartbeat is None or now < self._next_heartbeat:
            return []
        if not self._acked and not self.reading_paused:
            return self._close(RESUMABLE_CLOSE, "zombie connection: heartbeat not acknowledged", resume=True)
        self._acked = False
        self._next_heartbeat = now + self.heartbeat_interval  # type: ignore[operator]
        return [self._heartbeat(now)]

    def probe(self, now: float) -> list:
        """An extra heartbeat whose ACK proves that everything Discord sent on this connection
        before it received the heartbeat has been read (a websocket is ordered, and Discord
        answers heartbeats in order): :attr:`probe_answered` turns True with that ACK. Only on
        a READY connection (else nothing is sent). Zombie detection is unchanged: it watches
        the timer's heartbeats."""
        if self.phase is not Phase.READY:
            return []
        send = self._heartbeat(now)
        self._probe = self.heartbeats_sent
        return [send]

    @property
    def probe_answered(self) -> bool:
        """The last :meth:`probe` of this connection has its ACK."""
        return self._probe is not None and self.acks >= self._probe

    @property
    def probing(self) -> bool:
        """A probe was sent on this connection and is not answered yet."""
        return self._probe is not None and self.acks < self._probe

    def on_close(self, code: int | None) -> Reconnect | Fatal:
        """The socket is closed (by us with a pending decision, or by the server with ``code``)."""
        self._next_heartbeat = None
        self._hello_deadline = None
        self._inflater = None
        decision = self._pending_close
        self._pending_close = None
        if decision is None:
            action = close_action(code)
            reason = f"closed by server: {describe_close(code)}"
            if action is CloseAction.FATAL:
                decision = Fatal(code, reason)  # type: ignore[arg-type]
            elif action is CloseAction.REIDENTIFY:
                self._forget_session()
                decision = Reconnect(False, 0.0, reason)
            else:
                decision = Reconnect(self.resumable, 0.0, reason)
        if isinstance(decision, Fatal):
            self.phase = Phase.FATAL
        else:
            self.phase = Phase.DISCONNECTED
            if decision.resume and not self.resumable:
                decision = Reconnect(False, decision.delay, decision.reason, decision.asked)
        return decision

    def stop(self, reason: str = "shutting down (session kept)") -> list:
        """Close with a code that keeps the session resumable (shutdown, handoff, broker stall)."""
        if self.phase in (Phase.DISCONNECTED, Phase.FATAL, Phase.CLOSING):
            return []
        return self._close(RESUMABLE_CLOSE, reason, resume=True)

    def end(self, reason: str = "ending the session (reshard)") -> list:
        """Close with 1000: Discord ends the session (an old set after a reshard's cut-over:
        nothing will resume it)."""
        if self.phase in (Phase.DISCONNECTED, Phase.FATAL, Phase.CLOSING):
            return []
        return self._close(SESSION_ENDING_CLOSE, reason, resume=False)

    # -- helpers ------------------------------------------------------------------------------
    def _heartbeat(self, now: float) -> Send:
        self._last_heartbeat_sent = now
        self.heartbeats_sent += 1
        return self._encode(Op.HEARTBEAT, self.seq)

    def _encode(self, op: int, d: Any) -> Send:
        text = jsonlib.dumps({"op": op, "d": d})
        if len(text.encode()) > MAX_PAYLOAD_BYTES:  # only a huge presence could do this
            raise ValueError(f"op {op} payload over {MAX_PAYLOAD_BYTES} bytes")
        return Send(text, op)

    def _forget_session(self) -> None:
        self.session_id = None
        self.resume_url = None
        self.seq = None

    def _close(self, code: int, reason: str, *, resume: bool, delay: float = 0.0, asked: bool = False) -> list:
        self.phase = Phase.CLOSING
        self._next_heartbeat = None
        self._hello_deadline = None
        self._pending_close = Reconnect(resume, delay, reason, asked)
        return [CloseConnection(code, reason)]
