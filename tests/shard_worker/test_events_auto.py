"""``--events auto`` against the real RabbitMQ: a simulator streams a mix of types, only some of
them have a queue bound, and the worker learns from ``basic.return`` which to publish.

The probe interval is the default (``PROBE_INTERVAL_S``, 5 s): a queue bound later must get its
first event within 10 s of its binding, which leaves 5 s of margin on this noisy machine.
"""

from __future__ import annotations

import time

from shard_worker import spectacles
from shard_worker.event_selection import AUTO, PROBE_INTERVAL_S
from supervisor.simulator import SimulatorThread
from tests.helpers import TOKEN, WorkerThread, wait_for, worker_config

#: Stream events per second: enough for every type of the mix to come often (TYPING_START is
#: 10 % of it), little enough for two shared cores.
RATE = 300
UNBOUND = ("TYPING_START", "PRESENCE_UPDATE", "GUILD_MEMBER_UPDATE", "READY", "GUILD_CREATE")


def start(sim: SimulatorThread, amqp_url: str, rabbit, group: str) -> WorkerThread:
    rabbit.track(spectacles.shard_queue(group, 0), spectacles.send_queue(group))
    worker = WorkerThread(worker_config(sim, amqp_url, group, [0], events=AUTO)).__enter__()
    wait_for(lambda: 0 in sim.call("ready_shards"), 30, what="shard 0 READY")
    return worker


def figures(worker: WorkerThread) -> dict:
    """Counters read on the worker's own loop, so that they agree with each other."""

    def read() -> dict:
        w = worker.worker
        return {
            "received": dict(w.received_by_type),
            "published": dict(w.published_by_type),
            "types": w.bridge.event_selection.snapshot(),
            "broker": w.bridge.counters(),
            "seq": w.runners[0].machine.seq,
        }

    return worker.call(read)


def test_unbound_types_are_published_only_in_their_probes(amqp_url, rabbit, group):
    consumed = spectacles.queue_name(group, "MESSAGE_CREATE", "test")
    rabbit.bind(group, consumed, "MESSAGE_CREATE")
    with SimulatorThread(token=TOKEN, shard_count=1, events_per_shard=-1, rate=RATE, heartbeat_interval_ms=5000) as sim:
        worker = start(sim, amqp_url, rabbit, group)
        try:
            selection = worker.worker.bridge.event_selection
            wait_for(lambda: set(UNBOUND) <= set(worker.call(selection.suppressed_types)), 20, what="learnt")
            first = figures(worker)
            time.sleep(3 * PROBE_INTERVAL_S + 1)
            last = figures(worker)
        finally:
            worker.stop()
    span = 3 * PROBE_INTERVAL_S + 1
    for t in UNBOUND[:3]:  # the streamed ones (READY and GUILD_CREATE came once, at the start)
        published = last["published"][t] - first["published"][t]
        probe_events = last["types"][t]["probe_events"] - first["types"][t]["probe_events"]
        probes = last["types"][t]["probes"] - first["types"][t]["probes"]
        assert published == probe_events, t  # nothing outside the probes
        assert 1 <= probes <= span // PROBE_INTERVAL_S + 1, (t, probes)  # one per interval
        assert published <= 3 * probes, (t, published, probes)  # a window lasts one round trip
        # every dispatch of it was either published (and returned) or suppressed
        assert last["received"][t] == last["published"][t] + last["types"][t]["suppressed"]
        assert last["types"][t]["published"] is False
    for t in ("READY", "GUILD_CREATE"):
        assert last["types"][t]["returned"] == last["published"][t] and not last["types"][t]["published"]
    # the consumed type: every one published, never returned, never probed
    mc = last["types"]["MESSAGE_CREATE"]
    assert (mc["published"], mc["returned"], mc["probes"]) == (True, 0, 0)
    assert last["published"]["MESSAGE_CREATE"] == last["received"]["MESSAGE_CREATE"]
    broker = last["broker"]
    assert broker["types_suppressed"] == len(UNBOUND) and broker.get("types_resumed", 0) == 0
    assert broker["suppressed"] == sum(t["suppressed"] for t in last["types"].values())
    assert broker["returned"] == sum(t["returned"] for t in last["types"].values())
    # What the broker was spared over the span (the simulator's mix is 80 % MESSAGE_CREATE).
    received = sum(last["received"].values()) - sum(first["received"].values())
    published = sum(last["published"].values()) - sum(first["published"].values())
    assert published < 0.9 * received, (published, received)


def test_a_queue_bound_later_gets_its_type_within_10_s_and_misses_none_after_its_first(amqp_url, rabbit, group):
    rabbit.bind(group, spectacles.queue_name(group, "MESSAGE_CREATE", "test"), "MESSAGE_CREATE")
    late = spectacles.queue_name(group, "TYPING_START", "late")
    with SimulatorThread(token=TOKEN, shard_count=1, events_per_shard=-1, rate=RATE, heartbeat_interval_ms=5000) as sim:
        worker = start(sim, amqp_url, rabbit, group)
        try:
            selection = worker.worker.bridge.event_selection
            wait_for(lambda: "TYPING_START" in worker.call(selection.suppressed_types), 20, what="suppressed")
            time.sleep(1.3)  # somewhere inside a probe interval, not right after the return
            bound_at = time.monotonic()
            rabbit.bind(group, late, "TYPING_START")
            got = rabbit.get_all(late, expect=1, timeout=15)
            first_at = time.monotonic()
            assert got, "no TYPING_START reached the queue bound late"
            assert first_at - bound_at <= 10.0, first_at - bound_at
            time.sleep(3)  # it keeps flowing...
            rabbit.channel.queue_unbind(late, group, "TYPING_START")  # ...until the queue goes away
            unbound = figures(worker)["published"]["TYPING_START"]
            wait_for(lambda: "TYPING_START" in worker.call(selection.suppressed_types), 10, what="suppressed again")
            after = figures(worker)
        finally:
            worker.stop()
        got += rabbit.get_all(late)
        dispatched = sim.snapshot()["dispatched"][0]
    session = after_session = None
    seqs = []
    for _, props, _ in got:
        shard, session, seq = props.message_id.split(":")
        assert after_session in (None, session)
        after_session = session
        seqs.append(int(seq))
    # From its first event on, every TYPING_START dispatched until the unbinding, in order.
    typing = [seq for sid, seq, t in dispatched if t == "TYPING_START" and sid == session]
    first, last = seqs[0], seqs[-1]
    assert seqs == [s for s in typing if first <= s <= last], "a gap after the first event"
    assert len(seqs) >= 3 * RATE * 0.1 * 0.5  # ~3 s of 30 TYPING_START a second, at least half
    assert after["broker"]["types_resumed"] == 1 and after["broker"]["types_suppressed"] == len(UNBOUND) + 1
    assert after["types"]["TYPING_START"]["published"] is False
    # after the unbinding: only what was in flight until the first return, then probes
    assert after["published"]["TYPING_START"] - unbound <= 3 * (1 + after["types"]["TYPING_START"]["probes"])
