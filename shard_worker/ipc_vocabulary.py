"""The IPC vocabulary: every event, order and shard state name the supervisor and its workers
exchange, in one place (the framing is ``shard_worker.ipc``; ``docs/ipc.md`` is the human
reference, and ``tests/shard_worker/test_ipc_vocabulary.py`` keeps the two equal).

- :class:`Event`: child → parent; :class:`Order`: parent → child; :class:`Request`: a request
  (and answer) on the control socket (``supervisor/core/control.py``, same framing).
- :class:`ShardState`: the ``state`` of a ``shard_state`` event; :data:`NOT_READY`: those that
  mean a shard does not serve.
- ``TypedDict``s: the ``data`` of each message that carries an object.

The enums are ``str`` subclasses: a member equals, and hashes like, its plain string, so a
received ``Message.event`` (a plain ``str``) compares and looks up against them directly, and
``ipc.encode`` writes the plain name (``"hello"``) with either JSON codec. Their ``str()`` is
``Event.HELLO``, though: log the ``.value`` (or the received string), not the member. (Not
``enum.StrEnum``: the package supports Python 3.10.)

Only the standard library: ``shard_worker`` never imports ``supervisor``, and both import this.
"""

from __future__ import annotations

import enum
from typing import Literal, TypedDict


class Event(str, enum.Enum):
    """Child → parent (written to the pipe named by ``SPECTACLES_IPC_FD``)."""

    HELLO = "hello"
    HEARTBEAT = "heartbeat"
    SHARDS = "shards"
    IDENTIFY_REQUEST = "identify_request"
    IDENTIFY_SENT = "identify_sent"
    SHARD_STATE = "shard_state"
    STOPPED = "stopped"
    CUTOVER_ACK = "cutover_ack"
    CUTOVER_CANCELLED = "cutover_cancelled"
    ACTIVATED = "activated"
    PROBE_ANSWERED = "probe_answered"


class Order(str, enum.Enum):
    """Parent → child (written to the child's stdin)."""

    CONFIG = "config"
    IDENTIFY_GRANT = "identify_grant"
    PING = "ping"
    ORPHANS = "orphans"
    GUARD = "guard"
    UNGUARD = "unguard"
    STOP = "stop"
    CUTOVER = "cutover"
    OLD_CAUGHT_UP = "old_caught_up"
    CUTOVER_CANCEL = "cutover_cancel"
    ACTIVATE = "activate"


class Request(str, enum.Enum):
    """The control socket: a client's request, answered with the same name (or ``error``)."""

    STATUS = "status"
    RESTART = "restart"
    RESHARD = "reshard"
    ERROR = "error"  # the answer to a request the supervisor does not know


class ShardState(str, enum.Enum):
    """The ``state`` of a ``shard_state`` event, as ``ShardRunner`` (``gateway/connection.py``)
    reports it: its own steps, and after a stall its machine's phase again
    (``gateway.state.Phase`` values, ``closing`` and ``resuming`` included)."""

    CONNECTING = "connecting"
    IDENTIFYING = "identifying"
    RESUMING = "resuming"
    READY = "ready"
    #: the broker buffer is full: reading paused (the connection is kept)
    STALLED = "stalled"
    CLOSING = "closing"
    DISCONNECTED = "disconnected"
    #: Discord closed the shard fatally (``code`` and ``reason`` in the event)
    FATAL = "fatal"
    STOPPED = "stopped"


#: The states of a shard that does not serve (its connection gone, or not READY yet): the
#: supervisor takes it out of the child's ready shards; cluster mode counts it as a lost connection.
#: ``resuming`` belongs here although the arbiter's and the reshard run's tests of
#: ``child.ready`` used to leave it out (the cluster member had it): a runner reports
#: ``resuming`` only after ``connecting`` on the same connection (a stall during a RESUME's
#: replay), so the shard has left the ready set already and it changes nothing there.
#: ``stalled`` and ``closing`` are not in it: reading is paused, the session still serves.
NOT_READY: frozenset[ShardState] = frozenset(
    {
        ShardState.DISCONNECTED,
        ShardState.CONNECTING,
        ShardState.IDENTIFYING,
        ShardState.RESUMING,
        ShardState.FATAL,
        ShardState.STOPPED,
    }
)

