"""The IPC vocabulary (``shard_worker/ipc_vocabulary.py``) and its human reference
(``docs/ipc.md``) name the same events, orders and shard states; enum members go over the pipe as
their plain names with either JSON codec."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

from shard_worker import ipc, jsonlib
from shard_worker.gateway.state import Phase
from shard_worker.ipc_vocabulary import NOT_READY, Event, Order, Request, ShardState

DOC = Path(__file__).resolve().parents[2] / "docs" / "ipc.md"
CONNECTION = Path(__file__).resolve().parents[2] / "shard_worker" / "gateway" / "connection.py"


def _table_rows(heading: str) -> list[list[str]]:
    """The body rows of the first table under ``heading`` in docs/ipc.md, split in cells (a
    ``\\|`` inside a cell is not a separator)."""
    lines = DOC.read_text(encoding="utf-8").splitlines()
    start = lines.index(heading)
    rows: list[list[str]] = []
    in_table = False
    for line in lines[start + 1 :]:
        if line.startswith("## "):
            break
        if not line.startswith("|"):
            if in_table:
                break
            continue
        in_table = True
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        if set("".join(cells)) <= set("-: "):  # the separator row
            continue
        rows.append(cells)
    return rows[1:]  # without the header row


def _names(cell: str) -> set[str]:
    return set(re.findall(r"`([^`]+)`", cell))


def _first_column(heading: str) -> set[str]:
    names: set[str] = set()
    for row in _table_rows(heading):
        found = _names(row[0])
        assert found, f"a row of {heading!r} names no event: {row}"
        names |= found
    return names


def test_the_child_to_parent_table_names_every_event_and_no_other():
    assert _first_column("## Child → parent") == {e.value for e in Event}


def test_the_parent_to_child_table_names_every_order_and_no_other():
    assert _first_column("## Parent → child") == {o.value for o in Order}


def test_the_shard_state_row_names_every_shard_state_and_no_other():
    (row,) = [r for r in _table_rows("## Child → parent") if _names(r[0]) == {"shard_state"}]
    assert _names(row[2]) == {s.value for s in ShardState}


def test_every_state_a_runner_reports_is_a_shard_state():
    """What ``ShardRunner`` passes to ``on_state``: its literals, and its machine's phase (after a
    stall, ``on_state(self, self.state)``)."""
    source = CONNECTION.read_text(encoding="utf-8")
    literals = set(re.findall(r'on_state\(self, "([a-z_]+)"\)', source))
    assert literals, "no on_state call found in gateway/connection.py"
    assert "on_state(self, self.state)" in source
    reported = literals | {phase.value for phase in Phase}
    assert reported == {s.value for s in ShardState}


def test_not_ready_states():
    assert NOT_READY == {"disconnected", "connecting", "identifying", "resuming", "fatal", "stopped"}
    # a received state is a plain str: it must be found in the set of members
    assert "resuming" in NOT_READY and "ready" not in NOT_READY and "stalled" not in NOT_READY
    assert all(isinstance(s, ShardState) for s in NOT_READY)


def test_a_member_is_its_plain_name_for_comparisons_and_lookups():
    for enum in (Event, Order, Request, ShardState):
        for member in enum:
            plain = str(member.value)
            assert type(plain) is str
            assert member == plain and hash(member) == hash(plain)
            assert {member: 1}.get(plain) == 1 and {plain: 1}.get(member) == 1
    # no name is both an event and an order: either direction's dispatch is unambiguous
    assert not {e.value for e in Event} & {o.value for o in Order}


@pytest.fixture(params=["ujson", "orjson"])
def codec(request):
    """Both codecs ``shard_worker.jsonlib`` can run on (see test_queue_fuzz.py)."""
    getattr(jsonlib, f"use_{request.param}")()
    yield request.param
    importlib.reload(jsonlib)  # back to the environment's choice


@pytest.mark.parametrize("member", [*Event, *Order, *Request], ids=lambda m: f"{type(m).__name__}.{m.name}")
def test_encode_writes_the_plain_name_and_decodes_back(codec, member):
    assert jsonlib.NAME == codec
    data = {"shard": 3, "state": ShardState.READY, "role": "old"}
    line = ipc.encode(member, data)
    assert line.startswith(b'{"event":"%s",' % member.value.encode())
    assert b"ShardState" not in line and b"Event." not in line and b"Order." not in line
    decoder = ipc.Decoder()
    (message,) = decoder.feed(line)
    assert decoder.errors == 0
    assert type(message.event) is str and message.event == member.value
    assert message.event == member  # what the receiving end compares with
    assert message.data == {"shard": 3, "state": "ready", "role": "old"}
    assert type(message.data["state"]) is str


def test_encode_of_a_member_equals_encode_of_its_value(codec):
    for member in [*Event, *Order]:
        assert ipc.encode(member, {"shards": 1}) == ipc.encode(member.value, {"shards": 1})
        assert ipc.encode(member) == ipc.encode(member.value)
