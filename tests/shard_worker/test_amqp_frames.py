"""The fast publish path writes exactly the bytes pika itself would write."""

from __future__ import annotations

import pika
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pika import frame, spec

from shard_worker import spectacles
from shard_worker.amqp_frames import method_frame, properties_prefix, publish_frames


def pika_frames(channel, exchange, routing_key, props, body, body_max):
    """What pika.Connection._send_message marshals for one basic_publish."""
    out = [
        frame.Method(channel, spec.Basic.Publish(exchange=exchange, routing_key=routing_key)).marshal(),
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
)
def test_frames_are_byte_identical_to_pika(channel, exchange, routing_key, shard, message_id, body, body_max):
    base = pika.BasicProperties(
        content_type=spectacles.CONTENT_TYPE,
        delivery_mode=spectacles.PERSISTENT,
        headers={spectacles.SHARD_HEADER: shard},
    )
    full = pika.BasicProperties(**{**base.__dict__, "message_id": message_id})
    ours = publish_frames(
        channel, method_frame(channel, exchange, routing_key), properties_prefix(base), message_id.encode(), body, body_max
    )
    assert ours == pika_frames(channel, exchange, routing_key, full, body, body_max)


def test_an_empty_body_has_no_body_frame_like_pika():
    props = pika.BasicProperties(content_type="application/json", delivery_mode=2)
    ours = publish_frames(1, method_frame(1, "g", "T"), properties_prefix(props), b"1:s:1", b"", 131064)
    full = pika.BasicProperties(content_type="application/json", delivery_mode=2, message_id="1:s:1")
    assert ours == pika_frames(1, "g", "T", full, b"", 131064)
    assert len(ours) == 2


def test_pika_is_pinned_to_the_versions_this_test_covers_and_checked_at_start(monkeypatch):
    """The fast path uses pika internals: setup.cfg bounds pika to PIKA_VERSIONS, the installed one
    is inside them, and a pika without the internals is one clear error, not a crash loop."""
    import configparser
    from pathlib import Path

    from packaging.specifiers import SpecifierSet

    from shard_worker.amqp_frames import PIKA_VERSIONS, check_pika

    cfg = configparser.ConfigParser()
    cfg.read(Path(__file__).resolve().parents[2] / "setup.cfg")
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
