"""A raw gateway client for the simulator tests: websockets + json + zlib-stream or zstd-stream
(the zstd library's own decompressor, not the worker's inflater), by hand."""

from __future__ import annotations

import asyncio
import json
import zlib
from collections.abc import Callable
from typing import Any

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from shard_worker.gateway.protocol import (
    COMPRESS_ZSTD_STREAM,
    ZLIB_SUFFIX,
    compress_name,
    gateway_url,
)

TOKEN = "test-token"


class RawClient:
    """One gateway connection. ``recv()`` returns decoded payloads; ``raw`` keeps each decoded
    message's text, ``ws_messages`` every websocket message as received."""

    def __init__(self, ws: Any, compress: bool | str) -> None:
        self.ws = ws
        self.compress = compress
        self.zstd = None
        if compress_name(compress) == COMPRESS_ZSTD_STREAM:
            from shard_worker.gateway.inflate import zstd_module

            self.zstd = zstd_module().ZstdDecompressor()
            compress = False
        self.inflate = zlib.decompressobj() if compress else None
        self.buffer = bytearray()
        self.raw: list[str] = []
        self.ws_messages: list[bytes | str] = []

    @classmethod
    async def open(
        cls, base: str, *, compress: bool | str = False, path: str = "/", query: str | None = None
    ) -> RawClient:
        target = base if path == "/" else base.rstrip("/") + path
        if query is None:
            url = gateway_url(target, compress=compress)
        else:
            url = f"{target}?{query}"
        ws = await connect(url, compression=None, max_size=None, open_timeout=10)
        return cls(ws, compress)

    async def recv(self, timeout: float = 10.0) -> dict:
        return await asyncio.wait_for(self._recv(), timeout)

    async def _recv(self) -> dict:
        while True:
            message = await self.ws.recv()
            self.ws_messages.append(message)
            if self.zstd is not None:
                assert isinstance(message, bytes), "zstd-stream messages are binary frames"
                text = self.zstd.decompress(message).decode()  # one message, whole, each time
                self.raw.append(text)
                return json.loads(text)
            if self.inflate is None:
                assert isinstance(message, str), "uncompressed messages are text frames"
                self.raw.append(message)
                return json.loads(message)
            assert isinstance(message, bytes), "zlib-stream messages are binary frames"
            self.buffer += message
            if not self.buffer.endswith(ZLIB_SUFFIX):
                continue
            text = self.inflate.decompress(bytes(self.buffer)).decode()
            self.buffer.clear()
            self.raw.append(text)
            return json.loads(text)

    async def recv_until(self, pred: Callable[[dict], bool], timeout: float = 10.0) -> dict:
        async def go() -> dict:
            while True:
                msg = await self._recv()
                if pred(msg):
                    return msg

        return await asyncio.wait_for(go(), timeout)

    async def send(self, obj: Any) -> None:
        await self.ws.send(obj if isinstance(obj, (str, bytes)) else json.dumps(obj))

    async def identify(self, shard: list[int] | None = None, token: str = TOKEN, **extra: Any):
        d: dict[str, Any] = {
            "token": token,
            "intents": 513,
            "properties": {"os": "linux", "browser": "test", "device": "test"},
        }
        if shard is not None:
            d["shard"] = shard
        d.update(extra)
        await self.send({"op": 2, "d": d})

    async def resume(self, session_id: str, seq: int | None, token: str = TOKEN) -> None:
        await self.send({"op": 6, "d": {"token": token, "session_id": session_id, "seq": seq}})

    async def closed(self, timeout: float = 10.0) -> tuple[int | None, str | None]:
        """Read until the server closes; return (code, reason)."""

        async def drain() -> None:
            try:
                while True:
                    await self._recv()
            except ConnectionClosed:
                pass

        await asyncio.wait_for(drain(), timeout)
        return self.ws.close_code, self.ws.close_reason

    async def close(self, code: int = 4900) -> None:
        await self.ws.close(code)


async def hello_identify(base: str, shard: list[int] | None = None, **kw: Any):
    """Open, read HELLO, identify; returns (client, hello, ready)."""
    c = await RawClient.open(base, **kw)
    hello = await c.recv()
    await c.identify(shard)
    ready = await c.recv()
    return c, hello, ready
