"""A SEND for another process's shard, forwarded while the broker connection breaks (issue 11,
defect 7), against the real RabbitMQ: the shard's queue gets it once, not twice."""

from __future__ import annotations

import json
from urllib.parse import urlsplit

from shard_worker import spectacles
from supervisor.simulator import SimulatorThread
from tests.helpers import TOKEN, WorkerThread, wait_for, worker_config
from tests.tcp_proxy import TcpProxy


def test_a_forward_lost_with_the_connection_is_published_once_after_the_redelivery(amqp_url, rabbit, group):
    rabbit.track(spectacles.shard_queue(group, 0), spectacles.send_queue(group))
    other = spectacles.shard_queue(group, 1)  # shard 1 runs elsewhere: its queue only holds
    rabbit.bind(group, other, spectacles.shard_routing_key(1))
    parts = urlsplit(amqp_url)
    with TcpProxy(parts.hostname, parts.port or 5672) as proxy, SimulatorThread(
        token=TOKEN, shard_count=2, heartbeat_interval_ms=1000
    ) as sim:
        proxied = f"amqp://guest:guest@127.0.0.1:{proxy.port}/%2F"
        with WorkerThread(worker_config(sim, proxied, group, [0])) as worker:
            bridge = worker.worker.bridge
            sim.wait_until(lambda s: 0 in s["ready"], timeout=30)
            wait_for(lambda: bridge._sub is not None, 20, what="consuming")
            rabbit.wait_consumed(spectacles.send_queue(group))
            proxy.hold()  # what the worker writes from now on never reaches RabbitMQ
            send = {"guild_id": str(1 << 22), "packet": {"op": 8, "d": {"guild_id": str(1 << 22), "limit": 0}}}
            rabbit.publish(group, spectacles.SEND_EVENT, json.dumps(send).encode())
            wait_for(lambda: bridge.stats["send_rerouted"] == 1, 20, what="the SEND forwarded (into the void)")
            proxy.cut()
            proxy.restore()
            # RabbitMQ delivers the SEND again on the new connection, which forwards it again.
            wait_for(lambda: bridge.stats["send_rerouted"] == 2 and bridge.buffered == 0, 60, what="forwarded again")
            dropped = bridge.stats["forward_dropped"]
    got = rabbit.get_all(other, expect=2, timeout=5)  # (waits for a second copy that must not come)
    assert [json.loads(body) for _, _, body in got] == [send["packet"]]  # once
    assert dropped == 1
    assert rabbit.depth(spectacles.send_queue(group)) == 0  # and the SEND was acked
