"""Which asyncio event loop a worker runs on (``SPECTACLES_LOOP=asyncio|uvloop|auto``).

The default is the standard loop. uvloop was measured (docs/BENCHMARKS.md, "Variants"): at one
shard it changed the CPU per event by less than the noise (18.7 vs 19.2 µs), so it is not in
the ``speedups`` extra and not chosen by default; ``uvloop`` (or ``auto``: uvloop if installed)
remains for those who want to measure it on their own machine.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from shard_worker.switches import env_choice

T = TypeVar("T")
CHOICES = ("auto", "uvloop", "asyncio")


def choice() -> str:
    return env_choice("SPECTACLES_LOOP", CHOICES, "asyncio")


def name() -> str:
    """The loop ``run`` will use: ``uvloop`` or ``asyncio``."""
    wanted = choice()
    if wanted == "asyncio":
        return "asyncio"
    try:
        import uvloop  # noqa: F401
    except ImportError:
        if wanted == "uvloop":
            raise RuntimeError("SPECTACLES_LOOP=uvloop but uvloop is not installed (pip install 'spectacles-supervisor[speedups]')") from None
        return "asyncio"
    return "uvloop"


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)`` on the chosen loop."""
    if name() == "uvloop":
        import uvloop

        return uvloop.run(main)
    return asyncio.run(main)
