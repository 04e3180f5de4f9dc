"""Redis faults for tests, on real sockets: a server that never answers, a proxy that can freeze.

- :class:`HungServer` accepts TCP connections and never reads nor answers (a Redis stopped with
  SIGSTOP, swapped out, or behind a half-open link): every call blocks until the client's socket
  timeout.
- :class:`FreezingProxy` is a :class:`tests.tcp_proxy.TcpProxy` in front of the real Redis that
  can also ``freeze()``: from then on, connections are accepted and what either side sends is
  held, not forwarded, until ``restore()`` (the kernel buffers of a stopped process, then
  ``SIGCONT``). A supervisor can start through it (its start needs a PING) and see Redis hang
  mid-run. ``cut()`` (refuse and reset) is inherited.
"""

from __future__ import annotations

import asyncio
import socket
import threading

from tests.tcp_proxy import TcpProxy


class HungServer:
    """Listens on 127.0.0.1 (a free port) from a daemon thread; a context manager."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.accepted: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, name="hung-redis", daemon=True)

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)  # kept open, never read

    def __enter__(self) -> HungServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()
        for conn in self.accepted:
            conn.close()


class FreezingProxy(TcpProxy):
    """A :class:`TcpProxy` that can also hang (see the module docstring)."""

    def __init__(self, target_host: str, target_port: int) -> None:
        super().__init__(target_host, target_port)
        self.frozen = False
        self._flowing: asyncio.Event | None = None

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._flowing = asyncio.Event()
        self._flowing.set()
        super()._run()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert self._flowing is not None
        if self.refusing:
            writer.transport.abort()
            return
        await self._flowing.wait()  # a frozen server accepts (the backlog) but never answers
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self.connections += 1
        for w in (writer, up_writer):
            self._transports.add(w.transport)
        flowing = self._flowing

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    await flowing.wait()  # held while frozen, delivered on restore
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        for w in (writer, up_writer):
            self._transports.discard(w.transport)

    def freeze(self) -> None:
        def do() -> None:
            self.frozen = True
            assert self._flowing is not None
            self._flowing.clear()

        self._loop.call_soon_threadsafe(do)

    def restore(self) -> None:
        def do() -> None:
            self.frozen = False
            self.refusing = False
            assert self._flowing is not None
            self._flowing.set()

        self._loop.call_soon_threadsafe(do)
