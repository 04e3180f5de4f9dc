"""The leanest pipeline for the same job, as a yardstick for ``scripts/bench.py``.

One process, one asyncio loop: for each shard a websocket (zlib-stream), IDENTIFY, then for every
message: inflate, JSON-decode, and for op 0 JSON-encode ``d`` and publish it with pika (persistent,
publisher confirms on) with routing key ``t``. Heartbeats are sent (the simulator would close the
connection otherwise); nothing else: no supervisor, no checks, no resume, no features.

    python scripts/bench_reference.py --gateway ws://127.0.0.1:8765 --token T --shards 4 \\
        --amqp-url amqp://guest:guest@127.0.0.1:5672/%2F --exchange bench
"""

from __future__ import annotations

import argparse
import asyncio
import zlib

import pika
from pika.adapters.asyncio_connection import AsyncioConnection
from websockets.asyncio.client import connect

loads = dumps_bytes = dumps = None  # set by main() from --json


async def open_channel(url: str, exchange: str):
    loop = asyncio.get_running_loop()
    ready: asyncio.Future = loop.create_future()

    def on_channel(channel):
        channel.exchange_declare(exchange, "direct", durable=True, callback=lambda _: channel.confirm_delivery(lambda frame: None, callback=lambda _: ready.set_result(channel)))

    AsyncioConnection(
        pika.URLParameters(url),
        on_open_callback=lambda conn: conn.channel(on_open_callback=on_channel),
        on_open_error_callback=lambda conn, exc: ready.set_exception(RuntimeError(exc)),
        custom_ioloop=loop,
    )
    return await ready


async def shard(shard_id: int, count: int, gateway: str, token: str, channel, exchange: str) -> None:
    props = pika.BasicProperties(content_type="application/json", delivery_mode=2)
    async with connect(f"{gateway}/?v=10&encoding=json&compress=zlib-stream", compression=None, max_size=None, ping_interval=None) as ws:
        inflate = zlib.decompressobj()
        seq = None

        async def heartbeat(interval: float) -> None:
            while True:
                await asyncio.sleep(interval)
                await ws.send(dumps({"op": 1, "d": seq}))

        beat = None
        buffer = b""
        async for frame in ws:
            buffer += frame
            if buffer[-4:] != b"\x00\x00\xff\xff":
                continue
            payload = loads(inflate.decompress(buffer))
            buffer = b""
            op = payload["op"]
            if op == 0:
                seq = payload["s"]
                channel.basic_publish(exchange, payload["t"], dumps_bytes(payload["d"]), props)
            elif op == 10:
                beat = asyncio.ensure_future(heartbeat(payload["d"]["heartbeat_interval"] / 1000))
                identify = {"token": token, "intents": 0, "shard": [shard_id, count],
                            "properties": {"os": "linux", "browser": "ref", "device": "ref"}}  # fmt: skip
                await ws.send(dumps({"op": 2, "d": identify}))
        if beat is not None:
            beat.cancel()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gateway", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--shards", type=int, default=1)
    parser.add_argument("--shard-count", type=int, default=None)
    parser.add_argument("--amqp-url", default="amqp://guest:guest@127.0.0.1:5672/%2F")
    parser.add_argument("--exchange", default="bench")
    parser.add_argument("--json", choices=["ujson", "orjson"], default="ujson")
    args = parser.parse_args()
    global loads, dumps_bytes, dumps
    if args.json == "orjson":
        import orjson

        loads, dumps_bytes, dumps = orjson.loads, orjson.dumps, lambda o: orjson.dumps(o).decode()
    else:
        import ujson

        loads, dumps_bytes, dumps = ujson.loads, lambda o: ujson.dumps(o).encode(), ujson.dumps
    channel = await open_channel(args.amqp_url, args.exchange)
    count = args.shard_count or args.shards
    await asyncio.gather(*(shard(i, count, args.gateway, args.token, channel, args.exchange) for i in range(args.shards)))


if __name__ == "__main__":
    asyncio.run(main())
