"""Discord gateway intents (API v10) and the parser for the ``--intents`` setting.

IDENTIFY carries an ``intents`` bitfield; Discord only sends the events of the intents asked for.
Three intents are *privileged* (they must also be switched on in the developer portal, or Discord
closes the connection with 4014): GUILD_MEMBERS, GUILD_PRESENCES and MESSAGE_CONTENT.

Bits Discord does not define are rejected here on purpose: Discord would close every shard with
4013 (invalid intents), a fatal close, after burning one identify per shard.
"""

from __future__ import annotations

import enum
import re


class Intent(enum.IntFlag):
    """One gateway intent bit (Discord's names; the old names are kept as aliases)."""

    GUILDS = 1 << 0
    GUILD_MEMBERS = 1 << 1  # privileged
    GUILD_MODERATION = 1 << 2
    GUILD_EXPRESSIONS = 1 << 3
    GUILD_INTEGRATIONS = 1 << 4
    GUILD_WEBHOOKS = 1 << 5
    GUILD_INVITES = 1 << 6
    GUILD_VOICE_STATES = 1 << 7
    GUILD_PRESENCES = 1 << 8  # privileged
    GUILD_MESSAGES = 1 << 9
    GUILD_MESSAGE_REACTIONS = 1 << 10
    GUILD_MESSAGE_TYPING = 1 << 11
    DIRECT_MESSAGES = 1 << 12
    DIRECT_MESSAGE_REACTIONS = 1 << 13
    DIRECT_MESSAGE_TYPING = 1 << 14
    MESSAGE_CONTENT = 1 << 15  # privileged
    GUILD_SCHEDULED_EVENTS = 1 << 16
    AUTO_MODERATION_CONFIGURATION = 1 << 20
    AUTO_MODERATION_EXECUTION = 1 << 21
    GUILD_MESSAGE_POLLS = 1 << 24
    DIRECT_MESSAGE_POLLS = 1 << 25

    # Former names Discord renamed; still accepted by the parser.
    GUILD_BANS = 1 << 2
    GUILD_EMOJIS_AND_STICKERS = 1 << 3


#: Intents that also need to be enabled in the developer portal.
PRIVILEGED_INTENTS: int = Intent.GUILD_MEMBERS | Intent.GUILD_PRESENCES | Intent.MESSAGE_CONTENT
#: Every intent Discord defines.
ALL_INTENTS: int = 0
for _intent in Intent:
    ALL_INTENTS |= _intent.value
del _intent
#: Every non-privileged intent: what ``DEFAULT`` means.
DEFAULT_INTENTS: int = ALL_INTENTS & ~PRIVILEGED_INTENTS
NO_INTENTS: int = 0

#: Names accepted by :func:`parse_intents` besides the single intents.
_GROUPS = {"ALL": ALL_INTENTS, "DEFAULT": DEFAULT_INTENTS, "NONE": NO_INTENTS}
_SEPARATORS = re.compile(r"[,|\s]+")
_NUMBER = re.compile(r"[0-9]+")


def _by_name() -> dict[str, int]:
    names = {name: member.value for name, member in Intent.__members__.items()}
    names.update(_GROUPS)
    return names


_NAMES = _by_name()


def parse_intents(text: str) -> int:
    """Parse an intents setting into the IDENTIFY bitfield.

    Accepts a decimal integer (``"513"``), intent names separated by commas, pipes or spaces
    (``"GUILDS,GUILD_MESSAGES"``, case-insensitive), and the words ``ALL`` (every intent),
    ``DEFAULT`` (every non-privileged intent) and ``NONE`` (0). Names and numbers may be mixed
    (``"DEFAULT|MESSAGE_CONTENT"``); the result is their union.

    Raises :class:`ValueError` naming the offending token for an unknown name, an empty value, a
    negative number or a number with bits Discord does not define.
    """
    tokens = [tok for tok in _SEPARATORS.split(text.strip()) if tok]
    if not tokens:
        raise ValueError("no intents given (use NONE for no intents)")
    value = 0
    for token in tokens:
        if _NUMBER.fullmatch(token):
            if len(token) > 20:
                raise ValueError(f"intents {token[:20]!r}... is far too large")
            number = int(token)
            unknown = number & ~ALL_INTENTS
            if unknown:
                bits = ", ".join(
                    f"1<<{bit}" for bit in range(unknown.bit_length()) if unknown >> bit & 1
                )
                raise ValueError(f"intents {token!r} has bits Discord does not define ({bits})")
            value |= number
            continue
        if token.startswith("-") and _NUMBER.fullmatch(token[1:]):
            raise ValueError(f"intents {token!r} is negative")
        try:
            value |= _NAMES[token.upper()]
        except KeyError:
            raise ValueError(
                f"unknown intent {token!r} (expected a number, ALL, DEFAULT, NONE "
                f"or intent names such as GUILDS,GUILD_MESSAGES)"
            ) from None
    return value


def intent_names(value: int) -> list[str]:
    """The current names of the intents set in ``value``, lowest bit first (aliases omitted)."""
    return [
        member.name  # type: ignore[misc]
        for member in Intent
        if member.name not in ("GUILD_BANS", "GUILD_EMOJIS_AND_STICKERS") and value & member.value
    ]


def format_intents(value: int) -> str:
    """A readable form of ``value`` such as ``"513 (GUILDS|GUILD_MESSAGES)"`` or ``"0 (NONE)"``."""
    if value == 0:
        return "0 (NONE)"
    if value == ALL_INTENTS:
        return f"{value} (ALL)"
    if value == DEFAULT_INTENTS:
        return f"{value} (DEFAULT)"
    return f"{value} ({'|'.join(intent_names(value))})"


def privileged_names(value: int) -> list[str]:
    """The privileged intents set in ``value`` (to warn that the portal must allow them)."""
    return intent_names(value & PRIVILEGED_INTENTS)
