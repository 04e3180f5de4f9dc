"""A small TCP proxy for fault tests: put it between a worker and RabbitMQ, then cut it.

``cut()`` aborts every proxied connection and refuses new ones (accept, then reset) until
``restore()``. ``hold()`` stops forwarding what the client sends (the server's bytes still
flow) until ``cut()``, which drops what was held: a write that never reached the server.
``lag_s`` delays every byte the server sends by that long, in order (a client that reads
late: a loaded host, TCP retransmits, a paused reader); the client's bytes go at once. Runs on
its own event loop in a daemon thread; only loopback addresses.
"""

from __future__ import annotations

import asyncio
import threading


class TcpProxy:
    def __init__(self, target_host: str, target_port: int, lag_s: float = 0.0) -> None:
        self.target = (target_host, target_port)
        self.lag_s = lag_s
        self.port = 0
        self.refusing = False
        self.holding = False
        self.connections = 0
        self._transports: set[asyncio.Transport] = set()
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tcp-proxy", daemon=True)

    def __enter__(self) -> TcpProxy:
        self._thread.start()
        assert self._started.wait(10)
        return self

    def __exit__(self, *exc) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._started.set()
        self._loop.run_forever()
        server.close()
        # The pipes still open end here, on this loop, rather than when collected after it closed.
        pending = asyncio.all_tasks(self._loop)
        for task in pending:
            task.cancel()
        self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self._loop.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refusing:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self.connections += 1
        for w in (writer, up_writer):
            self._transports.add(w.transport)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, upstream: bool) -> None:
            try:
                while data := await src.read(65536):
                    if upstream and self.holding:
                        continue  # held, then lost with the connection
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.transport.abort()

        async def lagging(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            loop = asyncio.get_running_loop()
            chunks: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

            async def feed() -> None:
                try:
                    while data := await src.read(65536):
                        chunks.put_nowait((loop.time() + self.lag_s, data))
                except (ConnectionError, OSError):
                    pass
                chunks.put_nowait((loop.time() + self.lag_s, b""))

            feeder = asyncio.ensure_future(feed())
            try:
                while True:
                    due, data = await chunks.get()
                    if (wait := due - loop.time()) > 0:
                        await asyncio.sleep(wait)
                    if not data:
                        break
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                feeder.cancel()
                dst.transport.abort()

        downstream = lagging(up_reader, writer) if self.lag_s > 0 else pipe(up_reader, writer, False)
        await asyncio.gather(pipe(reader, up_writer, True), downstream)
        for w in (writer, up_writer):
            self._transports.discard(w.transport)

    def cut(self) -> None:
        def do() -> None:
            self.refusing = True
            self.holding = False
            for transport in list(self._transports):
                transport.abort()
            self._transports.clear()

        self._loop.call_soon_threadsafe(do)

    def hold(self) -> None:
        self._loop.call_soon_threadsafe(setattr, self, "holding", True)

    def restore(self) -> None:
        self._loop.call_soon_threadsafe(setattr, self, "refusing", False)
