"""Realistic Discord gateway dispatch payloads for the simulator.

Two layers:

* plain builders (``message_create``, ``typing_start``, ``presence_update``,
  ``guild_member_update``, ``guild_create``, ``ready``, ...) that return the ``d`` dict of a
  dispatch, shaped like Discord's API v10 payloads;
* :class:`EventFactory`, the fast path the simulator's event stream uses: it pre-encodes a pool of
  payloads per shard once, as byte templates with holes for the fields that must change per event
  (snowflake ids, timestamps), so producing an event costs a few string joins instead of building
  and serialising a 1.5 KB dict.

Snowflakes carry real timestamps (Discord epoch 2015-01-01). Guild ids for shard ``s`` of ``N``
satisfy ``shard_for_guild(guild_id, N) == s``.
"""

from __future__ import annotations

import datetime as _dt
import random
import time
from typing import Any

import ujson

from supervisor.simulator.discord_facts import API_VERSION, shard_for_guild

#: Discord's epoch (2015-01-01T00:00:00Z) in Unix milliseconds.
DISCORD_EPOCH_MS = 1420070400000
#: The fake bot's user / application id (a snowflake from 2020).
BOT_USER_ID = 733061421184876605
APPLICATION_ID = BOT_USER_ID
BOT_USERNAME = "spectacles-sim"
#: Guild ids are generated from this moment (2019-06-01) onwards, so they look like real ones.
_GUILD_BASE_MS = 1559347200000

#: The event types the stream mixes, with their weight out of 100.
STREAM_MIX = (
    ("MESSAGE_CREATE", 80),
    ("TYPING_START", 10),
    ("PRESENCE_UPDATE", 5),
    ("GUILD_MEMBER_UPDATE", 5),
)
#: Every dispatch type the simulator can send: the session's own (READY and GUILD_CREATE after
#: IDENTIFY, RESUMED after RESUME, GUILD_MEMBERS_CHUNK answering op 8) and the stream mix.
DISPATCH_TYPES = ("READY", "GUILD_CREATE", "RESUMED", "GUILD_MEMBERS_CHUNK", *(t for t, _ in STREAM_MIX))

_WORDS = (
    "the quick brown fox jumps over lazy dog gateway shard session resume heartbeat zlib "
    "stream rabbit queue broker exchange dispatch guild channel member presence typing "
    "message embed field footer author avatar snowflake token bucket identify ready"
).split()
_NAMES = (
    "alice bob carol dave erin frank grace heidi ivan judy mallory niaj olivia peggy rupert "
    "sybil trent victor walter yasmin"
).split()


# -- snowflakes and timestamps ----------------------------------------------------------------


def snowflake(ms: int | None = None, worker: int = 1, process: int = 0, increment: int = 0) -> int:
    """A Discord snowflake for Unix time ``ms`` (now if None)."""
    if ms is None:
        ms = int(time.time() * 1000)
    return (
        ((ms - DISCORD_EPOCH_MS) << 22)
        | ((worker & 0x1F) << 17)
        | ((process & 0x1F) << 12)
        | (increment & 0xFFF)
    )


def snowflake_time_ms(flake: int) -> int:
    """The Unix time in milliseconds a snowflake was made at."""
    return (int(flake) >> 22) + DISCORD_EPOCH_MS


def iso_timestamp(ms: int | None = None) -> str:
    """Discord's ISO-8601 timestamp format, e.g. ``2024-05-01T12:00:00.123000+00:00``."""
    if ms is None:
        ms = int(time.time() * 1000)
    return _dt.datetime.fromtimestamp(ms / 1000, tz=_dt.timezone.utc).isoformat(
        timespec="microseconds"
    )


class SnowflakeFactory:
    """Makes unique, time-ordered snowflakes (``worker``/``process`` keep factories apart)."""

    __slots__ = ("worker", "process", "_last_ms", "_inc")

    def __init__(self, worker: int = 1, process: int = 0) -> None:
        self.worker = worker & 0x1F
        self.process = process & 0x1F
        self._last_ms = 0
        self._inc = 0

    def next(self, ms: int | None = None) -> int:
        """A new snowflake, strictly greater than the previous one of this factory."""
        if ms is None:
            ms = int(time.time() * 1000)
        if ms <= self._last_ms:
            self._inc += 1
            if self._inc > 0xFFF:  # 4096 ids in one millisecond: borrow the next one
                self._last_ms += 1
                self._inc = 0
            ms = self._last_ms
        else:
            self._last_ms = ms
            self._inc = 0
        return (
            ((ms - DISCORD_EPOCH_MS) << 22) | (self.worker << 17) | (self.process << 12) | self._inc
        )


