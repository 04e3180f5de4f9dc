"""The publish ledger: every message between "publish" and RabbitMQ's verdict (pure, no sockets).

The AMQP bridge (``broker.py``) drives pika; this module holds the rules. Messages wait in three
places, all bounded by ``max_buffered`` messages and ``max_buffered_bytes`` bytes together (once
full, there is room again at :data:`ROOM_AGAIN_AT` of both):

- **in flight**: published on the current channel, waiting for a confirm (delivery tags count
  from 1 on each channel, in publish order);
- **backlog**: waiting for a channel (none open, or behind older messages);
- **retry**: nacked, waiting for their delay (``nack_policy``).

Verdicts, as tables of "what came in" to "what happens":

=====================================  ==========================================================
confirm (ack)                          settled; the resumable seq may move past it
nack, retries left                     republished after the policy's delay, never at once
nack, no retries left                  **refused**: counted, logged, settled (the seq moves on)
bigger than the broker's message limit  refused at once, never published (a channel error would
                                       close the channel on every republish, for ever)
publish channel closed by the broker   the oldest unconfirmed message is a suspect; a message
                                       that is the oldest at :data:`MAX_CHANNEL_ERRORS` channel
                                       errors in a row is refused (a poisoned publish)
connection lost                        unconfirmed events go back to the front of the backlog
                                       (at-least-once); *forwarded* messages (a SEND re-routed
                                       to a shard queue) are dropped, because RabbitMQ delivers
                                       their source again and that delivery forwards them anew
=====================================  ==========================================================

Refused messages call ``on_refused(entry, reason)`` so that the driver logs them; forwarded
messages carry ``on_confirm`` (ack their source delivery), called once settled or refused.
"""

from __future__ import annotations

import bisect
import re
import time
from collections import Counter, deque
from collections.abc import Callable

from shard_worker import nack_policy

#: What RabbitMQ 4.0 refuses by default (``max_message_size``; 3.x: 128 MiB). A broker that says
#: its own limit in a channel error (``message size N is larger than configured max size M``)
#: lowers it to what it said; nothing raises it (a bigger broker limit needs a bigger default).
DEFAULT_MAX_MESSAGE_SIZE = 16 * 1024 * 1024
#: Channel errors in a row with the same message oldest in flight before it is refused as poison.
MAX_CHANNEL_ERRORS = 3
#: Once full, the buffer has room again only when it has drained to this share of its bounds:
#: without the gap, every confirm frame (RabbitMQ confirms in batches) would give the reader room
#: for a few events and stall it again, hundreds of times a second under a full stream.
ROOM_AGAIN_AT = 0.75
#: Upper bounds (seconds) of the publish-to-confirm latency histogram.
CONFIRM_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

_MAX_SIZE_ERROR = re.compile(rb"larger than (?:configured )?max size (\d+)")

_monotonic = time.monotonic


class Entry:
    """One message waiting for RabbitMQ's verdict."""

    __slots__ = (
        "shard_id", "session_id", "seq", "routing_key", "body", "message_id", "tag", "acked", "nacked", "on_confirm",
        "sent_at", "nacks", "channel_errors", "props",
    )  # fmt: skip

    def __init__(self, shard_id, session_id, seq, routing_key, body, message_id, on_confirm=None, props=None):
        self.shard_id = shard_id
        self.session_id = session_id
        self.seq = seq
        self.routing_key = routing_key
        self.body = body
        self.message_id = message_id
        self.tag = 0
        self.acked = False  # RabbitMQ answered (ack or nack)
        self.nacked = False
        #: Set for a forwarded message: acks the delivery it came from.
        self.on_confirm = on_confirm
        self.sent_at = 0.0
        self.nacks = 0  # times RabbitMQ nacked it (see nack_policy)
        self.channel_errors = 0  # channel errors while it was the oldest in flight
        #: Encoded properties of its own (an event marked by a reshard's overlap), else None:
        #: the bridge's usual ones for its shard.
        self.props = props


class Histogram:
    """Cumulative-friendly fixed buckets (Prometheus style): counts per bucket, sum, count."""

    __slots__ = ("bounds", "counts", "sum", "count")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def snapshot(self) -> dict:
        return {"bounds": list(self.bounds), "counts": list(self.counts), "sum": self.sum, "count": self.count}


def _holds_back_seq(entry: Entry) -> bool:
    """Whether ``entry`` keeps its session's resumable seq below its own: an event (not a
    forwarded packet) with a seq that RabbitMQ has not taken yet."""
    return (not entry.acked or entry.nacked) and entry.on_confirm is None and entry.seq is not None


def _ignore(*args: object) -> None:
    return None


