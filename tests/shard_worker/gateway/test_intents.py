"""Intent flags and the ``--intents`` parser."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shard_worker.gateway.intents import (
    ALL_INTENTS,
    DEFAULT_INTENTS,
    PRIVILEGED_INTENTS,
    Intent,
    format_intents,
    intent_names,
    parse_intents,
    privileged_names,
)


def test_bits_match_discord_v10():
    assert Intent.GUILDS == 1 << 0
    assert Intent.GUILD_MEMBERS == 1 << 1
    assert Intent.GUILD_MODERATION == Intent.GUILD_BANS == 1 << 2
    assert Intent.GUILD_EXPRESSIONS == Intent.GUILD_EMOJIS_AND_STICKERS == 1 << 3
    assert Intent.GUILD_PRESENCES == 1 << 8
    assert Intent.GUILD_MESSAGES == 1 << 9
    assert Intent.DIRECT_MESSAGE_TYPING == 1 << 14
    assert Intent.MESSAGE_CONTENT == 1 << 15
    assert Intent.GUILD_SCHEDULED_EVENTS == 1 << 16
    assert Intent.AUTO_MODERATION_CONFIGURATION == 1 << 20
    assert Intent.AUTO_MODERATION_EXECUTION == 1 << 21
    assert Intent.GUILD_MESSAGE_POLLS == 1 << 24
    assert Intent.DIRECT_MESSAGE_POLLS == 1 << 25


def test_privileged_default_and_all():
    assert PRIVILEGED_INTENTS == (1 << 1) | (1 << 8) | (1 << 15)
    assert DEFAULT_INTENTS & PRIVILEGED_INTENTS == 0
    assert DEFAULT_INTENTS | PRIVILEGED_INTENTS == ALL_INTENTS
    # 17 bits 0-16, plus 20, 21, 24, 25: 21 intents in all.
    assert bin(ALL_INTENTS).count("1") == 21
    assert ALL_INTENTS == (1 << 17) - 1 | 1 << 20 | 1 << 21 | 1 << 24 | 1 << 25


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("513", 513),
        ("0", 0),
        ("GUILDS,GUILD_MESSAGES", 513),
        ("guilds, guild_messages", 513),
        ("GUILDS|GUILD_MESSAGES", 513),
        ("GUILDS GUILD_MESSAGES", 513),
        ("  Guilds \n", 1),
        ("ALL", ALL_INTENTS),
        ("all", ALL_INTENTS),
        ("DEFAULT", DEFAULT_INTENTS),
        ("NONE", 0),
        ("DEFAULT|MESSAGE_CONTENT", DEFAULT_INTENTS | 1 << 15),
        ("GUILDS,512", 513),
        ("GUILD_BANS", 1 << 2),
        ("GUILDS,GUILDS", 1),
    ],
)
def test_parse_intents_accepts(text, expected):
    assert parse_intents(text) == expected


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("GUILDS,GUILD_MESAGES", "GUILD_MESAGES"),
        ("bogus", "bogus"),
        ("-1", "-1"),
        ("0x201", "0x201"),
        (str(1 << 17), str(1 << 17)),
        ("1<<3", "1<<3"),
        ("²", "²"),
    ],
)
def test_parse_intents_rejects_naming_the_token(text, named):
    with pytest.raises(ValueError) as error:
        parse_intents(text)
    assert repr(named) in str(error.value)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("text", ["", "   ", ",", "|,"])
def test_parse_intents_rejects_empty(text):
    with pytest.raises(ValueError, match="no intents"):
        parse_intents(text)


def test_undefined_bit_is_named():
    with pytest.raises(ValueError, match=r"1<<17"):
        parse_intents(str(1 | 1 << 17))


def test_huge_number_is_rejected_without_crashing():
    with pytest.raises(ValueError, match="too large"):
        parse_intents("9" * 5000)


def test_format_and_privileged_names():
    assert format_intents(513) == "513 (GUILDS|GUILD_MESSAGES)"
    assert format_intents(0) == "0 (NONE)"
    assert format_intents(ALL_INTENTS).endswith("(ALL)")
    assert format_intents(DEFAULT_INTENTS).endswith("(DEFAULT)")
    assert privileged_names(ALL_INTENTS) == ["GUILD_MEMBERS", "GUILD_PRESENCES", "MESSAGE_CONTENT"]
    assert privileged_names(DEFAULT_INTENTS) == []
    assert "GUILD_BANS" not in intent_names(ALL_INTENTS)


@given(st.lists(st.sampled_from([m for m in Intent]), unique=True))
def test_names_round_trip(members):
    value = 0
    for member in members:
        value |= member.value
    assert parse_intents(str(value)) == value
    if value:
        assert parse_intents(",".join(intent_names(value))) == value
