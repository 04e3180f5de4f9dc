"""What the supervisor shows while it runs: ``/metrics``, ``/healthz`` and ``/readyz`` on a
daemon thread (``--metrics-addr``), and the live line kept out of the way of log lines."""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import make_wsgi_app

from supervisor.observe.health import health_app
from supervisor.observe.metrics import MetricsState, build_registry
from supervisor.observe.progress import LiveLine

log = logging.getLogger("supervisor.core.arbiter")


class CannotServe(Exception):
    """The metrics address cannot be bound (logged already)."""


@contextmanager
def showing(addr: tuple[str, int] | None, metrics: MetricsState, live: LiveLine | None) -> Iterator[MetricsServer | None]:
    server = None
    if addr is not None:
        host, port = addr
        try:
            server = MetricsServer(addr, metrics)
        except OSError as exc:
            log.critical("cannot serve metrics on %s:%d: %s", host, port, exc.strerror or exc)
            raise CannotServe(str(exc)) from None
        bound, port = server.address
        log.info("metrics: http://%s:%d/metrics", f"[{bound}]" if ":" in bound else bound, port)
    wipe = live.log_filter() if live is not None else None
    handlers = list(logging.getLogger().handlers) if wipe is not None else []
    for handler in handlers:
        handler.addFilter(wipe)  # type: ignore[arg-type]
    try:
        yield server
    finally:
        if live is not None:
            live.clear()
        for handler in handlers:
            handler.removeFilter(wipe)  # type: ignore[arg-type]
        if server is not None:
            server.close()


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        pass  # no line per scrape


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


def _family(host: str, port: int) -> socket.AddressFamily:
    try:
        info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as error:
        raise OSError(f"cannot resolve {host!r}: {error.strerror}") from None
    return info[0][0]


class MetricsServer:
    """``http://host:port/metrics`` (and ``/healthz``, ``/readyz``: :mod:`supervisor.observe.health`)
    from a daemon thread; :meth:`close` stops it."""

    def __init__(self, addr: tuple[str, int], state: MetricsState) -> None:
        host, port = addr
        server_class = type("MetricsHTTPServer", (_ThreadingServer,), {"address_family": _family(host, port)})

        app = health_app(state, make_wsgi_app(build_registry(state)))
        self.server = make_server(host, port, app, server_class, handler_class=_QuietHandler)
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.5}, name="metrics-http", daemon=True
        )
        self.thread.start()

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.server.server_address[:2]
        return str(host), int(port)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)
