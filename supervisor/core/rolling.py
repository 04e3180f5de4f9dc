"""A rolling restart (SIGHUP, ``spectacles-supervisor restart``): one group at a time is stopped
(its shards' sessions kept), started again, and waited for until all its shards are READY, then
the next. A group handed over meanwhile (cluster mode) is skipped."""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from typing import Any

log = logging.getLogger("supervisor.core.rolling")


class RollingRestart:
    def __init__(self) -> None:
        #: the groups still to restart, in order
        self.queue: deque[int] = deque()
        #: the group being restarted now
        self.current: int | None = None

    @property
    def running(self) -> bool:
        return bool(self.queue) or self.current is not None

    def begin(self, groups: list[int], *, stopping: bool = False, resharding: bool = False) -> bool:
        """Restart ``groups`` one at a time; False (and why, in the log) when it cannot start."""
        if stopping:
            return False
        if resharding:
            log.info("no rolling restart while a reshard runs")
            return False
        if self.running:
            log.info("rolling restart already in progress")
            return False
        log.info("rolling restart of %d groups, one at a time", len(groups))
        self.queue.extend(groups)
        return True

    def cancel(self) -> None:
        self.queue.clear()
        self.current = None

    def step(self, now: float, group_of: Callable[[int], Any], runs: Callable[[Any], bool]) -> None:
        """Stop the next group once the current one is READY again (``group_of(index)`` gives a
        group, ``runs(group)`` whether this supervisor runs it)."""
        if self.current is not None:
            group = group_of(self.current)
            child = group.child
            if not runs(group):
                self.current = None  # handed over or fenced meanwhile (cluster mode)
            elif child is None or child.stopping_since is not None:
                return  # still stopping, or waiting to start
            elif set(child.ready) >= set(child.shard_ids):
                log.info("rolling restart: group %d ready", group.index, extra={"group": group.index})
                self.current = None
            else:
                return
        while self.queue and not runs(group_of(self.queue[0])):
            self.queue.popleft()
        if self.queue:
            index = self.queue.popleft()
            group = group_of(index)
            self.current = index
            if group.child is not None:
                log.info("rolling restart: stopping group %d", index, extra={"group": index})
                group.child.stop(now)
