"""The simulator's copy of Discord's facts and the client's agree: two copies written apart,
so that a wrong constant on one side shows here instead of passing both ways."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from shard_worker.gateway import protocol
from supervisor.simulator import discord_facts as facts


def test_the_same_opcodes_and_close_codes():
    assert {op.name: int(op) for op in facts.Op} == {op.name: int(op) for op in protocol.Op}
    assert {c.name: int(c) for c in facts.Close} == {c.name: int(c) for c in protocol.Close}
    assert {int(op) for op in facts.CLIENT_OPS} == {int(op) for op in protocol.CLIENT_OPS}
    assert {int(c) for c in facts.FATAL_CLOSE_CODES} == {int(c) for c in protocol.FATAL_CLOSE_CODES}
    assert {int(c) for c in facts.REIDENTIFY_CLOSE_CODES} == {int(c) for c in protocol.REIDENTIFY_CLOSE_CODES}


def test_the_same_limits():
    assert facts.API_VERSION == protocol.API_VERSION == 10
    assert (facts.SEND_LIMIT, facts.SEND_WINDOW_S) == (protocol.SEND_LIMIT, protocol.SEND_WINDOW_S) == (120, 60.0)
    assert facts.MAX_PAYLOAD_BYTES == protocol.MAX_PAYLOAD_BYTES == 4096
    assert facts.IDENTIFY_INTERVAL_S == protocol.IDENTIFY_INTERVAL_S == 5.0
    assert facts.ZLIB_SUFFIX == protocol.ZLIB_SUFFIX
    assert facts.COMPRESS_CHOICES == protocol.COMPRESS_CHOICES


@given(st.integers(0, 2**64 - 1), st.integers(1, 65536), st.integers(0, 65535), st.integers(1, 1024))
def test_the_same_formulas(guild_id, shard_count, shard_id, max_concurrency):
    assert facts.shard_for_guild(guild_id, shard_count) == protocol.shard_for_guild(guild_id, shard_count)
    assert facts.identify_bucket(shard_id, max_concurrency) == protocol.identify_bucket(shard_id, max_concurrency)


def test_the_client_accepts_the_windows_the_simulator_sends():
    from shard_worker.gateway import inflate

    # zlib: the same 32 KiB window on both sides; zstd: Discord's 64 KiB under the client's bound
    assert facts.ZLIB_WBITS == inflate.ZLIB_WBITS == 15
    assert facts.ZSTD_WINDOW_LOG == 16 <= inflate.ZSTD_WINDOW_LOG_MAX == 23
