"""The child's end of the supervisor's pipes (see ``docs/ipc.md`` for every event).

Reads the parent's orders from stdin and writes reports to the fd named by ``SPECTACLES_IPC_FD``,
both framed by ``shard_worker.ipc``. It asks the parent before every IDENTIFY, reports sessions
(with the seq RabbitMQ confirmed) and a heartbeat with every shard's figures once a second, and
stops the worker when the parent says so or goes away (stdin EOF, or the parent-death signal).
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import select
import signal
import time
from typing import Any

from . import ipc
from .gateway.connection import ShardRunner

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


class ParentLink:
    """IPC with the supervisor; also the worker's identify gate."""

    def __init__(self, write_fd: int) -> None:
        self._write_fd = write_fd
        os.set_blocking(write_fd, False)  # a stalled parent must never stall this loop
        self._out = bytearray()
        self._writer_on = False
        self._grants: dict[int, asyncio.Future] = {}
        self.worker: Any = None  # set by attach()
        self._tasks: list[asyncio.Task] = []

    # -- writing ------------------------------------------------------------------------------
    def send(self, event: str, data: Any = None, *, droppable: bool = False) -> None:
        """Queue one message; ``droppable`` ones (heartbeats) are skipped while the parent lags."""
        if droppable and self._out:
            return
        self._out += ipc.encode(event, data)
        self._flush()

    def _flush(self) -> None:
        try:
            while self._out:
                written = os.write(self._write_fd, self._out)
                del self._out[:written]
        except BlockingIOError:
            pass
        except OSError:
            # The parent is gone; stdin EOF (or the death signal) stops us shortly.
            self._out.clear()
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
    async def acquire(self, shard_id: int) -> None:
        fut = self._grants.get(shard_id)
        if fut is None or fut.done():
            fut = asyncio.get_running_loop().create_future()
            self._grants[shard_id] = fut
            self.send("identify_request", {"shard": shard_id})
        await asyncio.shield(fut)

    # -- wiring -------------------------------------------------------------------------------
    def attach(self, worker: Any) -> None:
        """Start reading the parent's orders and sending heartbeats for ``worker``."""
        self.worker = worker
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._read_orders(), name="ipc-read"))
        self._tasks.append(loop.create_task(self._heartbeats(), name="ipc-heartbeat"))
        self.send("hello", {"pid": os.getpid(), "shards": list(worker.config.shard_ids)})

    def on_state(self, runner: ShardRunner, state: str) -> None:
        """Called by each shard runner on every state change."""
        data: dict[str, Any] = {"shard": runner.shard_id, "state": state}
        if state == "ready" and self.worker is not None:
            saved = self.worker.session_of(runner.shard_id)
            data["session"] = _session_dict(saved)
        if state == "fatal" and runner.fatal is not None:
            data["code"] = runner.fatal.code
            data["reason"] = runner.fatal.reason
        self.send("shard_state", data)

    def report(self) -> dict[str, Any]:
        worker = self.worker
        bridge = worker.bridge
        shards = {}
        for shard_id, runner in worker.runners.items():
            shards[str(shard_id)] = {
                "state": runner.state,
                "seq": runner.machine.seq,
                "session": _session_dict(worker.session_of(shard_id)),
                "latency_ms": round(runner.machine.latency * 1000, 1) if runner.machine.latency is not None else None,
                "received": runner.received,
                "published": runner.published,
                "reconnects": runner.reconnects,
                "identifies": runner.identifies,
                "resumes": runner.resumes,
                "sent": runner.sent,
                "outbox": len(runner.outbox),
                "received_by_type": runner.received_by_type,
                "published_by_type": runner.published_by_type,
            }
        return {
            "shards": shards,
            "buffered": bridge.buffered,
            "buffered_bytes": bridge.buffered_bytes,
            "broker_connected": bridge.connected.is_set(),
            "rejected": dict(bridge.rejected),
            "broker": bridge.counters(),
            "confirm_latency": bridge.confirm_latency.snapshot(),
        }

    async def _heartbeats(self) -> None:
        while True:
            self.send("heartbeat", self.report(), droppable=True)
            await asyncio.sleep(HEARTBEAT_INTERVAL_S)

    async def _read_orders(self) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=ipc.MAX_LINE_BYTES)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(0, "rb", buffering=0))
        decoder = ipc.Decoder()
        while True:
            chunk = await reader.read(65536)
            if not chunk:
                log.warning("supervisor went away (stdin closed): stopping")
                self.worker.stop()
                return
            for message in decoder.feed(chunk):
                self._on_order(message)

    def _on_order(self, message: ipc.Message) -> None:
        if message.event == "identify_grant":
            shard = (message.data or {}).get("shard")
            fut = self._grants.get(shard)
            if fut is not None and not fut.done():
                fut.set_result(None)
        elif message.event == "stop":
            self.worker.stop()
        else:
            log.warning("IPC: unknown order %r ignored", message.event)

    def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._writer_on:
            asyncio.get_running_loop().remove_writer(self._write_fd)
            self._writer_on = False
        self.drain()


def _session_dict(saved: Any) -> dict | None:
    if saved is None:
        return None
    return {"session_id": saved.session_id, "seq": saved.seq, "resume_gateway_url": saved.resume_gateway_url}
