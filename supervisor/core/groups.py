"""A group: consecutive shards run by one worker process, and what the arbiter knows of it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from shard_worker.config import WorkerConfig
from supervisor.core.child import Child
from supervisor.core.restart_policy import RestartPolicy


@dataclass
class Group:
    index: int
    config: WorkerConfig
    policy: RestartPolicy
    child: Child | None = None
    start_at: float = 0.0  # monotonic time the next child may start
    restarts: int = 0
    #: Shards taken out of the group, with the fatal exit code of their close: a 4011 under
    #: ``--auto-reshard`` (restarting it would only meet 4011 again); the reshard that
    #: replaces the set brings them back. The group's other shards run on.
    held: dict[int, int] = field(default_factory=dict)


def numbered(configs: Sequence[WorkerConfig], first: int, restart_policy: Mapping[str, Any],
             children: Mapping[int, Child] | None = None) -> list[Group]:
    """One group per config, numbered from ``first`` (a reshard's new set continues the numbers),
    with the children already running (``children`` by group number)."""
    children = children or {}
    return [Group(first + i, config, RestartPolicy(**restart_policy), child=children.get(first + i))
            for i, config in enumerate(configs)]  # fmt: skip
