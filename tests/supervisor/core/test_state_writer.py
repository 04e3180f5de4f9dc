"""The state dir's writes off the loop (``supervisor/core/state_writer.py``): a stalled disk never
blocks the caller; the latest sessions snapshot wins; grants are all written, in one go;
a failed write is retried."""

from __future__ import annotations

import threading
import time

from shard_worker.config import SavedSession
from supervisor.core import state_store
from supervisor.core.state_store import StateStore
from supervisor.core.state_writer import RETRY_S, StateWriter


def test_a_stalled_disk_never_blocks_the_caller_and_the_latest_snapshot_wins(tmp_path, monkeypatch):
    # Issue 20, defect 7: the loop itself fsynced on every grant and every second of saves.
    real = state_store.write_json_atomic
    stalled = threading.Event()
    release = threading.Event()

    def slow(path, data, **kw):
        stalled.set()
        assert release.wait(10)
        real(path, data, **kw)

    monkeypatch.setattr(state_store, "write_json_atomic", slow)
    store = StateStore(tmp_path, 4)
    writer = StateWriter()
    try:
        writer.save_sessions(store, {0: SavedSession("a", 1, "wss://r")})
        assert stalled.wait(5)  # the thread is stuck in the disk
        started = time.monotonic()
        for seq in range(2, 50):
            writer.save_sessions(store, {0: SavedSession("a", seq, "wss://r")})
            writer.record_identify(store, time.time(), bucket=seq % 2, written_by=time.time() + 5)
        assert time.monotonic() - started < 0.5  # the caller never waited for the disk
        assert not writer.flush(0.2)
        release.set()
        assert writer.flush(10)
        assert store.load_sessions()[0].seq == 49  # the latest snapshot; the middle ones skipped
        assert len(store.identifies()) == 48 and set(store.bucket_writes()) == {0, 1}
        assert writer.writes <= 4  # one snapshot, one batch of grants, then the latest ones
    finally:
        release.set()
        writer.close(5)


def test_a_failed_write_is_retried(tmp_path, monkeypatch):
    real = state_store.write_json_atomic
    fails = [2]

    def flaky(path, data, **kw):
        if fails[0]:
            fails[0] -= 1
            raise OSError(28, "No space left on device")
        real(path, data, **kw)

    monkeypatch.setattr(state_store, "write_json_atomic", flaky)
    store = StateStore(tmp_path, 4)
    writer = StateWriter()
    try:
        writer.save_sessions(store, {1: SavedSession("b", 7, "wss://r")})
        writer.record_identify(store, time.time(), bucket=0, written_by=time.time())
        assert writer.flush(RETRY_S * 3 + 5)
        assert writer.failures >= 1 and store.load_sessions()[1].seq == 7 and len(store.identifies()) == 1
    finally:
        writer.close(5)
