"""Shared fixtures: the real RabbitMQ (and Redis) of the machine, never mocks.

A test that needs a server fails when ``CI=true`` and the server is missing; on a developer's
machine it is skipped with the reason, so a laptop without RabbitMQ can still run the unit tests.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit

import pika
import pytest
from hypothesis import HealthCheck, settings

# Two shared, noisy cores: no per-example deadline (speed is for the benchmarks, not the tests).
settings.register_profile("spectacles", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("spectacles")

AMQP_URL = os.environ.get("SPECTACLES_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
REDIS_URL = os.environ.get("SPECTACLES_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def _reachable(url: str, default_port: int) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or default_port), timeout=2):
            return True
    except OSError:
        return False


def require_server(name: str, url: str, default_port: int) -> None:
    if _reachable(url, default_port):
        return
    message = f"{name} is not reachable at {url}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message + " (CI=true: a missing server is a failure, not a skip)")
    pytest.skip(message)


@pytest.fixture(scope="session")
def amqp_url() -> str:
    require_server("RabbitMQ", AMQP_URL, 5672)
    return AMQP_URL


@pytest.fixture(scope="session")
def redis_url() -> str:
    require_server("Redis", REDIS_URL, 6379)
    return REDIS_URL


class Rabbit:
    """A blocking pika connection for tests: declare queues, read what arrived, clean up."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.connection = pika.BlockingConnection(pika.URLParameters(url))
        self.channel = self.connection.channel()
        self.queues: list[str] = []
        self.exchanges: list[str] = []

    def declare_exchange(self, exchange: str) -> None:
        self.channel.exchange_declare(exchange, "direct", durable=True)
        self.exchanges.append(exchange)

    def bind(self, exchange: str, queue: str, routing_key: str) -> None:
        """A durable queue bound to ``routing_key`` (as Spectacles consumers declare them)."""
        self.declare_exchange(exchange)
        self.channel.queue_declare(queue, durable=True)
        self.channel.queue_bind(queue, exchange, routing_key)
        self.queues.append(queue)

    def track(self, *queues: str) -> None:
        self.queues.extend(queues)

    def get_all(self, queue: str, *, expect: int | None = None, timeout: float = 20.0) -> list[tuple]:
        """Drain ``queue`` (acking); with ``expect``, wait until that many arrived or time ran out."""
        got: list[tuple] = []
        deadline = time.monotonic() + timeout
        while True:
            method, props, body = self.channel.basic_get(queue, auto_ack=True)
            if method is not None:
                got.append((method, props, body))
                continue
            if expect is None or len(got) >= expect or time.monotonic() > deadline:
                return got
            self.connection.sleep(0.05)

    def publish(self, exchange: str, routing_key: str, body: bytes) -> None:
        self.channel.basic_publish(exchange, routing_key, body)

    def wait_consumed(self, *queues: str, timeout: float = 60.0) -> None:
        """Wait until each of ``queues`` exists with a consumer. A worker's bridge is
        ``connected`` (it publishes) before it has declared and bound the queues it consumes:
        a packet published to the exchange before that is routed nowhere and dropped."""
        deadline = time.monotonic() + timeout
        waiting = list(queues)
        while waiting:
            channel = self.connection.channel()  # a passive declare of a missing queue closes it
            try:
                if channel.queue_declare(waiting[0], durable=True, passive=True).method.consumer_count > 0:
                    waiting.pop(0)
                    continue
            except pika.exceptions.ChannelClosedByBroker:
                pass
            finally:
                if channel.is_open:
                    channel.close()
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for a consumer on {waiting}")
            self.connection.sleep(0.1)

    def depth(self, queue: str) -> int:
        return self.channel.queue_declare(queue, durable=True, passive=True).method.message_count

    def close(self) -> None:
        try:
            self.connection.close()
        except pika.exceptions.AMQPError:
            pass
        delete_all(self.url, self.queues, self.exchanges)


def delete_all(url: str, queues: list[str], exchanges: list[str]) -> None:
    """Delete ``queues`` and ``exchanges`` (missing ones are fine) on a fresh connection: the
    test's own may be gone (a channel closed by an error, a broker restarted by the test)."""
    try:
        connection = pika.BlockingConnection(pika.URLParameters(url))
        channel = connection.channel()
        for queue in dict.fromkeys(queues):
            channel.queue_delete(queue)
        for exchange in dict.fromkeys(exchanges):
            channel.exchange_delete(exchange)
        connection.close()
    except (pika.exceptions.AMQPError, OSError):
        pass


@pytest.fixture
def rabbit(amqp_url: str) -> Iterator[Rabbit]:
    r = Rabbit(amqp_url)
    yield r
    r.close()


#: The shard queues a test's workers may declare without the test naming them (every test of
#: this suite runs fewer shards; the 2000-shard test tracks its own).
GROUP_SHARD_QUEUES = 64


@pytest.fixture
def group() -> Iterator[str]:
    """A fresh exchange name per test, so tests never see each other's messages. Afterwards the
    queues its workers declared by themselves (``SEND`` and shard queues) are deleted, even when
    the test failed: durable queues would otherwise stay in the shared RabbitMQ."""
    name = f"test-{uuid.uuid4().hex[:10]}"
    yield name
    if _reachable(AMQP_URL, 5672):
        queues = [f"{name}:SEND", *(f"{name}:{shard}" for shard in range(GROUP_SHARD_QUEUES))]
        delete_all(AMQP_URL, queues, [name])
