"""Shard id sets written as ranges (``"0-3,8,10-11"``) and their split over worker processes."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence

#: Upper bound for a shard count (and so for a shard id + 1). Far above any real bot (Discord
#: recommends about 1000 guilds per shard) but it stops ``0-999999999`` from eating the memory.
MAX_SHARD_COUNT = 1 << 16

_RANGE = re.compile(r"([0-9]+)\s*-\s*([0-9]+)")
_SINGLE = re.compile(r"[0-9]+")


def _shard_id(text: str, item: str) -> int:
    if len(text) > 9:
        raise ValueError(f"shard id in {item!r} is too large (at most {MAX_SHARD_COUNT - 1})")
    value = int(text)
    if value >= MAX_SHARD_COUNT:
        raise ValueError(f"shard id {value} is too large (at most {MAX_SHARD_COUNT - 1})")
    return value


def parse_shard_ids(text: str) -> list[int]:
    """Parse ``"0-3,8,10-11"`` into ``[0, 1, 2, 3, 8, 10, 11]``.

    Items are separated by commas (spaces around items are ignored); an item is a shard id or an
    inclusive range ``a-b``. The result is sorted and deduplicated. Raises :class:`ValueError`
    naming the bad item for an empty value, a negative id, a reversed range or anything else.
    """
    if not text.strip():
        raise ValueError("no shard ids given (expected ids or ranges such as 0-3,8)")
    ids: set[int] = set()
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            raise ValueError(f"empty item in shard ids {text.strip()!r}")
        if item.startswith("-"):
            raise ValueError(f"shard ids cannot be negative: {item!r}")
        if match := _RANGE.fullmatch(item):
            first = _shard_id(match.group(1), item)
            last = _shard_id(match.group(2), item)
            if first > last:
                raise ValueError(f"shard range {item!r} is reversed (write {last}-{first})")
            ids.update(range(first, last + 1))
        elif _SINGLE.fullmatch(item):
            ids.add(_shard_id(item, item))
        else:
            raise ValueError(f"invalid shard id or range {item!r} (expected e.g. 0-3,8,10-11)")
    return sorted(ids)


def format_shard_ids(ids: Iterable[int]) -> str:
    """The shortest range form of ``ids``: ``[0, 1, 2, 3, 8]`` gives ``"0-3,8"`` ("" if empty).

    Any run of two or more consecutive ids is written as a range, so
    ``parse_shard_ids(format_shard_ids(ids)) == sorted(set(ids))``.
    """
    ordered = sorted(set(ids))
    parts: list[str] = []
    index = 0
    while index < len(ordered):
        start = end = ordered[index]
        while index + 1 < len(ordered) and ordered[index + 1] == end + 1:
            index += 1
            end = ordered[index]
        parts.append(str(start) if start == end else f"{start}-{end}")
        index += 1
    return ",".join(parts)


def split_groups(ids: Sequence[int], per_process: int) -> list[list[int]]:
    """Cut ``ids`` (in their order) into consecutive chunks of ``per_process`` shards.

    The last chunk may be shorter; ``[]`` gives ``[]``. Raises :class:`ValueError` if
    ``per_process`` is less than 1.
    """
    if per_process < 1:
        raise ValueError(f"shards per process must be at least 1, not {per_process}")
    return [list(ids[i : i + per_process]) for i in range(0, len(ids), per_process)]


#: The default puts at most this many shards in one process (see the README, "How many shards
#: per process"): a child's base costs about 31 MB and an idle shard about 47 KB, so at 1000 the
#: base is under half of the process; a kill -9 of such a child takes 1000 shards down for the
#: few seconds their RESUMEs take (2.7 s measured), where a child of 2500 would take 2500.
MAX_DEFAULT_SHARDS_PER_PROCESS = 1000


def default_shards_per_process(n_shards: int, cpu_count: int | None) -> int:
    """Spread ``n_shards`` evenly over at least one process per core, with at most
    :data:`MAX_DEFAULT_SHARDS_PER_PROCESS` in each.

    ``cpu_count`` may be ``None`` (what :func:`os.cpu_count` returns when it cannot tell); it then
    counts as one core.
    """
    cpus = cpu_count if cpu_count and cpu_count > 0 else 1
    processes = max(cpus, math.ceil(n_shards / MAX_DEFAULT_SHARDS_PER_PROCESS))
    return max(1, math.ceil(n_shards / processes))
