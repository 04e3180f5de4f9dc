"""The sans-I/O websocket frame reader: literal bytes, the protocol's faults, and websockets' own
serializer as the oracle for arbitrary messages split at arbitrary bytes."""

from __future__ import annotations

import os

from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.frames import Frame, Opcode

from shard_worker.gateway.ws_frames import (
    CLOSE_INVALID_DATA,
    CLOSE_MESSAGE_TOO_BIG,
    CLOSE_PROTOCOL_ERROR,
    GATHER_ABOVE,
    MAX_FRAGMENTS,
    OP_CLOSE,
    OP_PING,
    Control,
    FrameReader,
)


def wire(opcode: Opcode, payload: bytes, fin: bool = True) -> bytes:
    return Frame(opcode, payload, fin=fin).serialize(mask=False, extensions=[])


def test_literal_frames_of_each_length_encoding():
    reader = FrameReader()
    assert reader.feed(b"\x82\x03abc") == [b"abc"]
    assert reader.feed(b"\x81\x05hello") == ["hello"]  # text: str, as websockets' recv gives it
    assert reader.feed(b"\x82\x7e\x00\x7e" + b"x" * 126) == [b"x" * 126]  # 16-bit length
    big = b"y" * 70000
    assert reader.feed(b"\x82\x7f" + len(big).to_bytes(8, "big") + big) == [big]  # 64-bit length
    assert reader.feed(b"\x82\x00") == [b""]
    assert reader.error is None


def test_a_frame_split_at_every_byte_comes_out_once_whole():
    frame = b"\x82\x7e\x01\x00" + bytes(range(256))
    for cut in range(1, len(frame)):
        reader = FrameReader()
        assert reader.feed(frame[:cut]) == []
        assert reader.feed(frame[cut:]) == [bytes(range(256))]


def test_several_frames_in_one_read_and_the_rest_kept():
    reader = FrameReader()
    data = wire(Opcode.BINARY, b"one") + wire(Opcode.BINARY, b"two") + wire(Opcode.BINARY, b"three")[:3]
    assert reader.feed(data) == [b"one", b"two"]
    assert reader.feed(wire(Opcode.BINARY, b"three")[3:]) == [b"three"]


def test_fragments_are_joined_and_control_frames_in_between_come_first_whole():
    reader = FrameReader()
    ping = wire(Opcode.PING, b"p")
    data = wire(Opcode.TEXT, b"hel", fin=False) + ping + wire(Opcode.CONT, b"lo", fin=False) + wire(Opcode.CONT, b"!")
    assert reader.feed(data) == [Control(OP_PING, ping), "hello!"]


def test_nothing_is_read_after_a_close_frame():
    reader = FrameReader()
    close = wire(Opcode.CLOSE, b"\x03\xe8bye")
    assert reader.feed(wire(Opcode.BINARY, b"last") + close + wire(Opcode.BINARY, b"after")) == [
        b"last",
        Control(OP_CLOSE, close),
    ]
    assert reader.feed(wire(Opcode.BINARY, b"later")) == []
    assert reader.error is None


def faulty(data: bytes, max_size: int | None = None) -> tuple[list, tuple[int, str] | None]:
    reader = FrameReader(max_size)
    out = reader.feed(wire(Opcode.BINARY, b"before") + data)
    after = reader.feed(wire(Opcode.BINARY, b"after"))
    assert after == []  # discarded after a fault
    return out, reader.error


def test_protocol_faults_fail_with_their_close_code_and_keep_what_came_before():
    cases = [
        (b"\xc2\x01x", CLOSE_PROTOCOL_ERROR, "reserved bits"),  # RSV1 without an extension
        (b"\x82\x81\x00\x00\x00\x00x", CLOSE_PROTOCOL_ERROR, "masking"),  # a masked server frame
        (b"\x83\x00", CLOSE_PROTOCOL_ERROR, "opcode"),  # reserved data opcode
        (b"\x8b\x00", CLOSE_PROTOCOL_ERROR, "opcode"),  # reserved control opcode
        (b"\x09\x00", CLOSE_PROTOCOL_ERROR, "control"),  # a fragmented ping
        (b"\x89\x7e\x00\x7e" + b"p" * 126, CLOSE_PROTOCOL_ERROR, "control"),  # ping over 125 bytes
        (b"\x80\x01x", CLOSE_PROTOCOL_ERROR, "continuation"),  # continuation with no message
        (b"\x01\x01a\x82\x01b", CLOSE_PROTOCOL_ERROR, "continuation"),  # a new message mid-fragment
        (b"\x80\x7f" + (1 << 40).to_bytes(8, "big"), CLOSE_PROTOCOL_ERROR, "continuation"),  # order before size
        (b"\x82\x7f\x80" + b"\x00" * 7, CLOSE_PROTOCOL_ERROR, "2^63"),
        (b"\x81\x02\xc3\x28", CLOSE_INVALID_DATA, "invalid"),  # text that is not UTF-8
    ]
    for data, code, words in cases:
        out, error = faulty(data)
        assert out == [b"before"], data
        assert error is not None and error[0] == code and words in error[1], (data, error)


