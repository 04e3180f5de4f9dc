"""What the supervisor shows while it runs: ``/metrics``, ``/healthz`` and ``/readyz`` on a
daemon thread (``--metrics-addr``), and the live line kept out of the way of log lines."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from supervisor.observe.metrics import MetricsServer, MetricsState
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
