"""Startup progress: how many shards are READY, when the identify gate grants next, and an ETA.

:func:`estimate` is pure. The identify gate grants one IDENTIFY per bucket
(``shard_id % max_concurrency``) per interval, in request order, so a bucket with ``n`` shards to
identify is done ``(n - 1)`` intervals after its next grant, and every shard is READY shortly
after the last bucket is done (``settle``). Shards resuming need no grant and do not move the ETA.

:class:`LiveLine` is the terminal line the arbiter rewrites in place (on a tty only); a logging
filter (:meth:`LiveLine.log_filter`) wipes it before any log line is written, and the next pass
of the arbiter draws it again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TextIO

#: the start's lines (under the arbiter's logger, where operators look for them)
_log = logging.getLogger("supervisor.core.arbiter")


@dataclass(frozen=True)
class Progress:
    ready: int
    total: int
    #: Seconds until the gate's next grant; ``None`` when no shard waits for one.
    next_grant_in: float | None
    #: Seconds until every shard is expected READY; ``None`` when it depends on nothing the gate
    #: knows (shards connecting or resuming only).
    eta: float | None
    #: Shards waiting for (or expected to ask for) an identify grant.
    to_identify: int

    @property
    def done(self) -> bool:
        return self.ready >= self.total


def estimate(
    ready: int,
    total: int,
    *,
    queued: Mapping[int, int],
    free_at: Mapping[int, float],
    interval: float,
    now: float,
    expected: Mapping[int, int] | None = None,
    hold_until: float | None = None,
    settle: float = 0.0,
) -> Progress:
    """The progress of the shards' start.

    - ``queued``: per bucket, identify requests waiting in the gate;
    - ``free_at``: per bucket, the time its next grant may happen (absent: now);
    - ``expected``: per bucket, shards that will need an identify but have not asked yet;
    - ``hold_until``: the daily identify budget is spent until then (nothing granted before);
    - ``settle``: the time from a grant to READY.
    """
    expected = expected or {}
    next_grant: float | None = None
    last_done: float | None = None
    to_identify = 0
    for bucket in set(queued) | set(expected):
        waiting = max(0, queued.get(bucket, 0))
        count = waiting + max(0, expected.get(bucket, 0))
        if count == 0:
            continue
        to_identify += count
        first = max(now, free_at.get(bucket, now))
        if hold_until is not None:
            first = max(first, hold_until)
        if waiting:
            next_grant = first if next_grant is None else min(next_grant, first)
        done = first + (count - 1) * interval
        last_done = done if last_done is None else max(last_done, done)
    return Progress(
        ready=ready,
        total=total,
        next_grant_in=None if next_grant is None else next_grant - now,
        eta=None if last_done is None else last_done - now + settle,
        to_identify=to_identify,
    )


def format_progress(progress: Progress) -> str:
    """``shards ready 37/64, next bucket in 3.2 s, ETA 12 s``."""
    text = f"shards ready {progress.ready}/{progress.total}"
    if progress.next_grant_in is not None:
        text += f", next bucket in {max(0.0, progress.next_grant_in):.1f} s"
    if progress.eta is not None:
        text += f", ETA {max(0.0, progress.eta):.0f} s"
    elif not progress.done:
        text += f", {progress.total - progress.ready} connecting or resuming"
    return text


def format_elapsed(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes} min {secs:02d} s"


@dataclass(frozen=True)
class GateView:
    queued: dict[int, int]  # bucket -> requests waiting
    free_at: dict[int, float]  # bucket -> when its next grant may happen
    hold_until: float | None  # the daily budget is spent until then
    waiting_shards: frozenset[int]


def gate_view(gate: Any, now: float) -> GateView:
    """What :func:`estimate` needs from a :class:`supervisor.identify.gate.IdentifyGate`."""
    queued = gate.queued()
    return GateView(
        queued={bucket: len(shards) for bucket, shards in queued.items()},
        free_at=gate.free_at(),
        hold_until=gate.reset_at if gate.budget_exhausted(now) else None,
        waiting_shards=frozenset(shard for shards in queued.values() for shard in shards),
    )


class LiveLine:
    """One line of a terminal, rewritten in place (``\\r`` and erase-line).

    The cursor is left at the start of the line: the children write their log lines to the same
    terminal without going through this process, and such a line then overwrites the live one
    instead of being glued after it (the next pass draws the live line again below it).
    """

    ERASE = "\r\x1b[K"

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.shown = False

    def show(self, text: str) -> None:
        try:
            self.stream.write(self.ERASE + text + "\r")
            self.stream.flush()
            self.shown = True
        except (OSError, ValueError):
            pass

    def clear(self) -> None:
        if self.shown:
            self.shown = False
            try:
                self.stream.write(self.ERASE)
                self.stream.flush()
            except (OSError, ValueError):
                pass

    def log_filter(self) -> logging.Filter:
        """A handler filter that wipes the line before a log line is written under it."""
        live = self

        class _Wipe(logging.Filter):
            def filter(self, record: logging.LogRecord) -> bool:
                live.clear()
                return True

        return _Wipe()


def start_progress(gate: Any, ready: set[int], shards: Iterable[int], resumable: Collection[int],
                   granted: Collection[int], now: float) -> Progress:
    """The :class:`Progress` of the shards' start from the identify gate: the shards neither
    READY, nor waiting for a grant, nor resumable, nor granted will ask soon."""
    view = gate_view(gate, now)
    total = 0
    expected: dict[int, int] = {}
    for shard in shards:
        total += 1
        if shard in ready or shard in view.waiting_shards or shard in resumable or shard in granted:
            continue
        bucket = gate.bucket(shard)
        expected[bucket] = expected.get(bucket, 0) + 1
    return estimate(len(ready), total, queued=view.queued, free_at=view.free_at, interval=gate.interval, now=now,
                    expected=expected, hold_until=view.hold_until, settle=1.0)  # fmt: skip


class StartWatch:
    """How long until every shard is READY (again): the live line on a terminal while not,
    one summary line when they are."""

    #: the live line is drawn at most this often
    DRAW_EVERY_S = 0.2

    def __init__(self, live: LiveLine | None, now: float) -> None:
        self.live = live
        #: since when not every shard is READY (None: all are); the start counts from here
        self.since: float | None = now
        self.all_ready_once = False
        self._next_draw = 0.0

    def step(self, now: float, ready: int, total: int, stopping: bool, progress: Callable[[], Progress]) -> None:
        if stopping:
            if self.live is not None:
                self.live.clear()
            return
        if ready >= total:
            if self.since is not None:
                if self.live is not None:
                    self.live.clear()
                elapsed = format_elapsed(now - self.since)
                if self.all_ready_once:
                    _log.info("all %d shards ready again after %s", total, elapsed)
                else:
                    _log.info("all %d shards ready in %s", total, elapsed)
                self.since = None
                self.all_ready_once = True
            return
        if self.since is None:
            self.since = now
        if self.live is not None and now >= self._next_draw:
            self._next_draw = now + self.DRAW_EVERY_S
            self.live.show(format_progress(progress()))

    def not_all_ready(self, now: float) -> None:
        """The shards run here changed and some are not READY: count from now."""
        if self.since is None:
            self.since = now

    @property
    def drawing(self) -> bool:
        """The live line counts down (the loop then passes every 0.25 s)."""
        return self.live is not None and self.since is not None
