"""Process titles as ``ps`` shows them: ``spectacles-supervisor: <role>`` (never a secret)."""

from __future__ import annotations

TITLE_PREFIX = "spectacles-supervisor: "


def set_title(role: str) -> None:
    try:
        import setproctitle
    except ImportError:  # an optional nicety; ps then shows the interpreter's argv
        return
    setproctitle.setproctitle(TITLE_PREFIX + role)
