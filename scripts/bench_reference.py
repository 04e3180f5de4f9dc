"""The leanest pipeline for the same job, as a yardstick for ``scripts/bench.py``.

One process, one asyncio loop: for each shard a websocket (zlib-stream), IDENTIFY, then for every
message: inflate, JSON-decode, and for op 0 JSON-encode ``d`` and publish it with pika (persistent,
publisher confirms on) with routing key ``t``. Heartbeats are sent (the simulator would close the
connection otherwise), and reading pauses past 10,000 unconfirmed publishes (without that, pika's
buffer grows without bound and the run measures memory churn). Nothing else: no supervisor, no
checks, no resume, no message ids, no features. ``--batched`` publishes through the project's
batched frame writer instead of ``basic_publish``, with the project's wire format (shard header and
message id): the broker then does the same work per message as for the project.
``--max-concurrency N`` paces the identifies by Discord's buckets (one per bucket per 5.1 s, from
the previous one's write), for runs of more shards than one bucket round.

    python scripts/bench_reference.py --gateway ws://127.0.0.1:8765 --token T --shards 4 \\
        --amqp-url amqp://guest:guest@127.0.0.1:5672/%2F --exchange bench
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import zlib

import pika
from pika.adapters.asyncio_connection import AsyncioConnection
from websockets.asyncio.client import connect

loads = dumps_bytes = dumps = None  # set by main() from --json


#: Unconfirmed publishes allowed before the shards stop reading (without any flow control the
#: pipeline only measures how fast pika's buffer can grow, not a sustainable rate).
MAX_UNCONFIRMED = 10_000


class Flow:
    """The least flow control a sustained pipeline needs: a cap on unconfirmed publishes."""

    def __init__(self) -> None:
        self.published = 0
        self.confirmed = 0
        self.room = asyncio.Event()
        self.room.set()

    def on_confirm(self, frame) -> None:
        tag = frame.method.delivery_tag
        self.confirmed = tag if frame.method.multiple else max(self.confirmed, tag)
        if self.published - self.confirmed < MAX_UNCONFIRMED:
            self.room.set()

    def sent(self) -> None:
        self.published += 1
        if self.published - self.confirmed >= MAX_UNCONFIRMED:
            self.room.clear()


FLOW = Flow()


async def open_channel(url: str, exchange: str):
    loop = asyncio.get_running_loop()
    ready: asyncio.Future = loop.create_future()

    def on_channel(channel):
        channel.exchange_declare(exchange, "direct", durable=True, callback=lambda _: channel.confirm_delivery(FLOW.on_confirm, callback=lambda _: ready.set_result(channel)))

    AsyncioConnection(
        pika.URLParameters(url),
        on_open_callback=lambda conn: conn.channel(on_open_callback=on_channel),
        on_open_error_callback=lambda conn, exc: ready.set_exception(RuntimeError(exc)),
        custom_ioloop=loop,
    )
    return await ready


class Pacer:
    """Discord's identify buckets: one IDENTIFY per bucket (shard % max_concurrency) per 5 s,
    counted from when the previous one was written (a late round must not squeeze the next)."""

    def __init__(self, max_concurrency: int) -> None:
        self.max_concurrency = max_concurrency
        self.locks: dict[int, asyncio.Lock] = {}
        self.last: dict[int, float] = {}

    async def identify(self, shard_id: int, send) -> None:
        if not self.max_concurrency:
            await send()
            return
        bucket = shard_id % self.max_concurrency
        loop = asyncio.get_running_loop()
        async with self.locks.setdefault(bucket, asyncio.Lock()):
            wait = self.last.get(bucket, -1e9) + 5.1 - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            await send()
            self.last[bucket] = loop.time()


async def shard(shard_id: int, count: int, gateway: str, token: str, publish, pacer: Pacer) -> None:
    if pacer.max_concurrency:  # connect about when the bucket's turn comes (fewer idle sockets)
        await asyncio.sleep(max(0.0, (shard_id // pacer.max_concurrency) * 5.0 - 2.0))
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
                publish(payload["t"], dumps_bytes(payload["d"]))
                FLOW.sent()
                if not FLOW.room.is_set():
                    await FLOW.room.wait()
            elif op == 10:
                beat = asyncio.ensure_future(heartbeat(payload["d"]["heartbeat_interval"] / 1000))
                identify = {"token": token, "intents": 0, "shard": [shard_id, count],
                            "properties": {"os": "linux", "browser": "ref", "device": "ref"}}  # fmt: skip
                await pacer.identify(shard_id, functools.partial(ws.send, dumps({"op": 2, "d": identify})))
        if beat is not None:
            beat.cancel()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gateway", required=True)
    parser.add_argument("--token", default=os.environ.get("DISCORD_TOKEN"), help="default: $DISCORD_TOKEN")
    parser.add_argument("--shards", type=int, default=1)
    parser.add_argument("--shard-count", type=int, default=None)
    parser.add_argument("--amqp-url", default="amqp://guest:guest@127.0.0.1:5672/%2F")
    parser.add_argument("--exchange", default="bench")
    parser.add_argument("--json", choices=["ujson", "orjson"], default="ujson")
    parser.add_argument("--batched", action="store_true", help="publish like the project (batched frames)")
    parser.add_argument("--max-concurrency", type=int, default=0,
                        help="pace identifies as Discord's buckets want (0: all at once, as before)")
    args = parser.parse_args()
    if not args.token:
        parser.error("--token or DISCORD_TOKEN is required")
    global loads, dumps_bytes, dumps
    if args.json == "orjson":
        import orjson

        loads, dumps_bytes, dumps = orjson.loads, orjson.dumps, lambda o: orjson.dumps(o).decode()
    else:
        import ujson

        loads, dumps_bytes, dumps = ujson.loads, lambda o: ujson.dumps(o).encode(), ujson.dumps
    channel = await open_channel(args.amqp_url, args.exchange)
    props = pika.BasicProperties(content_type="application/json", delivery_mode=2)
    if args.batched:
        # The project's own publish path (one buffer per loop iteration), to isolate what the
        # project's features cost from what its faster publishing saves.
        # Same wire format as the project too (shard header, message id shard:session:seq), so the
        # broker does the same work per message and only the project's own overhead differs.
        from shard_worker.amqp.frames import BatchedPublisher, properties_prefix

        batched = BatchedPublisher(channel.connection, channel, args.exchange)
        prefix = properties_prefix(pika.BasicProperties(content_type="application/json", delivery_mode=2, headers={"shard_id": 0}))
        ids = iter(range(1 << 62))

        def publish(routing_key: str, body: bytes) -> None:
            batched.publish(routing_key, body, prefix, f"0:0123456789abcdef0123456789abcdef:{next(ids)}")
    else:

        def publish(routing_key: str, body: bytes) -> None:
            channel.basic_publish(args.exchange, routing_key, body, props)

    count = args.shard_count or args.shards
    pacer = Pacer(args.max_concurrency)
    await asyncio.gather(*(shard(i, count, args.gateway, args.token, publish, pacer) for i in range(args.shards)))


if __name__ == "__main__":
    asyncio.run(main())
