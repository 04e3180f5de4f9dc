"""``/healthz`` and ``/readyz`` (``supervisor/observe/health.py``): the answers from a state, and the
real HTTP server beside ``/metrics``."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

from supervisor.observe.health import liveness, readiness
from supervisor.observe.metrics import MetricsState
from supervisor.observe.serve import MetricsServer


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_liveness_follows_the_loops_last_pass():
    assert liveness(None, 5.0)[0] == 503
    assert liveness(4.0, 5.0) == (200, {"ok": True, "last_tick_s": 1.0})
    status, body = liveness(4.0, 15.0)
    assert status == 503 and body["reason"] == "the supervisor's loop has not run for 11.0 s"


def ready_state(states: dict[int, str]) -> MetricsState:
    state = MetricsState({0: [0, 1], 1: [2, 3]})
    state.child_started(0, 10, 0.0)
    state.shard_reports(0, 10, {str(s): {"state": st} for s, st in states.items() if s < 2})
    if any(s >= 2 for s in states):
        state.child_started(1, 11, 0.0)
        state.shard_reports(1, 11, {str(s): {"state": st} for s, st in states.items() if s >= 2})
    return state


def test_readiness_is_every_shard_ready_with_a_short_body():
    status, body = readiness(ready_state({0: "ready", 1: "resuming"}).snapshot())
    assert status == 503
    assert body == {"ready": 1, "total": 4, "not_ready": "1-3", "states": {"down": 2, "ready": 1, "resuming": 1}}
    status, body = readiness(ready_state({0: "ready", 1: "ready", 2: "ready", 3: "ready"}).snapshot())
    assert status == 200 and body == {"ready": 4, "total": 4, "not_ready": "", "states": {"ready": 4}}
    assert readiness(MetricsState({}).snapshot())[0] == 503  # nothing to serve is not ready


def test_the_body_stays_short_at_5000_shards():
    state = MetricsState({g: list(range(g * 5, g * 5 + 5)) for g in range(1000)})
    status, body = readiness(state.snapshot())
    assert status == 503 and body["total"] == 5000 and body["not_ready"] == "0-4999"
    assert len(json.dumps(body)) < 200


def get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_the_endpoints_beside_metrics():
    clock = Clock()
    state = MetricsState({0: [0, 1]}, clock=clock)
    server = MetricsServer(("127.0.0.1", 0), state)
    try:
        host, port = server.address
        base = f"http://{host}:{port}"
        assert get(f"{base}/healthz")[0] == 503  # the loop never passed
        state.tick(clock.now)
        assert get(f"{base}/healthz") == (200, {"ok": True, "last_tick_s": 0.0})
        assert get(f"{base}/readyz")[0] == 503
        state.child_started(0, 7, 0.0)
        state.shard_reports(0, 7, {"0": {"state": "ready"}, "1": {"state": "ready"}})
        assert get(f"{base}/readyz") == (200, {"ready": 2, "total": 2, "not_ready": "", "states": {"ready": 2}})
        clock.now += 30  # the loop stalls
        status, body = get(f"{base}/healthz")
        assert status == 503 and "has not run for 30.0 s" in body["reason"]
        with urllib.request.urlopen(f"{base}/metrics", timeout=10) as response:
            assert b"spectacles_shard_state" in response.read()
    finally:
        server.close()
