"""Payload builders: realistic shapes, real snowflake timestamps, the shard formula."""

from __future__ import annotations

import json
import time

from hypothesis import given, settings
from hypothesis import strategies as st

from shard_worker.gateway.protocol import shard_for_guild
from supervisor.simulator import payloads


@settings(max_examples=60, deadline=None)
@given(count=st.integers(1, 512), data=st.data())
def test_guild_ids_belong_to_their_shard(count: int, data) -> None:
    shard = data.draw(st.integers(0, count - 1))
    ids = payloads.guild_ids_for_shard(shard, count, 5)
    assert len(set(ids)) == 5
    assert all(shard_for_guild(g, count) == shard for g in ids)
    # Plausible creation times: after Discord's epoch, before now.
    now_ms = time.time() * 1000
    assert all(payloads.DISCORD_EPOCH_MS < payloads.snowflake_time_ms(g) < now_ms for g in ids)


def test_guild_ids_differ_between_shards() -> None:
    a = payloads.guild_ids_for_shard(0, 4, 3)
    b = payloads.guild_ids_for_shard(1, 4, 3)
    assert not set(a) & set(b)
    assert a == payloads.guild_ids_for_shard(0, 4, 3)  # deterministic


def test_snowflakes_have_real_timestamps_and_are_unique() -> None:
    f = payloads.SnowflakeFactory(worker=3)
    before = int(time.time() * 1000)
    ids = [f.next() for _ in range(5000)]
    after = int(time.time() * 1000)
    assert len(set(ids)) == 5000 and ids == sorted(ids)
    assert before <= payloads.snowflake_time_ms(ids[0]) <= after + 2


def test_event_factory_payloads_look_like_discord() -> None:
    f = payloads.EventFactory(2, 3, guilds=2, seed=7)
    guilds = {str(g) for g in f.guild_ids()}
    t, d = f.make("MESSAGE_CREATE")
    msg = json.loads(d)
    assert t == "MESSAGE_CREATE"
    assert 1200 <= len(d) <= 2000, len(d)
    assert msg["guild_id"] in guilds
    assert {"id", "channel_id", "author", "member", "content", "embeds", "timestamp"} <= set(msg)
    assert abs(payloads.snowflake_time_ms(int(msg["id"])) - time.time() * 1000) < 5000
    assert msg["timestamp"].endswith("+00:00")
    t2, d2 = f.make("MESSAGE_CREATE")
    assert json.loads(d2)["id"] != msg["id"]
    for kind, key in (
        ("TYPING_START", "user_id"),
        ("PRESENCE_UPDATE", "status"),
        ("GUILD_MEMBER_UPDATE", "roles"),
    ):
        t, d = f.make(kind)
        obj = json.loads(d)
        assert t == kind and key in obj and obj["guild_id"] in guilds
    # the default mix is mostly MESSAGE_CREATE but has the others too
    kinds = [f.make()[0] for _ in range(200)]
    assert kinds.count("MESSAGE_CREATE") == 160
    assert {"TYPING_START", "PRESENCE_UPDATE", "GUILD_MEMBER_UPDATE"} <= set(kinds)
    # unknown types get a small generic payload
    t, d = f.make("INTEGRATION_CREATE")
    assert t == "INTEGRATION_CREATE" and "id" in json.loads(d)


def test_guild_create_and_ready() -> None:
    f = payloads.EventFactory(0, 1, guilds=3, seed=1)
    g = f.guild_create(1)
    assert g["id"] == str(f.guild_ids()[1]) and g["unavailable"] is False
    assert g["member_count"] == len(g["members"]) > 0 and g["channels"] and g["roles"]
    r = payloads.ready(
        session_id="abc", resume_gateway_url="ws://x/resume", shard_id=0, shard_count=1,
        guild_ids=f.guild_ids(),
    )
    assert r["v"] == 10 and r["shard"] == [0, 1] and r["session_id"] == "abc"
    assert r["guilds"] == [{"id": str(i), "unavailable": True} for i in f.guild_ids()]
    assert r["user"]["bot"] is True and r["application"]["id"]


def test_message_create_nonce_is_its_snowflake_unless_stamped() -> None:
    f = payloads.EventFactory(0, 1, 2, seed=7)
    _, d = f.make("MESSAGE_CREATE")
    msg = json.loads(d)
    assert msg["nonce"] == msg["id"]
    f.stamp = True
    before = time.time_ns() // 1000
    made = [json.loads(f.make("MESSAGE_CREATE")[1]) for _ in range(3)]
    after = time.time_ns() // 1000
    for msg in made:
        assert msg["nonce"] != msg["id"] and int(msg["id"]) > 0
        assert before <= int(msg["nonce"]) <= after
    # other types carry no stamp (TYPING_START has no nonce at all)
    assert "nonce" not in json.loads(f.make("TYPING_START")[1])


def test_template_fills_every_hole_in_order() -> None:
    tpl = payloads.Template({"a": payloads.Template.NONCE, "b": [payloads.Template.ID, payloads.Template.TS],
                             "c": payloads.Template.ID})  # fmt: skip
    assert json.loads(tpl.render(b"1", b"T", b"99")) == {"a": "99", "b": ["1", "T"], "c": "1"}
    assert json.loads(tpl.render(b"1", b"T")) == {"a": "1", "b": ["1", "T"], "c": "1"}
