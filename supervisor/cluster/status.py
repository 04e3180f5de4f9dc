"""``status --cluster``: every node and every group's owner, read from Redis (no supervisor
needs to answer: any host with the Redis URL can ask)."""

from __future__ import annotations

from typing import Any

from shard_worker.shard_ranges import format_shard_ids
from supervisor.cluster.rules import NODE_TTL_S, group_count, group_shards
from supervisor.cluster.store import ClusterStore


def read(client: Any, prefix: str) -> dict[str, Any]:
    """The cluster's state: ``shard_count``, ``per_group``, ``nodes`` and ``groups``."""
    store = ClusterStore(client, prefix, name="", token="")
    meta = {k.decode(): int(v) for k, v in client.hgetall(f"{prefix}:cluster:meta").items() if k != b"epoch"}
    if "shard_count" not in meta or "per_group" not in meta:
        return {"shard_count": None, "per_group": None, "nodes": [], "groups": []}
    count, per = meta["shard_count"], meta["per_group"]
    groups = group_count(count, per)
    owners = store.owners(count, groups)
    nodes = []
    for info in sorted(store.nodes(), key=lambda n: n["name"]):
        held = sorted(g for g, owner in owners.items() if owner == info["name"])
        shards = [s for g in held for s in group_shards(g, count, per)]
        nodes.append({
            "name": info["name"], "host": info.get("host"), "pid": info.get("pid"),
            "capacity": info.get("capacity", 1), "groups": held, "shards": format_shard_ids(shards),
            "last_heartbeat_s": round(max(0.0, float(info.get("ttl", NODE_TTL_S)) - info["expires_in_s"]), 1),
        })  # fmt: skip
    table = [
        {"group": g, "shards": format_shard_ids(group_shards(g, count, per)), "owner": owners.get(g)}
        for g in range(groups)
    ]
    return {"shard_count": count, "per_group": per, "nodes": nodes, "groups": table}


def format_cluster(state: dict[str, Any]) -> str:
    if state["shard_count"] is None:
        return "no cluster in Redis under this prefix"
    lines = [f"{state['shard_count']} shards in {len(state['groups'])} groups of {state['per_group']}; {len(state['nodes'])} nodes"]
    rows = [("NODE", "HOST", "GROUPS", "SHARDS", "HEARTBEAT")]
    rows += [
        (n["name"], str(n.get("host") or ""), str(len(n["groups"])), n["shards"] or "-", f"{n['last_heartbeat_s']:.1f} s ago")
        for n in state["nodes"]
    ]
    lines += _table(rows)
    free = [g["group"] for g in state["groups"] if g["owner"] is None]
    lines.append(f"free groups: {format_shard_ids(free)}" if free else "every group has an owner")
    rows = [("GROUP", "SHARDS", "OWNER")] + [(str(g["group"]), g["shards"], g["owner"] or "-") for g in state["groups"]]
    return "\n".join(lines + [""] + _table(rows))


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]


__all__ = ["format_cluster", "read"]
