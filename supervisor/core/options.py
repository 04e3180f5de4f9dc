"""What ``start`` tells the arbiter beyond the workers' configs (built from the settings by
:mod:`supervisor.cli`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class ArbiterOptions:
    state_dir: str = "state"
    #: A child that sends no IPC heartbeat for this long is stopped and replaced.
    heartbeat_timeout: float = 30.0
    #: A stopping child gets this long before SIGKILL.
    stop_grace: float = 8.0
    max_memory_mb: float | None = None
    sample_interval: float = 5.0
    save_interval: float = 1.0
    session_start_remaining: int | None = None
    session_start_reset_after: float | None = None  # seconds from start
    #: Discord's ``session_start_limit.total`` (the budget after each reset); None: 1000.
    session_start_total: int | None = None
    #: ``GET /gateway/bot`` (returns a ``GatewayBot``), run off the loop to refresh the budget;
    #: None: Discord is never asked again after the start.
    fetch_gateway_bot: Any = None
    restart_policy: dict[str, Any] = field(default_factory=dict)
    #: ``(host, port)`` to serve Prometheus ``/metrics`` on; None: no HTTP server.
    metrics_addr: tuple[str, int] | None = None
    #: ``text`` or ``json``, for the children (``SPECTACLES_LOG_FORMAT``); None: inherited.
    log_format: str | None = None
    #: The live progress line on stderr; None: when stderr is a terminal and logs are text.
    live_progress: bool | None = None
    #: Shared identify buckets, budget and sessions across hosts (``--redis-url``); None: local.
    coordinator: Any = None
    #: A reshard's target must be a multiple of this (Discord's rule for large bots).
    shard_count_multiple: int = 1
    #: ``--auto-reshard``: seconds between two checks of Discord's recommended count, and a
    #: 4011 starts a reshard instead of halting (:mod:`supervisor.reshard.auto`); None: off.
    auto_reshard_interval: float | None = None
    #: Cluster mode (``start --cluster``): the node's rounds (a
    #: :class:`~supervisor.cluster.node.ClusterNode`); the groups run are those it leases.
    cluster: Any = None
    #: Identifies never spent on our own (``--identify-reserve``); None: one full restart of
    #: the shards configured here (:func:`supervisor.identify.hold.default_reserve`).
    identify_reserve: int | None = None
