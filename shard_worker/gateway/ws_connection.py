"""websockets' client connection with a lean read path: messages come in batches, frames are
split by :mod:`.ws_frames`.

websockets keeps everything it is good at: the opening handshake, writes, pings and pongs, the
closing handshake, close codes and the exceptions. Only the data frames after the handshake
take another road: this connection hands the bytes that follow the HTTP response to a
:class:`~.ws_frames.FrameReader` instead of websockets' frame parser; data messages go to an
inbox that :meth:`GatewayConnection.recv_batch` empties at once, and every control frame is
handed whole to websockets' protocol, which then sees a stream of complete frames and does what
it always does with them (its parser always stands at a frame boundary).

The switch is exact: until the end of the HTTP response head (``\\r\\n\\r\\n``; a 101 has no
body) every byte goes to websockets; if the handshake did not open the connection (an HTTP
error with a body, say), every later byte goes to websockets too and the connection fails as it
always would. A 101 and the first frame in one TCP segment are split at the right byte.

Flow control: past :data:`MAX_QUEUE` undelivered messages or :data:`MAX_QUEUE_BYTES` of them
the transport stops reading (TCP pushes back on the server), and reads again only when the
reader asks for more with everything before taken: so at most one batch is being handled and
one waits (each bounded as above, plus one transport read and one message of ``max_size``).
websockets' own ``max_queue`` argument is not used. Once this side starts the closing
handshake (``close``), reading resumes, so that the server's close frame is read rather than
waited out, and data messages that still come are dropped (a resume gets them again).
"""

from __future__ import annotations

import asyncio

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConcurrencyError
from websockets.protocol import State

from shard_worker.gateway.ws_frames import Control, FrameReader

#: The websockets releases whose ClientConnection this subclass was written and tested against
#: (setup.cfg holds the same bounds).
WEBSOCKETS_VERSIONS = (">=17", "<18")
#: Undelivered messages past which reading pauses (one read of the transport may add more: at
#: most one chunk, 256 KiB in asyncio, plus one message of up to ``max_size``).
MAX_QUEUE = 64
#: Undelivered bytes past which reading pauses (a few large GUILD_CREATEs).
MAX_QUEUE_BYTES = 8 * 1024 * 1024
_HEAD_END = b"\r\n\r\n"


class GatewayConnection(ClientConnection):
    """A :class:`websockets.asyncio.client.ClientConnection` that also offers ``recv_batch``.

    Pass it as ``connect(..., create_connection=GatewayConnection)``. Use ``recv_batch`` only:
    data messages never reach websockets' own ``recv`` (control frames and ``close`` work as
    usual).
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.frames = FrameReader(self.protocol.max_message_size)
        self._framing = False  # the handshake's HTTP head is through: frames are ours
        self._passthrough = False  # the handshake failed: websockets reads everything
        self._head_tail = b""  # the last bytes of the head so far, to find its end across reads
        self._inbox: list[bytes | str] = []
        self._inbox_bytes = 0
        self._waiter: asyncio.Future | None = None
        self._paused = False

    # -- the transport's side ------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if not self._framing:
            data = self._through_head(data)
            if not data:
                return
        inbox = self._inbox
        size = self._inbox_bytes
        for item in self.frames.feed(data):
            if type(item) is Control:
                super().data_received(item.raw)  # close, ping, pong: websockets' own handling
            elif self.protocol.state is State.OPEN:
                inbox.append(item)
                size += len(item)
            # else: we are closing; the message is dropped (the session's resume replays it)
        self._inbox_bytes = size
        if self.frames.error is not None and self.protocol.state is State.OPEN:
            code, reason = self.frames.error
            self.protocol.fail(code, reason)
            super().data_received(b"")  # writes the close frame and starts the close timeout
        if inbox:
            self._wake()
            full = len(inbox) >= MAX_QUEUE or size >= MAX_QUEUE_BYTES
            if full and not self._paused and self.protocol.state is State.OPEN:  # closing: read on
                self._paused = True
                self.transport.pause_reading()

    def _through_head(self, data: bytes) -> bytes:
        """Hand websockets the bytes of the handshake response; return the bytes after it."""
        if self._passthrough:
            super().data_received(data)
            return b""
        tail = self._head_tail
        seen = tail + data
        end = seen.find(_HEAD_END)
        if end < 0:
            self._head_tail = seen[-(len(_HEAD_END) - 1) :]
            super().data_received(data)
            return b""
        cut = end + len(_HEAD_END) - len(tail)  # where the head ends in ``data``
        self._head_tail = b""
        super().data_received(data[:cut])
        if self.protocol.state is State.OPEN:
            self._framing = True
            return data[cut:]
        self._passthrough = True
        if cut < len(data):
            super().data_received(data[cut:])
        return b""

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._wake()

    def _resume(self) -> None:
        if self._paused:
            self._paused = False
            self.transport.resume_reading()

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """websockets' closing handshake, reading again first: a reader paused by a full
        inbox would otherwise never see the server's close frame and wait out the timeout."""
        self._resume()
        await super().close(code, reason)

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    # -- the reader's side ---------------------------------------------------------------------
    async def recv_batch(self) -> list[bytes | str]:
        """Every message received and not yet taken, at least one, in order (``bytes`` for a
        binary message, ``str`` for a text one). Waits for one; raises ``ConnectionClosed``
        once the connection is closed and every message before the close was taken."""
        if not self._inbox:
            self._resume()  # the last batch is handled: read again
        while not self._inbox:
            if self.connection_lost_waiter.done():
                raise self.close_exc
            if self._waiter is not None:
                raise ConcurrencyError("recv_batch is already running")
            self._waiter = self.loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        batch = self._inbox
        self._inbox = []
        self._inbox_bytes = 0
        return batch
