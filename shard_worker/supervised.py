"""The child's end of the supervisor's pipes (see ``docs/ipc.md`` for every event).

Reads the parent's orders from stdin and writes reports to the fd named by ``SPECTACLES_IPC_FD``,
both framed by ``shard_worker.ipc``. The first order is the worker's configuration
(:func:`read_config`). It asks the parent before every IDENTIFY and reports when it wrote it,
reports sessions (with the seq RabbitMQ confirmed), and once a second a heartbeat with the
process's figures plus the reports of the shards that changed, in chunks of
``ipc.SHARDS_PER_MESSAGE``, so that no message grows with the shard count. It stops the worker
when the parent says so or goes away (stdin EOF, or the parent-death signal).
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import select
import signal
import time
from collections.abc import Callable
from typing import Any

from shard_worker import gc_tuning, ipc
from shard_worker.config import TOKEN_ENV, WorkerConfig
from shard_worker.gateway.connection import Permit, ShardRunner
from shard_worker.ipc_vocabulary import (
    Activated,
    CutoverAck,
    CutoverCancelled,
    Event,
    Order,
    ShardState,
    ShardStateData,
)
from shard_worker.memory_trim import Trimmer
from shard_worker.reshard import Handover, Role
from shard_worker.shard_ranges import format_shard_ids

log = logging.getLogger("shard_worker.supervised")

IPC_FD_ENV = "SPECTACLES_IPC_FD"
HEARTBEAT_INTERVAL_S = 1.0
_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Linux: have the kernel send ``sig`` to this process when its parent dies."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: stdin EOF still catches the parent's death
        pass


def read_config(fd: int = 0, environ: dict[str, str] | None = None) -> tuple[WorkerConfig, ipc.Decoder, list[ipc.Message]]:
    """Block until the parent's first order, ``config``, has arrived on ``fd`` (stdin).

    Returns the configuration, the decoder (it may hold the start of the next order) and any
    orders that came in the same reads. The ``config`` line has no size limit: it carries a
    saved session for each shard, so it grows with the shard count.
    """
    env = os.environ if environ is None else environ
    token = env.get(TOKEN_ENV, "")
    if not token:
        raise SystemExit(f"{TOKEN_ENV} is not set: the worker needs the bot token")
    decoder = ipc.Decoder(max_line=None)
    while True:
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            raise SystemExit("stdin closed before the supervisor sent the configuration")
        messages = decoder.feed(chunk)
        if messages:
            break
    decoder.max_line = ipc.MAX_LINE_BYTES
    first, rest = messages[0], messages[1:]
    if first.event != Order.CONFIG or not isinstance(first.data, dict):
        raise SystemExit(f"the first IPC order must be 'config', not {first.event!r}")
    try:
        config = WorkerConfig.from_dict(first.data, token)
    except (TypeError, ValueError, KeyError) as exc:
        raise SystemExit(f"bad configuration from the supervisor: {exc}") from None
    return config, decoder, rest


class ParentLink:
    """IPC with the supervisor; also the worker's identify gate."""

    def __init__(self, write_fd: int, *, decoder: ipc.Decoder | None = None, pending: list[ipc.Message] | None = None) -> None:
        """``decoder`` and ``pending``: what :func:`read_config` read past the ``config`` order."""
        self._decoder = decoder or ipc.Decoder()
        self._pending = list(pending or ())
        #: The last report sent of each shard; only the changed ones go in the next heartbeat.
        self._sent_reports: dict[int, dict[str, Any]] = {}
        self._write_fd = write_fd
        os.set_blocking(write_fd, False)  # a stalled parent must never stall this loop
        self._out = bytearray()
        self._writer_on = False
        self._grants: dict[int, asyncio.Future] = {}
        self.worker: Any = None  # set by attach()
        self._tasks: list[asyncio.Task] = []
        #: After a burst (a broker outage, its republish), gives the freed pages back (memory_trim.py).
        self._trimmer = Trimmer()
        #: Closed connections are cycles: collected within a minute (gc_tuning.py), when tuned.
        self._collections = gc_tuning.FullCollections() if gc_tuning.choice() == "tuned" else None
        self._last_order = time.monotonic()
        #: What each of the parent's orders does with its data (``config`` comes only first,
        #: :func:`read_config`: a later one is an unknown order).
        self._orders: dict[Order, Callable[[Any], None]] = {
            Order.PING: _ignore,  # it only renews ``_last_order`` (cluster mode)
            Order.ORPHANS: self._on_orphans,
            Order.GUARD: lambda _: self.worker.set_guarded(True),
            Order.UNGUARD: lambda _: self.worker.set_guarded(False),
            Order.IDENTIFY_GRANT: self._on_identify_grant,
            Order.STOP: self._on_stop,
            Order.CUTOVER: self._on_cutover,
            Order.OLD_CAUGHT_UP: lambda _: self.worker.old_caught_up(),
            Order.CUTOVER_CANCEL: self._on_cutover_cancel,
            Order.ACTIVATE: self._on_activate,
        }

    # -- writing ------------------------------------------------------------------------------
    def send(self, event: Event, data: Any = None) -> None:
        """Queue one message and write what the pipe takes now (never blocks)."""
        self._out += ipc.encode(event, data)
        self._flush()

    def _flush(self) -> None:
        # If the parent is gone, stdin EOF (or the death signal) stops us shortly.
        ipc.write_pending(self._write_fd, self._out)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        if self._out and not self._writer_on:
            loop.add_writer(self._write_fd, self._flush)
            self._writer_on = True
        elif not self._out and self._writer_on:
            loop.remove_writer(self._write_fd)
            self._writer_on = False

    def drain(self, timeout: float = 2.0) -> None:
        """Write what is left before exiting, waiting at most ``timeout`` for the parent."""
        deadline = time.monotonic() + timeout
        while self._out and time.monotonic() < deadline:
            select.select([], [self._write_fd], [], max(0.0, deadline - time.monotonic()))
            self._flush()

    # -- IdentifyGate -------------------------------------------------------------------------
    async def acquire(self, shard_id: int) -> Permit:
        """Wait for the parent's grant; return it as a :class:`Permit`.

        Its times are ``time.monotonic()`` values: on Linux that clock (CLOCK_MONOTONIC) is one
        for every process of the host, so the parent can pace by the time a child wrote.
        """
        fut = self._grants.get(shard_id)
        if fut is None or fut.done():
            fut = asyncio.get_running_loop().create_future()
            self._grants[shard_id] = fut
            self.send(Event.IDENTIFY_REQUEST, {"shard": shard_id})
        grant = await asyncio.shield(fut)
        not_before, expires = grant.get("not_before"), grant.get("expires")
        return Permit(
            float(not_before) if isinstance(not_before, (int, float)) else 0.0,
            float(expires) if isinstance(expires, (int, float)) else None,
        )

    def identify_sent(self, shard_id: int, at: float) -> None:
        """The IDENTIFY of ``shard_id`` was written at ``at`` (monotonic): the next of its
        bucket is timed from here."""
        self.send(Event.IDENTIFY_SENT, {"shard": shard_id, "at": at})

    # -- wiring -------------------------------------------------------------------------------
    def attach(self, worker: Any) -> None:
        """Start reading the parent's orders and sending heartbeats for ``worker``."""
        self.worker = worker
        worker.on_probe_answered = lambda role, shard: self.send(Event.PROBE_ANSWERED, {"role": role, "shard": shard})
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._read_orders(), name="ipc-read"))
        self._tasks.append(loop.create_task(self._heartbeats(), name="ipc-heartbeat"))
        if worker.config.parent_timeout_s:
            self._tasks.append(loop.create_task(self._parent_watch(worker.config.parent_timeout_s), name="ipc-parent"))
        self.send(Event.HELLO, {"pid": os.getpid(), "shards": format_shard_ids(worker.config.shard_ids)})

    def on_state(self, runner: ShardRunner, state: str) -> None:
        """Called by each shard runner on every state change."""
        data: ShardStateData = {"shard": runner.shard_id, "state": state}
        if state == ShardState.READY and self.worker is not None:
            saved = self.worker.session_of(runner.shard_id)
            data["session"] = _session_dict(saved)
        if state == ShardState.FATAL and runner.fatal is not None:
            data["code"] = runner.fatal.code
            data["reason"] = runner.fatal.reason
        self.send(Event.SHARD_STATE, data)

    def shard_report(self, shard_id: int, firsts: dict | None = None) -> dict[str, Any]:
        """One shard's figures (a fixed set of keys: its size does not grow with time).
        ``firsts``: the bridge's ``first_unconfirmed_seqs()`` (see ``Worker.session_of``)."""
        runner = self.worker.runners[shard_id]
        latency = runner.machine.latency
        return {
            "state": runner.state,
            "seq": runner.machine.seq,
            "session": _session_dict(self.worker.session_of(shard_id, firsts)),
            "latency_ms": round(latency * 1000, 1) if latency is not None else None,
            "received": runner.received,
            "published": runner.published,
            "reconnects": runner.reconnects,
            "identifies": runner.identifies,
            "resumes": runner.resumes,
            "sent": runner.sent,
            "outbox": len(runner.outbox),
        }

    def report(self) -> dict[str, Any]:
        """The process's figures (bounded: counters by type stop at ``MAX_EVENT_TYPES``)."""
        worker = self.worker
        bridge = worker.bridge
        return {
            "buffered": bridge.buffered,
            "buffered_bytes": bridge.buffered_bytes,
            "broker_connected": bridge.connected.is_set(),
            "rejected": dict(bridge.rejected),
            "broker": bridge.counters(),
            "confirm_latency": bridge.confirm_latency.snapshot(),
            "bad_frames": sum(runner.machine.bad_frames for runner in worker.runners.values()),
            "received_by_type": dict(worker.received_by_type),
            "published_by_type": dict(worker.published_by_type),
            "rate_limited_by_opcode": dict(worker.rate_limited_by_opcode),
            "reshard": worker.reshard_counters(),
            "sizes": {
                **worker.sizes(), "memory_trims": self._trimmer.trims,
                "malloc_free_kb": _kb(self._trimmer.free_bytes),
                "full_collections": self._collections.runs if self._collections else 0,
                "gc_freed": self._collections.freed if self._collections else 0,
                "gc_max_ms": round(self._collections.max_ms, 1) if self._collections else 0,
            },  # fmt: skip
        }

    def send_shard_reports(self, *, everything: bool = False) -> None:
        """``shards`` messages with the reports that changed since they were last sent (all of
        them with ``everything``), at most ``ipc.SHARDS_PER_MESSAGE`` per message."""
        chunk: dict[str, Any] = {}
        firsts = self.worker.bridge.first_unconfirmed_seqs()  # one pass for all the shards
        for shard_id in self.worker.runners:
            report = self.shard_report(shard_id, firsts)
            if not everything and self._sent_reports.get(shard_id) == report:
                continue
            self._sent_reports[shard_id] = report
            chunk[str(shard_id)] = report
            if len(chunk) >= ipc.SHARDS_PER_MESSAGE:
                self.send(Event.SHARDS, {"shards": chunk})
                chunk = {}
        if chunk:
            self.send(Event.SHARDS, {"shards": chunk})

    def _memory_hygiene(self, now: float) -> None:
        """Once a second: a full collection after connections closed (their cycles), and the
        freed pages back to the kernel after it, or when malloc holds enough free once the
        publish buffer drained."""
        buffered = self.worker.bridge.buffered_bytes
        if self._collections is not None and self._collections.observe(self.worker.connections_closed(), now):
            self._trimmer.trim(now)
        elif self._trimmer.observe(buffered, now):
            log.debug("malloc held over 4 MiB free: its pages went back to the kernel (malloc_trim)")

    async def _heartbeats(self) -> None:
        while True:
            # While the parent lags (our buffer is not empty) nothing is queued: the changed
            # reports stay changed and go out with the next heartbeat that finds room.
            if not self._out:
                self.send_shard_reports()
                self.send(Event.HEARTBEAT, self.report())
            self._memory_hygiene(time.monotonic())
            await asyncio.sleep(HEARTBEAT_INTERVAL_S)

    async def _read_orders(self) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=ipc.MAX_LINE_BYTES)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(0, "rb", buffering=0))
        decoder = self._decoder
        pending, self._pending = self._pending, []
        for message in pending:
            self._on_order(message)
        while True:
            chunk = await reader.read(65536)
            if not chunk:
                log.warning("supervisor went away (stdin closed): stopping")
                self.worker.stop()
                return
            self._last_order = time.monotonic()
            for message in decoder.feed(chunk):
                self._on_order(message)

    async def _parent_watch(self, timeout_s: float) -> None:
        """Cluster mode: a supervisor silent for ``timeout_s`` cannot renew this group's lease
        (stopped with SIGSTOP, frozen): stop the shards before another node takes them over,
        rather than reconnect and take their sessions back."""
        self._last_order = time.monotonic()
        while True:
            await asyncio.sleep(min(1.0, timeout_s / 4))
            silent = time.monotonic() - self._last_order
            if silent >= timeout_s:
                log.error("the supervisor sent nothing for %.1f s (stopped?): stopping every shard (its lease is not renewed)", silent)
                self.worker.stop()
                return

    def _on_order(self, message: ipc.Message) -> None:
        # message.event is a plain str: a str-enum member hashes and compares like its value
        handler = self._orders.get(message.event)
        if handler is None:
            log.warning("IPC: unknown order %r ignored", message.event)
            return
        handler(message.data)

    def _on_orphans(self, data: Any) -> None:
        data = data if isinstance(data, dict) else {}
        try:
            applied = self.worker.set_orphans(int(data["old_count"]), [int(x) for x in data["shards"]])
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("IPC: bad orphans order ignored (%s)", exc)
            return
        log.info("reshard: the guilds of old shards %s are published at once (%d shards)", data["shards"], applied)

    def _on_identify_grant(self, data: Any) -> None:
        shard = (data or {}).get("shard")
        fut = self._grants.get(shard)
        if fut is not None and not fut.done():
            fut.set_result(data)

    def _on_stop(self, data: Any) -> None:
        # {"end_sessions": true}: an old set after a reshard; its sessions are not resumed
        self.worker.stop(end_sessions=bool((data or {}).get("end_sessions")))

    def _on_cutover_cancel(self, _: Any) -> None:
        answer: CutoverCancelled = {"shards": self.worker.cancel_cutover()}
        self.send(Event.CUTOVER_CANCELLED, answer)

    def _on_activate(self, _: Any) -> None:
        self.worker.activate()
        answer: Activated = {"standby": self.worker.bridge.standby}
        self.send(Event.ACTIVATED, answer)

    def _on_cutover(self, data: Any) -> None:
        """``cutover``: a reshard's cut-over point for this worker's set; answered with
        ``cutover_ack`` (``late``: it came too late for the rule to hold, ``Handover.late``; the
        supervisor then aborts if it still can)."""
        try:
            role = Role(data["role"])
            handover = Handover.from_dict(data)
        except (TypeError, KeyError, ValueError) as exc:
            log.warning("IPC: bad cutover order ignored (%s)", exc)
            return
        applied = self.worker.cutover(role, handover)
        late = handover.late(role, time.monotonic(), self.worker.config.hold_s)
        ack: CutoverAck = {"role": role.value, "cut_at": handover.cut_at, "shards": applied, "late": late}
        self.send(Event.CUTOVER_ACK, ack)

    def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._writer_on:
            asyncio.get_running_loop().remove_writer(self._write_fd)
            self._writer_on = False
        self.drain()


def _kb(size: int | None) -> int | None:
    return None if size is None else size >> 10


def _ignore(_: Any) -> None:
    pass


def _session_dict(saved: Any) -> dict | None:
    if saved is None:
        return None
    return {"session_id": saved.session_id, "seq": saved.seq, "resume_gateway_url": saved.resume_gateway_url}
