"""The systemd unit agrees with the process contract (exit codes, signals, paths, settings)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from shard_worker import exit_codes
from shard_worker.gateway.protocol import FATAL_CLOSE_CODES
from supervisor.config.settings import SETTINGS

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "scripts" / "spectacles-supervisor.service"


def unit() -> dict[str, dict[str, list[str]]]:
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        assert current is not None, line
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def test_restart_prevent_exit_status_is_every_code_that_must_not_restart():
    service = unit()["Service"]
    codes = {int(code) for code in service["RestartPreventExitStatus"][0].split()}
    never = {exit_codes.USAGE} | {exit_codes.for_fatal_close(code) for code in FATAL_CLOSE_CODES}
    assert codes == never == {2, 44, 50, 51, 52, 53, 54}
    assert exit_codes.ERROR not in codes  # a runtime failure is restarted
    assert service["Restart"] == ["on-failure"]


def test_unit_runs_the_venv_start_as_a_dedicated_user_with_a_private_state_dir():
    service = unit()["Service"]
    assert service["Type"] == ["notify"] and service["NotifyAccess"] == ["main"]
    # the loop's watchdog beats at half of WatchdogSec, well inside it
    assert int(service["WatchdogSec"][0]) >= 10
    (exec_start,) = service["ExecStart"]
    working_dir = service["WorkingDirectory"][0]
    assert exec_start == f"{working_dir}/.venv/bin/spectacles-supervisor start"
    assert service["User"] == ["spectacles"] and service["User"] != ["root"]
    assert service["KillSignal"] == ["SIGTERM"] and service["TimeoutStopSec"] == ["15"]
    assert service["KillMode"] == ["mixed"]  # SIGTERM to the supervisor only; it stops its children
    assert service["EnvironmentFile"] == ["/etc/spectacles/env"]
    assert service["StateDirectory"] == ["spectacles-supervisor"]
    assert service["StateDirectoryMode"] == ["0700"]
    env = dict(item.split("=", 1) for item in service["Environment"])
    assert env["SPECTACLES_STATE_DIR"] == "/var/lib/" + service["StateDirectory"][0]
    known = {name for setting in SETTINGS for name in setting.envs}
    assert {name for name in env if name.startswith("SPECTACLES_")} <= known
    assert service["ExecReload"] == ["/bin/kill -HUP $MAINPID"]  # reload = rolling restart


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_accepts_the_unit(tmp_path):
    copy = tmp_path / UNIT.name
    copy.write_text(UNIT.read_text())
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(copy)], capture_output=True, text=True, timeout=60
    )
    # about our unit, the only complaint allowed: the venv is not installed in /opt here
    problems = [
        line for line in (result.stdout + result.stderr).splitlines()
        if UNIT.name in line and "is not executable" not in line
    ]  # fmt: skip
    assert problems == []
