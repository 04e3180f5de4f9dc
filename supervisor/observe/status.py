"""The ``status`` document's parts (``spectacles-supervisor status``, the control socket), built
from what the arbiter holds: one row per shard and per group, Redis, ``--auto-reshard``. Pure."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from shard_worker.shard_ranges import format_shard_ids


def shard_rows(groups: Iterable[Any], is_stalled: Callable[[int], bool]) -> list[dict[str, Any]]:
    """One row per shard of ``groups`` (those held down for a 4011 too), from its child's last
    report: ``down`` without a child, ``starting`` before its first report."""
    rows = []
    for group in groups:
        child = group.child
        report = child.shard_reports if child else {}
        for shard in sorted([*group.config.shard_ids, *group.held]):
            info = report.get(str(shard), {}) if shard not in group.held else {"state": "held"}
            state = "stalled" if child is not None and is_stalled(shard) else info.get(
                "state", "down" if child is None else "starting"
            )
            rows.append({
                "shard": shard, "group": group.index, "pid": child.pid if child else None, "state": state,
                "seq": info.get("seq"), "latency_ms": info.get("latency_ms"), "published": info.get("published", 0),
                "received": info.get("received", 0), "reconnects": info.get("reconnects", 0),
                "resumes": info.get("resumes", 0), "identifies": info.get("identifies", 0),
                "rss": child.rss if child else None,
            })  # fmt: skip
    return rows


def group_rows(groups: Iterable[Any], now: float) -> list[dict[str, Any]]:
    """One row per group: its process, restarts, memory and CPU, and the sizes of what its
    process holds (asyncio tasks, the publish ledger...: ``Worker.sizes``)."""
    return [
        {
            "group": g.index, "shards": format_shard_ids(g.config.shard_ids), "pid": g.child.pid if g.child else None,
            "restarts": g.restarts, "rss": g.child.rss if g.child else None,
            "cpu_percent": g.child.cpu_percent if g.child else None,
            "uptime": round(g.child.uptime(now), 1) if g.child else None,
            "sizes": g.child.report.get("sizes") if g.child else None,
        }  # fmt: skip
        for g in groups
    ]


def redis_block(shared: Any) -> dict[str, Any] | None:
    """With ``--redis-url``: whether its last call succeeded, and the requests waiting for it."""
    return None if shared is None else {"answering": not shared.failing, "pending": shared.pending}


def auto_reshard_block(auto: Any, groups: Iterable[Any], now: float) -> dict[str, Any] | None:
    """``--auto-reshard``: its interval, the next check, the shards held down for a 4011."""
    if auto is None:
        return None
    return {
        "interval_s": auto.interval_s,
        "next_check_in": None if auto.next_check is None else round(max(0.0, auto.next_check - now), 1),
        "held": sorted(shard for g in groups for shard in g.held),
    }


def document(arbiter: Any, running: list[Any], now: float) -> dict[str, Any]:
    """The whole ``status`` document, from the arbiter's components (read only)."""
    budget = arbiter.budget
    remaining = budget.remaining()
    return {
        "shard_count": arbiter.shard_count,
        "shards_label": format_shard_ids(arbiter.all_shards),
        "uptime": round(now - arbiter.started_at, 1),
        "groups": group_rows(running, now),
        "identify_budget_remaining": remaining,
        "identify_hold": budget.hold.describe(remaining),
        "identifies_granted": budget.gate.total_granted,
        "redis": redis_block(arbiter.shared),
        "reshard": arbiter.reshard.status(now),
        "auto_reshard": auto_reshard_block(arbiter.reshard.auto, running, now),
        "cluster": None if arbiter.member is None else arbiter.member.describe(),
        "shards": shard_rows(running, arbiter.metrics.is_stalled),
    }


def figures(arbiter: Any, ready: int, now: float) -> dict[str, Any]:
    """The supervisor-wide figures of ``/metrics`` (``MetricsState.set_supervisor``)."""
    budget = arbiter.budget
    return {
        "identify_budget_remaining": budget.remaining(),
        "identify_budget_reserve": budget.reserve,
        "identify_held": budget.hold.held,
        "identifies_granted": budget.gate.total_granted,
        "identify_waiting": budget.gate.waiting,
        "shards_ready": ready,
        "shard_count": arbiter.shard_count,
        "reshard": arbiter.reshard.status(now),
        "reshards": arbiter.reshard.ended(),
        "cluster": arbiter.member.describe() if arbiter.member is not None else None,
    }
