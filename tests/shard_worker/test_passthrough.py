"""Raw passthrough end to end (issue 12): crafted frames from the simulator reach RabbitMQ with
bodies byte-identical to their ``d``, through zlib-stream, a multi-MB dispatch included."""

from __future__ import annotations

import json

from shard_worker import spectacles
from supervisor.simulator import SimulatorThread
from tests.helpers import TOKEN, WorkerThread, wait_for, worker_config
from tests.shard_worker.gateway.test_frames import FAITHFUL, dispatch_frame

EVENT = "PASSTHROUGH_TEST"


def big_guild(megabytes: int) -> bytes:
    """A GUILD_CREATE-like ``d`` of about ``megabytes`` MB, with Discord's spellings in it."""
    member = '{"user":{"id":"%d","username":"m\\u00e9mber %d","avatar":null},"roles":["1","2"],"joined_at":"2020-01-01T00:00:00.000000+00:00","deaf":false,"mute":false,"pending":false,"x":2.50}'
    members = ",".join(member % (10**17 + i, i) for i in range(megabytes * 1024 * 1024 // len(member)))
    return ('{"id":"81384788765712384","name":"big","member_count":1E+5,"members":[%s]}' % members).encode()


def test_published_bodies_are_byte_identical_to_the_d_discord_sent(amqp_url, rabbit, group):
    rabbit.track(spectacles.shard_queue(group, 0), spectacles.send_queue(group))
    queue = spectacles.queue_name(group, EVENT, "raw")
    rabbit.bind(group, queue, EVENT)
    big = big_guild(5)
    bodies = [*FAITHFUL, big]
    with SimulatorThread(token=TOKEN, shard_count=1, heartbeat_interval_ms=1000) as sim:
        with WorkerThread(worker_config(sim, amqp_url, group, [0], compress=True)) as worker:
            sim.wait_until(lambda s: 0 in s["ready"], timeout=30)
            for i, d in enumerate(bodies):
                # One frame in Discord's order, then the same d in another key order.
                sim.call("send_raw", 0, dispatch_frame(d, 1000 + 2 * i, EVENT.encode()), True)
                other = b'{"op":0,"d":' + d + b',"s":%d,"t":"%s"}' % (1001 + 2 * i, EVENT.encode())
                sim.call("send_raw", 0, other, True)
            bridge = worker.worker.bridge
            wait_for(lambda: worker.call(lambda: bridge.confirmed) >= 3 + 2 * len(bodies), 60, what="confirmed")
    got = rabbit.get_all(queue, expect=2 * len(bodies), timeout=30)
    assert [body for _, _, body in got] == [d for d in bodies for _ in (0, 1)]  # exact, in order
    assert json.loads(got[-1][2])["member_count"] == 1e5  # and still JSON, of course


def test_a_dispatch_that_is_not_valid_json_is_counted_and_skipped_and_the_stream_goes_on(amqp_url, rabbit, group):
    rabbit.track(spectacles.shard_queue(group, 0), spectacles.send_queue(group))
    queue = spectacles.queue_name(group, EVENT, "raw-bad")
    rabbit.bind(group, queue, EVENT)
    with SimulatorThread(token=TOKEN, shard_count=1, heartbeat_interval_ms=1000) as sim:
        with WorkerThread(worker_config(sim, amqp_url, group, [0], compress=True)) as worker:
            sim.wait_until(lambda s: 0 in s["ready"], timeout=30)
            sim.call("send_raw", 0, dispatch_frame(b'{"a":NaN}', 500, EVENT.encode()), True)
            sim.call("send_raw", 0, dispatch_frame(b'{"ok":1}', 501, EVENT.encode()), True)
            runner = worker.worker.runners[0]
            wait_for(lambda: worker.call(lambda: runner.machine.bad_frames) == 1, 20, what="counted")
            wait_for(lambda: worker.call(lambda: runner.machine.seq) == 501, 20, what="the stream went on")
            assert runner.resumes == 0  # skipped, not resumed (a resume would replay it forever)
    got = rabbit.get_all(queue, expect=1, timeout=20)
    assert [body for _, _, body in got] == [b'{"ok":1}']
