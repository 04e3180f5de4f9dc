"""What the arbiter does when a group's child exited (pure, sans-I/O; tested from a table).

The arbiter gathers the facts into an :class:`ExitContext`; :func:`decide_exit` returns an
:class:`ExitDecision`; the arbiter carries it out (logs, holds a shard, halts, restarts). The rules
are tried in this order and the first that matches wins:

1. ``handed_over`` -> HANDED_OVER: the cluster member asked the child to leave for a handover;
   its shards now run elsewhere, whatever the code says.
2. ``retiring`` -> RETIRED: the old set is retiring after a reshard; the new set owns the
   shards, so nothing of the old one restarts or halts anything.
3. ``rolling_clean`` (and code 0, not stopping) -> ROLLED: the clean exit a rolling restart
   asked for; start the group again at once. Only the clean exit: a crash or a fatal close
   during a rolling restart goes through the checks below (a reset token must halt, not
   respawn at once).
4. close 4011 (sharding required) with ``auto_reshard``, not stopping -> HOLD_SHARD: hold that
   one shard down, the group's other shards resume, ask Discord for the count to reshard to.
5. any other fatal close (or 4011 without --auto-reshard, or while stopping) -> HALT with the
   child's own exit code: restarting would burn identifies and get the token reset. Before the
   stopping check, so a fatal close seen while stopping still sets the exit code.
6. ``stopping`` -> STOPPED: the supervisor is stopping; any other exit is expected.
7. code 2 (usage) -> HALT with USAGE: bad configuration, restarting cannot help. After the
   stopping check: a worker exiting 2 during a stop just stopped.
8. anything else (1, a signal's negative code, ...) -> RESTART after the restart policy's
   delay (the arbiter asks :class:`~supervisor.core.restart_policy.RestartPolicy`).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

from shard_worker import exit_codes
from shard_worker.gateway.protocol import Close


@dataclass(frozen=True)
class ExitContext:
    """The facts about one child's exit that the decision needs."""

    code: int  # the child's exit code (negative: killed by that signal)
    handed_over: bool  # the cluster member says this exit was its handover
    retiring: bool  # the old set is retiring after a reshard
    rolling_clean: bool  # the rolling restart's own child, asked to stop, exited 0, not stopping
    auto_reshard: bool  # --auto-reshard is on
    stopping: bool  # the supervisor is stopping


class ExitAction(enum.Enum):
    HANDED_OVER = "handed_over"  # log only
    RETIRED = "retired"  # log only
    ROLLED = "rolled"  # start the group again now
    HOLD_SHARD = "hold_shard"  # hold the 4011 shard down; the group's other shards restart now
    HALT = "halt"  # stop everything with ExitDecision.exit_code
    STOPPED = "stopped"  # log only
    RESTART = "restart"  # restart after the restart policy's delay


@dataclass(frozen=True)
class ExitDecision:
    action: ExitAction
    exit_code: int | None = None  # the supervisor's exit code, for HALT
    close: int | None = None  # the Discord close code the child's exit code stands for, if any


def _fatal(ctx: ExitContext) -> bool:
    return exit_codes.fatal_close_of(ctx.code) is not None


def _sharding_required(ctx: ExitContext) -> bool:
    return exit_codes.fatal_close_of(ctx.code) == Close.SHARDING_REQUIRED


def _rolled(ctx: ExitContext) -> bool:
    # code and stopping are checked again so that a context built loosely cannot roll a crash
    return ctx.rolling_clean and ctx.code == exit_codes.OK and not ctx.stopping


Rule = tuple[Callable[[ExitContext], bool], ExitAction, Callable[[ExitContext], int | None]]


def _no_code(ctx: ExitContext) -> int | None:
    return None


def _own_code(ctx: ExitContext) -> int | None:
    return ctx.code


def _usage(ctx: ExitContext) -> int | None:
    return exit_codes.USAGE


#: (predicate, action, the supervisor's exit code) in order; the first match wins.
RULES: tuple[Rule, ...] = (
    (lambda ctx: ctx.handed_over, ExitAction.HANDED_OVER, _no_code),
    (lambda ctx: ctx.retiring, ExitAction.RETIRED, _no_code),
    (_rolled, ExitAction.ROLLED, _no_code),
    (
        lambda ctx: _sharding_required(ctx) and ctx.auto_reshard and not ctx.stopping,
        ExitAction.HOLD_SHARD,
        _no_code,
    ),
    (_fatal, ExitAction.HALT, _own_code),
    (lambda ctx: ctx.stopping, ExitAction.STOPPED, _no_code),
    (lambda ctx: ctx.code == exit_codes.USAGE, ExitAction.HALT, _usage),
    (lambda ctx: True, ExitAction.RESTART, _no_code),
)


def decide_exit(ctx: ExitContext) -> ExitDecision:
    """What to do about a child that exited, given the facts in ``ctx`` (see the module doc)."""
    close = exit_codes.fatal_close_of(ctx.code)
    for matches, action, exit_code in RULES:
        if matches(ctx):
            return ExitDecision(action, exit_code(ctx), close)
    raise AssertionError("unreachable: the last rule always matches")  # pragma: no cover
