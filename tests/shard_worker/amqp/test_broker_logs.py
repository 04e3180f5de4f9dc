"""What a refused RabbitMQ connection logs: one line of ours per retry, nothing from pika."""

from __future__ import annotations

import asyncio
import logging
import socket

from shard_worker.amqp.broker import AmqpBridge
from shard_worker.logs import setup_logging


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # nothing listens there once this closes


def run_refused(seconds: float) -> None:
    bridge = AmqpBridge(f"amqp://guest:guest@127.0.0.1:{closed_port()}/%2F", "g", [0], 1, lambda *a: None)

    async def main() -> None:
        task = asyncio.create_task(bridge.run())
        await asyncio.sleep(seconds)
        await bridge.stop()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(main())


def logged_while_refused(capsys, level: str, seconds: float) -> str:
    """What the process printed on stderr while the bridge retried a refused port."""
    setup_logging(level, fmt="text")
    try:
        run_refused(seconds)
    finally:
        logging.getLogger().handlers.clear()
    return capsys.readouterr().err


def test_a_refused_connection_is_one_warning_per_retry_and_pika_says_nothing(capsys):
    lines = [line for line in logged_while_refused(capsys, "INFO", 2.5).splitlines() if line.strip()]
    retries = [line for line in lines if "unavailable" in line and "retrying in" in line]
    assert len(retries) >= 2  # backoff from 0.5 s: several tries in 2.5 s
    assert all(" WARNING shard_worker.amqp.broker: " in line for line in retries)
    assert lines == retries, [line for line in lines if line not in retries][:3]


def test_pika_speaks_at_debug(capsys):
    assert " pika." in logged_while_refused(capsys, "DEBUG", 1.0)
