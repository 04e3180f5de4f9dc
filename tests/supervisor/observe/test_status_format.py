"""``status`` output at any shard count: a table while it fits a screen, a summary beyond it,
``--all`` for every row and ``--shard IDS`` for some. Pure: status dicts built here, no socket."""

from __future__ import annotations

import json
import re

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from shard_worker import ipc
from supervisor.cli import EXIT_USAGE, SCREEN_ROWS, StartError, cli, format_status
from supervisor.core import control

ERROR_PREFIX = "spectacles-supervisor: error: "
MB = 2**20

#: Shards that are not ready in :func:`make_status`'s default, by state.
NOT_READY = {
    "connecting": [5, 1300],
    "identifying": list(range(2600, 2620)),
    "resuming": [7, 8],
    "stalled": list(range(4000, 4050)),
    "down": [4999],
}


def make_status(
    shard_count: int = 5000,
    groups: int = 4,
    not_ready: dict[str, list[int]] | None = None,
    first: int = 0,
) -> dict:
    """A status dict as ``Arbiter.status()`` gives it: shards ``first..first+shard_count-1`` in
    ``groups`` consecutive processes, all ready except ``not_ready`` (state -> ids)."""
    states = {
        shard: state for state, ids in (NOT_READY if not_ready is None else not_ready).items()
        for shard in ids
    }
    per_group = -(-shard_count // groups)
    ids = list(range(first, first + shard_count))
    group_list, shards = [], []
    for index in range(groups):
        members = ids[index * per_group : (index + 1) * per_group]
        if not members:
            continue
        pid = 4000 + index
        group_list.append(
            {
                "group": index,
                "shards": f"{members[0]}-{members[-1]}",
                "pid": pid,
                "restarts": index,
                "rss": (600 + index) * MB,
                "cpu_percent": 12.5 + index,
                "uptime": 5230.0,
            }
        )
        for shard in members:
            state = states.get(shard, "ready")
            down = state == "down"
            shards.append(
                {
                    "shard": shard,
                    "group": index,
                    "pid": None if down else pid,
                    "state": state,
                    "seq": None if down else 12_000_000 + shard,
                    "latency_ms": None if down else 40.4,
                    "published": 90_000_000 + shard,
                    "received": 90_000_000 + shard + 3,
                    "reconnects": shard % 3,
                    "resumes": 0,
                    "identifies": 1,
                    "rss": None if down else (600 + index) * MB,
                }
            )
    return {
        "shard_count": first + shard_count,
        "shards_label": f"{first}-{first + shard_count - 1}",
        "uptime": 5230.4,
        "groups": group_list,
        "identify_budget_remaining": 936,
        "identifies_granted": shard_count,
        "shards": shards,
    }


def row_ids(text: str) -> list[int]:
    """The shard ids of the rows of shard tables (a row starts with the shard id and group)."""
    return [int(line.split()[0]) for line in text.splitlines() if re.match(r"\d+\s+\d+\s", line)]


def section(text: str, title: str) -> str:
    """The lines after the line starting with ``title``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(title))
    return "\n".join(lines[start + 1 :])


# -- the summary beyond a screenful ---------------------------------------------------------------


def test_5000_shards_give_a_summary():
    text = format_status(make_status())
    lines = text.splitlines()
    assert lines[0] == (
        "states: 4925 ready, 2 connecting, 1 down, 20 identifying, 2 resuming, 50 stalled"
    )
    assert len(lines) < 2 * SCREEN_ROWS
    assert lines[-1] == (
        "5000 shards of 5000 in 4 processes; up 5230 s; identify budget left: 936"
    )


def test_summary_has_one_row_per_process_with_ready_counts():
    text = format_status(make_status())
    lines = text.splitlines()
    header = lines.index(next(line for line in lines if line.startswith("GROUP")))
    assert lines[header].split() == ["GROUP", "SHARDS", "PID", "READY", "RESTARTS", "RSS", "CPU"]
    rows = [line.split() for line in lines[header + 1 : header + 5]]
    # group 0 has 5, 7, 8 not ready; group 1 has 1300; group 2 the 20 identifying; group 3 the
    # 50 stalled and 4999 down
    assert rows == [
        ["0", "0-1249", "4000", "1247/1250", "0", "600", "MB", "12%"],
        ["1", "1250-2499", "4001", "1249/1250", "1", "601", "MB", "14%"],
        ["2", "2500-3749", "4002", "1230/1250", "2", "602", "MB", "14%"],
        ["3", "3750-4999", "4003", "1199/1250", "3", "603", "MB", "16%"],
    ]


def test_summary_lists_the_shards_that_are_not_ready():
    status = make_status(not_ready={"connecting": [5, 1300], "down": [4999], "stalled": [7]})
    text = format_status(status)
    assert "not ready (4):" in text
    not_ready = section(text, "not ready")
    assert not_ready.splitlines()[0].split()[:4] == ["SHARD", "GROUP", "PID", "STATE"]
    assert row_ids(not_ready) == [5, 7, 1300, 4999]
    states = {int(line.split()[0]): line.split()[3] for line in not_ready.splitlines()[1:5]}
    assert states == {5: "connecting", 7: "stalled", 1300: "connecting", 4999: "down"}
    assert "more; use --all" not in text


def test_the_not_ready_list_is_capped():
    text = format_status(make_status())  # 75 not ready
    not_ready = section(text, "not ready (75):")
    assert len(row_ids(not_ready)) == SCREEN_ROWS
    assert "... and 11 more; use --all or --shard" in text.splitlines()


def test_all_ready_has_no_not_ready_section():
    text = format_status(make_status(not_ready={}))
    assert text.splitlines()[0] == "states: 5000 ready"
    assert "not ready" not in text
    assert row_ids(text) == []


def test_none_ready_still_counts_ready_first():
    status = make_status(shard_count=100, groups=2, not_ready={"starting": list(range(100))})
    assert format_status(status).splitlines()[0] == "states: 0 ready, 100 starting"


def test_summary_of_processes_without_a_child():
    status = make_status(shard_count=100, groups=2, not_ready={"down": list(range(50, 100))})
    status["groups"][1].update(pid=None, rss=None, cpu_percent=None, uptime=None)
    text = format_status(status)
    rows = [line.split() for line in text.splitlines()]
    assert ["1", "50-99", "-", "0/50", "1", "-", "-"] in rows


# -- a table while it fits, --all, --shard --------------------------------------------------------


def test_64_shards_still_give_the_table():
    text = format_status(make_status(shard_count=SCREEN_ROWS, not_ready={}))
    lines = text.splitlines()
    assert lines[0].split() == [
        "SHARD", "GROUP", "PID", "STATE", "SEQ", "LATENCY", "PUBLISHED", "RECONNECTS", "RSS"
    ]
    assert row_ids(text) == list(range(SCREEN_ROWS))
    assert len(lines) == SCREEN_ROWS + 2
    assert lines[1].split() == [
        "0", "0", "4000", "ready", "12000000", "40", "ms", "90000000", "0", "600", "MB"
    ]


def test_65_shards_give_the_summary():
    text = format_status(make_status(shard_count=SCREEN_ROWS + 1, not_ready={}))
    assert text.startswith("states: 65 ready\n")


def test_all_gives_every_row():
    status = make_status()
    text = format_status(status, all_rows=True)
    lines = text.splitlines()
    assert len(lines) == 5002  # header, 5000 rows, the final line
    assert row_ids(text) == list(range(5000))
    assert lines[-1] == format_status(status).splitlines()[-1]


def test_shard_picks_those_rows():
    text = format_status(make_status(), shard_ids=[3, 10, 11, 12])
    lines = text.splitlines()
    assert lines[0].startswith("SHARD")
    assert row_ids(text) == [3, 10, 11, 12]
    assert len(lines) == 6
    assert "not run by this supervisor" not in text


def test_shard_names_ids_this_supervisor_does_not_run():
    text = format_status(make_status(shard_count=100, first=100), shard_ids=[5, 150, 300, 301])
    assert row_ids(text) == [150]
    assert "not run by this supervisor: 5,300-301 (it runs 100-199)" in text.splitlines()


def test_shard_with_none_run_here_is_a_usage_error():
    with pytest.raises(StartError) as caught:
        format_status(make_status(shard_count=100), shard_ids=[100, 101, 200])
    assert caught.value.exit_code == EXIT_USAGE
    assert str(caught.value) == (
        "shards 100-101,200 are not run by this supervisor (it runs 0-99)"
    )


@settings(max_examples=60, deadline=None)
@given(ids=st.sets(st.integers(min_value=0, max_value=400), max_size=80))
def test_shard_rows_are_the_asked_ids_that_are_run_here(ids):
    status = make_status(shard_count=200, groups=3, first=100, not_ready={"down": [150, 151]})
    known = set(range(100, 300))
    if not ids & known:
        with pytest.raises(StartError):
            format_status(status, shard_ids=ids)
        return
    text = format_status(status, shard_ids=ids)
    assert row_ids(text) == sorted(ids & known)
    assert ("not run by this supervisor" in text) == bool(ids - known)


def test_5000_shards_format_in_every_mode():
    status = make_status()
    assert format_status(status)
    assert format_status(status, all_rows=True)
    assert format_status(status, shard_ids=range(0, 5000, 2))


# -- the command line ----------------------------------------------------------------------------


@pytest.fixture
def runner():
    return CliRunner()


@pytest.fixture
def answer(monkeypatch):
    """``status`` gets this status dict instead of asking a control socket."""
    status = make_status()

    def request(state_dir, event, timeout=5.0):
        assert event == "status"
        return status

    monkeypatch.setattr(control, "request", request)
    return status


def one_error_line(result) -> str:
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(ERROR_PREFIX)
    assert "Traceback" not in result.stderr and "Usage:" not in result.stderr
    return lines[0][len(ERROR_PREFIX) :]


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["--shard", "x"], "--shard': invalid shard id or range 'x'"),
        (["--shard", "5-3"], "shard range '5-3' is reversed"),
        (["--shard", ""], "no shard ids given"),
        (["--shard", "-1"], "cannot be negative"),
        (["--shard"], "requires an argument"),
        (["--all", "--shard", "3"], "--all and --shard cannot be used together"),
    ],
)
def test_bad_shard_option_is_one_line_and_exit_2(runner, tmp_path, args, reason):
    result = runner.invoke(cli, ["status", "--state-dir", str(tmp_path), *args])
    assert result.exit_code == EXIT_USAGE
    assert reason in one_error_line(result)
    assert result.stdout == ""


def test_status_command_prints_the_summary(runner, answer, tmp_path):
    result = runner.invoke(cli, ["status", "--state-dir", str(tmp_path)])
    assert result.exit_code == 0, result.stderr
    assert result.stdout == format_status(answer) + "\n"


def test_status_command_all_and_shard(runner, answer, tmp_path):
    result = runner.invoke(cli, ["status", "--state-dir", str(tmp_path), "--all"])
    assert result.exit_code == 0, result.stderr
    assert len(result.stdout.splitlines()) == 5002
    result = runner.invoke(cli, ["status", "--state-dir", str(tmp_path), "--shard", "3,10-12"])
    assert result.exit_code == 0, result.stderr
    assert row_ids(result.stdout) == [3, 10, 11, 12]


def test_status_command_shard_none_run_here(runner, answer, tmp_path):
    result = runner.invoke(cli, ["status", "--state-dir", str(tmp_path), "--shard", "7000"])
    assert result.exit_code == EXIT_USAGE
    assert one_error_line(result) == "shards 7000 are not run by this supervisor (it runs 0-4999)"


def test_status_json_is_the_whole_dict(runner, answer, tmp_path):
    result = runner.invoke(cli, ["status", "--state-dir", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout) == answer


def test_status_json_with_shard_filters_the_shards(runner, answer, tmp_path):
    args = ["status", "--state-dir", str(tmp_path), "--json", "--shard", "3,10-12,9000"]
    result = runner.invoke(cli, args)
    assert result.exit_code == 0, result.stderr
    printed = json.loads(result.stdout)
    assert [shard["shard"] for shard in printed["shards"]] == [3, 10, 11, 12]
    assert {**printed, "shards": answer["shards"]} == answer


# -- the client reads an answer this large --------------------------------------------------------


class FakeSocket:
    """What ``control.request`` needs of a unix socket: the answer comes in ``chunk`` pieces."""

    def __init__(self, answer: bytes, chunk: int) -> None:
        self.pieces = [answer[i : i + chunk] for i in range(0, len(answer), chunk)]
        self.sent = b""

    def settimeout(self, timeout):
        pass

    def connect(self, path):
        pass

    def sendall(self, data):
        self.sent += data

    def recv(self, size):
        return self.pieces.pop(0) if self.pieces else b""

    def close(self):
        pass


@pytest.mark.parametrize("chunk", [1 << 16, 1 << 20])
def test_the_client_reads_an_answer_over_the_ipc_line_limit(monkeypatch, tmp_path, chunk):
    status = make_status(shard_count=10_000, groups=8)
    line = ipc.encode("status", status)
    assert len(line) > ipc.MAX_LINE_BYTES  # the children's pipe limit would drop it
    fake = FakeSocket(line, chunk)
    monkeypatch.setattr(control.socket, "socket", lambda *args: fake)
    assert control.request(tmp_path, "status") == status
    assert fake.sent == ipc.encode("status")


def test_the_client_names_an_unreadable_answer(monkeypatch, tmp_path):
    fake = FakeSocket(b"not json\n", 1 << 16)
    monkeypatch.setattr(control.socket, "socket", lambda *args: fake)
    with pytest.raises(control.ControlError, match="answer could not be read"):
        control.request(tmp_path, "status")
