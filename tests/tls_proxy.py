"""A TLS listener in front of RabbitMQ for tests, as a RabbitMQ node with ``listeners.ssl``.

:class:`TlsProxy` is :class:`tests.tcp_proxy.TcpProxy` (``cut``/``restore`` included) that
terminates TLS: clients speak ``amqps://`` to it, it speaks plain AMQP to the target. The server
context (``tests.tls_certs``) may require a client certificate.

TLS runs over memory BIOs rather than asyncio's own TLS transport so that a failed handshake
behaves as a real server's does: the alert (``certificate required``, ``unknown ca``) reaches
the client before the connection closes, instead of a bare EOF. Failed handshakes are counted in
``tls_failures`` with their reasons; ``peer_names`` has the common name of every client
certificate that got through.
"""

from __future__ import annotations

import asyncio
import ssl

from tests.tcp_proxy import TcpProxy


class TlsProxy(TcpProxy):
    def __init__(self, target_host: str, target_port: int, context: ssl.SSLContext) -> None:
        super().__init__(target_host, target_port)
        self.context = context
        self.tls_failures: list[str] = []
        self.peer_names: list[str] = []
        #: Errors that ended a connection after its handshake (a cut is not one).
        self.stream_errors: list[str] = []

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refusing:
            writer.transport.abort()
            return
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = self.context.wrap_bio(incoming, outgoing, server_side=True)

        def flush() -> None:
            if outgoing.pending:
                writer.write(outgoing.read())

        self._transports.add(writer.transport)
        try:
            while True:
                try:
                    tls.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    flush()
                    data = await reader.read(65536)
                    if not data:
                        raise ConnectionError("the client left during the handshake") from None
                    incoming.write(data)
        except (ssl.SSLError, ConnectionError) as error:
            self.tls_failures.append(str(error))
            flush()  # the alert, as a real server sends it
            try:
                await writer.drain()
            except ConnectionError:
                pass
            writer.close()
            self._transports.discard(writer.transport)
            return
        flush()
        for rdn in (tls.getpeercert() or {}).get("subject", ()):
            self.peer_names.extend(value for key, value in rdn if key == "commonName")
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self.connections += 1
        self._transports.add(up_writer.transport)

        def decrypt() -> bool:
            """Forward what the client's records hold; False once it closed its TLS side."""
            while True:
                try:
                    plain = tls.read(65536)
                except ssl.SSLWantReadError:
                    flush()  # TLS 1.3 may answer (key updates)
                    return True
                if not plain:
                    return False
                up_writer.write(plain)

        async def from_client() -> None:
            try:
                # The client's first bytes (the AMQP header) may have come with its Finished.
                if not decrypt():
                    return
                await up_writer.drain()
                while data := await reader.read(65536):
                    incoming.write(data)
                    if not decrypt():
                        return
                    await up_writer.drain()
            except (ssl.SSLError, ConnectionError, OSError) as error:
                self.stream_errors.append(repr(error))
            finally:
                up_writer.transport.abort()

        async def to_client() -> None:
            try:
                while data := await up_reader.read(65536):
                    tls.write(data)
                    flush()
                    await writer.drain()
            except (ssl.SSLError, ConnectionError, OSError) as error:
                self.stream_errors.append(repr(error))
            finally:
                writer.transport.abort()

        await asyncio.gather(from_client(), to_client())
        for w in (writer, up_writer):
            self._transports.discard(w.transport)
