"""Transport decompression: one streaming context per connection, fed websocket messages.

* zlib-stream (:class:`ZlibStreamInflater`): one inflate context per connection; a message ends
  with the Z_SYNC_FLUSH marker ``00 00 ff ff`` and may span several websocket messages.
* zstd-stream (:class:`ZstdStreamInflater`): one zstd frame per connection that Discord never
  ends; each websocket message is one complete gateway message, flushed at a block boundary,
  so everything a message holds decompresses at once. zstd comes from ``compression.zstd``
  (Python 3.14+) or ``backports.zstd`` (the ``zstd`` extra); :func:`zstd_unavailable` says
  when neither is there.

Both bound a message by the same ``max_message_bytes`` (compressed and decompressed), so a
broken or hostile stream costs an :class:`InflateError` (the connection resumes), never
unbounded memory.

The window is the other memory bound, per connection, and it is the server's choice: a decoder
must keep the last window's worth of output to resolve back-references.

* zlib-stream: :data:`ZLIB_WBITS` 15, a 32 KiB window, deflate's largest and what Discord's stream
  announces (its first byte, 0x78); inflate state and window hold about 40 KiB per connection.
* zstd-stream: the frame header announces the window and the decoder allocates it (plus a block
  buffer of up to 128 KiB). Discord does not document its window; the parameters a third-party
  client gives as Discord's use 64 KiB (window log 16: about 160 KiB per connection measured,
  docs/BENCHMARKS.md), and Discord's engineering blog speaks of enlarging the buffers off-peak.
  The decoder accepts windows up to :data:`ZSTD_WINDOW_LOG_MAX` (8 MiB, the largest that
  RFC 8878 recommends encoders produce and decoders support), not libzstd's default 128 MiB
  (window log 27): a stream announcing more is refused with an :class:`InflateError` that says
  so, and a connection costs at most about 8.2 MiB of decoder.
"""

from __future__ import annotations

import zlib
from typing import Any, Protocol

from shard_worker.gateway.protocol import (
    COMPRESS_NONE,
    COMPRESS_ZLIB_STREAM,
    COMPRESS_ZSTD_STREAM,
    ZLIB_SUFFIX,
)

try:  # Python 3.14+: zstd in the standard library (absent if CPython was built without libzstd)
    from compression import zstd as _zstd
except ImportError:  # pragma: no cover - depends on the Python version
    try:
        from backports import zstd as _zstd  # the same API for Python 3.9-3.13
    except ImportError:
        _zstd = None

#: What to tell a user who asked for zstd-stream on an install without a zstd library.
ZSTD_MISSING = (
    "zstd-stream needs a zstd library: Python 3.14+, or "
    "pip install 'spectacles-supervisor[zstd]' (backports.zstd)"
)

#: Refuse to buffer or inflate a single message beyond this (a broken or hostile server).
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024

#: zlib-stream's inflate window: 2**15 bytes (32 KiB), the window of Discord's deflate stream.
ZLIB_WBITS = 15
#: The largest zstd window accepted: 2**23 bytes (8 MiB). Discord's streams announce 64 KiB (window
#: log 16, as far as is known: Discord does not document it); RFC 8878 recommends that encoders
#: need no more than 8 MiB and decoders accept up to 8 MiB.
ZSTD_WINDOW_LOG_MAX = 23


class InflateError(ValueError):
    """The compressed stream is broken; the connection must be dropped (and resumed)."""


class Inflater(Protocol):
    """What the shard machine feeds each binary websocket message to (one per connection)."""

    def feed(self, frame: bytes) -> bytes | None:
        """The complete message ``frame`` finishes, or ``None`` while none is complete; raises
        :class:`InflateError` when the stream is broken or a message is over the bound."""


