"""The session book: every shard's last session (id, seq, resume URL), kept so that a restarted
child, a restarted supervisor or another host RESUMEs instead of identifying.

Children report sessions as they change; the book writes them, at most once per ``save_interval``,
to the state dir (off the loop, :mod:`supervisor.core.state_writer`) and with ``--redis-url``
to Redis (off the loop too, :mod:`supervisor.coord.shared_state`; only the shards this supervisor
runs, and the deletion of those Discord invalidated). It never waits on either.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from shard_worker.config import SavedSession
from supervisor.coord.shared_state import SharedState
from supervisor.core.state_store import StateStore
from supervisor.core.state_writer import StateWriter

log = logging.getLogger("supervisor.core.sessions")


class SessionBook:
    def __init__(self, store: StateStore, writer: StateWriter, shared: SharedState | None, save_interval: float) -> None:
        self.store = store
        self.writer = writer
        self.shared = shared
        self.save_interval = save_interval
        #: shard -> its last session
        self.sessions: dict[int, SavedSession] = {}
        #: changed since the last save
        self.dirty = False
        #: invalidated since the last save (deleted in Redis too)
        self._forgotten: set[int] = set()
        self._next_save = 0.0

    def load(self, shard_count: int, shards: list[int], from_redis: Any = None) -> None:
        """The sessions of the state dir, then those Redis holds (``from_redis(count, shards)``:
        written with every save, by whichever host ran these shards last)."""
        self.sessions = self.store.load_sessions()
        if self.sessions:
            log.info("resuming %d saved sessions from %s", len(self.sessions), self.store.dir)
        shared = from_redis(shard_count, shards) if from_redis is not None else None
        if shared:
            log.info("resuming %d sessions found in Redis", len(shared))
            self.sessions.update(shared)

    # -- what children report -----------------------------------------------------------------
    def update(self, shard: int, session: Any) -> None:
        """A child's report of ``shard``'s session (``{session_id, seq, resume_gateway_url}``)."""
        if not isinstance(session, dict):
            return
        try:
            saved = SavedSession(str(session["session_id"]), session.get("seq"), str(session["resume_gateway_url"]))
        except (KeyError, TypeError):
            return
        if self.sessions.get(shard) != saved:
            self.sessions[shard] = saved
            self.dirty = True

    def forget(self, shard: int) -> None:
        """Discord invalidated the shard's session (op 9, 4007, 4009): a restart must not try it."""
        if self.sessions.pop(shard, None) is not None:
            self.dirty = True
            self._forgotten.add(shard)

    def of(self, shards: Iterable[int]) -> dict[int, SavedSession]:
        return {s: self.sessions[s] for s in shards if s in self.sessions}

    def replace(self, shards: Iterable[int], sessions: Mapping[int, SavedSession]) -> None:
        """Those of ``shards`` are ``sessions`` now (a cluster group acquired with Redis' copy)."""
        for shard in shards:
            self.sessions.pop(shard, None)
        self.sessions.update(sessions)

    def adopt(self, store: StateStore, sessions: Mapping[int, SavedSession]) -> None:
        """A reshard's new set is the supervisor's now: its store (its count) and its sessions."""
        self.store = store
        self.sessions = dict(sessions)

    # -- writing ------------------------------------------------------------------------------
    def maybe_save(self, now: float, shard_count: int, mine: frozenset[int], instead: Any = None) -> None:
        if self.dirty and now >= self._next_save:
            self.save(shard_count, mine, instead)
            self._next_save = now + self.save_interval

    def save(self, shard_count: int, mine: frozenset[int],
             instead: tuple[StateStore, Mapping[int, SavedSession]] | None = None) -> None:
        """Hand the sessions to the state dir and Redis (the latest snapshot wins; a failed
        write is retried there). ``instead``: another set's store and sessions, saved in place of
        these (a reshard past its cut-over point: a supervisor killed then must come back with
        the new set)."""
        store, sessions, count = self.store, self.sessions, shard_count
        if instead is not None:
            store, sessions = instead
            count, mine = store.shard_count, frozenset(range(store.shard_count))
        self.writer.save_sessions(store, sessions)
        self.dirty = False
        if self.shared is not None:
            owned = {s: v for s, v in sessions.items() if s in mine}
            forget = (self._forgotten & mine) - set(sessions) if instead is None else set()
            self.shared.save_sessions(count, owned, sorted(forget))  # never another node's
        self._forgotten.clear()
