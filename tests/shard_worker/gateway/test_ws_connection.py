"""GatewayConnection against a real socket: a raw TCP server that writes exactly the bytes a test
wants (a 101 and the first frame in one write, pings, a close, a protocol fault), so that the
switch from websockets' handshake to the frame reader is tested at the byte where it happens."""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosedError, ConnectionClosedOK, InvalidStatus
from websockets.frames import Frame, Opcode

from shard_worker.gateway.ws_connection import MAX_QUEUE, GatewayConnection

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def in_loop(test):
    """Run an async test in a fresh event loop, within 30 s."""

    @functools.wraps(test)
    def run():
        asyncio.run(asyncio.wait_for(test(), 30))

    return run


def frame(opcode: Opcode, payload: bytes, fin: bool = True) -> bytes:
    return Frame(opcode, payload, fin=fin).serialize(mask=False, extensions=[])


def accept_head(request: bytes) -> bytes:
    key = next(line.split(b":", 1)[1].strip() for line in request.split(b"\r\n") if line.lower().startswith(b"sec-websocket-key:"))
    accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
    return b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"


async def read_client_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One (masked) client frame: its opcode and unmasked payload."""
    b0, b1 = await reader.readexactly(2)
    length = b1 & 0x7F
    if length == 126:
        length = int.from_bytes(await reader.readexactly(2), "big")
    elif length == 127:
        length = int.from_bytes(await reader.readexactly(8), "big")
    mask = await reader.readexactly(4)
    data = await reader.readexactly(length)
    return b0 & 0x0F, bytes(b ^ mask[i % 4] for i, b in enumerate(data))


class RawServer:
    """Accepts one client; ``script(reader, writer, head)`` writes what the test wants."""

    def __init__(self, script):
        self.script = script
        self.done = asyncio.get_running_loop().create_future()

    async def __aenter__(self):
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.url = f"ws://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/"
        return self

    async def __aexit__(self, *exc):
        self.server.close()
        await self.server.wait_closed()

    async def _handle(self, reader, writer):
        try:
            request = await reader.readuntil(b"\r\n\r\n")
            result = await self.script(reader, writer, accept_head(request))
            if not self.done.done():
                self.done.set_result(result)
        except Exception as exc:  # handed to the test
            if not self.done.done():
                self.done.set_exception(exc)
        finally:
            writer.close()


def client(url: str):
    return connect(url, create_connection=GatewayConnection, compression=None, ping_interval=None, max_size=2**20, close_timeout=2)


@in_loop
async def test_a_101_and_frames_in_one_write_pings_answered_and_a_clean_close():
    async def script(reader, writer, head):
        # the response, a first message, a ping and a fragmented message: one write, one segment
        writer.write(head + frame(Opcode.BINARY, b"hello") + frame(Opcode.PING, b"p1")
                     + frame(Opcode.TEXT, b'{"a"', fin=False) + frame(Opcode.CONT, b":1}"))  # fmt: skip
        await writer.drain()
        pong = await read_client_frame(reader)
        writer.write(frame(Opcode.BINARY, b"last") + frame(Opcode.CLOSE, (1000).to_bytes(2, "big") + b"bye"))
        await writer.drain()
        echoed = await read_client_frame(reader)
        return pong, echoed

    async with RawServer(script) as server:
        async with client(server.url) as ws:
            got = []
            with pytest.raises(ConnectionClosedOK):
                while True:
                    got += await ws.recv_batch()
            assert got == [b"hello", '{"a":1}', b"last"]  # the text message as str
            pong, echoed = await asyncio.wait_for(server.done, 5)
            assert pong == (Opcode.PONG.value, b"p1")  # websockets answered the ping
            assert echoed[0] == Opcode.CLOSE.value and echoed[1][:2] == (1000).to_bytes(2, "big")
            assert ws.close_code == 1000


@in_loop
async def test_a_head_whose_end_comes_in_another_read_with_a_frame_right_behind_it():
    async def script(reader, writer, head):
        for piece in (head[:-3], head[-3:-1]):  # the end marker "\r\n\r\n" split across reads
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(0.2)
        writer.write(head[-1:] + frame(Opcode.BINARY, b"first"))
        await writer.drain()
        await asyncio.sleep(0.5)
        writer.write(frame(Opcode.CLOSE, (1000).to_bytes(2, "big")))
        await writer.drain()
        return await read_client_frame(reader)

    async with RawServer(script) as server:
        async with client(server.url) as ws:
            assert await ws.recv_batch() == [b"first"]
            with pytest.raises(ConnectionClosedOK):
                await ws.recv_batch()
            await asyncio.wait_for(server.done, 5)


@in_loop
async def test_a_protocol_fault_fails_the_connection_with_1002_after_the_good_messages():
    async def script(reader, writer, head):
        writer.write(head + frame(Opcode.BINARY, b"good") + b"\x82\x81\x00\x00\x00\x00x")  # masked: a fault
        await writer.drain()
        return await read_client_frame(reader)

    async with RawServer(script) as server:
        async with client(server.url) as ws:
            assert await ws.recv_batch() == [b"good"]
            sent = await asyncio.wait_for(server.done, 5)
            assert sent[0] == Opcode.CLOSE.value and int.from_bytes(sent[1][:2], "big") == 1002
            with pytest.raises(ConnectionClosedError) as closed:
                await ws.recv_batch()
            assert closed.value.sent is not None and closed.value.sent.code == 1002
            assert "masking" in closed.value.sent.reason


@in_loop
async def test_closing_while_paused_reads_the_servers_close_instead_of_waiting_it_out():
    async def script(reader, writer, head):
        writer.write(head)
        for _ in range(MAX_QUEUE * 8):  # fills the inbox: the client pauses reading
            writer.write(frame(Opcode.BINARY, b"m" * 200))
        await writer.drain()
        while True:  # the client's close frame comes after the pings we never get
            opcode, payload = await read_client_frame(reader)
            if opcode == Opcode.CLOSE.value:
                break
        # what is still sent before our close is dropped by the client; then the echo
        writer.write(frame(Opcode.BINARY, b"late") + frame(Opcode.CLOSE, payload))
        await writer.drain()
        return payload

    async with RawServer(script) as server:
        async with client(server.url) as ws:
            for _ in range(100):
                if not ws.transport.is_reading():
                    break
                await asyncio.sleep(0.05)
            assert not ws.transport.is_reading()
            await ws.close(4000, "resume later")
            payload = await asyncio.wait_for(server.done, 5)
            assert int.from_bytes(payload[:2], "big") == 4000
            # the server's echo was read: a clean close, not 1006 after the close timeout
            assert ws.close_code == 4000 and ws.protocol.close_rcvd is not None
            assert b"late" not in await _drain(ws)


async def _drain(ws) -> list:
    got: list = []
    try:
        while True:
            got += await ws.recv_batch()
    except (ConnectionClosedOK, ConnectionClosedError):
        return got


@in_loop
async def test_an_http_error_with_a_body_fails_the_handshake_as_websockets_always_did():
    async def script(reader, writer, head):
        writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nnot here!")
        await writer.drain()
        await asyncio.sleep(0.5)

    async with RawServer(script) as server:
        with pytest.raises(InvalidStatus) as failed:
            await client(server.url).__aenter__()
        assert failed.value.response.status_code == 404 and failed.value.response.body == b"not here!"


@in_loop
async def test_reading_pauses_past_the_queue_limit_until_the_batch_is_taken():
    count = MAX_QUEUE * 4

    async def script(reader, writer, head):
        writer.write(head)
        for i in range(count):
            writer.write(frame(Opcode.BINARY, str(i).encode() * 2000))  # more than one read holds
        await writer.drain()
        await asyncio.sleep(3)

    async with RawServer(script) as server:
        async with client(server.url) as ws:
            transport = ws.transport
            for _ in range(100):  # wait until the reader has paused (messages arrive meanwhile)
                if not transport.is_reading():
                    break
                await asyncio.sleep(0.05)
            assert not transport.is_reading()
            got = await ws.recv_batch()
            assert len(got) < count and not transport.is_reading()  # still paused while handled
            while len(got) < count:
                got += await ws.recv_batch()  # asking again (nothing left) reads again
                assert transport.is_reading() or len(got) < count
            assert got == [str(i).encode() * 2000 for i in range(count)]


def test_websockets_is_bounded_to_the_releases_this_subclass_is_tested_with():
    import configparser
    from pathlib import Path

    import websockets
    from packaging.specifiers import SpecifierSet

    from shard_worker.gateway.ws_connection import WEBSOCKETS_VERSIONS

    cfg = configparser.ConfigParser()
    cfg.read(Path(__file__).resolve().parents[3] / "setup.cfg")
    lines = [line.strip() for line in cfg["options"]["install_requires"].splitlines()]
    requirement = next(line for line in lines if line.startswith("websockets"))
    assert SpecifierSet(requirement.removeprefix("websockets")) == SpecifierSet(",".join(WEBSOCKETS_VERSIONS))
    assert websockets.__version__ in SpecifierSet(",".join(WEBSOCKETS_VERSIONS))
