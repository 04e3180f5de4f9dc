"""What one worker process needs to run its group of shards.

The supervisor (or a user running ``python -m shard_worker`` alone) builds a :class:`WorkerConfig`.
Under the supervisor it crosses the process boundary as the first IPC message on the child's
stdin (``config``, see ``docs/ipc.md``): a pipe has no size limit, while the environment and argv
stop at about 128 KiB per string (sessions of a thousand shards are more). A worker run by hand
reads it as JSON from the environment variable ``SPECTACLES_WORKER_CONFIG``. The token never
travels with it: it comes from ``DISCORD_TOKEN`` in the child's environment, so it is never in
argv, a process title or an IPC message.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field

from shard_worker.event_selection import AUTO
from shard_worker.gateway.protocol import COMPRESS_ZLIB_STREAM, compress_name
from shard_worker.logs import mask_url
from shard_worker.reshard import DEFAULT_HOLD_S

CONFIG_ENV = "SPECTACLES_WORKER_CONFIG"
TOKEN_ENV = "DISCORD_TOKEN"
DEFAULT_AMQP_URL = "amqp://guest:guest@localhost:5672/%2F"
DEFAULT_GROUP = "gateway"


@dataclass(frozen=True)
class SavedSession:
    """What a shard needs to RESUME instead of IDENTIFY."""

    session_id: str
    seq: int | None
    resume_gateway_url: str


@dataclass
class WorkerConfig:
    shard_ids: list[int]
    shard_count: int
    gateway_url: str
    token: str = field(default="", repr=False)
    #: One RabbitMQ URL, or several separated by commas (the nodes of a cluster, tried in turn).
    #: Its passwords travel to the child over its stdin pipe; ``repr`` masks them.
    amqp_url: str = DEFAULT_AMQP_URL
    group: str = DEFAULT_GROUP
    #: Only these dispatch types are published; ``None`` publishes every dispatch; ``"auto"``
    #: (``event_selection.AUTO``) publishes what some queue is bound to, learnt from RabbitMQ.
    events: frozenset[str] | str | None = None
    intents: int = 0
    #: Transport compression: ``zlib-stream``, ``zstd-stream`` or ``none``. A bool (what older
    #: versions wrote here: zlib-stream or none) is still accepted and normalised to its name.
    compress: str = COMPRESS_ZLIB_STREAM
    max_concurrency: int = 1
    large_threshold: int | None = None
    presence: dict | None = None
    #: Further IDENTIFY fields (``--identify-extra``), e.g. ``{"capabilities": 16381}``.
    identify_extra: dict | None = None
    #: Unacknowledged outbound messages the worker takes from RabbitMQ at once.
    prefetch: int = 100
    log_level: str = "INFO"
    #: Dispatches (and bytes) held until RabbitMQ confirms them; when full, shards stop reading.
    buffer_events: int = 10_000
    buffer_bytes: int = 64 * 1024 * 1024
    #: A shard that could not publish for this long closes resumably and resumes once the
    #: broker takes messages again.
    stall_timeout: float = 30.0
    #: Sessions to resume, by shard id (a replacement process gets its predecessor's).
    sessions: dict[int, SavedSession] = field(default_factory=dict)
    #: The type of the queues the gateway declares: ``classic`` (durable, what Spectacles
    #: clients expect) or ``quorum`` (replicated over the cluster's nodes).
    queue_type: str = "classic"
    #: TLS for ``amqps://`` URLs: the CA to trust (default: the system's), and a client
    #: certificate and its key. Paths only, read by the worker.
    amqp_ca_file: str | None = None
    amqp_cert_file: str | None = None
    amqp_key_file: str | None = None
    #: Live reshard (issue 13), a worker of the **new** shard set: hold every dispatch back
    #: until the supervisor's ``cutover`` order names the cut-over point, then publish by the
    #: handover rule (``shard_worker/reshard.py``). Held dispatches older than ``hold_s`` are
    #: dropped: the rule could never publish them.
    hold_events: bool = False
    hold_s: float = DEFAULT_HOLD_S
    #: Live reshard, a new set: consume neither the ``<group>:<id>`` shard queues nor ``SEND``
    #: until the ``activate`` order (at the cut-over), so that it cannot take the packets the
    #: old set still serves (its shard ids overlap the old set's).
    standby: bool = False
    #: Live reshard to fewer shards: the queues ``<group>:<id>`` of these ids (no longer shards
    #: under ``shard_count``) are consumed too, once active, and drained: every packet goes to
    #: the owner of its ``guild_id`` under ``shard_count``, one without is refused (counted as
    #: ``no_such_shard``). The queues are left for the operator to delete.
    drain_shards: list[int] = field(default_factory=list)
    #: Cluster mode: the supervisor sends an order (a ``ping`` at least) every second; after
    #: this long without one (the supervisor stopped, frozen or gone) the worker stops its
    #: shards by itself, since the supervisor can no longer renew their lease. None: never.
    parent_timeout_s: float | None = None
    #: Live reshard, an old set's worker started after its set was told the cut-over point (it
    #: replaces one that crashed): the ``cutover`` order's data (``role`` included), applied
    #: before any shard connects, so that it never publishes past ``T`` unmarked (issue 20,
    #: defect 3). None: no cut-over.
    cutover: dict | None = None

    def __post_init__(self) -> None:
        self.compress = compress_name(self.compress)

    def __repr__(self) -> str:
        # Never the token; the AMQP URLs with their passwords masked.
        shown = []
        for item in dataclasses.fields(self):
            if item.name == "token":
                continue
            value = getattr(self, item.name)
            shown.append(f"{item.name}={mask_url(value)!r}" if item.name == "amqp_url" else f"{item.name}={value!r}")
        return f"{type(self).__name__}({', '.join(shown)})"

    def to_dict(self) -> dict:
        """Everything but the token, as JSON-ready values."""
        data = dataclasses.asdict(self)
        del data["token"]
        events = self.events
        data["events"] = events if events is None or isinstance(events, str) else sorted(events)
        data["sessions"] = {str(k): dataclasses.asdict(v) for k, v in self.sessions.items()}
        return data

    def to_json(self) -> str:
        """Serialise everything but the token."""
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str, token: str) -> WorkerConfig:
        return cls.from_dict(json.loads(text), token)

    @classmethod
    def from_dict(cls, data: dict, token: str) -> WorkerConfig:
        data = dict(data)
        events = data.pop("events")
        sessions = data.pop("sessions", {}) or {}
        return cls(
            **data,
            token=token,
            events=frozenset(events) if isinstance(events, list) else _events_mode(events),
            sessions={int(k): SavedSession(**v) for k, v in sessions.items()},
        )

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> WorkerConfig:
        env = os.environ if environ is None else environ
        try:
            text = env[CONFIG_ENV]
        except KeyError:
            raise SystemExit(f"{CONFIG_ENV} is not set: the worker needs its configuration") from None
        token = env.get(TOKEN_ENV, "")
        if not token:
            raise SystemExit(f"{TOKEN_ENV} is not set: the worker needs the bot token")
        return cls.from_json(text, token)


def _events_mode(events: object) -> str | None:
    if events is None or events == AUTO:
        return events  # type: ignore[return-value]
    raise ValueError(f"events must be a list of names, {AUTO!r} or null, not {events!r}")
