"""systemd's notify protocol (``supervisor/observe/sd_notify.py``): the rules without sockets, and one
real datagram socket for the wire."""

from __future__ import annotations

import os
import socket
import uuid

from supervisor.observe.sd_notify import Notifier, ServiceNotes, socket_address, watchdog_interval


def test_socket_addresses():
    assert socket_address("/run/systemd/notify") == "/run/systemd/notify"
    assert socket_address("@spectacles/notify") == b"\0spectacles/notify"
    assert socket_address("vsock:2:1234") is None
    assert socket_address("@") is None and socket_address("relative/path") is None


def test_watchdog_interval_is_half_and_only_for_this_process():
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}, 42) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "42"}, 42) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "7"}, 42) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}, 42) is None
    assert watchdog_interval({"WATCHDOG_USEC": "soon"}, 42) is None
    assert watchdog_interval({}, 42) is None


def test_ready_only_once_every_shard_is_ready_and_status_is_rate_limited():
    notes = ServiceNotes()
    extend = "EXTEND_TIMEOUT_USEC=60000000"  # more start time, asked by the loop itself
    assert notes.on_pass(0.0, 0, 4, rolling=False, stopping=False) == [extend, "STATUS=shards ready 0/4"]
    assert notes.on_pass(0.5, 1, 4, rolling=False, stopping=False) == []  # under a second: later
    assert notes.on_pass(1.0, 2, 4, rolling=False, stopping=False) == ["STATUS=shards ready 2/4"]
    assert notes.on_pass(10.0, 2, 4, rolling=False, stopping=False) == [extend]  # every 10 s
    assert notes.on_pass(11.2, 4, 4, rolling=False, stopping=False) == ["READY=1", "STATUS=shards ready 4/4"]
    assert notes.on_pass(25.0, 4, 4, rolling=False, stopping=False) == []  # no extension once READY
    # a shard down and back: STATUS only, READY=1 is not sent twice
    assert notes.on_pass(26.0, 3, 4, rolling=False, stopping=False) == ["STATUS=shards ready 3/4"]
    assert notes.on_pass(27.5, 4, 4, rolling=False, stopping=False) == ["STATUS=shards ready 4/4"]


def test_reloading_around_a_rolling_restart_then_stopping_once():
    notes = ServiceNotes()
    notes.on_pass(0.0, 2, 2, rolling=False, stopping=False)
    lines = notes.on_pass(10.0, 2, 2, rolling=True, stopping=False)
    assert lines[:2] == ["RELOADING=1", "MONOTONIC_USEC=10000000"]
    assert lines[2] == "STATUS=rolling restart: shards ready 2/2"
    assert notes.on_pass(11.0, 1, 2, rolling=True, stopping=False) == ["STATUS=rolling restart: shards ready 1/2"]
    assert notes.on_pass(20.0, 2, 2, rolling=False, stopping=False) == ["READY=1", "STATUS=shards ready 2/2"]
    assert notes.on_pass(30.0, 2, 2, rolling=False, stopping=True) == ["STOPPING=1", "STATUS=stopping"]
    assert notes.on_pass(31.0, 0, 2, rolling=False, stopping=True) == []


def test_a_rolling_restart_before_the_first_ready_is_no_reload():
    notes = ServiceNotes()
    assert "RELOADING=1" not in notes.on_pass(0.0, 1, 2, rolling=True, stopping=False)
    assert notes.on_pass(2.0, 2, 2, rolling=False, stopping=False)[0] == "READY=1"


def test_watchdog_every_interval():
    notes = ServiceNotes(watchdog_s=2.0)
    sent = [t for t in (0.0, 0.5, 1.9, 2.0, 3.0, 4.1) if "WATCHDOG=1" in notes.on_pass(t, 1, 1, rolling=False, stopping=False)]
    assert sent == [0.0, 2.0, 4.1]
    assert notes.next_time(4.5) == 6.1
    assert ServiceNotes().next_time(1.0) is None


def test_a_real_datagram_reaches_an_abstract_socket_and_a_missing_one_is_only_a_warning(caplog):
    name = f"spectacles-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(b"\0" + name.encode())
        server.settimeout(5)
        notifier = Notifier({"NOTIFY_SOCKET": f"@{name}", "WATCHDOG_USEC": "4000000"}, pid=os.getpid())
        assert notifier.enabled and notifier.watchdog_s == 2.0
        assert notifier.send(["READY=1", "STATUS=shards ready 4/4"])
        assert server.recv(4096) == b"READY=1\nSTATUS=shards ready 4/4"
        notifier.close()
    gone = Notifier({"NOTIFY_SOCKET": "/nonexistent/notify"})
    assert not gone.send(["READY=1"]) and not gone.send(["READY=1"])
    assert len([r for r in caplog.records if "cannot notify systemd" in r.message]) == 1
    assert not Notifier({}).enabled and not Notifier({}).send(["READY=1"])


def test_a_cluster_node_with_no_group_is_ready_once_settled():
    notes = ServiceNotes()
    assert "READY=1" not in notes.on_pass(0.0, 0, 0, rolling=False, stopping=False)  # not settled yet
    assert notes.on_pass(4.0, 0, 0, rolling=False, stopping=False, empty_ok=True)[0] == "READY=1"
