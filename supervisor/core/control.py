"""The control socket: ``<state-dir>/supervisor.sock`` (mode 0600), IPC-framed requests.

A client sends one line ``{"event": "status" | "restart" | "reshard", "data": ...}`` and reads
one line back with the answer, then the connection is closed. ``reshard`` carries
``{"shard_count": N}`` and is answered ``{"ok": bool, "kind": ..., "message": one line}``
(:meth:`supervisor.core.arbiter.Arbiter.begin_reshard`). Served inside the arbiter's loop (the socket
is non-blocking and registered with its selector), so a slow client cannot stall the loop for
more than the short per-connection timeout.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from shard_worker import ipc
from shard_worker.ipc_vocabulary import Request

log = logging.getLogger("supervisor.core.control")

SOCKET_NAME = "supervisor.sock"
CLIENT_TIMEOUT_S = 2.0
#: The longest answer ``request`` accepts. A status answer is one line of about 185 bytes a shard
#: (0.9 MB at 5000 shards once the counters have grown, 1.8 MB at 10000), so it reaches the 1 MiB
#: default of :class:`ipc.Decoder`, which is meant for the children's pipes. 64 MiB still bounds
#: the client's memory, far above any shard count (:data:`shard_ranges.MAX_SHARD_COUNT` is 65536).
ANSWER_MAX_BYTES = 64 << 20


class ControlServer:
    def __init__(self, state_dir: Path, io: Any, requests: Mapping[str, Callable[[Any], Any]]) -> None:
        """``io``: the loop's :class:`~supervisor.core.loop_io.LoopIO`; ``requests``: the answer
        to each request (``status``, ``restart``, ``reshard``) from its data."""
        self.path = Path(state_dir) / SOCKET_NAME
        self.io = io
        self.requests = requests
        if self.path.exists() or self.path.is_symlink():
            if _answers(self.path):
                raise RuntimeError(f"another supervisor is running with state dir {state_dir}")
            self.path.unlink()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)
        try:
            self.sock.bind(str(self.path))
        finally:
            os.umask(old_umask)
        os.chmod(self.path, 0o600)
        self.sock.listen(8)
        self.sock.setblocking(False)

    def accept(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except (BlockingIOError, InterruptedError):
            return
        conn.settimeout(CLIENT_TIMEOUT_S)
        self.io.watch(conn, "control-conn", conn)

    def serve(self, conn: socket.socket) -> None:
        self.io.unwatch(conn)
        try:
            decoder = ipc.Decoder()
            messages: list[ipc.Message] = []
            while not messages:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                messages = decoder.feed(chunk)
            conn.sendall(ipc.encode(*self._answer(messages[0])))
        except OSError as exc:
            log.debug("control client failed: %s", exc)
        finally:
            conn.close()

    def _answer(self, message: ipc.Message) -> tuple[str, Any]:
        answer = self.requests.get(message.event)
        if answer is None:
            return Request.ERROR, {"message": f"unknown request {message.event!r}"}
        return message.event, answer(message.data)

    def close(self) -> None:
        self.sock.close()
        try:
            self.path.unlink()
        except OSError:
            pass


def _answers(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        probe.close()


class ControlError(RuntimeError):
    pass


def request(state_dir: str | os.PathLike, event: str, timeout: float = 5.0, data: Any = None) -> Any:
    """Ask the supervisor running with ``state_dir`` (``data``: the request's); return the
    answer's data."""
    path = Path(state_dir) / SOCKET_NAME
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError):
            raise ControlError(f"no supervisor is running with state dir {state_dir} ({path} does not answer)") from None
        sock.sendall(ipc.encode(event, data))
        decoder = ipc.Decoder(max_line=ANSWER_MAX_BYTES)
        while True:
            chunk = sock.recv(1 << 20)
            if not chunk:
                if decoder.errors:
                    raise ControlError(
                        f"the supervisor's answer could not be read (not JSON or over "
                        f"{ANSWER_MAX_BYTES >> 20} MiB)"
                    )
                raise ControlError("the supervisor closed the connection without an answer")
            messages = decoder.feed(chunk)
            if messages:
                if messages[0].event == Request.ERROR:
                    raise ControlError(messages[0].data.get("message", "error"))
                return messages[0].data
    finally:
        sock.close()
