"""The Spectacles AMQP bridge of one worker, on the worker's own asyncio loop (pika's adapter).

Inbound: every dispatch becomes one persistent publish on the group's durable direct exchange with
routing key ``t``; publisher confirms are on and every message stays in memory until RabbitMQ
confirms it, so a lost connection republishes instead of losing (at-least-once). The buffer is
bounded: callers ``await wait_room()`` before publishing more, which stops the gateway read. The
rules of that buffer (confirms, nacks, refused and poisoned messages, reconnects) live in
``publish_ledger``; this module is the pika driver around it.

Outbound: the durable queues ``<group>:<shard>`` (one per owned shard) and ``<group>:SEND`` are
consumed with manual acks; packets are validated (``outbound``), handed to the shard, and acked
only once written to the socket. A SEND packet for a shard of another process is republished
with routing key ``<shard>`` and acked once RabbitMQ confirmed that. A shard that is not READY
holds nothing: its queue is not consumed, and SEND parks its packets there (``hand_over``).
A shard packet whose ``d`` has a ``guild_id`` goes to the shard owning that guild under this
worker's count, whichever queue it came from (``reshard.shard_of_packet``): one queued for an
old shard id during a reshard is forwarded the same way, never misdelivered.

Live reshard (``reshard``): a worker of a new shard set starts in **standby**: it publishes, but
consumes no outbound queue until :meth:`AmqpBridge.activate` (the supervisor's ``activate``
order at the cut-over), so it cannot take the packets of the set still serving. Events published
inside a reshard's overlap window carry the ``x-spectacles-overlap`` header
(:meth:`AmqpBridge.publish_marked`).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import pika
from pika.adapters.asyncio_connection import AsyncioConnection

from shard_worker import outbound, spectacles
from shard_worker.amqp import params as amqp_params
from shard_worker.amqp.frames import BatchedPublisher, properties_prefix
from shard_worker.amqp.hand_over import Route, route
from shard_worker.amqp.ledger import Entry, PublishLedger
from shard_worker.event_selection import PROBE_INTERVAL_S, EventSelection
from shard_worker.logs import mask_url
from shard_worker.reshard import OVERLAP_HEADER

log = logging.getLogger("shard_worker.amqp.broker")


def _ignore(_frame: Any) -> None:
    """A callback that asks pika for the synchronous form of a method (see ``pause_shard``)."""


DEFAULT_MAX_BUFFERED = 10_000
DEFAULT_MAX_BUFFERED_BYTES = 64 * 1024 * 1024
#: The broker is usually local: retry it often (the gateway side keeps its sessions meanwhile).
RECONNECT_CAP_S = 10.0
#: Channels used at once to declare and bind the consumed queues (see ``_declare_queues``).
DECLARE_CHANNELS = 8

#: ``on_packet(shard_id, packet, ack)``: send ``packet`` on that shard, then call ``ack()``.
PacketHandler = Callable[[int, outbound.Packet, Callable[[], None]], None]
#: ``shard_status(shard_id)``: (READY?, packets it holds) for ``hand_over.route``.
ShardStatus = Callable[[int], tuple[bool, int]]


class BrokerError(RuntimeError):
    pass


class Ack:
    """Acknowledges one outbound delivery once its packet was written to Discord.

    A delivery from a channel that has since closed is redelivered by RabbitMQ: it is ``stale``,
    its packet must not be sent (the redelivery will be), and acking it would be a protocol error.
    """

    __slots__ = ("_bridge", "_channel", "_tag", "from_send")

    def __init__(self, bridge: AmqpBridge, channel: Any, tag: int, from_send: bool = False) -> None:
        self._bridge, self._channel, self._tag = bridge, channel, tag
        self.from_send = from_send

    @property
    def stale(self) -> bool:
        return self._channel is not self._bridge._sub or not self._channel.is_open

    def __call__(self) -> None:
        if not self.stale:
            self._channel.basic_ack(self._tag)

    def requeue(self) -> None:
        """Give the delivery back to its queue, unsent."""
        if not self.stale:
            self._channel.basic_nack(self._tag, requeue=True)


class JointAck:
    """The ack of a delivery split in ``parts`` forwarded packets: acks it once every part is
    confirmed (a redelivery, after a lost connection, forwards every part again)."""

    __slots__ = ("_ack", "_left")

    def __init__(self, ack: Ack, parts: int) -> None:
        self._ack, self._left = ack, parts

    def __call__(self) -> None:
        self._left -= 1
        if self._left == 0:
            self._ack()


class AmqpBridge:
    def __init__(
        self,
        url: str,
        group: str,
        shard_ids: list[int],
        shard_count: int,
        on_packet: PacketHandler,
        *,
        prefetch: int = 100,
        shard_status: ShardStatus | None = None,
        max_buffered: int = DEFAULT_MAX_BUFFERED,
        max_buffered_bytes: int = DEFAULT_MAX_BUFFERED_BYTES,
        queue_type: str = amqp_params.DEFAULT_QUEUE_TYPE,
        tls: amqp_params.TlsFiles | None = None,
        events_auto: bool = False,
        probe_interval: float = PROBE_INTERVAL_S,
        standby: bool = False,
        drain_shards: list[int] | None = None,
    ) -> None:
        """``events_auto``: ``--events auto``, publish with ``mandatory`` and learn from
        ``basic.return`` which types no queue takes (``event_selection``); the runners then
        consult :attr:`event_selection`. ``standby``: a reshard's new set, consuming nothing
        until :meth:`activate`. ``drain_shards``: queues of ids gone after a reshard to fewer
        shards, consumed to re-route their packets by ``guild_id`` (or refuse them)."""
        self.url = url
        #: ``url``'s URLs (comma-separated: a cluster's nodes), tried round robin (amqp_params).
        self.endpoints = amqp_params.Endpoints(url, tls, cap=RECONNECT_CAP_S)
        self.queue_type = queue_type
        self._queue_arguments = amqp_params.queue_arguments(queue_type)
        self.group = group
        self.shard_ids = list(shard_ids)
        self._local = set(shard_ids)
        self.shard_count = shard_count
        self.on_packet = on_packet
        #: Without it (tests, tools), every shard counts as READY and holding nothing.
        self.shard_status: ShardStatus = shard_status or (lambda shard_id: (True, 0))
        self.prefetch = prefetch
        self.max_buffered = max_buffered
        self.max_buffered_bytes = max_buffered_bytes

        self._conn: AsyncioConnection | None = None
        self._pub: BatchedPublisher | None = None  # on the confirm channel
        self._sub: Any = None  # the consumer channel
        self._room = asyncio.Event()
        self._room.set()
        self._empty = asyncio.Event()
        self._empty.set()
        self.ledger = PublishLedger(
            max_buffered,
            max_buffered_bytes,
            schedule=self._schedule_retry,
            on_refused=self._log_refused,
            on_room=lambda room: self._room.set() if room else self._room.clear(),
            on_empty=lambda empty: self._empty.set() if empty else self._empty.clear(),
        )
        self._add = self.ledger.add
        #: ``--events auto`` (else None): the runners' filter, fed by returns and confirms.
        self.event_selection: EventSelection | None = None
        if events_auto:
            self.event_selection = EventSelection(interval=probe_interval, stats=self.ledger.stats)
            self._add = self.event_selection.watch(self.ledger.add)  # catches each probe
        # Encoded properties (content type, persistence, shard header) up to the message id.
        self._props = {
            s: properties_prefix(
                pika.BasicProperties(
                    content_type=spectacles.CONTENT_TYPE,
                    delivery_mode=spectacles.PERSISTENT,
                    headers={spectacles.SHARD_HEADER: s},
                )
            )
            for s in shard_ids
        }
        #: Encoded properties of marked events, by (shard, overlap header value), made on first use.
        self._marked_props: dict[tuple[int, int], bytes] = {}
        self.standby = standby
        self._drain = frozenset(drain_shards or ())
        self._reroute_props = properties_prefix(
            pika.BasicProperties(content_type=spectacles.CONTENT_TYPE, delivery_mode=spectacles.PERSISTENT)
        )
        self.connected = asyncio.Event()
        self._closed_unexpectedly: asyncio.Future | None = None
        self._queue_of_consumer: dict[str, int | None] = {}
        #: Shards whose queue is consumed (READY ones); the others' queues hold their packets.
        self._consuming: set[int] = set(shard_ids) if shard_status is None else set()
        self._stopping = False
        self.blocked = False
        #: The ledger's counters and the bridge's own (consumer side) in one place.
        self.stats: Counter[str] = self.ledger.stats
        #: Tasks the bridge started on its own (consuming a cancelled queue again).
        self._background: set[asyncio.Task] = set()
        self.rejected: Counter[str] = Counter()

    def sizes(self) -> dict[str, int]:
        """The length of every growing structure the bridge holds (the soak samples them: each
        must stay bounded over months)."""
        ledger = self.ledger
        selection = self.event_selection
        return {
            "ledger_inflight": len(ledger.inflight), "ledger_backlog": len(ledger.backlog),
            "ledger_retry": len(ledger.retry), "marked_props": len(self._marked_props),
            "consumers": len(self._queue_of_consumer), "bridge_tasks": len(self._background),
            "event_types_selected": 0 if selection is None else len(selection.types),
        }  # fmt: skip

    def counters(self) -> dict[str, int]:
        """Every broker counter: published, confirmed, nacked, republished, outbound_received..."""
        return {**self.stats, "published": self.ledger.published, "confirmed": self.ledger.confirmed}

    @property
    def published(self) -> int:
        return self.ledger.published

    @property
    def confirmed(self) -> int:
        return self.ledger.confirmed

    @property
    def confirm_latency(self) -> Any:
        return self.ledger.confirm_latency

    # -- publishing (hot path) ----------------------------------------------------------------
    @property
    def buffered(self) -> int:
        return self.ledger.buffered

    @property
    def buffered_bytes(self) -> int:
        return self.ledger.buffered_bytes

    def has_room(self) -> bool:
        return self.ledger.room

    async def wait_room(self) -> None:
        await self._room.wait()

    def publish_event(self, shard_id: int, session_id: str | None, t: str, seq: int | None, body: bytes) -> None:
        """Publish one dispatch's ``d`` (already JSON) with routing key ``t``."""
        self._add(Entry(shard_id, session_id, seq, t, body, spectacles.message_id(shard_id, session_id, seq)))

    def publish_marked(
        self, shard_id: int, session_id: str | None, t: str, seq: int | None, body: bytes, headers: dict[str, int]
    ) -> None:
        """Publish one dispatch during a reshard: with ``headers`` (the overlap mark, or none:
        then exactly like :meth:`publish_event`)."""
        props = None
        if headers:
            mark = headers[OVERLAP_HEADER]
            props = self._marked_props.get((shard_id, mark))
            if props is None:
                props = self._marked_props[(shard_id, mark)] = properties_prefix(
                    pika.BasicProperties(
                        content_type=spectacles.CONTENT_TYPE,
                        delivery_mode=spectacles.PERSISTENT,
                        headers={spectacles.SHARD_HEADER: shard_id, OVERLAP_HEADER: mark},
                    )
                )
        self._add(Entry(shard_id, session_id, seq, t, body, spectacles.message_id(shard_id, session_id, seq), None, props))

    def _send(self, entry: Entry) -> None:
        """The ledger's way out: one publish on the confirm channel."""
        props = entry.props
        if props is None:
            props = self._reroute_props if entry.on_confirm is not None else self._props[entry.shard_id]
        self._pub.publish(entry.routing_key, entry.body, props, entry.message_id)  # type: ignore[union-attr]

    def first_unconfirmed_seq(self, shard_id: int, session_id: str | None) -> int | None:
        """The lowest seq of ``session_id`` not yet settled by RabbitMQ, if any."""
        return self.ledger.first_unconfirmed_seq(shard_id, session_id)

    def first_unconfirmed_seqs(self) -> dict[tuple[int, str | None], int]:
        """The same for every ``(shard, session)`` at once (one pass over the buffer)."""
        return self.ledger.first_unconfirmed_seqs()

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        self.ledger.confirm(method.delivery_tag, method.multiple, type(method) is pika.spec.Basic.Nack)

    def _schedule_retry(self, delay: float, entry: Entry) -> None:
        asyncio.get_running_loop().call_later(delay, self.ledger.retry_due, entry)

    def _log_refused(self, entry: Entry, reason: str) -> None:
        log.warning(
            "RabbitMQ refused %s %s (%s): dropped; does a queue bound to it reject publishes?",
            entry.routing_key, entry.message_id, reason,
        )  # fmt: skip

    async def flush(self, timeout: float) -> bool:
        """Wait until every buffered message is confirmed; False if ``timeout`` passed first."""
        try:
            await asyncio.wait_for(self._empty.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    # -- consuming ----------------------------------------------------------------------------
    def _on_message(self, channel: Any, method: Any, props: Any, body: bytes) -> None:
        tag = method.delivery_tag
        if channel is not self._sub or method.consumer_tag not in self._queue_of_consumer:
            # A delivery on a channel we no longer consume from: give it back untouched.
            if channel.is_open:
                channel.basic_nack(tag, requeue=True)
            return
        source = self._queue_of_consumer[method.consumer_tag]
        try:
            if source is None:  # the SEND queue
                parts = outbound.parse_send(body, self.shard_count)
            else:
                parts = outbound.parse_shard_packet_routed(body, source, self.shard_count)
        except outbound.Rejected as exc:
            self.rejected[exc.reason] += 1
            log.warning("rejected outbound message from %s: %s", self._queue_label(source), exc)
            channel.basic_reject(tag, requeue=False)
            return
        except Exception:  # noqa: BLE001 - a message must never take the connection down
            self.rejected["internal_error"] += 1
            log.exception("rejected outbound message from %s: validation failed", self._queue_label(source))
            channel.basic_reject(tag, requeue=False)
            return
        ack = self._acker(channel, tag, source is None)
        if len(parts) > 1:
            # A command for guilds of several shards (d.guild_ids): each part goes to its
            # shard's queue, and the delivery is acked once RabbitMQ confirmed every part.
            self.stats["split_parts"] += len(parts)
            joint = JointAck(ack, len(parts))
            for part in parts:
                self._forward(part.shard_id, part.packet, joint, None)
            return
        shard_id, packet = parts[0].shard_id, parts[0].packet
        if source is not None and shard_id != source:
            # Its guild belongs to another shard under our count (a packet queued for an old
            # id during a reshard, or a misaddressed one): to that shard's queue, like SEND.
            self.stats["shard_packet_rerouted"] += 1
            self._forward(shard_id, packet, ack, props.message_id)
        elif shard_id in self._local:
            self.stats["outbound_received"] += 1
            self._route_local(shard_id, packet, ack, props.message_id)
        else:
            self.stats["send_rerouted"] += 1
            self._forward(shard_id, packet, ack, props.message_id)

    def _route_local(self, shard_id: int, packet: outbound.Packet, ack: Ack, message_id: str | None) -> None:
        ready, waiting = self.shard_status(shard_id)
        verdict = route(ack.from_send, ready, waiting)
        if verdict is Route.HAND_OVER:
            self.on_packet(shard_id, packet, ack)
        elif verdict is Route.PARK:
            self.stats["send_parked"] += 1
            self._forward(shard_id, packet, ack, message_id)
        else:
            self.stats["outbound_given_back"] += 1
            ack.requeue()
            self.pause_shard(shard_id)

    def _forward(self, shard_id: int, packet: outbound.Packet, ack: Callable[[], None], message_id: str | None) -> None:
        """Publish ``packet`` to ``<group>:<shard>``; its delivery is acked once RabbitMQ confirmed."""
        message_id = message_id or f"send:{uuid.uuid4().hex}"
        self._add(Entry(shard_id, None, None, spectacles.shard_routing_key(shard_id), packet.text.encode(), message_id, ack))

    def give_back(self, shard_id: int, packet: outbound.Packet, ack: Callable[[], None]) -> None:
        """A shard left READY holding ``packet``: RabbitMQ keeps it meanwhile (see ``hand_over``)."""
        if not isinstance(ack, Ack) or ack.stale:
            return  # its channel is gone: RabbitMQ delivers it again anyway
        if ack.from_send:
            self.stats["send_parked"] += 1
            self._forward(shard_id, packet, ack, None)
        else:
            self.stats["outbound_given_back"] += 1
            ack.requeue()

    # -- which shard queues are consumed ------------------------------------------------------
    def activate(self) -> None:
        """Leave standby (a reshard's cut-over): consume SEND and the queues of READY shards."""
        if not self.standby:
            return
        self.standby = False
        sub = self._sub
        if sub is None or not sub.is_open:
            return  # the next connection consumes them
        for source in [None, *sorted(self._consuming), *sorted(self._drain)]:
            self._queue_of_consumer[sub.basic_consume(self._queue_label(source), self._on_message)] = source
        log.info("active: consuming SEND and %d shard queues", len(self._consuming))

    def _consumes(self, source: int | None) -> bool:
        """Whether the queue of ``source`` (None: SEND) is to be consumed now."""
        return not self.standby and (source is None or source in self._consuming or source in self._drain)

    def resume_shard(self, shard_id: int) -> None:
        """The shard is READY: consume its queue (again)."""
        if shard_id not in self._local or shard_id in self._consuming:
            return
        self._consuming.add(shard_id)
        sub = self._sub
        if sub is not None and sub.is_open and not self.standby:
            self._queue_of_consumer[sub.basic_consume(self._queue_label(shard_id), self._on_message)] = shard_id

    def pause_shard(self, shard_id: int) -> None:
        """The shard left READY: stop consuming its queue, which keeps its packets meanwhile."""
        if shard_id not in self._consuming:
            return
        self._consuming.discard(shard_id)
        for tag, source in list(self._queue_of_consumer.items()):
            if source == shard_id:
                del self._queue_of_consumer[tag]  # deliveries still in flight are given back
                if self._sub is not None and self._sub.is_open:
                    # With a callback: pika then waits for CancelOk and forgets the tag; without
                    # one it cancels with nowait and keeps the tag in the channel's ``_cancelled``
                    # set for the channel's life (a soak found one tag kept per reconnect).
                    self._sub.basic_cancel(tag, callback=_ignore)

    def _on_consumer_cancelled(self, frame: Any) -> None:
        """RabbitMQ cancelled one of our consumers (its queue was deleted, a node failed over, an
        operator acted): nothing would ever be consumed from that queue again while we look
        connected. Declare, bind and consume it again."""
        tag = frame.method.consumer_tag
        if tag not in self._queue_of_consumer:
            return
        source = self._queue_of_consumer.pop(tag)
        self.stats["consumer_cancels"] += 1
        queue = self._queue_label(source)
        log.warning("RabbitMQ cancelled the consumer of %s; declaring and consuming it again", queue)
        task = asyncio.get_running_loop().create_task(self._consume_again(self._sub, queue, source))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _consume_again(self, sub: Any, queue: str, source: int | None) -> None:
        key = spectacles.SEND_EVENT if source is None else spectacles.shard_routing_key(source)
        try:
            await self._call(sub.queue_declare, queue=queue, durable=True, arguments=self._queue_arguments)
            await self._call(sub.queue_bind, queue=queue, exchange=self.group, routing_key=key)
        except BrokerError as exc:
            log.warning("could not declare %s again (%s); the reconnect will", queue, exc)
            return
        if sub is not self._sub or not sub.is_open:
            return  # the connection was replaced meanwhile: it consumes every queue anew
        if not self._consumes(source):
            return  # not READY (resume_shard consumes it when it is), or standby (activate does)
        self._queue_of_consumer[sub.basic_consume(queue, self._on_message)] = source
        log.info("consuming %s again", queue)

    def _queue_label(self, source: int | None) -> str:
        return spectacles.send_queue(self.group) if source is None else spectacles.shard_queue(self.group, source)

    def _acker(self, channel: Any, tag: int, from_send: bool = False) -> Ack:
        return Ack(self, channel, tag, from_send)

    # -- connection lifecycle -----------------------------------------------------------------
    async def run(self) -> None:
        """Connect, declare, consume; reconnect until ``stop``: to the next URL at once, with the
        backoff once every URL failed in a row (``amqp_params.Endpoints``)."""
        while not self._stopping:
            try:
                await self._connect_once()
            except (BrokerError, pika.exceptions.AMQPError, OSError) as exc:
                if self._stopping:
                    break
                self._drop_channels()
                url, delay = self.endpoints.current, self.endpoints.failed()
                hint = amqp_params.failure_hint(str(exc))
                log.warning(
                    "RabbitMQ %s unavailable (%s)%s; %s",
                    mask_url(url), exc, f": {hint}" if hint else "", self.endpoints.describe_next(delay),
                )  # fmt: skip
                await asyncio.sleep(delay)
                continue
            self.endpoints.connected()
            log.info("RabbitMQ %s connected; exchange %r, %d shard queues", mask_url(self.endpoints.current), self.group, len(self.shard_ids))
            reason = await self._closed_unexpectedly  # type: ignore[misc]
            self._drop_channels()
            await self._close_connection()  # never leave a half-closed connection consuming
            if not self._stopping:
                lost = self.endpoints.current
                self.endpoints.lost()  # a cluster: another node at once
                log.warning(
                    "RabbitMQ %s connection lost (%s); reconnecting to %s",
                    mask_url(lost), reason, mask_url(self.endpoints.current),
                )  # fmt: skip

    async def _connect_once(self) -> None:
        loop = asyncio.get_running_loop()
        opened: asyncio.Future = loop.create_future()
        # This connection's own "closed" future: a late close callback of an older connection
        # must not end the new one.
        closed: asyncio.Future = loop.create_future()
        self._closed_unexpectedly = closed

        def on_open(conn: Any) -> None:
            if not opened.done():
                opened.set_result(conn)

        def on_open_error(conn: Any, exc: BaseException) -> None:
            if not opened.done():
                # The cause pika wrapped (refused, TLS verify failed), not just its wrapper's name.
                opened.set_exception(BrokerError(amqp_params.describe_error(exc)))

        def on_close(conn: Any, exc: BaseException) -> None:
            if not opened.done():
                opened.set_exception(BrokerError(str(exc) or type(exc).__name__))
            if not closed.done():
                closed.set_result(str(exc))

        params = self.endpoints.parameters()  # the current URL of the round robin, TLS for amqps://
        conn = AsyncioConnection(params, on_open, on_open_error, on_close, custom_ioloop=loop)
        self._conn = conn
        await opened
        conn.add_on_connection_blocked_callback(self._on_blocked)
        conn.add_on_connection_unblocked_callback(self._on_unblocked)
        try:
            pub = await self._open_channel(conn)
            await self._call(pub.exchange_declare, exchange=self.group, exchange_type=spectacles.EXCHANGE_TYPE, durable=True)
            selection = self.event_selection
            if selection is None:
                await self._call(pub.confirm_delivery, self._on_confirm)
            else:
                # RabbitMQ sends a mandatory publish's basic.return before its ack, on this
                # channel: the selection looks at each probe once the ledger saw its confirm.
                await self._call(pub.confirm_delivery, selection.after_confirms(self._on_confirm))
                pub.add_on_return_callback(
                    lambda channel, method, props, body: selection.returned(method.routing_key, props.message_id)
                )
            # Publishing needs only the exchange: the shards may start now. Declaring the queues
            # they consume takes about a second for a thousand queues that exist (every start but
            # the first), and seconds more for new ones: never on the identify pace's path.
            self._pub = BatchedPublisher(conn, pub, self.group, mandatory=selection is not None)
            self.connected.set()
            self.ledger.open(self._send)
            sub = await self._open_channel(conn)
            await self._call(sub.basic_qos, prefetch_count=self.prefetch)
            queues: list[tuple[str, str, int | None]] = [
                (spectacles.shard_queue(self.group, s), spectacles.shard_routing_key(s), s)
                for s in [*self.shard_ids, *sorted(self._drain)]
            ]
            queues.append((spectacles.send_queue(self.group), spectacles.SEND_EVENT, None))
            await self._declare_queues(conn, queues)
        except BaseException:
            if conn.is_open:
                conn.close()
            raise
        self._queue_of_consumer.clear()
        for queue, _, source in queues:
            if not self._consumes(source):
                continue  # not READY (resume_shard consumes it once it is), or standby
            consumer_tag = sub.basic_consume(queue, self._on_message)
            self._queue_of_consumer[consumer_tag] = source
        sub.add_on_cancel_callback(self._on_consumer_cancelled)
        self._sub = sub

    async def _declare_queues(self, conn: Any, queues: list[tuple[str, str, int | None]]) -> None:
        """Declare and bind ``queues`` over :data:`DECLARE_CHANNELS` channels at once: RabbitMQ
        serves channels in parallel, and one by one 1250 queues take about 7 s."""
        loop = asyncio.get_running_loop()

        async def declare(batch: list[tuple[str, str, int | None]]) -> None:
            opened: asyncio.Future = loop.create_future()
            pending: set[asyncio.Future] = {opened}

            def on_close(channel: Any, exc: BaseException) -> None:
                for fut in pending:
                    if not fut.done():
                        fut.set_exception(BrokerError(f"channel closed: {exc}"))

            channel = conn.channel(on_open_callback=lambda ch: opened.done() or opened.set_result(ch))
            channel.add_on_close_callback(on_close)
            await opened

            async def rpc(method: Callable[..., Any], **kwargs: Any) -> None:
                fut = loop.create_future()
                pending.add(fut)
                method(callback=lambda frame: fut.done() or fut.set_result(frame), **kwargs)
                try:
                    await fut
                finally:
                    pending.discard(fut)

            for queue, key, _ in batch:
                try:
                    await rpc(channel.queue_declare, queue=queue, durable=True, arguments=self._queue_arguments)
                except BrokerError as exc:
                    # PRECONDITION_FAILED (the queue exists as another type): no reconnect can
                    # help, so a configuration error ends the bridge (the worker exits 2).
                    error = amqp_params.declare_error(queue, self.queue_type, str(exc))
                    if error is None:
                        raise
                    raise error from exc
                await rpc(channel.queue_bind, queue=queue, exchange=self.group, routing_key=key)
            if channel.is_open:
                channel.close()

        batches = [queues[i::DECLARE_CHANNELS] for i in range(DECLARE_CHANNELS)]
        await asyncio.gather(*(declare(batch) for batch in batches if batch))

    async def _open_channel(self, conn: Any) -> Any:
        fut = asyncio.get_running_loop().create_future()
        channel = conn.channel(on_open_callback=lambda ch: fut.done() or fut.set_result(ch))
        channel.add_on_close_callback(self._on_channel_closed)
        self._channel_waiters = fut
        return await fut

    async def _call(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run one pika RPC and wait for its reply (or for its channel to close)."""
        fut = asyncio.get_running_loop().create_future()
        self._channel_waiters = fut
        method(*args, callback=lambda frame: fut.done() or fut.set_result(frame), **kwargs)
        return await fut

    def _on_channel_closed(self, channel: Any, exc: BaseException) -> None:
        waiter = getattr(self, "_channel_waiters", None)
        if waiter is not None and not waiter.done():
            waiter.set_exception(BrokerError(f"channel closed: {exc}"))
        if channel.connection is not self._conn:
            return  # a channel of a connection already replaced
        if self._pub is not None and channel is self._pub.channel and isinstance(exc, pika.exceptions.ChannelClosedByBroker):
            # Something we published made the broker close the channel: the ledger decides
            # whether one message is to blame (too large, or poisoned) before it all goes again.
            self.ledger.channel_error(exc.reply_text)
        if (self._pub is not None and channel is self._pub.channel) or channel is self._sub:
            # A channel error (e.g. a PRECONDITION_FAILED) takes the whole connection down; run()
            # then reconnects and republishes what was unconfirmed.
            fut = self._closed_unexpectedly
            if fut is not None and not fut.done():
                fut.set_result(f"channel closed: {exc}")
            if self._conn is not None and self._conn.is_open:
                self._conn.close()

    def _drop_channels(self) -> None:
        """The connection is gone: the ledger puts unconfirmed messages back in the backlog."""
        self.connected.clear()
        self._pub = self._sub = None
        self.ledger.lost()

    def _on_blocked(self, conn: Any, frame: Any) -> None:
        self.blocked = True
        log.warning("RabbitMQ blocked the connection (%s); publishes wait", getattr(frame.method, "reason", ""))

    def _on_unblocked(self, conn: Any, frame: Any) -> None:
        self.blocked = False
        log.info("RabbitMQ unblocked the connection")

    async def stop(self) -> None:
        self._stopping = True
        fut = self._closed_unexpectedly
        if fut is not None and not fut.done():
            fut.set_result("stopping")
        await self._close_connection()
        self._drop_channels()

    async def _close_connection(self) -> None:
        conn = self._conn
        if conn is None or conn.is_closed:
            return
        if not (conn.is_open or conn.is_closing):
            # Still opening: pika would not call close callbacks; abort and move on.
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - it is going away either way
                pass
            return
        closed = asyncio.get_running_loop().create_future()
        conn.add_on_close_callback(lambda c, e: closed.done() or closed.set_result(None))
        if not conn.is_closing:  # run() and stop() may both get here: close once
            conn.close()
        try:
            await asyncio.wait_for(closed, 5.0)
        except asyncio.TimeoutError:
            log.warning("RabbitMQ connection did not close in time")