class PublishLedger:
    """The buffer, its confirms and its verdicts. The driver calls :meth:`open` with a function
    that publishes one entry on a fresh channel, then feeds confirms, channel errors and losses.

    ``schedule(delay, entry)`` must call :meth:`retry_due` with ``entry`` after ``delay`` s;
    ``on_room(bool)`` is called when there is room again (True) or no more (False);
    ``on_empty(bool)`` when everything is settled (True) or something is buffered again (False).
    """

    def __init__(
        self,
        max_buffered: int,
        max_buffered_bytes: int,
        *,
        schedule: Callable[[float, Entry], object] = _ignore,
        on_refused: Callable[[Entry, str], object] = _ignore,
        on_room: Callable[[bool], object] = _ignore,
        on_empty: Callable[[bool], object] = _ignore,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    ) -> None:
        self.max_buffered = max_buffered
        self.max_buffered_bytes = max_buffered_bytes
        self._room_again = (int(max_buffered * ROOM_AGAIN_AT), int(max_buffered_bytes * ROOM_AGAIN_AT))
        self.max_message_size = max_message_size
        self._schedule = schedule
        self._on_refused = on_refused
        self._on_room = on_room
        self._on_empty = on_empty
        self.inflight: deque[Entry] = deque()
        self.backlog: deque[Entry] = deque()
        self.retry: deque[Entry] = deque()
        self.buffered_bytes = 0
        self.room = True
        self.empty = True
        #: Something was published again (nack, reconnect): the buffer is no longer in seq order.
        self.reordered = False
        self._send: Callable[[Entry], object] | None = None
        self._next_tag = 0
        self.stats: Counter[str] = Counter()
        #: hot counters as plain attributes (a Counter update costs a method call per event)
        self.published = 0
        self.confirmed = 0
        self.confirm_latency = Histogram(CONFIRM_LATENCY_BUCKETS)

    @property
    def buffered(self) -> int:
        return len(self.inflight) + len(self.backlog) + len(self.retry)

    # -- the channel --------------------------------------------------------------------------
    def open(self, send: Callable[[Entry], object]) -> None:
        """A publish channel is open (confirms on, tags from 1): publish the backlog on it."""
        self._send = send
        self._next_tag = 0
        self.flush()

    def lost(self) -> None:
        """The connection is gone: unconfirmed events go back to the front of the backlog."""
        self._send = None
        self.reordered = self.reordered or bool(self.retry or self.inflight)
        self.stats["republished"] += sum(1 for e in self.inflight if e.on_confirm is None)
        waiting = [*self.inflight, *self.retry, *self.backlog]
        self.inflight.clear()
        self.retry.clear()
        self.backlog.clear()
        for entry in waiting:
            if entry.on_confirm is not None:
                # Its source delivery was unacked on this connection: RabbitMQ delivers it again
                # and that delivery forwards it anew. Publishing this copy too would double it.
                self.stats["forward_dropped"] += 1
                self.buffered_bytes -= len(entry.body)
                continue
            entry.acked = entry.nacked = False
            self.backlog.append(entry)
        self._update_room()
        self._update_empty()

    def channel_error(self, reply_text: str | bytes) -> None:
        """The broker closed the publish channel (``reply_text`` is its reason); call before :meth:`lost`.

        RabbitMQ names its size limit when it refuses a message for it: everything buffered
        over that limit is refused. Otherwise the oldest unconfirmed message is suspected; the
        same one oldest at :data:`MAX_CHANNEL_ERRORS` errors in a row is refused.
        """
        text = reply_text.encode() if isinstance(reply_text, str) else reply_text
        match = _MAX_SIZE_ERROR.search(text)
        if match:
            self.max_message_size = min(self.max_message_size, int(match.group(1)))
            for queue in (self.inflight, self.backlog, self.retry):
                for entry in [e for e in queue if len(e.body) > self.max_message_size]:
                    queue.remove(entry)
                    self._refuse(entry, "too_large", f"{len(entry.body)} bytes, over the broker's {self.max_message_size}")
            self._update_room()
            self._update_empty()
            return
        suspect = next((e for e in self.inflight if not e.acked), None)
        if suspect is None:
            return
        suspect.channel_errors += 1
        if suspect.channel_errors >= MAX_CHANNEL_ERRORS:
            self.inflight.remove(suspect)
            reason = f"the channel closed {suspect.channel_errors} times while it was unconfirmed: " + text.decode(
                errors="replace"
            )
            self._refuse(suspect, "poisoned", reason)
            self._update_room()
            self._update_empty()

    # -- publishing (hot path) ----------------------------------------------------------------
    def add(self, entry: Entry) -> None:
        """Buffer ``entry`` and publish it now if a channel is open and nothing is ahead of it."""
        size = len(entry.body)
        if size > self.max_message_size:
            self._refuse(entry, "too_large", f"{size} bytes, over the broker's {self.max_message_size}", buffered=False)
            return
        self.buffered_bytes += size
        if self.empty:
            self.empty = False
            self._on_empty(False)
        if self.room and (self.buffered + 1 >= self.max_buffered or self.buffered_bytes >= self.max_buffered_bytes):
            self.room = False
            self._on_room(False)
        if self._send is not None and not self.backlog:
            self._transmit(entry)
        else:
            self.backlog.append(entry)

    def _transmit(self, entry: Entry) -> None:
        self._send(entry)  # type: ignore[misc]
        self._next_tag += 1
        entry.tag = self._next_tag
        entry.sent_at = _monotonic()
        self.inflight.append(entry)
        self.published += 1

    def flush(self) -> None:
        """Publish the backlog, oldest first, while a channel is open."""
        while self.backlog and self._send is not None:
            self._transmit(self.backlog.popleft())

    def retry_due(self, entry: Entry) -> None:
        """A nacked entry's delay is over: publish it again (unless a reconnect already did)."""
        try:
            self.retry.remove(entry)
        except ValueError:
            return  # already moved (a reconnect put it back in the backlog, or dropped it)
        self.backlog.append(entry)
        self.flush()

    # -- verdicts -----------------------------------------------------------------------------
    def confirm(self, tag: int, multiple: bool, nack: bool) -> None:
        """RabbitMQ's ack or nack of ``tag`` (and of every tag before it if ``multiple``)."""
        inflight = self.inflight
        if not inflight:
            return
        if multiple:
            for entry in inflight:
                if entry.tag > tag:
                    break
                entry.acked = True
                entry.nacked = nack
        else:
            index = tag - inflight[0].tag
            if 0 <= index < len(inflight):
                inflight[index].acked = True
                inflight[index].nacked = nack
        # Confirms may come out of order: settle the acknowledged prefix, whatever its origin.
        settled = refused = freed = 0
        newest = None
        while inflight and inflight[0].acked:
            entry = inflight.popleft()
            if entry.nacked:
                self.stats["nacked"] += 1
                entry.nacks += 1
                verdict = nack_policy.on_nack(entry.nacks)
                if type(verdict) is nack_policy.Retry:
                    # RabbitMQ did not take it: publish again later (at-least-once), not at once.
                    entry.acked = entry.nacked = False
                    self.reordered = True
                    self.retry.append(entry)
                    self._schedule(verdict.delay, entry)
                    continue
                # The broker's verdict stands: refused and settled, so the buffer drains.
                self.stats["refused"] += 1
                self.stats["refused_nacked"] += 1
                refused += 1
                self._on_refused(entry, verdict.reason)
            settled += 1
            freed += len(entry.body)
            newest = entry
            if entry.on_confirm is not None:
                entry.on_confirm()
        if newest is not None:
            self.confirmed += settled - refused
            self.buffered_bytes -= freed
            # One sample per confirm frame (RabbitMQ confirms in batches): the newest message's.
            self.confirm_latency.observe(_monotonic() - newest.sent_at)
            if not self.room:
                self._update_room()
            if not inflight and not self.backlog and not self.retry:
                self.reordered = False
                self._update_empty()
        if self.backlog and self._send is not None:
            self.flush()

    def _refuse(self, entry: Entry, kind: str, reason: str, *, buffered: bool = True) -> None:
        """Settle ``entry`` without RabbitMQ having taken it; the caller took it out of the buffer."""
        self.stats["refused"] += 1
        self.stats[f"refused_{kind}"] += 1
        if buffered:
            self.buffered_bytes -= len(entry.body)
        self._on_refused(entry, reason)
        if entry.on_confirm is not None:
            entry.on_confirm()

    # -- bounds -------------------------------------------------------------------------------
    def _update_room(self) -> None:
        if self.room:
            room = self.buffered < self.max_buffered and self.buffered_bytes < self.max_buffered_bytes
        else:  # full: room again only once drained to ROOM_AGAIN_AT
            room = self.buffered <= self._room_again[0] and self.buffered_bytes <= self._room_again[1]
        if room != self.room:
            self.room = room
            self._on_room(room)

    def _update_empty(self) -> None:
        empty = not self.inflight and not self.backlog and not self.retry
        if empty != self.empty:
            self.empty = empty
            if empty:
                self.reordered = False
            self._on_empty(empty)

    # -- the resumable seq --------------------------------------------------------------------
    def first_unconfirmed_seqs(self) -> dict[tuple[int, str | None], int]:
        """:meth:`first_unconfirmed_seq` of every ``(shard, session)`` with an event not yet
        settled, in one pass over the buffer: the reports of all a process's shards (once a
        second) cost one scan, not one per shard, of which a shard with nothing buffered
        would walk the whole buffer."""
        lowest: dict[tuple[int, str | None], int] = {}
        for queue in (self.inflight, self.backlog, self.retry):
            for entry in queue:
                if _holds_back_seq(entry):
                    key = (entry.shard_id, entry.session_id)
                    seen = lowest.get(key)
                    if seen is None or entry.seq < seen:
                        lowest[key] = entry.seq
        return lowest

    def first_unconfirmed_seq(self, shard_id: int, session_id: str | None) -> int | None:
        """The lowest seq of ``session_id`` not yet settled, if any.

        A scan of the buffer when a session is reported (about once a second), which is cheaper
        than bookkeeping on every event. Publish order is seq order, so the first match is the
        lowest, unless something was published again (a nack, a reconnect): then the minimum.
        """
        lowest = None
        for queue in (self.inflight, self.backlog, self.retry):
            for entry in queue:
                if (
                    entry.shard_id == shard_id
                    and entry.session_id == session_id
                    and _holds_back_seq(entry)
                    and (lowest is None or entry.seq < lowest)
                ):
                    lowest = entry.seq
                    if not self.reordered:
                        return lowest
        return lowest
