"""The fast publish path writes exactly the bytes pika itself would write."""

from __future__ import annotations

import pika
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pika import frame, spec

from shard_worker import spectacles
from shard_worker.amqp.frames import append_publish, method_frame, properties_prefix, publish_frames


def pika_frames(channel, exchange, routing_key, props, body, body_max, mandatory=False):
    """What pika.Connection._send_message marshals for one basic_publish."""
    publish = spec.Basic.Publish(exchange=exchange, routing_key=routing_key, mandatory=mandatory)
    out = [
        frame.Method(channel, publish).marshal(),
        frame.Header(channel, len(body), props).marshal(),
    ]
    for start in range(0, len(body), body_max):
        out.append(frame.Body(channel, body[start : start + body_max]).marshal())
    return out


names = st.text(st.characters(min_codepoint=33, max_codepoint=0x2FFF), min_size=1, max_size=40).filter(
    lambda s: len(s.encode()) < 250
)


@given(
    channel=st.integers(1, 65535),
    exchange=names,
    routing_key=names,
    shard=st.integers(0, 2**31 - 1),
    message_id=names,
    body=st.binary(max_size=3000),
    body_max=st.integers(100, 2000),
    mandatory=st.booleans(),
)
def test_frames_are_byte_identical_to_pika(channel, exchange, routing_key, shard, message_id, body, body_max, mandatory):
    base = pika.BasicProperties(
        content_type=spectacles.CONTENT_TYPE,
        delivery_mode=spectacles.PERSISTENT,
        headers={spectacles.SHARD_HEADER: shard},
    )
    full = pika.BasicProperties(**{**base.__dict__, "message_id": message_id})
    method = method_frame(channel, exchange, routing_key, mandatory)
    ours = publish_frames(channel, method, properties_prefix(base), message_id.encode(), body, body_max)
    theirs = pika_frames(channel, exchange, routing_key, full, body, body_max, mandatory)
    assert ours == theirs
    # The hot path appends the same bytes in pieces (no copy of the body before the flush's join).
    pieces: list[bytes] = []
    count = append_publish(pieces, channel, method, properties_prefix(base), message_id.encode(), body, body_max)
    assert b"".join(pieces) == b"".join(theirs) and count == len(theirs)


def test_an_empty_body_has_no_body_frame_like_pika():
    props = pika.BasicProperties(content_type="application/json", delivery_mode=2)
    ours = publish_frames(1, method_frame(1, "g", "T"), properties_prefix(props), b"1:s:1", b"", 131064)
    full = pika.BasicProperties(content_type="application/json", delivery_mode=2, message_id="1:s:1")
    assert ours == pika_frames(1, "g", "T", full, b"", 131064)
    assert len(ours) == 2


def test_the_mandatory_bit_is_what_pikas_own_basic_publish_writes(amqp_url):
    """End to end through pika's real publish path: the bytes ``BlockingChannel.basic_publish``
    hands to its transport for ``mandatory=True`` (and False) are ours, byte for byte."""
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        channel = conn.channel()
        sent: list[bytes] = []
        impl = conn._impl
        emit = impl._adapter_emit_data
        impl._adapter_emit_data = lambda data: (sent.append(bytes(data)), emit(data))[1]
        base = pika.BasicProperties(content_type=spectacles.CONTENT_TYPE, delivery_mode=spectacles.PERSISTENT)
        for mandatory in (True, False):
            sent.clear()
            full = pika.BasicProperties(**{**base.__dict__, "message_id": "0:s:1"})
            # The default exchange and a key no queue has: returned (mandatory) or dropped.
            channel.basic_publish("", "spectacles-no-such-queue", b'{"a":1}', full, mandatory=mandatory)
            number = channel.channel_number
            ours = publish_frames(
                number, method_frame(number, "", "spectacles-no-such-queue", mandatory), properties_prefix(base),
                b"0:s:1", b'{"a":1}', impl._body_max_length,
            )  # fmt: skip
            assert b"".join(sent) == b"".join(ours)
        # the bit itself: the last argument octet of basic.publish, after the routing key
        assert method_frame(1, "g", "T", True)[-2] == 1 and method_frame(1, "g", "T")[-2] == 0
    finally:
        conn.close()


def test_pika_is_pinned_to_the_versions_this_test_covers_and_checked_at_start(monkeypatch):
    """The fast path uses pika internals: setup.cfg bounds pika to PIKA_VERSIONS, the installed one
    is inside them, and a pika without the internals is one clear error, not a crash loop."""
    import configparser
    from pathlib import Path

    from packaging.specifiers import SpecifierSet

    from shard_worker.amqp.frames import PIKA_VERSIONS, check_pika

    cfg = configparser.ConfigParser()
    cfg.read(Path(__file__).resolve().parents[3] / "setup.cfg")
    requirement = next(
        line.strip()
        for line in cfg["options"]["install_requires"].splitlines()
        if line.strip().startswith("pika")
    )
    assert SpecifierSet(requirement.removeprefix("pika")) == SpecifierSet(",".join(PIKA_VERSIONS))
    assert pika.__version__ in SpecifierSet(",".join(PIKA_VERSIONS))
    check_pika()  # this pika has them

    monkeypatch.delattr(pika.connection.Connection, "_adapter_emit_data")
    with pytest.raises(RuntimeError, match=r"lacks _adapter_emit_data: install pika>=1\.3\.2,<1\.5"):
        check_pika()