#: ``role`` in the reshard payloads (``shard_worker.reshard.Role`` values)
RoleName = Literal["old", "new"]


# -- payloads, child → parent --------------------------------------------------------------------
class Session(TypedDict):
    session_id: str
    seq: int | None
    resume_gateway_url: str


class Hello(TypedDict):
    pid: int
    shards: str  # a range label, "0-1249"


class Histogram(TypedDict):
    bounds: list[float]
    counts: list[int]  # one per bucket, then +Inf
    sum: float
    count: int


class ReshardCounters(TypedDict):
    held: int
    dropped: int
    marked: int
    published: int


class Heartbeat(TypedDict):
    buffered: int
    buffered_bytes: int
    broker_connected: bool
    rejected: dict[str, int]
    broker: dict[str, int]
    confirm_latency: Histogram
    bad_frames: int
    received_by_type: dict[str, int]
    published_by_type: dict[str, int]
    rate_limited_by_opcode: dict[str, int]
    reshard: ReshardCounters | None


class ShardReport(TypedDict):
    state: str
    seq: int | None
    session: Session | None
    latency_ms: float | None
    received: int
    published: int
    reconnects: int
    identifies: int
    resumes: int
    sent: int
    outbox: int


class Shards(TypedDict):
    shards: dict[str, ShardReport]  # by shard id (a JSON key: a string)


class IdentifyRequest(TypedDict):
    shard: int


class IdentifySent(TypedDict):
    shard: int
    at: float  # time.monotonic() of the write


class _ShardStateRequired(TypedDict):
    shard: int
    state: str  # a ShardState value


class ShardStateData(_ShardStateRequired, total=False):
    session: Session | None  # with ready
    code: int  # with fatal
    reason: str  # with fatal


class Stopped(TypedDict):
    exit_code: int
    report: Heartbeat


class CutoverAck(TypedDict):
    role: RoleName
    cut_at: float
    shards: int
    late: bool


class CutoverCancelled(TypedDict):
    shards: int


class Activated(TypedDict):
    standby: bool


class ProbeAnswered(TypedDict):
    role: RoleName
    shard: int


# -- payloads, parent → child (``config`` is ``WorkerConfig.to_dict()``; ``ping``, ``guard``,
# ``unguard``, ``old_caught_up``, ``cutover_cancel`` and ``activate`` carry null) ----------------
class IdentifyGrant(TypedDict):
    shard: int
    not_before: float
    expires: float


class Orphans(TypedDict):
    old_count: int
    shards: list[int]


class Stop(TypedDict, total=False):
    end_sessions: bool  # or the order's data is null


class Cutover(TypedDict):
    role: RoleName
    cut_at: float
    overlap_s: float
    old_count: int
    new_count: int


# -- control socket ------------------------------------------------------------------------------
class ReshardRequest(TypedDict):
    shard_count: int


class ReshardAnswer(TypedDict):
    ok: bool
    kind: str
    message: str


class RestartAnswer(TypedDict):
    started: bool


class ErrorAnswer(TypedDict):
    message: str


__all__ = [
    "NOT_READY",
    "Activated",
    "Cutover",
    "CutoverAck",
    "CutoverCancelled",
    "ErrorAnswer",
    "Event",
    "Heartbeat",
    "Hello",
    "Histogram",
    "IdentifyGrant",
    "IdentifyRequest",
    "IdentifySent",
    "Order",
    "Orphans",
    "ProbeAnswered",
    "Request",
    "ReshardAnswer",
    "ReshardCounters",
    "ReshardRequest",
    "RestartAnswer",
    "RoleName",
    "Session",
    "ShardReport",
    "ShardState",
    "ShardStateData",
    "Shards",
    "Stop",
    "Stopped",
]
