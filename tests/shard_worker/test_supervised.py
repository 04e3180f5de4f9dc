"""The child's end of the IPC at scale: a configuration of any size over stdin, shard reports in
bounded chunks of deltas, counters by type within their bound. Pipes, no sockets, no loop."""

from __future__ import annotations

import fcntl
import os
import threading
from types import SimpleNamespace

import pytest

from shard_worker import ipc
from shard_worker.config import SavedSession, WorkerConfig
from shard_worker.gateway.connection import MAX_EVENT_TYPES, OTHER_TYPE, count_type
from shard_worker.supervised import ParentLink, read_config

TOKEN = "t" * 40
F_SETPIPE_SZ = 1031


def big_config(shards: int) -> WorkerConfig:
    sessions = {
        s: SavedSession(f"{s:032x}", 10_000 + s, "wss://gateway-us-east1-b.discord.gg") for s in range(shards)
    }
    return WorkerConfig(list(range(shards)), shards, "wss://gateway.discord.gg", token=TOKEN, sessions=sessions)


def test_a_5000_shard_configuration_arrives_whole_over_the_pipe_with_the_next_order():
    config = big_config(5000)
    raw = ipc.encode("config", config.to_dict()) + ipc.encode("stop")
    assert len(raw) > 4 * 128 * 1024  # far past what one environment variable may hold
    r, w = os.pipe()
    writer = threading.Thread(target=lambda: (_write_all(w, raw), os.close(w)))
    writer.start()
    try:
        got, decoder, pending = read_config(r, {"DISCORD_TOKEN": TOKEN})
    finally:
        writer.join(10)
        os.close(r)
    assert got == config and got.token == TOKEN
    assert got.sessions[4999] == config.sessions[4999]
    assert pending == [ipc.Message("stop")]
    assert decoder.max_line == ipc.MAX_LINE_BYTES  # later orders are bounded again
    assert TOKEN.encode() not in raw


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


@pytest.mark.parametrize(
    ("first", "why"),
    [(ipc.encode("stop"), "must be 'config'"), (ipc.encode("config", {"shard_ids": [0]}), "bad configuration"), (b"", "stdin closed")],
)
def test_a_missing_or_bad_configuration_is_one_clear_exit(first, why):
    r, w = os.pipe()
    os.write(w, first)
    os.close(w)
    with pytest.raises(SystemExit, match=why):
        read_config(r, {"DISCORD_TOKEN": TOKEN})
    os.close(r)


def test_no_token_no_start():
    with pytest.raises(SystemExit, match="DISCORD_TOKEN"):
        read_config(0, {})


class FakeRunner:
    def __init__(self, shard: int) -> None:
        self.shard_id = shard
        self.state = "ready"
        self.machine = SimpleNamespace(seq=shard, latency=0.0421)
        self.received = self.published = self.reconnects = self.identifies = self.resumes = self.sent = 0
        self.outbox: list = []


def link_for(shards: int) -> tuple[ParentLink, int, dict[int, FakeRunner]]:
    r, w = os.pipe()
    fcntl.fcntl(w, F_SETPIPE_SZ, 1 << 20)
    runners = {s: FakeRunner(s) for s in range(shards)}
    session = SavedSession("a" * 32, 1, "wss://resume.example")
    bridge = SimpleNamespace(first_unconfirmed_seqs=dict)  # nothing buffered
    worker = SimpleNamespace(runners=runners, session_of=lambda shard, firsts=None: session, bridge=bridge)
    link = ParentLink(w)
    link.worker = worker
    return link, r, runners


def read_messages(fd: int) -> list[ipc.Message]:
    os.set_blocking(fd, False)
    decoder = ipc.Decoder()
    out: list[ipc.Message] = []
    while True:
        try:
            chunk = os.read(fd, 1 << 20)
        except BlockingIOError:
            return out
        out += decoder.feed(chunk)


def test_shard_reports_go_in_bounded_chunks_and_only_when_changed():
    link, r, runners = link_for(1250)
    link.send_shard_reports()
    raw_sizes = []
    messages = read_messages(r)
    for message in messages:
        assert message.event == "shards"
        raw_sizes.append(len(ipc.encode(message.event, message.data)))
        assert len(message.data["shards"]) <= ipc.SHARDS_PER_MESSAGE
    assert sum(len(m.data["shards"]) for m in messages) == 1250
    assert max(raw_sizes) < 100_000  # whatever the shard count
    assert set(messages[0].data["shards"]["0"]) == {
        "state", "seq", "session", "latency_ms", "received", "published", "reconnects", "identifies",
        "resumes", "sent", "outbox",
    }  # fmt: skip

    link.send_shard_reports()
    assert read_messages(r) == []  # nothing changed, nothing sent
    runners[7].received += 1
    runners[1000].state = "disconnected"
    link.send_shard_reports()
    assert [sorted(m.data["shards"]) for m in read_messages(r)] == [["1000", "7"]]
    link.send_shard_reports(everything=True)
    assert sum(len(m.data["shards"]) for m in read_messages(r)) == 1250
    os.close(r)


def test_counters_by_type_stop_at_their_bound():
    counts: dict[str, int] = {}
    for i in range(MAX_EVENT_TYPES + 50):
        count_type(counts, f"TYPE_{i}")
    count_type(counts, "TYPE_0")  # an old type is still counted by name
    assert len(counts) == MAX_EVENT_TYPES + 1
    assert counts[OTHER_TYPE] == 50 and counts["TYPE_0"] == 2


def test_every_order_but_config_has_a_handler_and_an_unknown_one_is_logged(caplog):
    from shard_worker.ipc_vocabulary import Order

    link, r, _ = link_for(1)
    guarded: list[bool] = []
    link.worker.set_guarded = guarded.append
    link.worker.old_caught_up = lambda: guarded.append(None)
    try:
        assert set(link._orders) == set(Order) - {Order.CONFIG}
        for event in ("guard", "unguard", "ping", "old_caught_up"):  # plain strings, as received
            link._on_order(ipc.Message(event))
        assert guarded == [True, False, None]
        with caplog.at_level("WARNING", logger="shard_worker.supervised"):
            link._on_order(ipc.Message("config", {}))
            link._on_order(ipc.Message("reboot"))
        assert "unknown order 'config' ignored" in caplog.text and "unknown order 'reboot' ignored" in caplog.text
        assert read_messages(r) == []  # none of these is answered
    finally:
        os.close(r)
