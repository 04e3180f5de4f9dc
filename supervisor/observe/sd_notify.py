"""systemd's notify protocol, spoken directly: ``READY=1``, ``STATUS=``, ``RELOADING=1``,
``STOPPING=1`` and ``WATCHDOG=1`` as datagrams to ``$NOTIFY_SOCKET``.

Two parts:

* :class:`ServiceNotes`, pure: at each pass of the supervisor's loop it is told the facts
  (shards READY of how many, a rolling restart running, stopping, the time) and answers the
  lines to send. The rules, as systemd's ``Type=notify`` expects them:

  - ``READY=1`` once every shard is READY for the first time (not at process start: a unit
    that depends on the bot starts when the bot serves); until then ``EXTEND_TIMEOUT_USEC=``
    every :data:`EXTEND_EVERY_S`, so that a long start is not killed by ``TimeoutStartSec``;
  - ``STATUS=shards ready 37/64`` while that changes (at most once per :data:`STATUS_EVERY_S`);
  - around a rolling restart (SIGHUP): ``RELOADING=1`` with ``MONOTONIC_USEC=`` (systemd 253
    wants it) when it starts, ``READY=1`` when every group is back;
  - ``STOPPING=1`` once, when the supervisor begins to stop;
  - ``WATCHDOG=1`` every half of ``$WATCHDOG_USEC``, from the loop itself: a stalled loop stops
    sending and systemd restarts the unit (``WatchdogSec=``).

* :class:`Notifier`: the socket. ``$NOTIFY_SOCKET`` is a path or, starting with ``@``, an
  abstract name. A send never raises and never blocks: systemd not listening costs one
  warning. ``$WATCHDOG_PID``, when set, must be this process (else the watchdog is someone
  else's). The children never see these variables (:mod:`supervisor.core.child` removes them), and
  the unit's ``NotifyAccess=main`` makes systemd listen to the supervisor only.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger("supervisor.observe.sd_notify")

#: The environment variables of the protocol (not passed on to the workers).
ENV_VARS = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
#: ``STATUS=`` is sent at most this often (the progress of a start of thousands of shards).
STATUS_EVERY_S = 1.0
#: Until the first ``READY=1``, the loop asks systemd for this much more start time every
#: :data:`EXTEND_EVERY_S` (``EXTEND_TIMEOUT_USEC``): a start of thousands of shards takes
#: minutes, far past ``TimeoutStartSec``, yet a loop that stalls while starting stops asking
#: and fails the start.
EXTEND_S = 60.0
EXTEND_EVERY_S = 10.0


def socket_address(value: str) -> str | bytes | None:
    """``$NOTIFY_SOCKET`` as an ``AF_UNIX`` address: a path, or ``@name`` as the abstract
    ``\\0name``; None for what this module does not speak (``vsock:``, empty)."""
    if value.startswith("@") and len(value) > 1:
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None


def watchdog_interval(environ: Mapping[str, str], pid: int) -> float | None:
    """Seconds between two ``WATCHDOG=1``: half of ``$WATCHDOG_USEC`` (None: no watchdog, or it
    belongs to another process by ``$WATCHDOG_PID``)."""
    usec = environ.get("WATCHDOG_USEC", "")
    owner = environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if owner and (not owner.isdigit() or int(owner) != pid):
        return None
    return int(usec) / 2e6


class ServiceNotes:
    """What to tell systemd at each pass of the loop (see the module docstring)."""

    def __init__(self, watchdog_s: float | None = None) -> None:
        self.watchdog_s = watchdog_s
        self.ready_sent = False
        self.stopping_sent = False
        self.reloading = False
        self._status: str | None = None
        self._status_at = float("-inf")
        self._next_watchdog = float("-inf")
        self._next_extend = float("-inf")

    def on_pass(
        self, now: float, ready: int, total: int, *, rolling: bool, stopping: bool, empty_ok: bool = False
    ) -> list[str]:
        """The lines to send now (empty: nothing). ``empty_ok``: no shard to run is ready (a
        cluster node settled with no group: more nodes than groups)."""
        lines: list[str] = []
        if stopping:
            if not self.stopping_sent:
                self.stopping_sent = True
                lines += ["STOPPING=1", "STATUS=stopping"]
        else:
            if rolling and self.ready_sent and not self.reloading:
                self.reloading = True
                lines += ["RELOADING=1", f"MONOTONIC_USEC={int(now * 1e6)}"]
            elif self.reloading and not rolling:
                self.reloading = False
                lines.append("READY=1")
            elif not self.ready_sent and (ready >= total > 0 or (total == 0 and empty_ok)):
                self.ready_sent = True
                lines.append("READY=1")
            if not self.ready_sent and now >= self._next_extend:
                self._next_extend = now + EXTEND_EVERY_S
                lines.append(f"EXTEND_TIMEOUT_USEC={int(EXTEND_S * 1e6)}")
            status = f"STATUS={'rolling restart: ' if self.reloading else ''}shards ready {ready}/{total}"
            # a change is sent with a state line at once, else at most once per STATUS_EVERY_S
            if status != self._status and (lines or now - self._status_at >= STATUS_EVERY_S):
                self._status, self._status_at = status, now
                lines.append(status)
        if self.watchdog_s is not None and now >= self._next_watchdog:
            self._next_watchdog = now + self.watchdog_s
            lines.append("WATCHDOG=1")
        return lines

    def next_time(self, now: float) -> float | None:
        """When the next ``WATCHDOG=1`` is due (None: no watchdog): the loop wakes by then
        (the start's ``EXTEND_TIMEOUT_USEC`` rides on the loop's passes, at least one a second)."""
        return None if self.watchdog_s is None else max(now, self._next_watchdog)


class Notifier:
    """Sends lines to ``$NOTIFY_SOCKET`` (a no-op without it)."""

    def __init__(self, environ: Mapping[str, str] | None = None, pid: int | None = None) -> None:
        env = os.environ if environ is None else environ
        raw = env.get("NOTIFY_SOCKET", "")
        self.address = socket_address(raw) if raw else None
        if raw and self.address is None:
            log.warning("NOTIFY_SOCKET=%r is not a unix socket path or @name: not notifying systemd", raw)
        self.watchdog_s = watchdog_interval(env, os.getpid() if pid is None else pid) if self.address else None
        self._sock: socket.socket | None = None
        self._warned = False

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, lines: list[str]) -> bool:
        """One datagram of ``lines`` (newline-separated, as systemd reads them); False if it
        could not be sent (logged once)."""
        if self.address is None or not lines:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            self._sock.sendto("\n".join(lines).encode(), self.address)
        except OSError as exc:
            if not self._warned:
                self._warned = True
                log.warning("cannot notify systemd at %s: %s", os.environ.get("NOTIFY_SOCKET", "?"), exc.strerror or exc)
            return False
        return True

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


__all__ = ["ENV_VARS", "Notifier", "ServiceNotes", "socket_address", "watchdog_interval"]
