"""The children's watchdog: a child past its stop grace is killed, one silent on IPC for
``--child-timeout`` is replaced, one whose memory grew past ``--max-memory-mb`` is recycled
(its shards resume). Memory and CPU are sampled every ``sample_interval`` seconds."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

log = logging.getLogger("supervisor.core.arbiter")  # where operators have always found these lines

#: A child younger than this is not recycled for its memory (its start allocates).
MEMORY_GRACE_S = 10.0


class Watchdog:
    def __init__(self, *, heartbeat_timeout: float, stop_grace: float, max_memory_mb: float | None,
                 sample_interval: float, metrics: Any) -> None:
        self.heartbeat_timeout = heartbeat_timeout
        self.stop_grace = stop_grace
        self.max_memory_mb = max_memory_mb
        self.sample_interval = sample_interval
        self.metrics = metrics
        self._next_sample = 0.0

    def step(self, now: float, groups: Iterable[Any]) -> None:
        sample = now >= self._next_sample
        if sample:
            self._next_sample = now + self.sample_interval
        for group in groups:
            child = group.child
            if child is None:
                continue
            extra = {"group": group.index}
            if child.stopping_since is not None:
                grace = child.grace if child.grace is not None else self.stop_grace
                if not child.killed and now - child.stopping_since > grace:
                    log.warning("%s did not stop in %.1f s: killing it", child.label, grace, extra=extra)
                    child.kill()
                continue
            if now - child.last_heartbeat > self.heartbeat_timeout:
                log.error("%s sent no heartbeat for %.0f s: replacing it", child.label, now - child.last_heartbeat,
                          extra=extra)  # fmt: skip
                child.stop(now)
                continue
            if sample:
                child.sample()
                self.metrics.child_sampled(group.index, child.pid, child.rss, child.cpu_percent)
                limit = self.max_memory_mb
                if limit and child.rss > limit * 1024 * 1024 and child.uptime(now) > MEMORY_GRACE_S:
                    log.warning("%s uses %.0f MB (> %.0f): recycling it", child.label, child.rss / 2**20, limit,
                                extra=extra)  # fmt: skip
                    child.stop(now)
