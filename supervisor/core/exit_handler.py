"""What the arbiter does once :func:`supervisor.core.exits.decide_exit` decided about a group's
child that exited: say it, start the group again now or after the restart policy's delay, hold
a 4011 shard down for ``--auto-reshard``, or halt everything."""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from shard_worker import exit_codes
from shard_worker.gateway.protocol import describe_close
from supervisor.core.child import Child
from supervisor.core.exits import ExitAction, ExitDecision
from supervisor.core.groups import Group

log = logging.getLogger("supervisor.core.arbiter")  # where operators have always found these lines


class ExitHandler:
    def __init__(self, *, metrics: Any, book: Any, reshard: Any, begin_stop: Callable[[float, int], None]) -> None:
        self.metrics, self.book, self.reshard, self.begin_stop = metrics, book, reshard, begin_stop

    def carry_out(self, decision: ExitDecision, group: Group, child: Child, code: int, now: float) -> None:
        action, said, extra = decision.action, exit_codes.describe(code), {"group": group.index}
        if action is ExitAction.HANDED_OVER:
            log.info("%s exited for its handover (%s)", child.label, said, extra=extra)
        elif action is ExitAction.RETIRED:
            log.info("%s of the old set exited (%s)", child.label, said, extra=extra)
        elif action is ExitAction.ROLLED:
            group.start_at = now
            log.info("%s exited for the rolling restart", child.label, extra=extra)
        elif action is ExitAction.HOLD_SHARD:
            self._hold_for_reshard(group, child, code, now)
        elif action is ExitAction.HALT and decision.close is not None:
            log.critical("fatal: %s: Discord closed with %s; stopping everything, no restart",
                         child.label, describe_close(decision.close), extra=extra)  # fmt: skip
            self.begin_stop(now, code)
        elif action is ExitAction.HALT:
            log.critical("%s: bad configuration (exit 2); stopping everything", child.label, extra=extra)
            self.begin_stop(now, exit_codes.USAGE)
        elif action is ExitAction.STOPPED:
            log.info("%s stopped (%s)", child.label, said, extra=extra)
        else:
            self._restart_later(group, child, code, now)

    def _hold_for_reshard(self, group: Group, child: Child, code: int, now: float) -> None:
        """A 4011 under ``--auto-reshard``: hold that shard down until the reshard replaces it."""
        shard = child.fatal_shard if child.fatal_shard is not None else child.shard_ids[0]
        group.held[shard] = code
        group.config = replace(group.config, shard_ids=[s for s in group.config.shard_ids if s != shard])
        group.start_at = now  # its other shards resume at once
        self.book.forget(shard)
        self.reshard.sharding_required(shard)
        log.error(
            "%s: shard %d closed with 4011 (sharding required); --auto-reshard: holding it down, "
            "its group's other shards resume, and asking Discord for the count to reshard to",
            child.label, shard, extra={"group": group.index},
        )  # fmt: skip

    def _restart_later(self, group: Group, child: Child, code: int, now: float) -> None:
        decision = group.policy.on_exit(now, child.uptime(now))
        group.start_at = now + decision.delay
        group.restarts += 1
        self.metrics.set_restarts(group.index, group.restarts)
        how = "recycled" if child.stopping_since is not None else f"died ({describe_status(code)})"
        extra = {"group": group.index}
        if decision.flapping:
            log.error("%s is flapping (%d quick exits); holding it back %.0f s",
                      child.label, decision.failures, decision.delay, extra=extra)  # fmt: skip
        else:
            log.warning("%s %s; restarting in %.1f s with its sessions", child.label, how, decision.delay, extra=extra)


def describe_status(code: int) -> str:
    """A child's exit status in words (a negative code: killed by that signal)."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return exit_codes.describe(code)
