"""The supervisor as a native service, with real processes: systemd's notify protocol on a
datagram socket the test owns (as systemd would), and ``/healthz`` / ``/readyz``."""

from __future__ import annotations

import array
import json
import signal
import socket
import struct
import threading
import time
import urllib.error
import urllib.request
import uuid

import psutil

from supervisor.simulator import SimulatorThread
from tests.helpers import TOKEN, free_port, wait_for
from tests.supervisor.supervisor_process import SupervisorProcess


class NotifySocket:
    """An abstract unix datagram socket that records ``(time, sender pid, lines)``."""

    def __init__(self) -> None:
        self.name = f"spectacles-notify-{uuid.uuid4().hex}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind(b"\0" + self.name.encode())
        self.sock.settimeout(0.2)
        self.received: list[tuple[float, int, list[str]]] = []
        self._on = True
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        size = struct.calcsize("3i")
        while self._on:
            try:
                data, ancillary, _, _ = self.sock.recvmsg(65536, socket.CMSG_SPACE(size))
            except TimeoutError:
                continue
            except OSError:
                return
            pid = -1
            for level, kind, payload in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = array.array("i", payload[:size])[0]
            self.received.append((time.monotonic(), pid, data.decode().split("\n")))

    def lines(self) -> list[str]:
        return [line for _, _, lines in list(self.received) for line in lines]

    def close(self) -> None:
        self._on = False
        self._thread.join(2)
        self.sock.close()


def test_systemd_notify_ready_watchdog_reload_and_stop(amqp_url, group, tmp_path):
    notify = NotifySocket()
    env = {"NOTIFY_SOCKET": f"@{notify.name}", "WATCHDOG_USEC": "2000000"}
    with SimulatorThread(token=TOKEN, shard_count=4, max_concurrency=2, heartbeat_interval_ms=2000) as sim:
        sup = SupervisorProcess(sim, amqp_url, group, tmp_path / "state", "--shards-per-process", "2", env=env)
        ready_seen: dict[str, object] = {}
        try:
            def ready_now() -> bool:
                if "READY=1" in notify.lines() and "snap" not in ready_seen:
                    ready_seen["snap"] = sim.snapshot()["ready"]  # what Discord saw when READY=1 came
                return "snap" in ready_seen

            wait_for(ready_now, 60, interval=0.02, what="READY=1")
            assert ready_seen["snap"] == {0, 1, 2, 3}
            before = notify.lines()[: notify.lines().index("READY=1")]
            assert "STATUS=shards ready 0/4" in before or "STATUS=shards ready 2/4" in before
            assert not any(line.startswith("STATUS=shards ready 4/4") for line in before)
            # the watchdog, every half of WATCHDOG_USEC, from the supervisor's loop
            count = notify.lines().count("WATCHDOG=1")
            time.sleep(4.0)
            assert notify.lines().count("WATCHDOG=1") >= count + 2

            sup.signal(signal.SIGHUP)  # a rolling restart: RELOADING=1, then READY=1 once back
            wait_for(lambda: notify.lines().count("READY=1") == 2, 60, what="READY=1 after the reload")
            lines = notify.lines()
            reloading = lines.index("RELOADING=1")
            assert lines[reloading + 1].startswith("MONOTONIC_USEC=")
            assert lines.index("READY=1") < reloading < len(lines) - 1 - lines[::-1].index("READY=1")

            sup.signal(signal.SIGTERM)
            assert sup.wait(20) == 0
            assert "STOPPING=1" in notify.lines()
            # every datagram came from the supervisor itself, none from a worker (NotifyAccess=main)
            assert {pid for _, pid, _ in notify.received} == {sup.pid}
        finally:
            sup.stop()
            notify.close()


def get(url: str, timeout: float = 5.0) -> tuple[int, dict] | None:
    """``(status, body)``, or None when nothing answered in time."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())
    except (OSError, TimeoutError):
        return None


def test_healthz_and_readyz_follow_the_supervisor(amqp_url, group, tmp_path):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with SimulatorThread(token=TOKEN, shard_count=4, max_concurrency=2, heartbeat_interval_ms=2000) as sim:
        sup = SupervisorProcess(
            sim, amqp_url, group, tmp_path / "state", "--shards-per-process", "2", "--metrics-addr", f"127.0.0.1:{port}"
        )
        try:
            first = wait_for(lambda: get(f"{base}/readyz"), 20, what="the HTTP server")
            assert first[0] == 503 and first[1]["total"] == 4  # identifying: 2 buckets of 5 s
            wait_for(lambda: (r := get(f"{base}/readyz")) is not None and r[0] == 200, 60, what="ready")
            assert get(f"{base}/readyz")[1] == {"ready": 4, "total": 4, "not_ready": "", "states": {"ready": 4}}
            assert get(f"{base}/healthz")[0] == 200

            # a killed child: not ready while its shards resume, ready again after
            victim = next(c for c in sup.wait_children(2) if c.is_running())
            victim.kill()
            down = wait_for(lambda: (r := get(f"{base}/readyz")) is not None and r[0] == 503 and r, 15, interval=0.05)
            assert down[1]["ready"] < 4 and down[1]["not_ready"] in ("0-1", "2-3")
            wait_for(lambda: (r := get(f"{base}/readyz")) is not None and r[0] == 200, 60, what="ready again")
            assert len([r for r in sim.snapshot()["resumes"] if r["result"] == "ok"]) == 2

            # a stopped supervisor fails its liveness probe, and passes it again once continued
            psutil.Process(sup.pid).suspend()
            try:
                assert get(f"{base}/healthz", timeout=3.0) is None
            finally:
                psutil.Process(sup.pid).resume()
            wait_for(lambda: (r := get(f"{base}/healthz")) is not None and r[0] == 200, 20, what="healthy again")
            sup.signal(signal.SIGTERM)
            assert sup.wait(20) == 0
        finally:
            sup.stop()