def test_an_oversized_message_fails_from_its_header_before_its_payload_arrives():
    reader = FrameReader(max_size=1000)
    header = b"\x82\x7e" + (1001).to_bytes(2, "big")
    assert reader.feed(header) == []  # nothing of the 1001 bytes has come yet
    assert reader.error is not None and reader.error[0] == CLOSE_MESSAGE_TOO_BIG
    # fragments count together
    reader = FrameReader(max_size=1000)
    assert reader.feed(wire(Opcode.BINARY, b"a" * 600, fin=False)) == []
    reader.feed(wire(Opcode.CONT, b"b" * 401)[:4])
    assert reader.error is not None and reader.error[0] == CLOSE_MESSAGE_TOO_BIG
    # exactly max_size is fine
    assert FrameReader(max_size=1000).feed(wire(Opcode.BINARY, b"c" * 1000)) == [b"c" * 1000]


def test_a_message_of_endless_empty_fragments_fails_at_the_fragment_bound():
    reader = FrameReader(max_size=1000)
    data = b"\x02\x00" + b"\x00\x00" * (MAX_FRAGMENTS + 10)  # 2 bytes each: the size never grows
    assert reader.feed(data) == []
    assert reader.error == (CLOSE_MESSAGE_TOO_BIG, f"over {MAX_FRAGMENTS} fragments")
    assert len(reader._message) == 0  # nothing held after the fault


def test_a_long_message_in_small_reads_is_gathered_not_copied_again_and_again():
    payload = os.urandom(GATHER_ABOVE * 8)
    data = wire(Opcode.BINARY, payload) + wire(Opcode.BINARY, b"next")
    reader = FrameReader()
    out = []
    for i in range(0, len(data), 4096):
        out += reader.feed(data[i : i + 4096])
        if len(out) == 0 and i > GATHER_ABOVE:
            assert reader._rest == b"" and len(reader._parts) > 1  # chunks gathered as a list
    assert out == [payload, b"next"]


messages = st.lists(
    st.tuples(
        st.sampled_from([Opcode.TEXT, Opcode.BINARY]),
        st.lists(st.binary(max_size=300), min_size=1, max_size=4),  # its fragments
        st.sampled_from([None, b"", b"ping!"]),  # a ping between its first fragments
    ),
    max_size=12,
)


@settings(max_examples=200, deadline=None)
@given(messages=messages, cuts=st.lists(st.integers(min_value=1, max_value=400), max_size=40))
def test_any_messages_split_at_any_bytes_come_out_as_websockets_wrote_them(messages, cuts):
    data = b""
    expected: list = []
    for opcode, fragments, ping in messages:
        if opcode is Opcode.TEXT:
            fragments = [f.hex().encode() for f in fragments]  # valid UTF-8
        for i, fragment in enumerate(fragments):
            last = i == len(fragments) - 1
            data += wire(opcode if i == 0 else Opcode.CONT, fragment, fin=last)
            if last:
                whole = b"".join(fragments)
                expected.append(whole.decode() if opcode is Opcode.TEXT else whole)
            if i == 0 and ping is not None:
                raw = wire(Opcode.PING, ping)
                data += raw
                expected.append(Control(OP_PING, raw))
    reader = FrameReader(max_size=10_000)
    out: list = []
    pos = 0
    for cut in cuts:
        out += reader.feed(data[pos : pos + cut])
        pos += cut
    out += reader.feed(data[pos:])
    assert reader.error is None
    assert out == expected
