"""Splitting what a websocket server sends into messages: a sans-I/O reader for the hot path.

websockets parses every frame with a generator-based parser and queues it through an
assembler: about 3 µs per frame, the largest cost of a gateway event after the JSON check
(docs/BENCHMARKS.md). This reader does only what a client needs of RFC 6455 section 5 for the
frames a server sends, in a plain loop over a buffer, at under 1 µs a frame:

- **data frames** (text, binary, continuation) are assembled into messages: a binary message
  is returned as ``bytes``, a text message as ``str`` (decoded, so checked as UTF-8), as
  websockets' ``recv`` returns them: the shard machine inflates bytes and parses text as it is;
- **control frames** (close, ping, pong) are returned whole, header included, as
  :class:`Control`: the connection hands their bytes to websockets' own protocol, which answers
  pings, acknowledges pongs and runs the closing handshake exactly as it always does;
- after a close frame nothing more is read (RFC 6455 section 5.5.1);
- a frame that breaks the protocol sets :attr:`FrameReader.error` to the close code and reason
  with which the connection fails (1002 protocol error, 1007 invalid UTF-8, 1009 too big), and
  everything after it is discarded. Frames before it are still returned.

The reader is for a client without extensions (``compression=None``: Discord compresses inside
the payload), so any reserved bit set is an error. The size of a message is checked from the
frame headers, before its payload is buffered, and a message has at most :data:`MAX_FRAGMENTS`
fragments (websockets' own bound), so a peer cannot make the reader hold more than ``max_size``
bytes of one message, nor an endless list of empty fragments.
"""

from __future__ import annotations

from typing import NamedTuple

OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA
CONTROL_OPCODES = frozenset((OP_CLOSE, OP_PING, OP_PONG))

CLOSE_PROTOCOL_ERROR = 1002
CLOSE_INVALID_DATA = 1007
CLOSE_MESSAGE_TOO_BIG = 1009

#: A control frame's payload is at most this long (RFC 6455 section 5.5).
MAX_CONTROL_PAYLOAD = 125
#: An incomplete frame longer than this is gathered as a list of chunks and joined once, so that
#: a message of several MB arriving in 64 KB reads is copied once, not once per read (and a
#: shorter one dribbling in byte by byte costs at most this many bytes copied per byte).
GATHER_ABOVE = 4 * 1024
#: Fragments of one message at most (websockets' ``MAX_FRAGMENTS``): past it, 1009.
MAX_FRAGMENTS = 4096

_FIN = 0x80
_RSV = 0x70
_MASK = 0x80


class Control(NamedTuple):
    """A control frame, ``raw`` its whole bytes (header and payload)."""

    opcode: int
    raw: bytes


