"""Two real workers of two shard sets through a cut-over: a reshardable simulator (every guild
event reaches the session owning it in each set), real RabbitMQ, the supervisor's IPC orders
(``cutover``, ``activate``) handed to each worker's ``ParentLink`` as if read from its stdin,
the answers read from a real pipe.

Checks the worker primitives of a live reshard: the new set publishes nothing until told the
cut-over point (not its READY, not its GUILD_CREATEs), then from ``T - overlap``; the old set
nothing it receives from ``T`` on; 0 logical events lost, every duplicate marked on both copies;
the new set consumes no outbound queue until activated; a shard packet with a ``guild_id`` goes
to the guild's owner under the worker's count, whichever queue it was put in.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

from shard_worker import ipc, spectacles
from shard_worker.reshard import OVERLAP_HEADER, Handover
from shard_worker.supervised import ParentLink
from supervisor.simulator import SimulatorThread
from supervisor.simulator.payloads import guild_ids_for_shard
from tests.helpers import TOKEN, WorkerThread, wait_for, worker_config

OVERLAP_S = 1.0


def sent_ops(sim, op: int, shard: int) -> list[dict]:
    return [r for r in sim.snapshot()["sent"] if r["op"] == op and r["shard"] == shard]


class Link:
    """A worker's ParentLink writing into a pipe this test reads (no stdin reader started)."""

    def __init__(self, thread: WorkerThread) -> None:
        self.thread = thread
        self.read_fd, write_fd = os.pipe()
        os.set_blocking(self.read_fd, False)
        self.link = ParentLink(write_fd)
        self.link.worker = thread.worker
        self.decoder = ipc.Decoder()

    def order(self, event: str, data=None) -> list[ipc.Message]:
        """Hand one order to the link on the worker's loop; return what the worker answered."""
        self.thread.call(lambda: self.link._on_order(ipc.Message(event, data)))
        time.sleep(0.05)
        try:
            return self.decoder.feed(os.read(self.read_fd, 1 << 16))
        except BlockingIOError:
            return []


def test_old_2_to_new_4_loses_nothing_marks_duplicates_and_keeps_queues_until_active(amqp_url, rabbit, group):
    with SimulatorThread(
        token=TOKEN, shard_count=2, reshardable=True, guilds_per_shard=4, events_per_shard=-1, rate=40,
        heartbeat_interval_ms=20000, identify_interval_s=0.0, max_concurrency=4, seed=5,
    ) as sim:  # fmt: skip
        queues = {t: spectacles.queue_name(group, t, "test") for t in ("MESSAGE_CREATE", "READY", "GUILD_CREATE")}
        for t, queue in queues.items():
            rabbit.bind(group, queue, t)
        for shard in range(4):  # declared first: packets put there before the new set's bridge runs
            rabbit.bind(group, spectacles.shard_queue(group, shard), str(shard))
        old_config = worker_config(sim, amqp_url, group, [0, 1])
        new_config = dataclasses.replace(
            worker_config(sim, amqp_url, group, [0, 1, 2, 3]), shard_count=4, hold_events=True, standby=True
        )
        with WorkerThread(old_config) as old, WorkerThread(new_config) as new:
            wait_for(lambda: sim.call("ready_sets") == {2: [0, 1], 4: [0, 1, 2, 3]}, 30, what="both sets READY")
            # standby: a packet for new shard 3 waits in its queue
            presence = {"op": 3, "d": {"since": None, "activities": [], "status": "idle", "afk": False}}
            rabbit.publish(group, "3", json.dumps(presence).encode())
            time.sleep(1.0)
            assert rabbit.depth(spectacles.shard_queue(group, 3)) == 1 and sent_ops(sim, 3, 3) == []
            assert new.call(lambda: new.worker.reshard_counters())["published"] == 0  # all held

            rule = Handover(time.monotonic() + 3.0, OVERLAP_S, 2, 4)
            [ack] = Link(old).order("cutover", {"role": "old", **rule.to_dict()})
            assert ack.event == "cutover_ack" and ack.data == {"role": "old", "cut_at": rule.cut_at, "shards": 2, "late": False}
            new_link = Link(new)
            [ack] = new_link.order("cutover", {"role": "new", **rule.to_dict()})
            assert ack.data["shards"] == 4 and ack.data["late"] is False
            time.sleep(max(0.0, rule.cut_at - time.monotonic()))
            assert sent_ops(sim, 3, 3) == []
            [activated] = new_link.order("activate")
            assert activated == ipc.Message("activated", {"standby": False})
            wait_for(lambda: sent_ops(sim, 3, 3), 10, what="the standby packet sent once active")

            time.sleep(max(0.0, rule.cut_at + 2.0 - time.monotonic()))
            assert old.stop() == 0
            snap = sim.snapshot()
            old_ids: set[str] = set()
            for state in snap["sets"][2].values():
                for frame in sim.call("history", state["session_id"]):
                    if frame["t"] == "MESSAGE_CREATE":
                        old_ids.add(frame["d"]["id"])

            # a packet put in shard 1's queue for a guild that shard 2 owns under 4 shards
            guild2 = guild_ids_for_shard(2, 4, 1)[0]
            voice = {"op": 4, "d": {"guild_id": str(guild2), "channel_id": None, "self_mute": False, "self_deaf": False}}
            rabbit.publish(group, "1", json.dumps(voice).encode())
            wait_for(lambda: sent_ops(sim, 4, 2), 10, what="the packet rerouted to shard 2")
            assert sent_ops(sim, 4, 1) == []
            assert new.call(lambda: new.worker.bridge.counters()).get("shard_packet_rerouted") == 1
            time.sleep(1.0)  # every twin of what the old sessions got has reached the new set
            counters = new.call(lambda: new.worker.reshard_counters())
            assert new.stop() == 0

        copies: dict[str, list[dict]] = {}
        for _, props, body in rabbit.get_all(queues["MESSAGE_CREATE"]):
            copies.setdefault(json.loads(body)["id"], []).append(props.headers)
        lost = old_ids - set(copies)
        duplicates = {key: c for key, c in copies.items() if len(c) > 1}
        assert len(old_ids) > 300 and lost == set()
        assert duplicates and all(len(c) == 2 for c in duplicates.values())
        for c in duplicates.values():
            assert sorted(h[OVERLAP_HEADER] for h in c) == [2, 4]  # marked on both copies
        unmarked = [c for c in copies.values() if any(OVERLAP_HEADER not in h for h in c)]
        assert all(len(c) == 1 for c in unmarked)
        # the new set's READYs and GUILD_CREATEs came long before T - overlap: not published
        assert len(rabbit.get_all(queues["READY"])) == 2
        assert len(rabbit.get_all(queues["GUILD_CREATE"])) == 8
        assert counters["held"] == 0 and counters["marked"] > 0 and counters["dropped"] >= 4 + 8
        print(
            f"\nworkers 2 -> 4: {len(old_ids)} logical events of the old set, 0 lost, "
            f"{len(duplicates)} published twice (all marked), new set {counters}"
        )


