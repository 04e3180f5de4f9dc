"""Which shards a Kubernetes StatefulSet pod runs, from the ordinal at the end of its name.

A StatefulSet names its pods ``<name>-0``, ``<name>-1``, ...; ``--shards-from-ordinal`` turns
the ordinal of this pod (the host name's, or ``SPECTACLES_ORDINAL``) into its ``--shards``
range, so that one manifest serves every pod:

* ``--pods P``: the shard count split into P contiguous ranges as even as can be (the first
  ``N mod P`` pods get one shard more): ordinal 3 of 4 pods with 16 shards runs ``12-15``;
* ``--shards-per-pod K``: ordinal ``i`` runs ``i*K`` to ``i*K + K - 1`` (the last pod may run
  fewer).

Pure: the host name and the environment are passed in.
"""

from __future__ import annotations

import re

_ORDINAL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?-(?P<ordinal>[0-9]{1,9})$")


def ordinal_of(hostname: str) -> int:
    """The ordinal at the end of a pod's host name (``gateway-3`` -> 3; a domain is ignored);
    ValueError with the reason when there is none."""
    name = hostname.strip().split(".", 1)[0].lower()
    match = _ORDINAL.match(name)
    if not match:
        raise ValueError(
            f"host name {hostname.strip()!r} does not end in -<ordinal> as a StatefulSet pod's does "
            "(gateway-3); set SPECTACLES_ORDINAL to give it"
        )
    return int(match.group("ordinal"))


def parse_ordinal(text: str) -> int:
    """``SPECTACLES_ORDINAL``: a non-negative integer."""
    if not re.fullmatch(r"[0-9]{1,9}", text.strip()):
        raise ValueError(f"SPECTACLES_ORDINAL must be a non-negative integer, not {text!r}")
    return int(text.strip())


def shards_for_ordinal(ordinal: int, shard_count: int, *, pods: int | None = None, per_pod: int | None = None) -> list[int]:
    """The shard ids of pod ``ordinal`` (exactly one of ``pods`` and ``per_pod``); ValueError
    when the range would be empty."""
    if (pods is None) == (per_pod is None):
        raise ValueError("give exactly one of --pods and --shards-per-pod")
    if pods is not None:
        if ordinal >= pods:
            raise ValueError(f"ordinal {ordinal} is past the last of {pods} pods (0-{pods - 1}): its shard range would be empty")
        if pods > shard_count:
            raise ValueError(f"{pods} pods for {shard_count} shards: some pods would run no shard")
        base, extra = divmod(shard_count, pods)
        start = ordinal * base + min(ordinal, extra)
        return list(range(start, start + base + (1 if ordinal < extra else 0)))
    assert per_pod is not None
    start = ordinal * per_pod
    if start >= shard_count:
        last = (shard_count - 1) // per_pod
        raise ValueError(
            f"ordinal {ordinal} with {per_pod} shards per pod starts at shard {start}, past the last of "
            f"{shard_count} shards: its shard range would be empty (pods 0-{last} cover them)"
        )
    return list(range(start, min(start + per_pod, shard_count)))


__all__ = ["ordinal_of", "parse_ordinal", "shards_for_ordinal"]