class FrameReader:
    """Feed it the bytes after the HTTP handshake; it returns messages and control frames."""

    def __init__(self, max_size: int | None = None) -> None:
        self.max_size = max_size
        #: ``(close code, reason)`` once the peer broke the protocol; nothing is read after it.
        self.error: tuple[int, str] | None = None
        self._done = False  # a close frame or an error was read: discard the rest
        self._rest = b""  # the start of an incomplete frame (short)
        self._parts: list[bytes] = []  # the chunks of an incomplete long frame
        self._have = 0  # bytes in _parts
        self._need = 0  # bytes the long frame in _parts needs in all
        self._message: list[bytes] = []  # the fragments of a message in progress
        self._message_opcode = -1  # its opcode; -1 when none is in progress
        self._message_size = 0

    def feed(self, data: bytes) -> list[bytes | str | Control]:
        """Parse ``data`` (the next bytes of the stream); return what it completed, in order."""
        out: list[bytes | str | Control] = []
        if self._done:
            return out
        if self._parts:
            self._parts.append(data)
            self._have += len(data)
            if self._have < self._need:
                return out
            data = b"".join(self._parts)
            self._parts, self._have, self._need = [], 0, 0
        elif self._rest:
            data = self._rest + data
            self._rest = b""
        pos = 0
        end = len(data)
        max_size = self.max_size
        while end - pos >= 2:
            b0 = data[pos]
            b1 = data[pos + 1]
            length = b1 & 0x7F
            head = 2
            if length >= 126:
                if length == 126:
                    if end - pos < 4:
                        break
                    length = (data[pos + 2] << 8) | data[pos + 3]
                    head = 4
                else:
                    if end - pos < 10:
                        break
                    length = int.from_bytes(data[pos + 2 : pos + 10], "big")
                    head = 10
            opcode = b0 & 0x0F
            if b0 & _RSV or b1 & _MASK or length >> 63:
                return self._fail(out, CLOSE_PROTOCOL_ERROR, _header_fault(b0, b1))
            if opcode in CONTROL_OPCODES:
                if length > MAX_CONTROL_PAYLOAD or not b0 & _FIN:
                    return self._fail(out, CLOSE_PROTOCOL_ERROR, "control frame too long or fragmented")
            elif opcode > OP_BINARY:
                return self._fail(out, CLOSE_PROTOCOL_ERROR, f"invalid opcode: {opcode:#x}")
            elif (opcode == OP_CONTINUATION) != (self._message_opcode >= 0):
                return self._fail(out, CLOSE_PROTOCOL_ERROR, _sequence_fault(opcode))
            elif max_size is not None and self._message_size + length > max_size:
                return self._fail(
                    out, CLOSE_MESSAGE_TOO_BIG, f"message over {max_size} bytes ({self._message_size + length} or more)"
                )
            total = head + length
            if end - pos < total:
                if total > GATHER_ABOVE:
                    self._parts = [data[pos:]]
                    self._have = end - pos
                    self._need = total
                    return out
                break
            if opcode in CONTROL_OPCODES:
                out.append(Control(opcode, data[pos : pos + total]))
                if opcode == OP_CLOSE:
                    self._done = True
                    return out
            elif opcode == OP_BINARY and b0 & _FIN and self._message_opcode < 0:
                out.append(data[pos + head : pos + total])  # the hot path: one whole binary message
            elif not self._fragment(out, opcode, b0 & _FIN, data[pos + head : pos + total]):
                return out
            pos += total
        if pos < end:
            self._rest = data[pos:]
        return out

    def _fragment(self, out: list, opcode: int, fin: int, payload: bytes) -> bool:
        """A text frame, a fragment or a continuation (the header checked the order); False
        when it broke the protocol."""
        if opcode != OP_CONTINUATION:
            self._message_opcode = opcode
        if len(self._message) >= MAX_FRAGMENTS:
            self._fail(out, CLOSE_MESSAGE_TOO_BIG, f"over {MAX_FRAGMENTS} fragments")
            return False
        self._message.append(payload)
        self._message_size += len(payload)
        if not fin:
            return True
        message = self._message[0] if len(self._message) == 1 else b"".join(self._message)
        text = self._message_opcode == OP_TEXT
        self._message, self._message_opcode, self._message_size = [], -1, 0
        if text:
            try:
                out.append(message.decode("utf-8"))
            except UnicodeDecodeError as exc:
                self._fail(out, CLOSE_INVALID_DATA, f"{exc.reason} at position {exc.start}")
                return False
        else:
            out.append(message)
        return True

    def _fail(self, out: list, code: int, reason: str) -> list:
        self.error = (code, reason)
        self._done = True
        self._rest, self._parts, self._message = b"", [], []
        return out


def _sequence_fault(opcode: int) -> str:
    if opcode == OP_CONTINUATION:
        return "unexpected continuation frame"
    return f"expected a continuation frame, got opcode {opcode:#x}"


def _header_fault(b0: int, b1: int) -> str:
    if b0 & _RSV:
        return "reserved bits must be 0"
    if b1 & _MASK:
        return "incorrect masking: a server's frames are not masked"
    return "payload length over 2^63"