def test_a_queue_of_an_id_gone_after_a_reshard_to_fewer_shards_is_drained_by_guild_id(amqp_url, rabbit, group):
    """4 -> 2: the queue of old shard 3 is consumed by the worker given it in ``drain_shards``;
    a packet with a ``guild_id`` reaches the guild's owner under 2 shards, one without is
    refused and counted."""
    with SimulatorThread(token=TOKEN, shard_count=2, heartbeat_interval_ms=20000, max_concurrency=2) as sim:
        gone = spectacles.shard_queue(group, 3)
        rabbit.bind(group, gone, "3")
        guild1 = guild_ids_for_shard(1, 2, 1)[0]
        voice = {"op": 4, "d": {"guild_id": str(guild1), "channel_id": None, "self_mute": False, "self_deaf": False}}
        presence = {"op": 3, "d": {"since": None, "activities": [], "status": "idle", "afk": False}}
        rabbit.publish(group, "3", json.dumps(voice).encode())
        rabbit.publish(group, "3", json.dumps(presence).encode())
        rabbit.track(spectacles.shard_queue(group, 0), spectacles.shard_queue(group, 1), spectacles.send_queue(group))
        config = dataclasses.replace(worker_config(sim, amqp_url, group, [0, 1]), drain_shards=[3])
        with WorkerThread(config) as worker:
            wait_for(lambda: sent_ops(sim, 4, 1), 30, what="the drained packet sent by shard 1")
            wait_for(lambda: worker.call(lambda: dict(worker.worker.bridge.rejected)) == {"no_such_shard": 1}, 10)
            assert worker.call(lambda: worker.worker.bridge.counters()).get("shard_packet_rerouted") == 1
            assert sent_ops(sim, 3, 0) == [] and sent_ops(sim, 3, 1) == []
            assert rabbit.depth(gone) == 0


def test_an_ending_set_flushes_before_it_ends_its_sessions(amqp_url, rabbit, group):
    """Issue 20, defect 2: a worker told to end its sessions (the old set after the cut-over)
    closed them with 1000 first and flushed after, for 5 s: with RabbitMQ out of reach a little
    longer, what it still held was gone for good (nothing can replay an ended session). It now
    waits for the confirms with the connection open, then ends the session."""
    from urllib.parse import urlsplit

    from supervisor.simulator.payloads import DISPATCH_TYPES
    from tests.tcp_proxy import TcpProxy

    parts = urlsplit(amqp_url)
    with TcpProxy(parts.hostname, parts.port or 5672) as proxy, SimulatorThread(
        token=TOKEN, shard_count=1, heartbeat_interval_ms=20000, events_per_shard=-1, rate=40
    ) as sim:
        queue = spectacles.queue_name(group, "all", "end")
        for event in DISPATCH_TYPES:
            rabbit.bind(group, queue, event)
        proxied = f"amqp://guest:guest@127.0.0.1:{proxy.port}/%2F"
        with WorkerThread(worker_config(sim, proxied, group, [0])) as worker:
            sim.wait_until(lambda s: len(s["dispatched"].get(0, [])) > 100, timeout=30)
            proxy.cut()  # RabbitMQ out of reach: what the shard reads now stays unconfirmed
            time.sleep(1.0)
            worker.call(lambda: worker.worker.stop(end_sessions=True))
            time.sleep(7.0)  # longer than the old 5 s flush
            assert worker.alive, "the worker waits for RabbitMQ before it ends the session"
            proxy.restore()
            assert worker.wait_exit(45) == 0
        final = sim.snapshot()
    [conn] = [c for c in final["connections"] if c["shard"] == 0]
    assert (conn["closed_by"], conn["close_code"]) == ("client", 1000)  # ended, after the flush
    ids = {props.message_id for _, props, _ in rabbit.get_all(queue, expect=len(final["dispatched"][0]), timeout=30)}
    expected = {spectacles.message_id(0, sid, seq) for sid, seq, _ in final["dispatched"][0]}
    missing = expected - ids
    # Everything Discord sent before the end is in RabbitMQ (the session's last few, sent while
    # the close frame was on its way, may be unread: at most the rate for a fraction of a second).
    assert len(missing) <= 5, f"{len(missing)} of {len(expected)} events lost"
    assert len(expected) > 300


