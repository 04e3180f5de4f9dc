"""What the serving set's children say, and which component hears it: one dispatch table from
each :class:`~shard_worker.ipc_vocabulary.Event` to its handler (``docs/ipc.md``).

A new set's child during a live reshard is the reshard controller's (its own view), but for its
identify requests and writes, which the shared gate handles.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from shard_worker.gateway.protocol import describe_close
from shard_worker.ipc import Message
from shard_worker.ipc_vocabulary import NOT_READY, Event, ShardState
from supervisor.core.child import Child

log = logging.getLogger("supervisor.core.arbiter")

Handler = Callable[[Child, dict, float], None]


class ChildEvents:
    def __init__(self, *, metrics: Any, budget: Any, book: Any, reshard: Any, member: Any, start: Any,
                 live: Any, granted: set[int], stopping: Callable[[], bool]) -> None:
        self.metrics, self.budget, self.book, self.reshard = metrics, budget, book, reshard
        self.member, self.start, self.live, self.granted, self.stopping = member, start, live, granted, stopping
        self.table: dict[Event, Handler] = {
            Event.HELLO: self._hello,
            Event.HEARTBEAT: self._heartbeat,
            Event.SHARDS: self._shard_reports,
            Event.SHARD_STATE: self._shard_state,
            Event.IDENTIFY_REQUEST: self._identify_request,
            Event.IDENTIFY_SENT: self._identify_sent,
            Event.STOPPED: self._stopped,
            Event.CUTOVER_ACK: lambda child, data, now: self.reshard.cutover_ack(child, data),
            Event.CUTOVER_CANCELLED: lambda child, data, now: log.info(
                "%s: the cut-over is cancelled, it publishes as before", child.label),
            Event.PROBE_ANSWERED: lambda child, data, now: self.reshard.old_caught_up(child, data.get("shard")),
            Event.ACTIVATED: lambda child, data, now: log.info("%s consumes its queues now", child.label),
        }  # fmt: skip

    def handle(self, child: Child, message: Message, now: float) -> None:
        if self.reshard.takes(child, message, now):
            return  # the new set's: not the serving set's view
        try:
            handler = self.table[Event(message.event)]
        except ValueError:
            log.warning("%s: unknown IPC event %r", child.label, message.event, extra={"group": child.group})
            return
        handler(child, message.data if isinstance(message.data, dict) else {}, now)

    # -- the handlers -------------------------------------------------------------------------
    def _hello(self, child: Child, data: dict, now: float) -> None:
        child.last_heartbeat = now

    def _heartbeat(self, child: Child, data: dict, now: float) -> None:
        child.last_heartbeat = now
        child.report = data
        self.metrics.child_report(child.group, child.pid, data)

    def _stopped(self, child: Child, data: dict, now: float) -> None:
        child.report = data.get("report") or child.report
        self.metrics.child_report(child.group, child.pid, child.report)

    def _identify_request(self, child: Child, data: dict, now: float) -> None:
        shard = data.get("shard")
        if shard in child.shard_set:
            self.budget.request(child.pid, shard)

    def _identify_sent(self, child: Child, data: dict, now: float) -> None:
        shard, at = data.get("shard"), data.get("at")
        if shard in child.shard_set and isinstance(at, (int, float)):
            self.budget.sent(shard, float(at), now)

    def _shard_reports(self, child: Child, data: dict, now: float) -> None:
        """The reports of the shards that changed (a chunk of them)."""
        reports = data.get("shards")
        if not isinstance(reports, dict):
            return
        mine: dict[str, dict] = {}
        for key, report in reports.items():
            try:
                shard = int(key)
            except (TypeError, ValueError):
                continue
            if shard in child.shard_set and isinstance(report, dict):
                mine[key] = report
                session = report.get("session")
                if session is None and "session" in report:
                    # The child was given this shard's session (or made one) and has none now:
                    # Discord invalidated it (op 9, 4007, 4009). A restart must not try it again.
                    self.book.forget(shard)
                else:
                    self.book.update(shard, session)
        child.shard_reports.update(mine)
        self.metrics.shard_reports(child.group, child.pid, mine)

    def _shard_state(self, child: Child, data: dict, now: float) -> None:
        shard, state = data.get("shard"), data.get("state")
        if shard not in child.shard_set:
            return
        self.metrics.shard_event(shard, str(state))
        if self.member is not None:
            self.member.shard_state(child.group, str(state), now)
        if state == ShardState.READY:
            if shard not in child.ready and self.start.since is not None and not self.stopping():
                # the start's progress in logs (a terminal shows the live line instead)
                log.log(logging.DEBUG if self.live is not None else logging.INFO, "shard %d ready (group %d)",
                        shard, child.group, extra={"shard": shard, "group": child.group})  # fmt: skip
            child.ready.add(shard)
            self.granted.discard(shard)
            self.book.update(shard, data.get("session"))
        elif state in NOT_READY:
            child.ready.discard(shard)
        if state == ShardState.FATAL:
            child.fatal_shard = shard
            log.error("shard %d: Discord closed with %s", shard, describe_close(data.get("code")),
                      extra={"shard": shard, "group": child.group})  # fmt: skip
