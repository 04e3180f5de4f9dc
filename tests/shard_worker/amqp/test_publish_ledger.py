"""The publish ledger without a broker or a loop: confirm frames in, verdicts out.

RabbitMQ may confirm one tag or every tag up to one (``multiple``), in any interleaving; the
ledger must settle exactly the confirmed messages, republish nacked ones later (then refuse
them), refuse what the broker can never take, and report as resumable only a seq whose every
predecessor was settled.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from shard_worker import nack_policy
from shard_worker.amqp.ledger import MAX_CHANNEL_ERRORS, Entry, PublishLedger

OVERSIZE_ERROR = "PRECONDITION_FAILED - message size 70000 is larger than configured max size 65536"


class Harness:
    """A ledger with its callbacks recorded: what was sent, scheduled, refused."""

    def __init__(self, max_buffered: int = 1000, max_bytes: int = 1 << 30) -> None:
        self.sent: list[Entry] = []
        self.scheduled: list[tuple[float, Entry]] = []
        self.refused: list[tuple[Entry, str]] = []
        self.room: list[bool] = []
        self.ledger = PublishLedger(
            max_buffered,
            max_bytes,
            schedule=lambda delay, entry: self.scheduled.append((delay, entry)),
            on_refused=lambda entry, reason: self.refused.append((entry, reason)),
            on_room=self.room.append,
        )
        self.ledger.open(self.sent.append)

    def event(self, seq: int, body: bytes = b"{}", shard: int = 0) -> Entry:
        entry = Entry(shard, "s", seq, "T", body, f"{shard}:s:{seq}")
        self.ledger.add(entry)
        return entry

    def bodies(self) -> list[bytes]:
        return [e.body for e in self.sent]


def test_multiple_ack_after_a_single_one_settles_both():
    h = Harness()
    for seq in (1, 2):
        h.event(seq)
    h.ledger.confirm(2, False, False)  # out of order
    assert h.ledger.buffered == 2 and h.ledger.first_unconfirmed_seq(0, "s") == 1
    h.ledger.confirm(1, True, False)
    assert h.ledger.buffered == 0 and h.ledger.confirmed == 2 and h.ledger.empty
    assert h.ledger.first_unconfirmed_seq(0, "s") is None


def test_a_nack_is_republished_after_a_delay_and_holds_the_seq():
    h = Harness()
    for seq in (1, 2, 3):
        h.event(seq, f"{seq}".encode())
    h.ledger.confirm(1, False, False)
    h.ledger.confirm(2, False, True)
    assert h.ledger.first_unconfirmed_seq(0, "s") == 2
    assert len(h.sent) == 3  # not at once: the broker said no
    [(delay, entry)] = h.scheduled
    assert delay == nack_policy.FIRST_RETRY_DELAY_S and entry.seq == 2
    h.ledger.retry_due(entry)
    assert h.bodies()[-1] == b"2" and entry.tag == 4  # sent again, as tag 4
    h.ledger.confirm(3, False, False)
    assert h.ledger.first_unconfirmed_seq(0, "s") == 2
    h.ledger.confirm(4, False, False)
    assert h.ledger.buffered == 0 and h.ledger.stats["nacked"] == 1 and h.ledger.stats["refused"] == 0
    assert h.ledger.first_unconfirmed_seq(0, "s") is None


def test_a_message_nacked_past_its_retries_is_refused_and_the_buffer_drains():
    h = Harness()
    first = h.event(1, b"1")
    h.event(2, b"2")
    h.ledger.confirm(2, False, False)
    for attempt in range(nack_policy.MAX_NACK_RETRIES + 1):
        h.ledger.confirm(first.tag, False, True)
        if attempt < nack_policy.MAX_NACK_RETRIES:
            h.ledger.retry_due(first)
    # published once, then MAX_NACK_RETRIES more times: never a storm
    assert h.bodies().count(b"1") == 1 + nack_policy.MAX_NACK_RETRIES
    assert [d for d, _ in h.scheduled] == [0.5, 1.0, 2.0]
    assert h.ledger.stats["refused"] == h.ledger.stats["refused_nacked"] == 1
    assert h.ledger.stats["nacked"] == 1 + nack_policy.MAX_NACK_RETRIES
    assert h.ledger.buffered == 0 and h.ledger.buffered_bytes == 0 and h.ledger.confirmed == 1
    assert h.ledger.first_unconfirmed_seq(0, "s") is None  # the seq moved past it


def test_the_nack_policy_backs_off_then_refuses():
    assert [nack_policy.on_nack(n) for n in (1, 2, 3)] == [
        nack_policy.Retry(0.5), nack_policy.Retry(1.0), nack_policy.Retry(2.0)
    ]  # fmt: skip
    assert type(nack_policy.on_nack(4)) is nack_policy.Refuse


def test_a_reconnect_republishes_unconfirmed_events_first_and_in_order():
    h = Harness()
    for seq in (1, 2, 3):
        h.event(seq)
    h.ledger.confirm(1, False, False)
    h.ledger.lost()
    h.event(4)  # no channel: waits behind the others
    assert len(h.sent) == 3 and h.ledger.stats["republished"] == 2
    h.sent.clear()
    h.ledger.open(h.sent.append)
    assert [e.seq for e in h.sent] == [2, 3, 4] and [e.tag for e in h.sent] == [1, 2, 3]
    h.ledger.confirm(3, True, False)
    assert h.ledger.empty and h.ledger.confirmed == 4


def test_a_forwarded_send_is_dropped_on_reconnect_because_its_source_comes_again():
    """Issue 11, defect 7: the SEND it came from is redelivered and forwarded anew."""
    h = Harness()
    acks = []
    forwarded = Entry(1, None, None, "1", b'{"op":8}', "m-1", lambda: acks.append("m-1"))
    h.ledger.add(forwarded)
    h.event(1)
    h.ledger.lost()
    h.sent.clear()
    h.ledger.open(h.sent.append)
    assert [e.message_id for e in h.sent] == ["0:s:1"]  # the event again, the forward not
    assert h.ledger.stats["forward_dropped"] == 1 and acks == []
    assert h.ledger.buffered_bytes == 2
    h.ledger.confirm(1, False, False)
    assert h.ledger.empty and h.ledger.buffered_bytes == 0


def test_a_message_over_the_size_limit_is_refused_at_once_and_never_buffered():
    h = Harness()
    h.ledger.max_message_size = 100
    big = h.event(1, b"x" * 101)
    h.event(2, b"x" * 100)
    assert [e.seq for e in h.sent] == [2]
    assert h.refused[0][0] is big and "101 bytes" in h.refused[0][1]
    assert h.ledger.stats["refused_too_large"] == 1 and h.ledger.buffered_bytes == 100
    assert h.ledger.first_unconfirmed_seq(0, "s") == 2


def test_the_broker_naming_its_size_limit_refuses_what_is_over_it_and_lowers_the_limit():
    h = Harness()
    h.event(1, b"a" * 10)
    h.event(2, b"b" * 70_000)
    h.event(3, b"c" * 10)
    h.ledger.confirm(1, False, False)
    h.ledger.channel_error(OVERSIZE_ERROR)
    h.ledger.lost()
    assert h.ledger.max_message_size == 65536
    assert [e.seq for e, _ in h.refused] == [2] and h.ledger.stats["refused_too_large"] == 1
    h.sent.clear()
    h.ledger.open(h.sent.append)
    assert [e.seq for e in h.sent] == [3]  # the one behind it goes, once, and nothing else
    h.ledger.add(Entry(0, "s", 4, "T", b"d" * 65537, "m"))
    assert h.ledger.stats["refused_too_large"] == 2  # checked before publishing from now on


def test_a_message_that_keeps_closing_the_channel_is_refused_as_poison():
    h = Harness()
    h.event(1)  # accepted by the broker but its confirm never came: an innocent suspect
    h.event(2, b"poison")
    h.event(3)
    for _ in range(MAX_CHANNEL_ERRORS + 2):
        h.ledger.channel_error("PRECONDITION_FAILED - something about this message")
        h.ledger.lost()
        h.sent.clear()
        h.ledger.open(h.sent.append)
        if h.sent and h.sent[0].seq == 1:
            h.ledger.confirm(1, False, False)  # the second time, the innocent one is confirmed
    assert [(e.seq, e.body) for e, _ in h.refused] == [(2, b"poison")]
    assert h.ledger.stats["refused_poisoned"] == 1 and "closed 3 times" in h.refused[0][1]
    assert [e.seq for e in h.sent] == [3]  # it no longer blocks the ones behind it
    h.ledger.confirm(1, False, False)
    assert h.ledger.empty and h.ledger.first_unconfirmed_seq(0, "s") is None


def test_room_is_lost_at_the_bound_and_given_back_once_a_quarter_has_drained():
    h = Harness(max_buffered=8)
    for seq in range(1, 9):
        h.event(seq)
    assert h.room == [False] and not h.ledger.room
    h.ledger.confirm(1, False, False)
    assert h.room == [False] and not h.ledger.room  # 7 of 8: not yet (no stall per confirm frame)
    h.ledger.confirm(2, True, False)
    assert h.room == [False, True] and h.ledger.room  # 6 of 8 = ROOM_AGAIN_AT


def test_room_by_bytes_comes_back_at_three_quarters_and_a_single_big_message_still_drains():
    h = Harness(max_buffered=1000, max_bytes=100)
    h.event(1, b"x" * 60)
    h.event(2, b"x" * 40)  # 100 bytes: full
    assert h.room == [False]
    h.ledger.confirm(1, False, False)
    assert h.room == [False, True]  # 40 <= 75
    h.event(3, b"y" * 90)  # one message near the bound: 130 bytes, full
    assert h.room == [False, True, False]
    h.ledger.confirm(2, False, False)
    assert h.room == [False, True, False]  # 90 > 75: not yet
    h.ledger.confirm(3, False, False)
    assert h.room == [False, True, False, True] and h.ledger.empty


@given(st.integers(1, 40), st.randoms(use_true_random=False), st.data())
def test_any_confirm_order_settles_everything_and_seq_never_overtakes(n, rnd, data):
    h = Harness()
    for seq in range(1, n + 1):
        h.event(seq, shard=seq % 2)
    pending = list(range(1, n + 1))
    while pending:
        if data.draw(st.booleans()):
            tag = data.draw(st.sampled_from(pending))
            h.ledger.confirm(tag, True, False)
            pending = [t for t in pending if t > tag]
        else:
            tag = rnd.choice(pending)
            h.ledger.confirm(tag, False, False)
            pending.remove(tag)
        firsts = h.ledger.first_unconfirmed_seqs()  # all shards in one pass: the same answers
        for shard in (0, 1):
            first = h.ledger.first_unconfirmed_seq(shard, "s")
            unconfirmed = [t for t in pending if t % 2 == shard]
            assert first == (min(unconfirmed) if unconfirmed else None) == firsts.get((shard, "s"))
        assert set(firsts) <= {(0, "s"), (1, "s")}
    assert h.ledger.buffered == 0 and h.ledger.confirmed == n


@given(st.lists(st.sampled_from(["add", "ack", "nack", "retry", "lost", "open", "error"]), max_size=60))
def test_any_sequence_keeps_the_byte_count_and_loses_no_event(ops):
    """Whatever happens, every event is either buffered, confirmed or refused, exactly once."""
    h = Harness()
    seq = 0
    for op in ops:
        if op == "add":
            seq += 1
            h.event(seq, b"x" * (seq % 7))
        elif op in ("ack", "nack") and h.ledger.inflight:
            h.ledger.confirm(h.ledger.inflight[0].tag, False, op == "nack")
        elif op == "retry" and h.scheduled:
            h.ledger.retry_due(h.scheduled.pop(0)[1])
        elif op == "lost":
            h.ledger.lost()
        elif op == "open":
            h.ledger.open(h.sent.append)
        elif op == "error":
            h.ledger.channel_error("PRECONDITION_FAILED")
            h.ledger.lost()
        # reordered by nacks and reconnects: the one-pass answer is still the lowest seq
        assert h.ledger.first_unconfirmed_seqs().get((0, "s")) == h.ledger.first_unconfirmed_seq(0, "s")
    buffered = [*h.ledger.inflight, *h.ledger.backlog, *h.ledger.retry]
    assert h.ledger.buffered_bytes == sum(len(e.body) for e in buffered)
    assert len(buffered) + h.ledger.confirmed + h.ledger.stats["refused"] == seq
    assert h.ledger.empty == (not buffered)