def guild_ids_for_shard(shard_id: int, shard_count: int, count: int) -> list[int]:
    """``count`` deterministic guild ids that all belong to shard ``shard_id`` of ``shard_count``.

    Ids differ between shards and are stable across runs (tests can predict them).
    """
    if not 0 <= shard_id < shard_count:
        raise ValueError(f"shard {shard_id} is not in [0, {shard_count})")
    base = _GUILD_BASE_MS - DISCORD_EPOCH_MS
    base -= base % shard_count
    ids = []
    for k in range(count):
        # Spread the guilds over time (about 2 h apart per step, whatever the shard count).
        offset = base + shard_id + shard_count * (k * ((7_919_000 // shard_count) + 1))
        gid = (offset << 22) | (1 << 17) | (k & 0xFFF)
        assert shard_for_guild(gid, shard_count) == shard_id
        ids.append(gid)
    return ids


# -- small building blocks --------------------------------------------------------------------


def _avatar_hash(rng: random.Random) -> str:
    return f"{rng.getrandbits(128):032x}"


def user(
    user_id: int, username: str, *, bot: bool = False, rng: random.Random | None = None
) -> dict:
    """A user object."""
    rng = rng or random.Random(user_id)
    return {
        "id": str(user_id),
        "username": username,
        "global_name": username.capitalize(),
        "discriminator": "0",
        "avatar": _avatar_hash(rng),
        "avatar_decoration_data": None,
        "public_flags": 0 if bot else rng.choice((0, 64, 128, 256, 4194304)),
        "flags": 0,
        "banner": None,
        "accent_color": None,
        "clan": None,
        "primary_guild": None,
        "bot": bot,
    }


def member(user_obj: dict, *, roles: list[str], joined_ms: int, nick: str | None = None) -> dict:
    """A guild member object (with its user)."""
    return {
        "user": user_obj,
        "roles": roles,
        "nick": nick,
        "avatar": None,
        "banner": None,
        "premium_since": None,
        "pending": False,
        "mute": False,
        "deaf": False,
        "flags": 0,
        "joined_at": iso_timestamp(joined_ms),
        "communication_disabled_until": None,
    }


def _member_without_user(m: dict) -> dict:
    return {k: v for k, v in m.items() if k != "user"}


def _sentence(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(words)).capitalize() + "."


# -- dispatch payload builders ----------------------------------------------------------------


def message_create(
    *,
    message_id: int | str,
    timestamp: str,
    channel_id: int,
    guild_id: int | None,
    author: dict,
    author_member: dict | None,
    content: str,
    embed_title: str,
    embed_description: str,
    fields: list[tuple[str, str]],
    mention_roles: list[str] | None = None,
    nonce: str | None = None,
) -> dict:
    """A MESSAGE_CREATE ``d`` with content and one rich embed (about 1.5 KB as JSON)."""
    d: dict[str, Any] = {
        "type": 0,
        "tts": False,
        "timestamp": timestamp,
        "pinned": False,
        "nonce": nonce,
        "mentions": [],
        "mention_roles": mention_roles or [],
        "mention_everyone": False,
        "id": str(message_id),
        "flags": 0,
        "embeds": [
            {
                "type": "rich",
                "title": embed_title,
                "description": embed_description,
                "url": f"https://example.com/articles/{channel_id}",
                "color": 5814783,
                "fields": [{"name": n, "value": v, "inline": True} for n, v in fields],
                "footer": {"text": "spectacles simulator"},
                "author": {"name": author["username"]},
                "content_scan_version": 0,
            }
        ],
        "edited_timestamp": None,
        "content": content,
        "components": [],
        "channel_type": 0 if guild_id is not None else 1,
        "channel_id": str(channel_id),
        "author": author,
        "attachments": [],
    }
    if guild_id is not None:
        d["guild_id"] = str(guild_id)
        if author_member is not None:
            d["member"] = _member_without_user(author_member)
    return d


def typing_start(
    *, channel_id: int, guild_id: int | None, member_obj: dict, unix_s: int
) -> dict:
    """A TYPING_START ``d``."""
    d: dict[str, Any] = {
        "user_id": member_obj["user"]["id"],
        "timestamp": unix_s,
        "channel_id": str(channel_id),
    }
    if guild_id is not None:
        d["guild_id"] = str(guild_id)
        d["member"] = member_obj
    return d


def presence_update(*, guild_id: int, user_obj: dict, status: str, activity: str | None) -> dict:
    """A PRESENCE_UPDATE ``d``."""
    activities = []
    if activity:
        activities.append(
            {"type": 0, "name": activity, "id": "ec0b28a579ecb4bd", "created_at": 1700000000000}
        )
    return {
        "user": {"id": user_obj["id"]},
        "status": status,
        "guild_id": str(guild_id),
        "client_status": {"desktop": status},
        "activities": activities,
    }


def guild_member_update(*, guild_id: int, member_obj: dict) -> dict:
    """A GUILD_MEMBER_UPDATE ``d``."""
    d = dict(member_obj)
    d["guild_id"] = str(guild_id)
    return d


def channel(channel_id: int, guild_id: int, name: str, position: int) -> dict:
    """A guild text channel object."""
    return {
        "id": str(channel_id),
        "type": 0,
        "guild_id": str(guild_id),
        "name": name,
        "position": position,
        "permission_overwrites": [],
        "parent_id": None,
        "topic": None,
        "nsfw": False,
        "rate_limit_per_user": 0,
        "last_message_id": None,
        "flags": 0,
    }


def role(role_id: int, name: str, position: int, color: int = 0) -> dict:
    """A role object."""
    return {
        "id": str(role_id),
        "name": name,
        "color": color,
        "hoist": False,
        "icon": None,
        "unicode_emoji": None,
        "position": position,
        "permissions": "1071698660929",
        "managed": False,
        "mentionable": False,
        "flags": 0,
    }


def guild_create(
    *,
    guild_id: int,
    name: str,
    owner_id: str,
    channels: list[dict],
    roles: list[dict],
    members: list[dict],
    joined_ms: int,
) -> dict:
    """A GUILD_CREATE ``d`` for an available guild (channels, roles, members, presences)."""
    return {
        "id": str(guild_id),
        "name": name,
        "icon": None,
        "splash": None,
        "discovery_splash": None,
        "banner": None,
        "description": None,
        "owner_id": owner_id,
        "region": "deprecated",
        "afk_channel_id": None,
        "afk_timeout": 300,
        "verification_level": 1,
        "default_message_notifications": 1,
        "explicit_content_filter": 0,
        "mfa_level": 0,
        "nsfw_level": 0,
        "premium_tier": 0,
        "premium_subscription_count": 0,
        "preferred_locale": "en-US",
        "system_channel_id": channels[0]["id"] if channels else None,
        "system_channel_flags": 0,
        "rules_channel_id": None,
        "public_updates_channel_id": None,
        "vanity_url_code": None,
        "max_members": 500000,
        "max_video_channel_users": 25,
        "application_id": None,
        "features": [],
        "emojis": [],
        "stickers": [],
        "roles": roles,
        "joined_at": iso_timestamp(joined_ms),
        "large": False,
        "unavailable": False,
        "lazy": True,
        "member_count": len(members),
        "voice_states": [],
        "members": members,
        "channels": channels,
        "threads": [],
        "presences": [
            {
                "user": {"id": m["user"]["id"]},
                "status": "online",
                "client_status": {"desktop": "online"},
                "activities": [],
            }
            for m in members
        ],
        "stage_instances": [],
        "guild_scheduled_events": [],
        "soundboard_sounds": [],
        "embedded_activities": [],
        "incidents_data": None,
        "safety_alerts_channel_id": None,
    }


def bot_user() -> dict:
    """The fake bot's own user object (READY's ``user``)."""
    return {
        "id": str(BOT_USER_ID),
        "username": BOT_USERNAME,
        "global_name": None,
        "discriminator": "0",
        "avatar": None,
        "bot": True,
        "verified": True,
        "mfa_enabled": False,
        "email": None,
        "flags": 0,
    }


def ready(
    *,
    session_id: str,
    resume_gateway_url: str,
    shard_id: int,
    shard_count: int,
    guild_ids: list[int],
) -> dict:
    """A READY ``d`` (guilds as unavailable stubs, as Discord sends them)."""
    return {
        "v": API_VERSION,
        "user_settings": {},
        "user": bot_user(),
        "session_type": "normal",
        "session_id": session_id,
        "resume_gateway_url": resume_gateway_url,
        "relationships": [],
        "private_channels": [],
        "presences": [],
        "guilds": [{"id": str(g), "unavailable": True} for g in guild_ids],
        "guild_join_requests": [],
        "geo_ordered_rtc_regions": ["local"],
        "auth": {},
        "application": {"id": str(APPLICATION_ID), "flags": 565248},
        "shard": [shard_id, shard_count],
        "_trace": ['["gateway-sim",{"micros":0.0}]'],
    }


def resumed() -> dict:
    """A RESUMED ``d``."""
    return {"_trace": ['["gateway-sim",{"micros":0.0}]']}


def guild_members_chunk(guild_id: int, members: list[dict], nonce: str | None) -> dict:
    """A GUILD_MEMBERS_CHUNK ``d`` holding every member in one chunk."""
    d: dict[str, Any] = {
        "guild_id": str(guild_id),
        "members": members,
        "chunk_index": 0,
        "chunk_count": 1,
        "not_found": [],
    }
    if nonce is not None:
        d["nonce"] = nonce
    return d


# -- pre-encoded templates --------------------------------------------------------------------

_ID_HOLE = "\x01SIMID\x01"
_TS_HOLE = "\x01SIMTS\x01"
_NONCE_HOLE = "\x01SIMNONCE\x01"
_ENC_HOLES = tuple(ujson.dumps(h)[1:-1] for h in (_ID_HOLE, _TS_HOLE, _NONCE_HOLE))


class Template:
    """An encoded JSON payload with holes for a snowflake id, a timestamp string and a nonce.

    Build one from a dict whose changing fields hold ``Template.ID`` / ``Template.TS`` /
    ``Template.NONCE``; :meth:`render` then fills the holes without touching the rest of the bytes.
    """

    ID = _ID_HOLE
    TS = _TS_HOLE
    NONCE = _NONCE_HOLE
    __slots__ = ("_parts", "_holes")

    def __init__(self, obj: dict) -> None:
        text = ujson.dumps(obj, ensure_ascii=False, escape_forward_slashes=False)
        parts: list[bytes] = []
        holes: list[int] = []  # 0 = id, 1 = timestamp, 2 = nonce
        rest = text
        while True:
            found = [(i, kind) for kind, hole in enumerate(_ENC_HOLES) if (i := rest.find(hole)) >= 0]
            if not found:
                break
            i, kind = min(found)
            parts.append(rest[:i].encode())
            holes.append(kind)
            rest = rest[i + len(_ENC_HOLES[kind]):]
        parts.append(rest.encode())
        self._parts = parts
        self._holes = holes

    def render(self, flake: bytes, ts: bytes, nonce: bytes | None = None) -> bytes:
        """The payload bytes with the holes filled (``flake``, ``ts`` and ``nonce`` already
        encoded; the nonce is the snowflake when None)."""
        parts = self._parts
        fill = (flake, ts, flake if nonce is None else nonce)
        out = [parts[0]]
        for k, hole in enumerate(self._holes):
            out.append(fill[hole])
            out.append(parts[k + 1])
        return b"".join(out)


class _Guild:
    __slots__ = ("id", "name", "channels", "roles", "members", "joined_ms")

    def __init__(self, gid: int, name: str, channels, roles, members, joined_ms) -> None:
        self.id = gid
        self.name = name
        self.channels = channels
        self.roles = roles
        self.members = members
        self.joined_ms = joined_ms


class EventFactory:
    """Everything one shard sees: its guilds, and a fast generator of stream events.

    ``make(t)`` returns ``(t, d_bytes)``; ``t=None`` picks a type from :data:`STREAM_MIX`
    (deterministically, in a shuffled cycle). Known types: MESSAGE_CREATE, TYPING_START,
    PRESENCE_UPDATE, GUILD_MEMBER_UPDATE; any other name gets a small generic payload
    ``{"id", "guild_id"}``. A shard without guilds gets DM-style MESSAGE_CREATE / TYPING_START.
    After each ``make``, :attr:`last_guild` is the guild of that event (None: a DM).

    With :attr:`stamp` set, MESSAGE_CREATE's ``nonce`` is the wall-clock time the event was made
    in microseconds (``time.time_ns() // 1000``, a decimal string) instead of its snowflake: the
    simulator makes an event immediately before its one transport write, so a consumer on the same
    host can measure the latency from the gateway to itself (``scripts/bench_latency.py``).

    ``guild_ids`` replaces the shard's own guilds (a session of another shard count owns a subset
    of the bot's guilds, not ``guild_ids_for_shard``); ``flakes`` shares one snowflake source
    between factories, so that their event ids never collide.
    """

    MEMBERS_PER_GUILD = 6
    CHANNELS_PER_GUILD = 3
    TEMPLATES_PER_TYPE = 12

    def __init__(
        self,
        shard_id: int,
        shard_count: int,
        guilds: int,
        seed: int | None = None,
        *,
        guild_ids: list[int] | None = None,
        flakes: SnowflakeFactory | None = None,
    ) -> None:
        self.shard_id = shard_id
        self.shard_count = shard_count
        self._rng = random.Random(
            None if seed is None else (seed * 1_000_003 + shard_id + 7_919 * (shard_count if guild_ids is not None else 0))
        )
        rng = self._rng
        self._flakes = flakes or SnowflakeFactory(worker=shard_id % 32, process=(shard_id // 32) % 32)
        #: the guild of the last event ``make`` returned (None: a DM)
        self.last_guild: int | None = None
        #: MESSAGE_CREATE's nonce is the time it was made, in µs (see the class docstring)
        self.stamp = False
        now_ms = int(time.time() * 1000)
        self.guilds: list[_Guild] = []
        if guild_ids is None:
            guild_ids = guild_ids_for_shard(shard_id, shard_count, guilds)
        for gi, gid in enumerate(guild_ids):
            created = snowflake_time_ms(gid)
            roles = [role(gid, "@everyone", 0)] + [
                role(gid + 1 + r, name, r + 1, color=rng.randrange(1 << 24))
                for r, name in enumerate(("moderator", "member"))
            ]
            channels = [
                channel(gid + 10 + c, gid, name, c)
                for c, name in enumerate(("general", "random", "bots")[: self.CHANNELS_PER_GUILD])
            ]
            members = []
            for m in range(self.MEMBERS_PER_GUILD):
                uid_ms = created + 1000 * (m + 1) + rng.randrange(10**9)
                uid = snowflake(uid_ms, worker=2, increment=m)
                uname = f"{rng.choice(_NAMES)}{rng.randrange(1000)}"
                members.append(
                    member(
                        user(uid, uname, rng=rng),
                        roles=[roles[1 + m % 2]["id"]],
                        joined_ms=created + 86_400_000 * (m + 1),
                        nick=uname.upper() if m % 3 == 0 else None,
                    )
                )
            self.guilds.append(
                _Guild(gid, f"Sim Guild {shard_id}-{gi}", channels, roles, members, created)
            )
        self._templates = self._build_templates(now_ms)
        schedule = [t for t, weight in STREAM_MIX for _ in range(weight)]
        rng.shuffle(schedule)
        self._schedule = schedule
        self._pos = 0
        self._ts_cache_ms = -1
        self._ts_cache = b""
        self._tpl_pos: dict[str, int] = {}

    # -- once-per-session payloads --
    def guild_ids(self) -> list[int]:
        """The shard's guild ids, in GUILD_CREATE order."""
        return [g.id for g in self.guilds]

    def guild_create(self, index: int) -> dict:
        """The GUILD_CREATE ``d`` of the shard's ``index``-th guild."""
        g = self.guilds[index]
        return guild_create(
            guild_id=g.id,
            name=g.name,
            owner_id=g.members[0]["user"]["id"],
            channels=g.channels,
            roles=g.roles,
            members=g.members,
            joined_ms=g.joined_ms + 3_600_000,
        )

    def members_chunk(self, guild_id: int, nonce: str | None) -> dict | None:
        """A GUILD_MEMBERS_CHUNK ``d`` for one of this shard's guilds, else None."""
        for g in self.guilds:
            if g.id == guild_id:
                return guild_members_chunk(g.id, g.members, nonce)
        return None

    # -- templates --
    def _build_templates(self, now_ms: int) -> dict[str, list[Template]]:
        rng = self._rng
        out: dict[str, list[Template]] = {}
        guilds = self.guilds or [None]
        dm_user = user(snowflake(now_ms - 10**9, worker=3), "dm_friend", rng=rng)
        dm_member = member(dm_user, roles=[], joined_ms=now_ms - 10**9)
        dm_channel = snowflake(now_ms - 10**9, worker=4)
        mc, ts, pu, gmu = [], [], [], []
        for k in range(self.TEMPLATES_PER_TYPE):
            g = guilds[k % len(guilds)]
            if g is None:
                gid, chan, m = None, dm_channel, dm_member
            else:
                gid, chan, m = g.id, int(g.channels[k % len(g.channels)]["id"]), g.members[
                    rng.randrange(len(g.members))
                ]
            content = " ".join(_sentence(rng, rng.randrange(6, 12)) for _ in range(2))
            fields = [
                (rng.choice(_WORDS).capitalize(), _sentence(rng, rng.randrange(3, 7)))
                for _ in range(3)
            ]
            mc.append(
                Template(
                    message_create(
                        message_id=Template.ID,
                        timestamp=Template.TS,
                        channel_id=chan,
                        guild_id=gid,
                        author=m["user"],
                        author_member=m,
                        content=content[:300],
                        embed_title=_sentence(rng, 5),
                        embed_description=_sentence(rng, 18),
                        fields=fields,
                        mention_roles=[],
                        nonce=Template.NONCE,
                    )
                )
            )
            # TYPING_START's timestamp is an integer of seconds: keep it in the template.
            ts.append(
                Template(
                    typing_start(
                        channel_id=chan, guild_id=gid, member_obj=m, unix_s=now_ms // 1000
                    )
                )
            )
            if gid is not None:
                pu.append(
                    Template(
                        presence_update(
                            guild_id=gid,
                            user_obj=m["user"],
                            status=rng.choice(("online", "idle", "dnd")),
                            activity=rng.choice((None, "Minecraft", "Visual Studio Code")),
                        )
                    )
                )
                gmu.append(Template(guild_member_update(guild_id=gid, member_obj=m)))
        out["MESSAGE_CREATE"] = mc
        out["TYPING_START"] = ts
        out["PRESENCE_UPDATE"] = pu or mc
        out["GUILD_MEMBER_UPDATE"] = gmu or mc
        self._dm_only = not self.guilds
        return out

    def next_type(self) -> str:
        """The next type of the shuffled mix."""
        t = self._schedule[self._pos]
        self._pos = (self._pos + 1) % len(self._schedule)
        return t

    def make(self, t: str | None = None) -> tuple[str, bytes]:
        """A fresh event: ``(t, d as JSON bytes)`` with a new snowflake and the current time."""
        if t is None:
            t = self.next_type()
            if self._dm_only and t not in ("MESSAGE_CREATE", "TYPING_START"):
                t = "MESSAGE_CREATE"
        ms = int(time.time() * 1000)
        flake = str(self._flakes.next(ms)).encode()
        templates = self._templates.get(t)
        guilds = self.guilds
        if templates is None:
            d: dict[str, Any] = {"id": flake.decode()}
            self.last_guild = None
            if guilds:
                d["guild_id"] = str(guilds[0].id)
                self.last_guild = guilds[0].id
            return t, ujson.dumps(d).encode()
        if ms != self._ts_cache_ms:
            self._ts_cache_ms = ms
            self._ts_cache = iso_timestamp(ms).encode()
        pos = self._tpl_pos.get(t, 0)
        self._tpl_pos[t] = (pos + 1) % len(templates)
        # template k was built for guild k % len(guilds) (see _build_templates)
        self.last_guild = guilds[pos % len(guilds)].id if guilds else None
        nonce = str(time.time_ns() // 1000).encode() if self.stamp and t == "MESSAGE_CREATE" else None
        return t, templates[pos].render(flake, self._ts_cache, nonce)