def test_an_old_shard_reading_late_at_the_cut_over_loses_nothing(amqp_url, rabbit, group):
    """Issue 20, defect 1: the old set's rule was "publish what you *read* before T", the new
    set's "from T - 1 s". An old shard that reads 2.5 s late (here: a proxy delays every byte
    Discord sends it) reads after T what Discord sent in [T - 2.5, T - 1): the new set dropped
    those as too early, the old set as too late. Now the old shard sends a heartbeat at T and
    publishes until its ACK, which Discord sends after everything it sent before it: nothing
    sent before T is dropped, whatever the lag."""
    from urllib.parse import urlsplit

    from tests.tcp_proxy import TcpProxy

    lag = 2.5
    with SimulatorThread(
        token=TOKEN, shard_count=1, reshardable=True, guilds_per_shard=4, events_per_shard=-1, rate=40,
        heartbeat_interval_ms=20000, identify_interval_s=0.0, max_concurrency=2, seed=9,
    ) as sim:  # fmt: skip
        sim_port = urlsplit(sim.url).port
        queue = spectacles.queue_name(group, "MESSAGE_CREATE", "lag")
        rabbit.bind(group, queue, "MESSAGE_CREATE")
        rabbit.track(*(spectacles.shard_queue(group, i) for i in range(2)), spectacles.send_queue(group))
        with TcpProxy("127.0.0.1", sim_port, lag_s=lag) as proxy:
            old_config = dataclasses.replace(
                worker_config(sim, amqp_url, group, [0]), gateway_url=f"ws://127.0.0.1:{proxy.port}"
            )
            new_config = dataclasses.replace(
                worker_config(sim, amqp_url, group, [0, 1]), shard_count=2, hold_events=True, standby=True
            )
            with WorkerThread(old_config) as old:
                # the old set serves first (as in a real reshard: the new set's events exist
                # for the old set's session too only once that session exists)
                wait_for(lambda: sim.call("ready_sets") == {1: [0]}, 40, what="the old set READY")
                time.sleep(lag + 0.5)
                with WorkerThread(new_config) as new:
                    wait_for(lambda: sim.call("ready_sets") == {1: [0], 2: [0, 1]}, 40, what="both sets READY")
                    time.sleep(1.0)
                    rule = Handover(time.monotonic() + 4.0, OVERLAP_S, 1, 2)
                    [ack] = Link(old).order("cutover", {"role": "old", **rule.to_dict()})
                    assert ack.data["late"] is False
                    new_link = Link(new)
                    [ack] = new_link.order("cutover", {"role": "new", **rule.to_dict()})
                    time.sleep(max(0.0, rule.cut_at - time.monotonic()))
                    new_link.order("activate")
                    time.sleep(1.0)  # the drain, as the supervisor waits
                    old_session = sim.snapshot()["sets"][1][0]["session_id"]
                    old_hist = [f for f in sim.call("history", old_session) if f["t"] == "MESSAGE_CREATE"]
                    due = {f["d"]["id"] for f in old_hist}
                    old.call(lambda: old.worker.stop(end_sessions=True))
                    assert old.wait_exit(60) == 0
                    time.sleep(1.0)
                    for state in sim.snapshot()["sets"][2].values():
                        hist = [f for f in sim.call("history", state["session_id"]) if f["t"] == "MESSAGE_CREATE"]
                        due |= {f["d"]["id"] for f in hist}
                    assert new.stop() == 0
    copies: dict[str, list[dict]] = {}
    for _, props, body in rabbit.get_all(queue):
        copies.setdefault(json.loads(body)["id"], []).append(props.headers or {})
    lost = due - set(copies)
    assert len(due) > 200 and not lost, f"{len(lost)} of {len(due)} lost"
    duplicates = [c for c in copies.values() if len(c) > 1]
    assert all(len(c) == 2 and sorted(h.get(OVERLAP_HEADER) for h in c) == [1, 2] for c in duplicates)
