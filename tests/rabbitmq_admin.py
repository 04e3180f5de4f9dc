"""Acting on the shared RabbitMQ node for fault tests (``rabbitmqctl``): limits, alarms, stop/start.

Every change here is undone by the context manager that made it, in a ``finally``, and the
node is waited for until it answers AMQP again, so that one test's fault never leaks into the
next. Without ``rabbitmqctl`` (or its rights), the tests that need it skip, or fail under CI.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator

import pika
import pytest

#: rabbitmqctl starts an Erlang VM per call: seconds, more on a loaded machine.
CTL_TIMEOUT_S = 120.0


def require_rabbitmqctl() -> None:
    problem = None
    if shutil.which("rabbitmqctl") is None:
        problem = "rabbitmqctl is not installed"
    else:
        try:
            ctl("eval", "ok.", timeout=60)
        except (subprocess.SubprocessError, OSError) as exc:
            problem = f"rabbitmqctl does not work here: {exc}"
    if problem:
        if os.environ.get("CI") == "true":
            pytest.fail(problem)
        pytest.skip(problem)


def ctl(*args: str, timeout: float = CTL_TIMEOUT_S) -> str:
    done = subprocess.run(["rabbitmqctl", *args], capture_output=True, text=True, timeout=timeout, check=True)
    return done.stdout.strip()


def wait_until_answers(url: str, timeout: float = 120.0) -> None:
    """Until an AMQP connection opens (the node and its listeners are up again)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            pika.BlockingConnection(pika.URLParameters(url)).close()
            return
        except pika.exceptions.AMQPError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


@contextlib.contextmanager
def max_message_size(size: int, url: str) -> Iterator[None]:
    """The broker's ``max_message_size`` set to ``size`` for channels opened meanwhile."""
    require_rabbitmqctl()
    original = ctl("eval", "application:get_env(rabbit, max_message_size).")  # e.g. {ok,134217728}
    value = original.strip("{}").split(",")[1] if original.startswith("{ok,") else None
    ctl("eval", f"application:set_env(rabbit, max_message_size, {size}).")
    try:
        yield
    finally:
        if value is None:
            ctl("eval", "application:unset_env(rabbit, max_message_size).")
        else:
            ctl("eval", f"application:set_env(rabbit, max_message_size, {value}).")
        wait_until_answers(url)


@contextlib.contextmanager
def memory_alarm(url: str) -> Iterator[None]:
    """A memory alarm for as long as the block runs: RabbitMQ blocks publishing connections."""
    require_rabbitmqctl()
    original = ctl("eval", "vm_memory_monitor:get_vm_memory_high_watermark().")
    ctl("set_vm_memory_high_watermark", "0.000001")
    try:
        yield
    finally:
        restore = original if original.replace(".", "", 1).isdigit() else "0.4"
        ctl("set_vm_memory_high_watermark", restore)
        wait_until_answers(url)


@contextlib.contextmanager
def app_stopped(url: str) -> Iterator[None]:
    """``rabbitmqctl stop_app`` for the block, ``start_app`` after it (always)."""
    require_rabbitmqctl()
    ctl("stop_app")
    try:
        yield
    finally:
        ctl("start_app")
        wait_until_answers(url)
