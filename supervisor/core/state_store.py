"""The supervisor's state directory: saved sessions, written atomically, private to the user.

``sessions.json`` maps shard ids to the session a replacement process (or the next ``start``)
resumes, and records the shard count they belong to: the **active count** of the bot, which a
``start`` with another explicit ``--shard-count`` must not silently throw away
(:func:`saved_shard_count`). Files are written to a temporary name, fsynced and renamed, so a crash of the host at any
moment leaves either the old or the new file. The directory is 0700 and files 0600: a session id
is not the token, but it can resume the bot's session.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from shard_worker.config import SavedSession

log = logging.getLogger("supervisor.state")

SESSIONS_FILE = "sessions.json"
IDENTIFIES_FILE = "identifies.json"
#: Buckets' last writes older than this are forgotten (far more than the 5 s that matter).
BUCKET_HORIZON_S = 60.0
#: Discord counts session starts per rolling day.
IDENTIFY_WINDOW_S = 24 * 3600
#: Sessions saved longer ago than this are not worth a RESUME attempt (Discord forgets them).
MAX_SESSION_AGE_S = 15 * 60


def ensure_dir(path: Path) -> Path:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def write_json_atomic(path: Path, data: Any, *, compact: bool = False) -> None:
    """``compact``: one line, by the stdlib's C encoder (``indent`` makes it fall back to its
    Python one: 6x slower for the sessions of 2,000 shards, written every second)."""
    ensure_dir(path.parent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            if compact:
                f.write(json.dumps(data, separators=(",", ":"), sort_keys=True))
            else:
                json.dump(data, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read_json(path: Path) -> Any | None:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("ignoring unreadable %s: %s", path, exc)
        return None


def saved_shard_count(directory: str | os.PathLike, now: float | None = None) -> int | None:
    """The shard count of the sessions saved in ``directory`` if any of them is still worth
    resuming (not older than :data:`MAX_SESSION_AGE_S`), else None. Creates nothing."""
    data = read_json(Path(directory) / SESSIONS_FILE)
    if not isinstance(data, dict) or not data.get("sessions"):
        return None
    count = data.get("shard_count")
    if not isinstance(count, int) or isinstance(count, bool):
        return None
    try:
        age = (time.time() if now is None else now) - float(data.get("saved_at", 0))
    except (TypeError, ValueError):
        return None
    return count if age <= MAX_SESSION_AGE_S else None


class StateStore:
    def __init__(self, directory: str | os.PathLike, shard_count: int) -> None:
        self.dir = ensure_dir(Path(directory))
        self.shard_count = shard_count

    def save_sessions(self, sessions: dict[int, SavedSession], now: float | None = None) -> None:
        data = {
            "shard_count": self.shard_count,
            "saved_at": time.time() if now is None else now,
            "sessions": {
                str(k): {"session_id": v.session_id, "seq": v.seq, "resume_gateway_url": v.resume_gateway_url}
                for k, v in sessions.items()
            },
        }
        # Every second while events flow: 6.3 ms at 2,000 shards, against 38.7 with asdict and
        # an indented dump (the supervisor's largest cost at that scale, issue 23's latency run).
        write_json_atomic(self.dir / SESSIONS_FILE, data, compact=True)

    def load_sessions(self, now: float | None = None) -> dict[int, SavedSession]:
        """Saved sessions still worth resuming (same shard count, not too old)."""
        data = read_json(self.dir / SESSIONS_FILE)
        if not isinstance(data, dict):
            return {}
        now = time.time() if now is None else now
        if data.get("shard_count") != self.shard_count:
            log.info("saved sessions are for %s shards, not %d: identifying anew", data.get("shard_count"), self.shard_count)
            return {}
        age = now - float(data.get("saved_at", 0))
        if age > MAX_SESSION_AGE_S:
            log.info("saved sessions are %.0f s old: identifying anew", age)
            return {}
        sessions = {}
        for key, value in (data.get("sessions") or {}).items():
            try:
                sessions[int(key)] = SavedSession(**value)
            except (TypeError, ValueError):
                log.warning("ignoring a malformed saved session for shard %r", key)
        return sessions

    # -- the identify log: every IDENTIFY granted in the last 24 h --------------------------------
    def identifies(self, now: float | None = None) -> list[float]:
        """Wall-clock times of the identifies granted in the last 24 h, oldest first."""
        now = time.time() if now is None else now
        data = read_json(self.dir / IDENTIFIES_FILE)
        times = data.get("granted", []) if isinstance(data, dict) else []
        return sorted(t for t in times if isinstance(t, (int, float)) and now - IDENTIFY_WINDOW_S < t <= now + 60)

    def record_identify(self, now: float | None = None, bucket: int | None = None, written_by: float | None = None) -> int:
        """Add one granted identify; returns how many the last 24 h now hold. ``bucket`` and
        ``written_by`` (wall clock: the latest the grant may be written, its expiry) keep the
        bucket's pace across a restart (:meth:`bucket_writes`)."""
        return self.record_identifies([(time.time() if now is None else now, bucket, written_by)])

    def record_identifies(self, records: list[tuple[float, int | None, float | None]]) -> int:
        """Add several granted identifies ``(wall time, bucket, written_by)`` in one write."""
        now = max(r[0] for r in records)
        times = self.identifies(now) + [r[0] for r in records]
        buckets = self.bucket_writes(now)
        for at, bucket, written_by in records:
            if bucket is not None:
                buckets[bucket] = max(buckets.get(bucket, 0.0), at if written_by is None else written_by)
        write_json_atomic(
            self.dir / IDENTIFIES_FILE, {"granted": times, "buckets": {str(b): t for b, t in sorted(buckets.items())}}
        )
        return len(times)

    def bucket_writes(self, now: float | None = None, horizon_s: float = BUCKET_HORIZON_S) -> dict[int, float]:
        """Bucket -> the latest wall-clock time its last granted IDENTIFY may have been written,
        for the buckets granted in the last ``horizon_s`` (issue 20, defect 11: a supervisor
        restarted after a crash must not grant a bucket within 5 s of its predecessor's write)."""
        now = time.time() if now is None else now
        data = read_json(self.dir / IDENTIFIES_FILE)
        raw = data.get("buckets", {}) if isinstance(data, dict) else {}
        out: dict[int, float] = {}
        for key, value in raw.items() if isinstance(raw, dict) else ():
            if str(key).isdigit() and isinstance(value, (int, float)) and now - horizon_s < value <= now + horizon_s:
                out[int(key)] = float(value)
        return out
