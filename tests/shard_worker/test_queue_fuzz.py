"""Fuzz the outbound queues of a real worker: bad input is rejected, counted, and stops nothing.

One simulator and one real worker (shard 0 of 1) on the real RabbitMQ are started once for the
test; hypothesis then publishes batches of arbitrary bodies to the shard queue (routing key
``0``) and the SEND queue (``SEND``): random bytes, random JSON values, objects with ``op`` /
``d`` / ``guild_id`` / ``packet`` keys of random types, and hand-made JSON texts with the
corners of the grammar (NaN, Infinity, 1e999, lone surrogate escapes, duplicate keys, deep
nesting, oversize). After every batch one valid presence update with a unique marker is
published to the shard queue and must reach the simulator from shard 0: bad input never blocks
the good input behind it.

It runs once per JSON codec of ``shard_worker.jsonlib`` (ujson, orjson). The verdict the worker
must reach for each message is computed in the test from the spec (README, "For consumers of
the events"): ``shard_worker.outbound.parse_shard_packet`` /
``parse_send`` decide, except that a message whose validation raises anything but ``Rejected``,
or whose re-encoded frame is not strict JSON (RFC 8259: no NaN/Infinity), is bad input too and
must be rejected, not sent to Discord. Valid random packets do go to the simulator (checked, with
their ``d``); to stay far below Discord's 120 payloads per 60 s per connection at most
``MAX_VALID`` of them are published (later valid ones are skipped), plus one marker per batch.

At the end: the worker is alive and still consuming both queues, the queues are empty (rejected
without requeue), the worker's rejection count equals the number of invalid messages sent, the
gateway connection never dropped, nothing was logged at ERROR, and the simulator recorded no
violation.

No shrinking: a failing batch may leave the live worker broken (that would be the bug), so every
shrink step would fail for that reason and not the batch's; the failing batch is reported as is.
"""

from __future__ import annotations

import importlib
import json
import logging
import uuid
from collections import Counter

import pytest
from hypothesis import Phase, example, given, note, settings
from hypothesis import strategies as st

from shard_worker import jsonlib, outbound, spectacles
from shard_worker.gateway.protocol import MAX_PAYLOAD_BYTES, USER_SENDABLE_OPS
from supervisor.simulator import SimulatorThread
from tests.helpers import TOKEN, WorkerThread, wait_for, worker_config

MAX_EXAMPLES = 50
#: Valid random packets actually published (each is sent to Discord: mind the 120/60 s limit).
MAX_VALID = 25
SHARD_KEY = spectacles.shard_routing_key(0)
SEND_KEY = spectacles.SEND_EVENT

# -- strategies ---------------------------------------------------------------------------------

