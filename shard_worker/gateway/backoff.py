"""Reconnect backoff as a generator: exponential with full jitter, capped.

The driver keeps one generator per shard and replaces it (``reset``) once a connection proved
healthy (READY or RESUMED), so backoff only grows inside a window of consecutive failures.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator


def exponential_backoff(
    base: float = 1.0,
    factor: float = 2.0,
    cap: float = 60.0,
    rng: Callable[[], float] = random.random,
) -> Iterator[float]:
    """Yield delays: the first is 0 (retry at once), then ``base * factor**n`` jittered, capped.

    Full jitter (a uniform draw in [d/2, d]) spreads many shards that failed together.
    """
    yield 0.0
    delay = base
    while True:
        yield delay / 2 + rng() * delay / 2
        delay = min(cap, delay * factor)
