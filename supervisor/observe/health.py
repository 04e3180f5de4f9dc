"""``/healthz`` and ``/readyz`` beside ``/metrics`` (``--metrics-addr``), for Kubernetes probes
and load balancers. Both answer from the HTTP thread in microseconds, need no token, and read
only what the arbiter already shares with the metrics (:class:`~supervisor.observe.metrics.MetricsState`).

* ``GET /healthz``: 200 while the supervisor's loop runs. The loop stamps
  :meth:`MetricsState.tick` at every pass (a pass lasts at most about a second); when the last
  stamp is older than :data:`STALL_S` the loop is stuck and the answer is 503. A stopped
  process (SIGSTOP, a frozen VM) does not answer at all, which a probe counts as a failure too.
* ``GET /readyz``: 200 when every shard this supervisor runs is READY, else 503. The body is
  short JSON whatever the shard count: ``{"ready": 61, "total": 64, "not_ready": "3,17-18",
  "states": {"ready": 61, "resuming": 2, "down": 1}}`` (``not_ready`` as a range string, so
  5000 shards stay a few hundred bytes). While identifies are held at the daily budget's
  reserve the body also says ``"identify_held": {"remaining": 5, "reserve": 16}``: the shards
  waiting for an IDENTIFY wait for Discord's reset, or for a human.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from shard_worker.shard_ranges import format_shard_ids
from supervisor.observe.metrics import MetricsState, Snapshot, shard_state

#: ``/healthz`` fails when the loop has not passed for this long (a pass is at most ~1 s).
STALL_S = 10.0
PATHS = ("/healthz", "/readyz")


def liveness(last_tick: float | None, now: float, stall_s: float = STALL_S) -> tuple[int, dict[str, Any]]:
    """``(status, body)`` of ``/healthz`` for a loop last seen at ``last_tick``."""
    if last_tick is None:
        return 503, {"ok": False, "reason": "the supervisor's loop has not started"}
    age = max(0.0, now - last_tick)
    if age > stall_s:
        return 503, {"ok": False, "reason": f"the supervisor's loop has not run for {age:.1f} s", "last_tick_s": round(age, 1)}
    return 200, {"ok": True, "last_tick_s": round(age, 3)}


def readiness(snapshot: Snapshot) -> tuple[int, dict[str, Any]]:
    """``(status, body)`` of ``/readyz``: every shard of the snapshot's groups READY."""
    states: Counter[str] = Counter()
    not_ready: list[int] = []
    for group, shards in snapshot.groups.items():
        for shard in shards:
            state = shard_state(snapshot, group, shard)
            states[state] += 1
            if state != "ready":
                not_ready.append(shard)
    total = sum(states.values())
    body = {
        "ready": states["ready"],
        "total": total,
        "not_ready": format_shard_ids(sorted(not_ready)) if not_ready else "",
        "states": dict(sorted(states.items())),
    }
    if snapshot.supervisor.get("identify_held"):
        # Not ready, and not coming back by itself: the shards waiting for an IDENTIFY wait for
        # Discord's reset (or a human), since the budget is down to its reserve.
        body["identify_held"] = {
            "remaining": snapshot.supervisor.get("identify_budget_remaining"),
            "reserve": snapshot.supervisor.get("identify_budget_reserve"),
        }
    return (200 if total and not not_ready else 503), body


def health_app(state: MetricsState, metrics_app: Callable[..., Iterable[bytes]]) -> Callable[..., Iterable[bytes]]:
    """A WSGI app: ``/healthz`` and ``/readyz`` here, anything else to ``metrics_app``."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path not in PATHS:
            return metrics_app(environ, start_response)
        if path == "/healthz":
            status, body = liveness(state.last_tick, state.clock())
        else:
            status, body = readiness(state.snapshot())
        data = json.dumps(body, separators=(",", ":")).encode()
        reason = "OK" if status == 200 else "Service Unavailable"
        start_response(
            f"{status} {reason}",
            [("Content-Type", "application/json"), ("Content-Length", str(len(data))), ("Cache-Control", "no-store")],
        )
        return [data]

    return app


__all__ = ["PATHS", "STALL_S", "health_app", "liveness", "readiness"]
