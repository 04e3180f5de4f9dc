"""The ``simulate`` click command: option checking, and a real run under SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner

from supervisor.simulator.cli import simulate_command

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize(
    "args",
    [
        ["--token", "t", "--shards", "0"],
        ["--token", "t", "--max-concurrency", "0"],
        ["--token", "t", "--events-per-shard", "-5"],
        ["--token", "t", "--rate", "-1"],
        ["--token", "t", "--port", "70000"],
        ["--token", "t", "--shards", "many"],
        ["--shards", "2"],  # no token
    ],
    ids=["shards", "max-concurrency", "events", "rate", "port", "not-an-int", "no-token"],
)
def test_bad_options_exit_2_with_one_line(args) -> None:
    runner = CliRunner()
    result = runner.invoke(simulate_command, args, env={"DISCORD_TOKEN": None})
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("spectacles-supervisor: error:"), result.output


def test_token_from_environment_and_real_run() -> None:
    env = dict(os.environ, DISCORD_TOKEN="cli-secret", PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [sys.executable, "-m", "supervisor.simulator.cli", "--port", "0", "--shards", "3"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=str(ROOT),
        env=env,
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("simulator: gateway ws://127.0.0.1:"), line
        parts = line.split()
        gateway, api = parts[2], parts[4]
        assert api.startswith("http://127.0.0.1:") and api.endswith("/api/v10")
        req = urllib.request.Request(
            f"{api}/gateway/bot", headers={"Authorization": "Bot cli-secret"}
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            body = json.loads(resp.read())
        assert body["url"] == gateway and body["shards"] == 3
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    summary = out.strip().splitlines()[-1]
    assert summary.startswith("simulator: stopped:")
    for key in ("connections=", "identifies=", "resumes=", "dispatched=", "violations="):
        assert key in summary
    assert "cli-secret" not in out + err
