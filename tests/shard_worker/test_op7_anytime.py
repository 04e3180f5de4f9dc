"""Op 7 at any time (issue 22, item 3; documented by Discord since 2024): a RECONNECT on a live
connection, then twice instead of HELLO on the next connections, as during a gateway deploy.
The shard reconnects at once each time (no growing backoff: Discord asked, nothing failed) and
RESUMEs its session: one IDENTIFY in all, nothing lost."""

from __future__ import annotations

from shard_worker import spectacles
from supervisor.simulator import SimulatorThread
from tests.helpers import TOKEN, WorkerThread, wait_for, worker_config


def test_op_7_before_and_instead_of_hello_resumes_at_once(amqp_url, rabbit, group):
    with SimulatorThread(token=TOKEN, shard_count=1, heartbeat_interval_ms=20000, events_per_shard=-1, rate=20) as sim:
        queue = spectacles.queue_name(group, "MESSAGE_CREATE", "op7")
        rabbit.bind(group, queue, "MESSAGE_CREATE")
        rabbit.track(spectacles.shard_queue(group, 0), spectacles.send_queue(group))
        with WorkerThread(worker_config(sim, amqp_url, group, [0])) as worker:
            sim.wait_until(lambda s: 0 in s["ready"], timeout=30)
            session = sim.snapshot()["shards"][0]["session_id"]
            wait_for(lambda: len(sim.call("history", session)) > 20, 10, what="the stream flowing")
            sim.call("reconnect_before_hello", 2)
            sim.call("reconnect", 0)  # op 7 on the live connection, then op 7 instead of HELLO twice
            snap = wait_for(
                lambda: (s := sim.snapshot()) and len(s["connections"]) == 4 and 0 in s["ready"] and s, 20,
                what="resumed on the fourth connection",
            )
            wait_for(lambda: len(sim.call("history", session)) > len(snap["resumes"]) + 40, 10, what="the stream again")
            history = [f["d"]["id"] for f in sim.call("history", session) if f["t"] == "MESSAGE_CREATE"]
            wait_for(lambda: worker.call(lambda: worker.worker.bridge.buffered) == 0, 10)
        conns = snap["connections"]
    assert [c.get("op7_before_hello", False) for c in conns] == [False, True, True, False]
    assert [c["closed_by"] for c in conns[:3]] == ["client"] * 3  # the client closed each at once
    # reconnected at once: no backoff for what Discord asked (the 1-2 s jitter would show)
    gaps = [b["opened"] - a["closed"] for a, b in zip(conns, conns[1:])]
    assert max(gaps) < 0.5, gaps
    assert [i["accepted"] for i in snap["identifies"]] == [True]
    assert [r["result"] for r in snap["resumes"]] == ["ok"] and snap["resumes"][0]["session_id"] == session
    published = {__import__("json").loads(body)["id"] for _, _, body in rabbit.get_all(queue)}
    assert history and set(history) <= published
