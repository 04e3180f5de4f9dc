"""What the simulator's sessions were sent, read while they exist (an ended session's history
is forgotten): the MESSAGE_CREATE ids due to consumers through a reshard."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from typing import Any

from shard_worker.ipc_vocabulary import Request
from supervisor.core import control


def guilds_in(sim: Any, session_id: str) -> dict[str, int | None]:
    """The MESSAGE_CREATEs the simulator sent to one session: id -> guild_id (None: a DM)."""
    frames = [f["d"] for f in sim.call("history", session_id) if f["t"] == "MESSAGE_CREATE"]
    return {d["id"]: None if d.get("guild_id") is None else int(d["guild_id"]) for d in frames}


def ids_in(sim: Any, session_id: str) -> set[str]:
    """The MESSAGE_CREATE ids the simulator sent to one session."""
    return set(guilds_in(sim, session_id))


class SessionWatcher:
    """Collects, every 0.2 s, the MESSAGE_CREATE ids sent to every session of the sets whose
    counts are in ``counts`` (all sets when None) until :meth:`stop`."""

    def __init__(self, sim: Any, counts: tuple[int, ...] | None = None) -> None:
        self.sim = sim
        self.counts = counts
        #: MESSAGE_CREATE id -> its guild_id
        self.guilds: dict[str, int | None] = {}
        #: session id -> the MESSAGE_CREATE ids it was sent
        self.by_session: dict[str, set[str]] = {}
        self._on = threading.Event()
        self._on.set()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while self._on.is_set():
            for count, states in self.sim.call("set_states").items():
                if self.counts is None or count in self.counts:
                    for state in states.values():
                        if sid := state.get("session_id"):
                            seen = guilds_in(self.sim, sid)
                            self.guilds.update(seen)
                            self.by_session.setdefault(sid, set()).update(seen)
            time.sleep(0.2)

    def stop(self) -> set[str]:
        """Stop watching; the ids seen."""
        self._on.clear()
        self._thread.join(5)
        return set(self.guilds)


def reshard_command(state_dir: Any, count: int) -> subprocess.Popen:
    """``spectacles-supervisor reshard --shard-count count`` running in the background."""
    return subprocess.Popen(
        [sys.executable, "-m", "supervisor", "reshard", "--shard-count", str(count), "--state-dir", str(state_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def reshard_phase(sup: Any) -> str | None:
    """The running supervisor's reshard phase (None: no answer or no reshard). Asked on the
    control socket from this process: a `status` command is a Python start (a second or more
    on a loaded machine), long enough to miss a short phase."""
    try:
        document = control.request(sup.state_dir, Request.STATUS.value, timeout=10.0)
    except (control.ControlError, OSError):
        return None
    return (document.get("reshard") or {}).get("phase") if isinstance(document, dict) else None
