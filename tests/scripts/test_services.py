"""``scripts/services.sh``: the servers answer, or a fresh Debian/Ubuntu machine gets them from
its packages, or one clear line says what is missing (issue 21, item 8).

The real install cannot run here (the servers are installed and running); the script's checks
take their ports and os-release file from the environment, and a dry run says what it would
install and start without changing anything."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.helpers import free_port

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "services.sh"


def run(tmp_path: Path, os_id: str, path: str, **env: str) -> subprocess.CompletedProcess:
    release = tmp_path / "os-release"
    release.write_text(f"ID={os_id}\nID_LIKE=\n")
    full = {
        "PATH": path, "HOME": str(tmp_path),
        "SPECTACLES_RABBITMQ_PORT": str(free_port()), "SPECTACLES_REDIS_PORT": str(free_port()),
        "SPECTACLES_OS_RELEASE": str(release), **env,
    }  # fmt: skip
    return subprocess.run(["/bin/bash", str(SCRIPT)], env=full, capture_output=True, text=True, timeout=60)


def bare_path(tmp_path: Path) -> str:
    """A PATH with the shell's basics and no rabbitmq-server, redis-server or sudo."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for tool in ("sed", "id", "sleep", "cat"):
        for where in ("/usr/bin", "/bin"):
            if os.path.exists(f"{where}/{tool}"):
                (bin_dir / tool).symlink_to(f"{where}/{tool}")
                break
    return str(bin_dir)


def test_running_servers_need_nothing():
    done = subprocess.run(["/bin/bash", str(SCRIPT)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stderr == ""


def test_elsewhere_one_line_names_what_is_missing_and_fails_at_once(tmp_path):
    done = run(tmp_path, "fedora", bare_path(tmp_path))
    assert done.returncode == 1
    [line] = done.stderr.splitlines()
    assert line.startswith("services: RabbitMQ (127.0.0.1:") and " and Redis (127.0.0.1:" in line
    assert "not Debian or Ubuntu" in line and "rabbitmq-server redis-server" in line


@pytest.mark.parametrize("os_id", ["debian", "ubuntu"])
def test_on_debian_or_ubuntu_it_installs_from_the_packages_as_root_or_says_how(tmp_path, os_id):
    done = run(tmp_path, os_id, bare_path(tmp_path), SPECTACLES_SERVICES_DRY_RUN="1")
    lines = done.stderr.splitlines()
    if os.geteuid() == 0:  # CI's case: said first, then done (here: a dry run says the commands)
        assert done.returncode == 0, done.stderr
        assert "installing rabbitmq-server redis-server from the distribution's packages (apt-get)" in lines[0]
        assert lines[1] == "services: dry run:  apt-get update &&  apt-get install -y rabbitmq-server redis-server"
        assert lines[2:] == ["services: dry run: would start RabbitMQ", "services: dry run: would start Redis"]
    else:  # no sudo on this PATH: one line, exit 1
        assert done.returncode == 1 and len(lines) == 1
        assert "run this as root (or with sudo)" in lines[0]
        assert "apt-get install -y rabbitmq-server redis-server" in lines[0]


def test_only_the_missing_one_is_installed(tmp_path):
    path = bare_path(tmp_path)
    fake = Path(path) / "redis-server"  # Redis installed (not running): only RabbitMQ is missing
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    done = run(tmp_path, "fedora", path)
    assert done.returncode == 1
    [line] = done.stderr.splitlines()
    assert "RabbitMQ" in line and "Redis" not in line and "install rabbitmq-server with" in line