class ZlibStreamInflater:
    """Feed websocket frames in order; get complete decompressed messages out.

    A Discord message may span several websocket frames: bytes are buffered until one ends with
    the Z_SYNC_FLUSH suffix. A new connection needs a new inflater.
    """

    __slots__ = ("_inflate", "_buffer", "_max")

    def __init__(self, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
        self._inflate = zlib.decompressobj(ZLIB_WBITS)
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


def zstd_unavailable() -> str | None:
    """``None`` when zstd-stream can be used, else the one-line reason (:data:`ZSTD_MISSING`)."""
    return ZSTD_MISSING if _zstd is None else None


def zstd_module() -> Any:
    """The zstd module in use (``compression.zstd`` or ``backports.zstd``: the same API), for
    the simulator's compressor and the tests. Raises ``RuntimeError`` when there is none."""
    if _zstd is None:
        raise RuntimeError(ZSTD_MISSING)
    return _zstd


def new_zstd_decompressor() -> Any:
    """A zstd decompression context that refuses windows over :data:`ZSTD_WINDOW_LOG_MAX`."""
    if _zstd is None:
        raise RuntimeError(ZSTD_MISSING)
    return _zstd.ZstdDecompressor(
        options={_zstd.DecompressionParameter.window_log_max: ZSTD_WINDOW_LOG_MAX}
    )


class ZstdStreamInflater:
    """Feed zstd-stream websocket messages in order; get one decompressed message per feed.

    Discord compresses a connection as one zstd frame that it never ends, and flushes it at the
    end of every gateway message (a block boundary, not a frame end): each websocket message is
    decompressed until its input is used up, and what came out is the message. A new
    connection needs a new inflater (its frame starts with a new header).

    The decompressor is asked for at most ``max_message_bytes + 1`` bytes: getting that many
    means the message is over the bound (an :class:`InflateError`); getting fewer means zstd
    consumed all the input and flushed everything it could (with an output buffer left unfilled,
    zstd has nothing more to give), so no data is left behind inside the context. A server that
    does end the frame may start another one in the same stream: the bytes after the end go to a
    fresh decompressor, as a zstd decoder of concatenated frames would do.
    """

    __slots__ = ("_zstd", "_max", "_error")

    def __init__(self, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
        if _zstd is None:
            raise RuntimeError(ZSTD_MISSING)
        self._zstd = new_zstd_decompressor()
        self._max = max_message_bytes
        self._error = _zstd.ZstdError

    def feed(self, frame: bytes) -> bytes | None:
        """Return the message ``frame`` holds, or ``None`` if it held no complete block yet."""
        if len(frame) > self._max:
            raise InflateError(f"compressed message over {self._max} bytes")
        limit = self._max + 1
        dec = self._zstd
        try:
            out = dec.decompress(frame, limit)
            while dec.eof:  # the frame ended (Discord never does this): go on with the next
                rest = dec.unused_data
                dec = self._zstd = new_zstd_decompressor()
                if not rest or len(out) >= limit:
                    break
                out += dec.decompress(rest, limit - len(out))
        except self._error as exc:
            if "memory" in str(exc).lower():  # libzstd: "Frame requires too much memory for decoding"
                raise InflateError(
                    f"zstd stream refused: its window is over {1 << ZSTD_WINDOW_LOG_MAX} bytes "
                    f"(window log {ZSTD_WINDOW_LOG_MAX}, the most accepted): {exc}"
                ) from None
            raise InflateError(f"broken zstd stream: {exc}") from None
        if len(out) > self._max:
            raise InflateError(f"decompressed message over {self._max} bytes")
        # b"": the message held only part of a block (or a bare frame header); the websocket
        # message that completes it will bring the whole output.
        return out or None


def new_inflater(
    compress: str, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
) -> Inflater | None:
    """The inflater of one new connection for the ``compress`` setting (``None``: none needed).
    Raises ``RuntimeError`` (:data:`ZSTD_MISSING`) for zstd-stream without a zstd library."""
    if compress == COMPRESS_ZLIB_STREAM:
        return ZlibStreamInflater(max_message_bytes)
    if compress == COMPRESS_ZSTD_STREAM:
        return ZstdStreamInflater(max_message_bytes)
    if compress == COMPRESS_NONE:
        return None
    raise ValueError(f"unknown transport compression {compress!r}")