json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
)
json_value = st.recursive(
    json_leaf,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=10,
)
op_value = st.one_of(
    st.sampled_from([0, 1, 2, 3, 4, 6, 7, 8, 9, 10, 11, 31, 43, 99, -1, 2**64]),
    st.integers(),
    st.booleans(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(["3", "op", ""]),
    st.none(),
    st.lists(st.integers(), max_size=2),
)
oversize = st.builds(lambda n, c: c * n, st.integers(4000, 4600), st.sampled_from(["x", "é", "😀"]))
d_value = st.one_of(json_value, oversize, st.dictionaries(st.sampled_from(["token", "guild_id", "since"]), json_leaf))
packet_obj = st.builds(
    lambda base, extra: {**extra, **base},
    st.fixed_dictionaries({}, optional={"op": op_value, "d": d_value}),
    st.dictionaries(st.sampled_from(["s", "t", "op ", "D", "packet"]), json_leaf, max_size=2),
)
guild_value = st.one_of(
    st.integers(min_value=-5, max_value=2**65),
    st.from_regex(r"\A[0-9]{1,21}\Z"),
    st.sampled_from(["", "0", "abc", "١٢٣", "²", " 1", "1.5", "-1", str(2**64), str(2**64 - 1), "81384788765712384"]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.none(),
    st.lists(st.integers(), max_size=2),
)
send_obj = st.fixed_dictionaries({}, optional={"guild_id": guild_value, "packet": packet_obj | json_value})

#: Corners of JSON (and of the JSON library) that a Python object cannot express.
RAW_OPS = [b"3", b"4", b"8", b"31", b"43", b"2", b"3.0", b"03", b"1e0", b"true", b'"3"', b"-0", b"99999999999999999999"]
RAW_DS = [
    b"{}", b"null", b"NaN", b"Infinity", b"-Infinity", b"1e999", b"-1e999",
    b'"\\ud800"', b'"\\udfff\\ud800"', b'"\\ud83d\\ude00"', b'"\\u0000"', b'"a\\"b"',
    b"[" * 2000 + b"]" * 2000, b'{"a":1,"a":2}', b"[1,]", b"1.", b".5", b"tru", b'"' + b"x" * 4090 + b'"',
]
raw_packet = st.builds(
    lambda op, d, dup: b'{"op":%s,"d":%s%s}' % (op, d, b',"op":2' if dup else b""),
    st.sampled_from(RAW_OPS),
    st.sampled_from(RAW_DS),
    st.booleans(),
)
raw_send = st.builds(lambda gid, packet: b'{"guild_id":%s,"packet":%s}' % (gid, packet),
                     st.sampled_from([b'"1"', b"1", b'"01"', b"1e3", b'"\\u0031"', b"null"]), raw_packet)


def dumps(obj: object) -> bytes:
    return json.dumps(obj).encode()


#: Packets that are often valid (a sendable op, a random d): the path to Discord gets random data too.
likely_valid = st.fixed_dictionaries({"op": st.sampled_from(sorted(USER_SENDABLE_OPS)), "d": json_value})
message = st.one_of(
    st.tuples(st.just(SHARD_KEY), likely_valid.map(dumps)),
    st.tuples(st.just(SEND_KEY), st.fixed_dictionaries({"guild_id": guild_value, "packet": likely_valid}).map(dumps)),
    st.tuples(st.just(SHARD_KEY), packet_obj.map(dumps)),
    st.tuples(st.just(SEND_KEY), send_obj.map(dumps)),
    st.tuples(st.sampled_from([SHARD_KEY, SEND_KEY]), json_value.map(dumps)),
    st.tuples(st.sampled_from([SHARD_KEY, SEND_KEY]), st.binary(max_size=200)),
    st.tuples(st.just(SHARD_KEY), raw_packet),
    st.tuples(st.just(SEND_KEY), raw_send),
)


# -- the oracle ---------------------------------------------------------------------------------


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def verdict(key: str, body: bytes) -> tuple[dict | None, str | None]:
    """``(frame, None)`` if the worker must send ``frame`` ({op, d}) on shard 0, else
    ``(None, reason)`` with the rejection reason, None when validation itself misbehaved."""
    try:
        if key == SHARD_KEY:
            packet = outbound.parse_shard_packet(body)
        else:
            [routed] = outbound.parse_send(body, 1)  # one shard: never split
            assert routed.shard_id == 0
            packet = routed.packet
    except outbound.Rejected as exc:
        return None, exc.reason
    except Exception:  # noqa: BLE001 - a crash of the validator is bad input all the same
        return None, None
    try:
        frame = json.loads(packet.text, parse_constant=_no_constant)  # strict: RFC 8259
    except ValueError:
        return None, None
    # What the spec says of an accepted packet, checked independently of the validator.
    assert type(frame["op"]) is int and frame["op"] in USER_SENDABLE_OPS and set(frame) == {"op", "d"}
    assert len(packet.text.encode()) <= MAX_PAYLOAD_BYTES
    if key == SEND_KEY and "guild_id" in (sent := jsonlib.loads(body)):  # optional with d.guild_ids
        gid = sent["guild_id"]  # the worker's own (lenient) reading of the body
        assert (type(gid) is int or (type(gid) is str and gid.isascii() and gid.isdigit())) and 0 < int(gid) < 2**64
    return frame, None


def as_recorded(d: object) -> object:
    """The simulator records ``d`` with a ``token`` key redacted."""
    if isinstance(d, dict) and "token" in d:
        return {**d, "token": "<redacted>"}
    return d


def canonical(op: int, d: object) -> str:
    return json.dumps([op, d], sort_keys=True)


# -- the test -----------------------------------------------------------------------------------


@pytest.fixture(params=["ujson", "orjson"])
def codec(request):
    """Both codecs ``shard_worker.jsonlib`` can run on: ujson (the default without the speedups
    extra, and what the supervisor's children use in tests) and orjson."""
    getattr(jsonlib, f"use_{request.param}")()
    yield request.param
    importlib.reload(jsonlib)  # back to the environment's choice


def test_random_bytes_and_json_on_the_outbound_queues(amqp_url, rabbit, group, caplog, codec):
    caplog.set_level(logging.WARNING)
    assert jsonlib.NAME == codec
    shard_queue, send_queue = spectacles.shard_queue(group, 0), spectacles.send_queue(group)
    sent_valid: list[str] = []  # canonical [op, d] of every valid random packet published
    expected_reasons: Counter[str] = Counter()
    counts = Counter()

    with SimulatorThread(token=TOKEN, shard_count=1, heartbeat_interval_ms=5000) as sim:
        with WorkerThread(worker_config(sim, amqp_url, group, [0])) as worker:
            sim.wait_until(lambda s: 0 in s["ready"], timeout=60)
            rabbit.track(shard_queue, send_queue)
            rabbit.wait_consumed(shard_queue, send_queue)

            def rejected_total() -> int:
                return worker.call(lambda: sum(worker.worker.bridge.rejected.values()))

            def user_packets(snap: dict) -> list[dict]:
                return [r for r in snap["sent"] if r["op"] in USER_SENDABLE_OPS]

            def is_marker(record: dict) -> bool:
                d = record["d"]
                if record["op"] != 3 or not isinstance(d, dict) or not isinstance(d.get("activities"), list):
                    return False
                return any(isinstance(a, dict) and str(a.get("name", "")).startswith("fuzz-marker-") for a in d["activities"])

            @settings(max_examples=MAX_EXAMPLES, phases=(Phase.explicit, Phase.reuse, Phase.generate), deadline=None)
            @given(batch=st.lists(message, min_size=1, max_size=12))
            # The corners a lenient JSON library gets wrong, always tried first.
            @example(batch=[(SHARD_KEY, b'{"op":3,"d":NaN}'), (SEND_KEY, b'{"guild_id":"1","packet":{"op":3,"d":1e999}}')])
            @example(batch=[(SHARD_KEY, b'{"op":3,"d":"\\ud800"}'), (SEND_KEY, b'{"guild_id":"1","packet":{"op":8,"d":"\\udfff"}}')])
            def publish_batch(batch: list[tuple[str, bytes]]) -> None:
                for key, body in batch:
                    frame, reason = verdict(key, body)
                    if frame is not None:
                        if len(sent_valid) >= MAX_VALID:
                            counts["valid_skipped"] += 1
                            continue
                        sent_valid.append(canonical(frame["op"], as_recorded(frame["d"])))
                        counts["valid"] += 1
                    else:
                        counts["invalid"] += 1
                        if reason is not None:
                            expected_reasons[reason] += 1
                        else:
                            counts["invalid_by_spec"] += 1
                    note(f"{key} {body[:120]!r} -> {'send' if frame is not None else reason or 'must reject'}")
                    rabbit.publish(group, key, body)
                marker = f"fuzz-marker-{uuid.uuid4().hex}"
                counts["markers"] += 1
                good = {"op": 3, "d": {"since": None, "activities": [{"name": marker, "type": 0}], "status": "online", "afk": False}}
                rabbit.publish(group, SHARD_KEY, dumps(good))

                try:
                    snap = sim.wait_until(
                        lambda s: any(r["shard"] == 0 and is_marker(r) and r["d"]["activities"][0]["name"] == marker for r in s["sent"]),
                        timeout=20,
                    )
                except TimeoutError:
                    bridge = worker.call(lambda: (worker.worker.bridge.counters(), worker.worker.bridge.connected.is_set()))
                    raise AssertionError(
                        f"the valid packet after this batch never reached the simulator; worker alive "
                        f"{worker.alive}, AMQP bridge stats {bridge[0]}, connected {bridge[1]}, "
                        f"shard queue depth {rabbit.depth(shard_queue)}"
                    ) from None
                [record] = [r for r in snap["sent"] if is_marker(r) and r["d"]["activities"][0]["name"] == marker]
                assert record["d"] == good["d"]
                # Every invalid message so far rejected (the SEND queue may lag the shard queue) ...
                wait_for(lambda: rejected_total() == counts["invalid"], 20,
                         what=f"{counts['invalid']} rejections, worker counted {rejected_total()}")
                # ... and every valid one sent, as it was.
                snap = wait_for(
                    lambda: (s := sim.snapshot()) and len([r for r in user_packets(s) if not is_marker(r)]) >= len(sent_valid) and s,
                    20, what=f"{len(sent_valid)} valid random packets at the simulator",
                )
                got = sorted(canonical(r["op"], r["d"]) for r in user_packets(snap) if not is_marker(r))
                assert got == sorted(sent_valid)
                assert all(r["shard"] == 0 for r in user_packets(snap))

            publish_batch()

            print(f"fuzz ({codec}): {dict(counts)}; rejections by reason {dict(expected_reasons)}")
            assert counts["invalid"] > counts["valid"] > 0  # both paths were exercised
            # Rejected without requeue: the queues are empty and the worker still consumes them.
            wait_for(lambda: rabbit.depth(shard_queue) == 0 and rabbit.depth(send_queue) == 0, 30, what="empty queues")
            for queue in (shard_queue, send_queue):
                assert rabbit.channel.queue_declare(queue, durable=True, passive=True).method.consumer_count == 1
            rejected = worker.call(lambda: dict(worker.worker.bridge.rejected))
            assert sum(rejected.values()) == counts["invalid"]
            for reason, n in expected_reasons.items():
                assert rejected.get(reason, 0) >= n, (reason, rejected)
            assert worker.alive
            snap = sim.snapshot()
            assert snap["violations"] == []
            assert len(snap["connections"]) == 1 and snap["counters"]["identifies"] == 1  # never dropped
            assert worker.stop() == 0

    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors[:5]]
    lost = [r for r in caplog.records if "connection lost" in r.getMessage()]
    assert lost == [], [r.getMessage() for r in lost[:5]]
