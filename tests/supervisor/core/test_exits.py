"""The arbiter's decision about a child's exit: every rule, and which rule wins over which."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shard_worker import exit_codes
from shard_worker.gateway.protocol import Close
from supervisor.core.exits import ExitAction, ExitContext, ExitDecision, decide_exit

OK = exit_codes.OK  # 0
ERROR = exit_codes.ERROR  # 1
USAGE = exit_codes.USAGE  # 2
BAD_TOKEN = exit_codes.for_fatal_close(Close.AUTHENTICATION_FAILED)  # 44
INVALID_SHARD = exit_codes.for_fatal_close(Close.INVALID_SHARD)  # 50
SHARDING_REQUIRED = exit_codes.for_fatal_close(Close.SHARDING_REQUIRED)  # 51
DISALLOWED_INTENTS = exit_codes.for_fatal_close(Close.DISALLOWED_INTENTS)  # 54
NOT_FATAL_4000 = exit_codes.for_fatal_close(Close.UNKNOWN_ERROR)  # 40: 4000 is not a fatal close
KILLED = -9  # killed by SIGKILL

A = ExitAction


def ctx(
    code: int,
    *,
    handed_over: bool = False,
    retiring: bool = False,
    rolling_clean: bool = False,
    auto_reshard: bool = False,
    stopping: bool = False,
) -> ExitContext:
    return ExitContext(
        code=code,
        handed_over=handed_over,
        retiring=retiring,
        rolling_clean=rolling_clean,
        auto_reshard=auto_reshard,
        stopping=stopping,
    )


def test_the_exit_codes_used_here():
    assert (BAD_TOKEN, INVALID_SHARD, SHARDING_REQUIRED, DISALLOWED_INTENTS) == (44, 50, 51, 54)
    assert exit_codes.fatal_close_of(SHARDING_REQUIRED) == Close.SHARDING_REQUIRED
    assert exit_codes.fatal_close_of(NOT_FATAL_4000) is None


# (context, action, supervisor's exit code, Discord close), each row derived from Arbiter._on_exit.
CASES = [
    # 1. handover: wins over everything
    pytest.param(ctx(OK, handed_over=True), A.HANDED_OVER, None, None, id="handover-clean"),
    pytest.param(ctx(ERROR, handed_over=True), A.HANDED_OVER, None, None, id="handover-crash"),
    pytest.param(
        ctx(BAD_TOKEN, handed_over=True), A.HANDED_OVER, None, Close.AUTHENTICATION_FAILED,
        id="handover-wins-over-fatal",
    ),
    pytest.param(
        ctx(OK, handed_over=True, retiring=True, rolling_clean=True), A.HANDED_OVER, None, None,
        id="handover-wins-over-retiring-and-rolling",
    ),
    pytest.param(ctx(USAGE, handed_over=True, stopping=True), A.HANDED_OVER, None, None, id="handover-wins-over-stopping"),
    # 2. the old set retiring after a reshard
    pytest.param(ctx(OK, retiring=True), A.RETIRED, None, None, id="retiring-clean"),
    pytest.param(ctx(KILLED, retiring=True), A.RETIRED, None, None, id="retiring-killed"),
    pytest.param(
        ctx(SHARDING_REQUIRED, retiring=True, auto_reshard=True), A.RETIRED, None, Close.SHARDING_REQUIRED,
        id="retiring-wins-over-4011-auto",
    ),
    pytest.param(
        ctx(BAD_TOKEN, retiring=True), A.RETIRED, None, Close.AUTHENTICATION_FAILED,
        id="retiring-wins-over-fatal",
    ),
    pytest.param(ctx(OK, retiring=True, rolling_clean=True), A.RETIRED, None, None, id="retiring-wins-over-rolling"),
    pytest.param(ctx(USAGE, retiring=True), A.RETIRED, None, None, id="retiring-wins-over-usage"),
    # 3. a rolling restart's own clean exit
    pytest.param(ctx(OK, rolling_clean=True), A.ROLLED, None, None, id="rolling-clean-exit"),
    pytest.param(ctx(OK, rolling_clean=True, auto_reshard=True), A.ROLLED, None, None, id="rolling-clean-exit-auto"),
    # a crash or a fatal close during a rolling restart goes through the checks
    # (the arbiter computes rolling_clean False for them; these rows keep it False, as it would)
    pytest.param(ctx(BAD_TOKEN), A.HALT, BAD_TOKEN, Close.AUTHENTICATION_FAILED, id="rolling-reset-token-halts"),
    pytest.param(ctx(ERROR), A.RESTART, None, None, id="rolling-crash-restarts-with-policy"),
    # ...and even a loosely built context (rolling_clean True with a nonzero code) cannot roll them
    pytest.param(
        ctx(BAD_TOKEN, rolling_clean=True), A.HALT, BAD_TOKEN, Close.AUTHENTICATION_FAILED,
        id="rolling-flag-with-fatal-code-halts",
    ),
    pytest.param(ctx(ERROR, rolling_clean=True), A.RESTART, None, None, id="rolling-flag-with-crash-restarts"),
    pytest.param(ctx(OK, rolling_clean=True, stopping=True), A.STOPPED, None, None, id="rolling-flag-while-stopping-stopped"),
    # 4. 4011 with --auto-reshard, not stopping: hold that shard
    pytest.param(
        ctx(SHARDING_REQUIRED, auto_reshard=True), A.HOLD_SHARD, None, Close.SHARDING_REQUIRED,
        id="4011-auto-holds-shard",
    ),
    # 5. any other fatal close halts with the child's own code
    pytest.param(
        ctx(SHARDING_REQUIRED), A.HALT, SHARDING_REQUIRED, Close.SHARDING_REQUIRED, id="4011-without-auto-halts",
    ),
    pytest.param(
        ctx(SHARDING_REQUIRED, auto_reshard=True, stopping=True), A.HALT, SHARDING_REQUIRED, Close.SHARDING_REQUIRED,
        id="4011-auto-while-stopping-halts",
    ),
    pytest.param(
        ctx(BAD_TOKEN, auto_reshard=True), A.HALT, BAD_TOKEN, Close.AUTHENTICATION_FAILED,
        id="4004-with-auto-halts",
    ),
    pytest.param(ctx(INVALID_SHARD), A.HALT, INVALID_SHARD, Close.INVALID_SHARD, id="4010-halts"),
    pytest.param(
        ctx(DISALLOWED_INTENTS), A.HALT, DISALLOWED_INTENTS, Close.DISALLOWED_INTENTS, id="4014-halts",
    ),
    pytest.param(
        ctx(BAD_TOKEN, stopping=True), A.HALT, BAD_TOKEN, Close.AUTHENTICATION_FAILED,
        id="fatal-wins-over-stopping",
    ),
    # 6. stopping: any other exit was expected
    pytest.param(ctx(OK, stopping=True), A.STOPPED, None, None, id="stopping-clean"),
    pytest.param(ctx(ERROR, stopping=True), A.STOPPED, None, None, id="stopping-crash"),
    pytest.param(ctx(KILLED, stopping=True), A.STOPPED, None, None, id="stopping-killed"),
    pytest.param(ctx(USAGE, stopping=True), A.STOPPED, None, None, id="stopping-wins-over-usage"),
    # 7. usage halts with USAGE
    pytest.param(ctx(USAGE), A.HALT, USAGE, None, id="usage-halts"),
    pytest.param(ctx(USAGE, auto_reshard=True), A.HALT, USAGE, None, id="usage-with-auto-halts"),
    # 8. everything else restarts with the restart policy's delay
    pytest.param(ctx(ERROR), A.RESTART, None, None, id="crash-restarts"),
    pytest.param(ctx(KILLED), A.RESTART, None, None, id="killed-by-signal-restarts"),
    pytest.param(ctx(OK), A.RESTART, None, None, id="unasked-clean-exit-restarts"),
    pytest.param(ctx(NOT_FATAL_4000), A.RESTART, None, None, id="exit-40-not-a-fatal-close-restarts"),
    pytest.param(ctx(137, auto_reshard=True), A.RESTART, None, None, id="exit-137-restarts"),
]


@pytest.mark.parametrize(("context", "action", "exit_code", "close"), CASES)
def test_decide_exit(context: ExitContext, action: ExitAction, exit_code: int | None, close: int | None):
    assert decide_exit(context) == ExitDecision(action, exit_code, close)


def _on_exit_reference(
    code: int,
    handed_over: bool,
    retiring: bool,
    rolling_child: bool,
    auto_reshard: bool,
    stopping: bool,
) -> ExitDecision:
    """Arbiter._on_exit's if-chain, transcribed with its side effects replaced by the decision.

    ``rolling_child``: ``self.rolling.current == group.index and child.stopping_since is not None``.
    """
    close = exit_codes.fatal_close_of(code)
    if handed_over:
        return ExitDecision(A.HANDED_OVER, None, close)
    if retiring:
        return ExitDecision(A.RETIRED, None, close)
    if rolling_child and code == exit_codes.OK and not stopping:
        return ExitDecision(A.ROLLED, None, close)
    if close == Close.SHARDING_REQUIRED and auto_reshard and not stopping:
        return ExitDecision(A.HOLD_SHARD, None, close)
    if close is not None:
        return ExitDecision(A.HALT, code, close)
    if stopping:
        return ExitDecision(A.STOPPED, None, close)
    if code == exit_codes.USAGE:
        return ExitDecision(A.HALT, exit_codes.USAGE, close)
    return ExitDecision(A.RESTART, None, close)


codes = st.one_of(st.integers(), st.sampled_from([OK, ERROR, USAGE, KILLED, *range(40, 56)]))


@given(code=codes, handed_over=st.booleans(), retiring=st.booleans(), rolling_child=st.booleans(),
       auto_reshard=st.booleans(), stopping=st.booleans())  # fmt: skip
def test_decide_exit_matches_the_arbiter_chain(code, handed_over, retiring, rolling_child, auto_reshard, stopping):
    rolling_clean = rolling_child and code == exit_codes.OK and not stopping  # as the arbiter computes it
    context = ExitContext(code, handed_over, retiring, rolling_clean, auto_reshard, stopping)
    expected = _on_exit_reference(code, handed_over, retiring, rolling_child, auto_reshard, stopping)
    assert decide_exit(context) == expected


@given(code=codes, handed_over=st.booleans(), retiring=st.booleans(), rolling_clean=st.booleans(),
       auto_reshard=st.booleans(), stopping=st.booleans())  # fmt: skip
def test_decide_exit_never_raises_and_halts_only_with_an_exit_code(
    code, handed_over, retiring, rolling_clean, auto_reshard, stopping
):
    decision = decide_exit(ExitContext(code, handed_over, retiring, rolling_clean, auto_reshard, stopping))
    assert isinstance(decision.action, ExitAction)
    assert (decision.action is A.HALT) == (decision.exit_code is not None)
    if decision.action is A.HALT:
        assert decision.exit_code in (code, exit_codes.USAGE)
        assert decision.exit_code != exit_codes.OK
    assert decision.close == exit_codes.fatal_close_of(code)
    if decision.action is A.HOLD_SHARD:
        assert decision.close == Close.SHARDING_REQUIRED and auto_reshard and not stopping
    if decision.action is A.ROLLED:
        assert code == exit_codes.OK and rolling_clean and not stopping
