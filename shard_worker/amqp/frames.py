"""Fast AMQP publishing: ``basic.publish`` frames built from cached pieces, written in batches.

pika builds three frame objects per publish and hands each to its transport separately, which
sends every chunk with its own ``send()`` system call: at tens of thousands of events per second
that was the largest single cost of the worker (see docs/BENCHMARKS.md). Here the method frame is
cached per routing key, the content header is a cached prefix plus the message id, and all frames
published during one event-loop iteration go to the transport as one buffer.

Every byte is derived from pika's own marshalling (the caches are built by pika), and the tests
compare the output with pika's frames byte for byte, so the wire format cannot drift.
"""

from __future__ import annotations

import asyncio
import struct
from typing import Any

from pika import frame, spec

_FRAME_HEADER = struct.Struct(">BHI")
_CONTENT_HEADER = struct.Struct(">HxxQ")
_FRAME_END = bytes((spec.FRAME_END,))
#: A content-header frame's header and the content header's fixed part, packed at once.
_HEADER_FRAME_START = struct.Struct(">BHIHxxQ")
#: A frame's end and the next (body) frame's header, packed at once.
_END_THEN_BODY_FRAME = struct.Struct(">BBHI")
_PLACEHOLDER = "X"  # a one-character message id, cut off to leave the prefix


def method_frame(channel: int, exchange: str, routing_key: str, mandatory: bool = False) -> bytes:
    """The marshalled ``basic.publish`` method frame (pika's own encoding).

    ``mandatory`` sets the method's first bit: RabbitMQ then returns (``basic.return``) a
    message it cannot route to any queue, before its ack (``--events auto`` learns from that).
    """
    publish = spec.Basic.Publish(exchange=exchange, routing_key=routing_key, mandatory=mandatory)
    return frame.Method(channel, publish).marshal()


def properties_prefix(properties: spec.BasicProperties) -> bytes:
    """Encoded ``properties`` with a ``message_id`` flag set but its value left off.

    ``message_id`` is the last property AMQP encodes among those we set, so the encoded
    properties of one message are ``prefix + shortstr(message_id)``.
    """
    if properties.correlation_id or properties.reply_to or properties.expiration or properties.timestamp:
        raise ValueError("only properties encoded before message_id may be set")
    if properties.type or properties.user_id or properties.app_id or properties.cluster_id:
        raise ValueError("only properties encoded before message_id may be set")
    probe = spec.BasicProperties(**{**properties.__dict__, "message_id": _PLACEHOLDER})
    encoded = b"".join(probe.encode())
    tail = bytes((1,)) + _PLACEHOLDER.encode()
    assert encoded.endswith(tail)
    return encoded[: -len(tail)]


def publish_frames(
    channel: int,
    method: bytes,
    props_prefix: bytes,
    message_id: bytes,
    body: bytes,
    body_max: int,
) -> list[bytes]:
    """The frames of one publish: method, content header, body frame(s)."""
    payload = (
        _CONTENT_HEADER.pack(spec.BasicProperties.INDEX, len(body))
        + props_prefix
        + bytes((len(message_id),))
        + message_id
    )
    frames = [method, _FRAME_HEADER.pack(spec.FRAME_HEADER, channel, len(payload)) + payload + _FRAME_END]
    for start in range(0, len(body), body_max):
        chunk = body[start : start + body_max]
        frames.append(_FRAME_HEADER.pack(spec.FRAME_BODY, channel, len(chunk)) + chunk + _FRAME_END)
    return frames


def append_publish(
    out: list[bytes],
    channel: int,
    method: bytes,
    props_prefix: bytes,
    message_id: bytes,
    body: bytes,
    body_max: int,
) -> int:
    """Append the bytes of :func:`publish_frames` to ``out`` as pieces (the body never copied
    before the one ``join`` of the flush); return the number of frames."""
    size = len(body)
    if 0 < size <= body_max:  # the hot path: two packs, one concatenation
        out += (
            method,
            _HEADER_FRAME_START.pack(
                spec.FRAME_HEADER, channel, _CONTENT_HEADER.size + len(props_prefix) + 1 + len(message_id),
                spec.BasicProperties.INDEX, size,
            ),
            props_prefix,
            bytes((len(message_id),)) + message_id,
            _END_THEN_BODY_FRAME.pack(spec.FRAME_END, spec.FRAME_BODY, channel, size),
            body,
            _FRAME_END,
        )  # fmt: skip
        return 3
    frames = publish_frames(channel, method, props_prefix, message_id, body, body_max)
    out += frames
    return len(frames)


#: The pika versions whose frames the byte-for-byte test (tests/shard_worker/amqp/test_amqp_frames.py)
#: covers; setup.cfg pins the same range. The fast path needs two of pika's internals.
PIKA_VERSIONS = (">=1.3.2", "<1.5")
_PIKA_INTERNALS = ("_adapter_emit_data", "_get_body_frame_max_length")


def check_pika() -> None:
    """Raise ``RuntimeError`` with one clear line if this pika lacks what the fast publish path
    uses (a version outside :data:`PIKA_VERSIONS`), instead of failing on the first publish."""
    import pika
    from pika.connection import Connection

    missing = [name for name in _PIKA_INTERNALS if not callable(getattr(Connection, name, None))]
    if missing:
        raise RuntimeError(
            f"pika {pika.__version__} lacks {', '.join(missing)}: install pika{','.join(PIKA_VERSIONS)}"
        )


class BatchedPublisher:
    """Publishes on one channel of a pika connection; flushes once per loop iteration.

    With ``mandatory``, every publish carries the AMQP ``mandatory`` flag (see :func:`method_frame`).
    """

    def __init__(self, connection: Any, channel: Any, exchange: str, *, mandatory: bool = False) -> None:
        self._connection = connection
        self.channel = channel
        self._number = channel.channel_number
        self._exchange = exchange
        self.mandatory = mandatory
        self._body_max = connection._body_max_length  # frame_max minus the frame overhead
        self._methods: dict[str, bytes] = {}
        self._pending: list[bytes] = []
        self._frames = 0
        self._scheduled = False
        self._loop = asyncio.get_running_loop()

    def publish(self, routing_key: str, body: bytes, props_prefix: bytes, message_id: str) -> None:
        method = self._methods.get(routing_key)
        if method is None:
            method = method_frame(self._number, self._exchange, routing_key, self.mandatory)
            self._methods[routing_key] = method
        self._frames += append_publish(
            self._pending, self._number, method, props_prefix, message_id.encode(), body, self._body_max
        )
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self.flush)

    def flush(self) -> None:
        self._scheduled = False
        pending = self._pending
        if not pending:
            return
        self._pending = []
        frames, self._frames = self._frames, 0
        connection = self._connection
        if not (self.channel.is_open and connection.is_open):
            return  # the bridge republishes whatever was not confirmed
        data = b"".join(pending)
        connection.bytes_sent += len(data)
        connection.frames_sent += frames
        connection._adapter_emit_data(data)
