"""The measuring switches of a worker: one environment variable, one of a few values.

``SPECTACLES_LOOP`` (``event_loop``) and ``SPECTACLES_GC`` (``gc_tuning``) are read the same
way: blank means the default, case does not matter, anything else is one clear error.
"""

from __future__ import annotations

import os


def env_choice(variable: str, choices: tuple[str, ...], default: str) -> str:
    """The value of ``variable`` among ``choices`` (``default`` when unset or blank); raises
    ``ValueError`` naming the variable and the choices otherwise."""
    value = os.environ.get(variable, default).strip().lower() or default
    if value not in choices:
        raise ValueError(f"{variable} must be one of {', '.join(choices)}, not {value!r}")
    return value
