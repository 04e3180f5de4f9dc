"""One worker process: a group of shards and their AMQP bridge on one asyncio loop.

In a live reshard (issue 13) a worker is of the old set or of the new one. A new set's worker
(``hold_events`` and ``standby`` in its config) holds its dispatches back and consumes no
outbound queue; the supervisor's ``cutover`` order (:meth:`Worker.cutover`) gives every worker
of both sets the cut-over point, and ``activate`` (:meth:`Worker.activate`) lets the new one
consume. What each shard publishes is decided by ``shard_worker.reshard``.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Callable

from shard_worker import event_loop, exit_codes, gc_tuning, jsonlib, outbound
from shard_worker.amqp import params as amqp_params
from shard_worker.amqp.broker import AmqpBridge
from shard_worker.amqp.frames import check_pika
from shard_worker.amqp.params import BrokerConfigError, TlsFiles
from shard_worker.config import SavedSession, WorkerConfig
from shard_worker.event_selection import AUTO, as_filter
from shard_worker.gateway.connection import IdentifyGate, LocalIdentifyGate, ShardRunner
from shard_worker.gateway.inflate import zstd_unavailable
from shard_worker.gateway.protocol import COMPRESS_ZSTD_STREAM
from shard_worker.gateway.state import Fatal, ShardMachine
from shard_worker.ipc_vocabulary import Event
from shard_worker.logs import add_secret, mask_url, setup_logging
from shard_worker.reshard import Handover, Role, ShardCutover, shard_of_guild
from shard_worker.shard_ranges import format_shard_ids
from shard_worker.supervised import ParentLink, die_with_parent

log = logging.getLogger("shard_worker.worker")

#: How long a graceful stop waits for RabbitMQ to confirm what is still buffered.
FLUSH_TIMEOUT_S = 5.0
#: How long a stop that ends the sessions of an old set waits for every shard to be caught up
#: (its probe at ``T`` answered: ``shard_worker/reshard.py``) before it flushes: a shard that
#: reconnects at the cut-over needs its resume first. Past it the sessions are closed resumably.
CATCH_UP_TIMEOUT_S = 20.0
#: How long a stop that ends the sessions (an old set after a reshard's cut-over) waits for
#: RabbitMQ first, its connections still open: once a session is ended, what was not confirmed
#: can never be replayed. Past it the sessions are closed resumably instead (the supervisor
#: gives such a stop :data:`CATCH_UP_TIMEOUT_S` plus this plus a margin before it kills).
END_FLUSH_TIMEOUT_S = 30.0


class Worker:
    def __init__(
        self,
        config: WorkerConfig,
        *,
        gate: IdentifyGate | None = None,
        on_state: Callable[[ShardRunner, str], None] | None = None,
    ) -> None:
        self.config = config
        self.gate = gate or LocalIdentifyGate(config.max_concurrency)
        self.bridge = AmqpBridge(
            config.amqp_url,
            config.group,
            config.shard_ids,
            config.shard_count,
            self._on_packet,
            prefetch=config.prefetch,
            shard_status=self._shard_status,
            max_buffered=config.buffer_events,
            max_buffered_bytes=config.buffer_bytes,
            queue_type=config.queue_type,
            tls=TlsFiles(config.amqp_ca_file, config.amqp_cert_file, config.amqp_key_file),
            events_auto=config.events == AUTO,
            standby=config.standby,
            drain_shards=config.drain_shards,
        )
        #: One filter for every shard of the process: ``--events auto`` learns per process.
        events = self.bridge.event_selection if config.events == AUTO else as_filter(config.events)
        self.runners: dict[int, ShardRunner] = {}
        self._on_state_outer = on_state
        #: Shards last seen READY (their queues are consumed; see ``hand_over``).
        self._ready: set[int] = set()
        #: Dispatches by event type for the whole process (see ``count_type`` for the bound).
        self.received_by_type: dict[str, int] = {}
        self.published_by_type: dict[str, int] = {}
        #: RATE_LIMITED dispatches by the opcode refused, for the whole process.
        self.rate_limited_by_opcode: dict[str, int] = {}
        for shard_id in config.shard_ids:
            machine = ShardMachine(
                shard_id,
                config.shard_count,
                config.token,
                intents=config.intents,
                compress=config.compress,
                large_threshold=config.large_threshold,
                presence=config.presence,
                identify_extra=config.identify_extra,
                session=config.sessions.get(shard_id),
            )
            self.runners[shard_id] = ShardRunner(
                machine,
                config.gateway_url,
                self.bridge,
                self.gate,
                events=events,
                on_state=self._on_state,
                stall_timeout=config.stall_timeout,
                received_by_type=self.received_by_type,
                published_by_type=self.published_by_type,
                rate_limited_by_opcode=self.rate_limited_by_opcode,
            )
        #: Every shard's cut-over of the reshard running (kept for its counters after the runner
        #: has gone back to plain publishing).
        self.cutovers: dict[int, ShardCutover] = {}
        if config.hold_events:
            for shard_id, runner in self.runners.items():
                self.cutovers[shard_id] = runner.hold_events(config.hold_s)
        self._stop = asyncio.Event()
        self._end_sessions = False
        #: Called with (role, shard) when a shard's cut-over probe is answered (the link
        #: reports it to the supervisor).
        self.on_probe_answered: Callable[[str, int], None] | None = None
        for runner in self.runners.values():
            runner.on_probe_answered = self._probe_answered

    # -- live reshard -------------------------------------------------------------------------
    def cutover(self, role: Role, handover: Handover) -> int:
        """The supervisor's cut-over order for every shard of this worker; returns how many
        shards applied it (a new set's worker: those holding; an old set's: all)."""
        applied = 0
        for shard_id, runner in self.runners.items():
            cutover = runner.cut(role, handover)
            if cutover is not None:
                self.cutovers[shard_id] = cutover
                applied += 1
        log.info(
            "reshard: cut-over at %.3f (in %.2f s) as the %s set of %d -> %d, %d shards",
            handover.cut_at, handover.cut_at - time.monotonic(), role.value, handover.old_count, handover.new_count, applied,
        )  # fmt: skip
        return applied

    def _probe_answered(self, runner: ShardRunner) -> None:
        cutover = runner.cutover or self.cutovers.get(runner.shard_id)
        role = cutover.role.value if cutover is not None else Role.NEW.value
        if self.on_probe_answered is not None:
            self.on_probe_answered(role, runner.shard_id)

    def old_caught_up(self) -> int:
        """Every old shard is caught up (the supervisor's ``old_caught_up`` order): a new set's
        shard probes, and marks its copies until the ACK (``ShardCutover.old_done``). Returns
        how many shards probe."""
        probing = 0
        for shard_id, runner in self.runners.items():
            cutover = self.cutovers.get(shard_id)
            if cutover is not None and cutover.role is Role.NEW and not cutover.old_done:
                runner.probe()
                probing += 1
        return probing

    async def _old_caught_up(self, timeout: float) -> bool:
        """Wait until every shard of an old set's cut-over is caught up (True), at most
        ``timeout``."""
        waits = [
            r.probe_answered.wait() for s, r in self.runners.items()
            if (c := self.cutovers.get(s)) is not None and c.role is Role.OLD and not c.caught_up
        ]  # fmt: skip
        if not waits:
            return True
        try:
            await asyncio.wait_for(asyncio.gather(*waits), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    def cancel_cutover(self) -> int:
        """The reshard was aborted before its cut-over point: an old set's shards go back to
        plain publishing (they would otherwise drop everything after ``T``). Returns how many."""
        cancelled = 0
        for runner in self.runners.values():
            if runner.cutover is not None and runner.cutover.role is Role.OLD:
                runner.cancel_cut()
                runner.cutover = None
                cancelled += 1
        self.cutovers.clear()
        if cancelled:
            log.info("reshard aborted: %d shards publish as before", cancelled)
        return cancelled

    def set_orphans(self, old_count: int, shards: list[int]) -> int:
        """A new set: these old shards no longer run (closed with 4011), so their guilds'
        events are published at once instead of held for the cut-over. Returns how many of
        this worker's shards apply it."""
        gone = frozenset(shards)

        def orphaned(body: bytes) -> bool:
            try:
                d = jsonlib.loads(body)
            except (ValueError, TypeError, OverflowError):
                return False
            guild = d.get("guild_id") if isinstance(d, dict) else None
            try:
                return shard_of_guild(guild, old_count) in gone
            except (TypeError, ValueError):
                return False

        applied = 0
        for cutover in self.cutovers.values():
            if cutover.role is Role.NEW:
                cutover.orphaned = orphaned
                applied += 1
        return applied

    def set_guarded(self, guarded: bool) -> None:
        """Cluster mode: while guarded, a shard that loses its connection waits instead of
        reconnecting (``ShardRunner.guarded``)."""
        for runner in self.runners.values():
            runner.guarded = guarded

    def activate(self) -> None:
        """The cut-over: this (new) set consumes its shard queues and SEND from now on."""
        self.bridge.activate()

    def connections_closed(self) -> int:
        """Connections this process's shards have ended (each reconnect ends one)."""
        return sum(runner.reconnects for runner in self.runners.values())

    def sizes(self) -> dict[str, int]:
        """Sizes of what grows with time in this process: asyncio tasks, the bridge's
        structures, the runners' outboxes and closing tasks, the per-type counters (bounded by
        ``MAX_EVENT_TYPES``) and the cut-overs. Sampled by the soak (``scripts/soak.py``)."""
        runners = self.runners.values()
        return {
            "asyncio_tasks": len(asyncio.all_tasks()), **self.bridge.sizes(),
            "outbox": sum(len(r.outbox) for r in runners), "closing_tasks": sum(r.closing_tasks for r in runners),
            "received_types": len(self.received_by_type), "published_types": len(self.published_by_type),
            "cutovers": len(self.cutovers),
        }  # fmt: skip

    def reshard_counters(self) -> dict[str, int] | None:
        """The cut-over counters summed over the shards (``held``, ``dropped``, ``marked``,
        ``published``), or None when no reshard involves this worker."""
        if not self.cutovers:
            return None
        total: dict[str, int] = {}
        for cutover in self.cutovers.values():
            for key, value in cutover.counters().items():
                total[key] = total.get(key, 0) + value
        return total

    def _on_packet(self, shard_id: int, packet: outbound.Packet, ack: Callable[[], None]) -> None:
        self.runners[shard_id].send(packet, ack)

    def _shard_status(self, shard_id: int) -> tuple[bool, int]:
        runner = self.runners[shard_id]
        return runner.ready.is_set(), len(runner.outbox)

    def _on_state(self, runner: ShardRunner, state: str) -> None:
        """Every shard state report: a shard entering or leaving READY starts or stops holding
        its outbound packets (RabbitMQ keeps them while it cannot send them)."""
        shard_id = runner.shard_id
        ready = runner.ready.is_set()
        if ready and shard_id not in self._ready:
            self._ready.add(shard_id)
            self.bridge.resume_shard(shard_id)
        elif not ready and shard_id in self._ready:
            self._ready.discard(shard_id)
            self.bridge.pause_shard(shard_id)
            for packet, ack in runner.outbox.take_all():
                self.bridge.give_back(shard_id, packet, ack)
        if self._on_state_outer is not None:
            self._on_state_outer(runner, state)

    def session_of(
        self, shard_id: int, firsts: dict[tuple[int, str | None], int] | None = None
    ) -> SavedSession | None:
        """The session to hand over: its seq is the last one RabbitMQ confirmed in order.
        ``firsts``: the bridge's ``first_unconfirmed_seqs()``, when many shards are asked at once."""
        machine = self.runners[shard_id].machine
        saved = machine.saved_session()
        if saved is None:
            return None
        if firsts is None:
            first = self.bridge.first_unconfirmed_seq(shard_id, saved.session_id)
        else:
            first = firsts.get((shard_id, saved.session_id))
        if first is not None:
            return SavedSession(saved.session_id, first - 1, saved.resume_gateway_url)
        return saved

    def sessions(self) -> dict[int, SavedSession]:
        firsts = self.bridge.first_unconfirmed_seqs()
        return {s: saved for s in self.runners if (saved := self.session_of(s, firsts)) is not None}

    def stop(self, end_sessions: bool = False) -> None:
        """Ask ``run`` to stop gracefully (safe from a signal handler via the loop).
        ``end_sessions``: close them with 1000 instead of resumably (an old set after a
        reshard's cut-over); sticky, so a SIGTERM that follows does not undo it."""
        self._end_sessions = self._end_sessions or end_sessions
        self._stop.set()

    async def run(self) -> int:
        """Run until stopped (exit 0) or a shard is closed fatally (exit 4x/5x)."""
        log.info(
            "worker: shards %s of %d, exchange %r on %s",
            format_shard_ids(self.config.shard_ids),
            self.config.shard_count,
            self.config.group,
            mask_url(self.config.amqp_url),
        )
        if self.config.cutover is not None:  # restarted in the middle of a cut-over
            self.cutover(Role(self.config.cutover["role"]), Handover.from_dict(self.config.cutover))
        bridge_task = asyncio.create_task(self.bridge.run(), name="amqp-bridge")
        stop_task = asyncio.create_task(self._stop.wait(), name="stop")
        connected = asyncio.create_task(self.bridge.connected.wait())
        # The bridge too: one that ends before it ever connected (a bad TLS file) must not
        # leave the worker waiting forever.
        await asyncio.wait({connected, stop_task, bridge_task}, return_when=asyncio.FIRST_COMPLETED)
        connected.cancel()
        shard_tasks = {
            asyncio.create_task(r.run(), name=f"shard-{s}"): s for s, r in self.runners.items()
        } if not self._stop.is_set() and not bridge_task.done() else {}
        fatal: Fatal | None = None
        crashed = misconfigured = False
        pending = set(shard_tasks) | {stop_task, bridge_task}
        while pending and not self._stop.is_set():
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is bridge_task:
                    error = task.exception()
                    if isinstance(error, BrokerConfigError):
                        # e.g. a queue of another type: a restart would fail the same way.
                        log.critical("RabbitMQ: %s", error)
                        misconfigured = True
                    else:
                        log.error("AMQP bridge ended: %r", error)
                        crashed = True
                    self._stop.set()
                elif task in shard_tasks:
                    if task.exception() is not None:
                        log.error("shard %d crashed", shard_tasks[task], exc_info=task.exception())
                        self._stop.set()
                        crashed = True
                    elif isinstance(task.result(), Fatal):
                        fatal = task.result()
                        self._stop.set()
        await self._shutdown(shard_tasks, bridge_task, stop_task)
        if fatal is not None:
            return exit_codes.for_fatal_close(fatal.code)
        if misconfigured:
            return exit_codes.USAGE  # the supervisor halts instead of restarting us
        return exit_codes.ERROR if crashed else exit_codes.OK

    async def _shutdown(self, shard_tasks: dict, bridge_task: asyncio.Task, stop_task: asyncio.Task) -> None:
        end = self._end_sessions
        if end and not await self._old_caught_up(CATCH_UP_TIMEOUT_S):
            # Issue 20, defect 1: its shards publish until caught up; ending before would drop
            # what Discord sent before T and they have not read yet.
            behind = [s for s, c in self.cutovers.items() if c.role is Role.OLD and not c.caught_up]
            log.error(
                "shards %s not caught up %.0f s after the cut-over was due: closing the sessions "
                "resumably instead of ending them",
                format_shard_ids(behind),
                CATCH_UP_TIMEOUT_S,
            )
            end = False
        if end and not await self.bridge.flush(END_FLUSH_TIMEOUT_S):
            # Issue 20, defect 2: ending first lost for good whatever RabbitMQ had not confirmed.
            log.error(
                "%d messages still unconfirmed by RabbitMQ after %.0f s: closing the sessions "
                "resumably instead of ending them",
                self.bridge.buffered,
                END_FLUSH_TIMEOUT_S,
            )
            end = False
        await asyncio.gather(*(r.stop(end) for r in self.runners.values()), return_exceptions=True)
        if shard_tasks:
            done, still = await asyncio.wait(shard_tasks, timeout=5.0)
            for task in still:
                task.cancel()
        if not await self.bridge.flush(FLUSH_TIMEOUT_S):
            log.warning("stopping with %d messages unconfirmed by RabbitMQ", self.bridge.buffered)
        await self.bridge.stop()
        for task in (bridge_task, stop_task):
            task.cancel()
        await asyncio.gather(bridge_task, stop_task, return_exceptions=True)


def run_group(config: WorkerConfig, *, link: ParentLink | None = None) -> int:
    """Run one group in this process until stopped; return the exit code.

    Alone, it stops on SIGINT/SIGTERM and gates identifies itself. Under the supervisor (with
    ``link``, the IPC with the parent) it also reports over IPC, asks the parent before every
    IDENTIFY and stops when the parent says so or dies.
    """
    add_secret(config.token)
    for password in amqp_params.passwords(config.amqp_url):
        add_secret(password)  # masked in URLs anyway; redacted wherever else it might appear
    setup_logging(config.log_level, prefix=f"[shards {config.shard_ids[0]}-{config.shard_ids[-1]}] ")
    try:
        check_pika()
        loop_name = event_loop.name()
        gc_name = gc_tuning.choice()
    except (RuntimeError, ValueError) as error:
        log.critical("%s", error)
        return exit_codes.USAGE  # the supervisor halts on 2 instead of restarting us
    log.debug("event loop: %s, garbage collector: %s", loop_name, gc_name)
    if config.compress == COMPRESS_ZSTD_STREAM and (missing := zstd_unavailable()):
        # `start` checks this too; a worker run by hand (or an install changed under a running
        # supervisor) says it once here rather than failing every connection.
        log.critical("%s", missing)
        return exit_codes.USAGE

    async def main() -> int:
        if link is not None:
            die_with_parent()
            worker = Worker(config, gate=link, on_state=link.on_state)
            link.attach(worker)
        else:
            worker = Worker(config)
        gc_tuning.tune()  # once the worker is set up: what it holds for good is frozen too
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, worker.stop)
        code = await worker.run()
        if link is not None:
            # Every shard's final report (its session with the seq confirmed last), then the end.
            link.send_shard_reports(everything=True)
            link.send(Event.STOPPED, {"exit_code": code, "report": link.report()})
            link.close()
        return code

    return event_loop.run(main())
