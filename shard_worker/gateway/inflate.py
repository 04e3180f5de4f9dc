"""zlib-stream decoding: one inflate context per connection, messages end with ``00 00 ff ff``."""

from __future__ import annotations

import zlib

from .protocol import ZLIB_SUFFIX

#: Refuse to buffer or inflate a single message beyond this (a broken or hostile server).
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024


class InflateError(ValueError):
    """The compressed stream is broken; the connection must be dropped (and resumed)."""


class ZlibStreamInflater:
    """Feed websocket frames in order; get complete decompressed messages out.

    A Discord message may span several websocket frames: bytes are buffered until one ends with
    the Z_SYNC_FLUSH suffix. A new connection needs a new inflater.
    """

    __slots__ = ("_inflate", "_buffer", "_max")

    def __init__(self, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
        self._inflate = zlib.decompressobj()
        self._buffer = bytearray()
        self._max = max_message_bytes

    def feed(self, frame: bytes) -> bytes | None:
        """Return the complete message ``frame`` finishes, or ``None`` while one is incomplete."""
        if not self._buffer and frame[-4:] == ZLIB_SUFFIX:
            data = frame  # the common case: one frame, one message, no copy
        else:
            self._buffer += frame
            if len(self._buffer) > self._max:
                raise InflateError(f"compressed message over {self._max} bytes")
            if self._buffer[-4:] != ZLIB_SUFFIX:
                return None
            data = bytes(self._buffer)
            self._buffer.clear()
        try:
            out = self._inflate.decompress(data, self._max)
        except zlib.error as exc:
            raise InflateError(f"broken zlib stream: {exc}") from None
        if self._inflate.unconsumed_tail:
            raise InflateError(f"inflated message over {self._max} bytes")
        return out
