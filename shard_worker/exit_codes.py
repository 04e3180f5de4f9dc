"""Process exit codes: the contract between a worker, the supervisor and systemd.

| code  | meaning                                                                  |
|-------|--------------------------------------------------------------------------|
| 0     | stopped on request; sessions kept resumable                              |
| 1     | unexpected error (a bug, or the environment): restart with backoff       |
| 2     | bad configuration or usage: restarting cannot help                       |
| 44    | Discord closed with 4004: authentication failed (bad or reset token)     |
| 50-54 | Discord closed with 4010-4014: invalid shard, sharding required, invalid |
|       | API version, invalid intents, disallowed intents                         |

A fatal close exits with ``40 + (close_code - 4000)`` so the code names the cause; nothing may
restart such a process automatically (it would burn identifies and get the token reset).
"""

from __future__ import annotations

from shard_worker.gateway.protocol import FATAL_CLOSE_CODES, describe_close

OK = 0
ERROR = 1
USAGE = 2
FATAL_BASE = 40


def for_fatal_close(close_code: int) -> int:
    return FATAL_BASE + (close_code - 4000)


def fatal_close_of(exit_code: int) -> int | None:
    """The Discord close code a worker's exit code stands for, if it stands for one."""
    close = exit_code - FATAL_BASE + 4000
    return close if close in FATAL_CLOSE_CODES else None


def describe(exit_code: int) -> str:
    close = fatal_close_of(exit_code)
    if close is not None:
        return f"fatal Discord close {describe_close(close)}"
    return {OK: "stopped", ERROR: "crashed", USAGE: "bad configuration"}.get(exit_code, f"exit code {exit_code}")
