"""Issue 11, defect 4: the daily identify budget is refreshed from Discord, never taken as unlimited.

Real supervisors against the simulator (whose ``/gateway/bot`` counts identifies like Discord)
and the real Redis: with ``--redis-url`` the shared key expires at Discord's reset; without Redis
the local gate passes its ``reset_at``. Both must ask ``GET /gateway/bot`` again and use Discord's
``total``, not a constant 1000.
"""

from __future__ import annotations

import json
import time
import uuid

import redis

from supervisor.simulator import SimulatorThread
from tests.helpers import TOKEN, wait_for
from tests.supervisor.supervisor_process import SupervisorProcess

SHARDS = 4


def accepted(snap, shard=None):
    return [i for i in snap["identifies"] if i["accepted"] and (shard is None or i["shard"] == shard)]


def test_an_expired_shared_budget_is_refreshed_from_discord_and_still_holds_at_the_reserve(
    amqp_url, redis_url, group, tmp_path
):
    prefix = f"test-{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(redis_url)
    remaining_key, total_key = f"{prefix}:identify:remaining", f"{prefix}:identify:total"
    # 10 identifies left today of 1200: after the 4 of the start, one more, then the reserve (5).
    with SimulatorThread(
        token=TOKEN, shard_count=SHARDS, max_concurrency=SHARDS, heartbeat_interval_ms=2000,
        session_start_total=1200, session_start_remaining=10,
    ) as sim:  # fmt: skip
        sup = SupervisorProcess(
            sim, amqp_url, group, tmp_path / "state", "--shards-per-process", "2",
            "--redis-url", redis_url, "--redis-prefix", prefix, "--identify-reserve", "5",
        )  # fmt: skip
        try:
            sim.wait_until(lambda s: s["ready"] == set(range(SHARDS)), timeout=60)
            assert int(client.get(remaining_key)) == 6

            # Discord's reset_after passes: the key expires (here: made to, 0.5 s from now).
            client.pexpire(remaining_key, 500)
            wait_for(lambda: not client.exists(remaining_key), 10, what="the budget key to expire")
            sim.call("invalidate_session", 0, False)  # shard 0 must identify anew
            asked = time.monotonic()
            snap = sim.wait_until(lambda s: len(accepted(s, 0)) == 2 and 0 in s["ready"], timeout=30)
            print(f"\nrefreshed and identified {time.monotonic() - asked:.1f} s after the budget expired")
            # Refreshed from GET /gateway/bot (6 left), then spent by that identify: not unlimited.
            assert int(client.get(remaining_key)) == 5 == snap["session_start_limit"]["remaining"]
            assert client.pttl(remaining_key) > 3600 * 1000  # until Discord's next reset (24 h here)
            assert int(client.get(total_key)) == 1200  # Discord's total, for the estimate
            wait_for(lambda: "identify budget from Discord: 6 of 1200 left" in sup.output(), 10)

            # Down to the reserve: the next identify waits (it used to go through, unlimited).
            sim.call("invalidate_session", 1, False)
            time.sleep(8)
            snap = sim.snapshot()
            assert len(accepted(snap, 1)) == 1 and 1 not in snap["ready"]
            assert int(client.get(remaining_key)) == 5
            assert "IDENTIFIES HELD" in sup.output()
            status = json.loads(sup.cli("status", "--json").stdout)
            assert status["identify_budget_remaining"] == 5
            assert status["identify_hold"] == {"held": True, "reserve": 5, "remaining": 5}
        finally:
            sup.stop()
            for key in client.scan_iter(f"{prefix}:*"):
                client.delete(key)


def test_without_redis_the_budget_is_asked_again_after_discords_reset(amqp_url, group, tmp_path):
    # Discord resets the budget 12 s after the start, and every 12 s after (the simulator's
    # period): long enough that the identify below is counted before the gate's next refill.
    # Its total is 1200, not the default 1000.
    with SimulatorThread(
        token=TOKEN, shard_count=2, max_concurrency=2, heartbeat_interval_ms=2000,
        session_start_total=1200, session_start_remaining=20, session_start_reset_after_ms=12000,
    ) as sim:  # fmt: skip
        sup = SupervisorProcess(sim, amqp_url, group, tmp_path / "state")
        try:
            sim.wait_until(lambda s: s["ready"] == {0, 1}, timeout=30)
            status = lambda: json.loads(sup.cli("status", "--json").stdout)  # noqa: E731
            assert status()["identify_budget_remaining"] == 18
            # after the reset: Discord is asked (off the loop) and its figure is used
            wait_for(lambda: "identify budget from Discord: 1200 of 1200 left" in sup.output(), 40)
            assert status()["identify_budget_remaining"] == 1200
            sim.call("invalidate_session", 0, False)
            sim.wait_until(lambda s: len(accepted(s, 0)) == 2 and 0 in s["ready"], timeout=30)
            wait_for(lambda: status()["identify_budget_remaining"] == 1199, 10)
        finally:
            sup.stop()
