"""Which asyncio event loop a worker runs on: uvloop when the ``speedups`` extra installed it.

``SPECTACLES_LOOP=auto|uvloop|asyncio`` (default ``auto``: uvloop if importable, else the
standard loop). Measured in docs/BENCHMARKS.md ("The loop"); kept only because it pays there.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")
CHOICES = ("auto", "uvloop", "asyncio")


def choice() -> str:
    value = os.environ.get("SPECTACLES_LOOP", "auto").strip().lower() or "auto"
    if value not in CHOICES:
        raise ValueError(f"SPECTACLES_LOOP must be one of {', '.join(CHOICES)}, not {value!r}")
    return value


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
