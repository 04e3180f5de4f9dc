"""zstd-stream end to end (issue 12): simulator → worker → real RabbitMQ over
``compress=zstd-stream``: the stream, a dispatch of several MB, resumes (a new zstd context per
connection), and the worker's one-line refusal when no zstd library is installed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from shard_worker import spectacles
from shard_worker.config import CONFIG_ENV, TOKEN_ENV, WorkerConfig
from supervisor.simulator import SimulatorThread
from supervisor.simulator.payloads import DISPATCH_TYPES
from tests.helpers import TOKEN, WorkerThread, wait_for, worker_config

REPO = Path(__file__).resolve().parents[2]
BIG = "BIG_GUILD_CREATE"


def big_guild_create(megabytes: int) -> dict:
    """A GUILD_CREATE-like ``d`` of about ``megabytes`` MB (members, channels, non-ASCII)."""
    members = []
    size = 0
    i = 0
    while size < megabytes * 1024 * 1024:
        member = {
            "user": {"id": str(10**17 + i), "username": f"m\u00e9mber {i}", "avatar": None,
                     "global_name": f"Member \u2728 {i}"},
            "roles": [str(10**17 + i % 17), str(10**17 + i % 5)],
            "joined_at": "2020-01-01T00:00:00.000000+00:00", "deaf": False, "mute": False,
        }
        members.append(member)
        size += len(json.dumps(member))
        i += 1
    channels = [{"id": str(10**17 + c), "name": f"channel-{c}", "type": 0} for c in range(500)]
    return {"id": "81384788765712384", "name": "big", "member_count": len(members),
            "members": members, "channels": channels}


def bind_events(rabbit, group: str, events) -> dict[str, str]:
    queues = {}
    for event in events:
        queue = spectacles.queue_name(group, event, "zstd")
        rabbit.bind(group, queue, event)
        queues[event] = queue
    return queues


def test_the_stream_and_a_several_mb_dispatch_arrive_intact(amqp_url, rabbit, group):
    per_shard = 300
    big = big_guild_create(5)
    frame = json.dumps({"t": BIG, "s": 10_000, "op": 0, "d": big}).encode()
    assert len(frame) > 5_000_000
    # A 1 s heartbeat made a loaded machine's late ACK a zombie: a RESUME, one RESUMED more.
    with SimulatorThread(token=TOKEN, shard_count=2, events_per_shard=per_shard,
                         heartbeat_interval_ms=15000) as sim:
        queues = bind_events(rabbit, group, (*DISPATCH_TYPES, BIG))
        rabbit.track(*(spectacles.shard_queue(group, s) for s in (0, 1)),
                     spectacles.send_queue(group))
        config = worker_config(sim, amqp_url, group, [0, 1], compress="zstd-stream")
        with WorkerThread(config) as worker:
            sim.wait_until(
                lambda s: all(len(s["dispatched"].get(i, [])) >= 3 + per_shard for i in (0, 1)),
                timeout=60,
            )
            result = sim.call("send_raw", 0, frame, True)
            assert result["bytes"] < len(frame) // 5  # through the connection's zstd stream
            sim.call("emit", 0, 20, "MESSAGE_CREATE")  # the stream goes on after it
            bridge = worker.worker.bridge
            total = 2 * (3 + per_shard) + 1 + 20
            def confirmed() -> bool:
                return worker.call(lambda: bridge.buffered == 0 and bridge.confirmed >= total)

            wait_for(confirmed, 60, what="confirms")
            assert worker.worker.runners[0].machine.bad_frames == 0
            final = sim.snapshot()
            sent = {}
            for shard in (0, 1):
                session_id = final["shards"][shard]["session_id"]
                for item in sim.call("history", session_id):
                    sent[spectacles.message_id(shard, session_id, item["s"])] = item
            assert worker.stop() == 0
    got = {}
    for event, queue in queues.items():
        for method, props, body in rabbit.get_all(queue):
            assert method.routing_key == event
            got[props.message_id] = (event, json.loads(body))
    [big_id] = [mid for mid, (event, _) in got.items() if event == BIG]
    assert got.pop(big_id)[1] == big  # 5 MB through zstd, decoded equal
    assert set(got) == set(sent) and len(got) == total - 1, "every dispatch once, nothing else"
    for message_id, (event, body) in got.items():
        assert sent[message_id]["t"] == event and body == sent[message_id]["d"]
    assert {c["compression"] for c in final["connections"]} == {"zstd-stream"}
    assert final["resumes"] == [] and len(final["connections"]) == 2


def test_resumes_over_zstd_get_a_new_context(amqp_url, rabbit, group):
    queues = bind_events(rabbit, group, ("MESSAGE_CREATE",))
    rabbit.track(spectacles.shard_queue(group, 0), spectacles.send_queue(group))
    with SimulatorThread(token=TOKEN, shard_count=1, events_per_shard=100,
                         heartbeat_interval_ms=1000, reconnect_grace_s=0.5) as sim:
        config = worker_config(sim, amqp_url, group, [0], compress="zstd-stream")
        with WorkerThread(config) as worker:
            sim.wait_until(lambda s: len(s["dispatched"].get(0, [])) >= 103, timeout=60)
            session = sim.snapshot()["shards"][0]["session_id"]
            # op 7: a new connection, a new zstd frame; the RESUME is read through it
            sim.call("reconnect", 0)
            sim.wait_until(lambda s: len([r for r in s["resumes"] if r["result"] == "ok"]) == 1
                           and 0 in s["ready"], timeout=30)
            sim.call("emit", 0, 30, "MESSAGE_CREATE")
            # a broken zstd stream: the connection is dropped and resumed, never skipped on
            sim.call("send_raw", 0, b"\x28\xb5\x2f\xfd\x00\x00\x16\x00\x00xx", False)
            sim.wait_until(lambda s: len([r for r in s["resumes"] if r["result"] == "ok"]) == 2
                           and 0 in s["ready"], timeout=30)
            sim.call("emit", 0, 30, "MESSAGE_CREATE")
            runner = worker.worker.runners[0]
            wait_for(lambda: worker.call(lambda: runner.machine.seq) >= 163, 30,
                     what="events after the resumes")
            bridge = worker.worker.bridge
            wait_for(lambda: worker.call(lambda: bridge.buffered) == 0, 30, what="confirms")
            snap = sim.snapshot()
            history = sim.call("history", session)
            assert worker.stop() == 0
    assert [r["session_id"] for r in snap["resumes"]] == [session, session]
    assert len([i for i in snap["identifies"] if i["accepted"]]) == 1  # never a new IDENTIFY
    assert {c["compression"] for c in snap["connections"]} == {"zstd-stream"}
    expected = [h["d"] for h in history if h["t"] == "MESSAGE_CREATE"]
    got = [json.loads(body) for _, _, body in rabbit.get_all(queues["MESSAGE_CREATE"])]
    # at least once across a resume: every event is there, in order once duplicates are dropped
    unique = list({json.dumps(d, sort_keys=True): d for d in got}.values())
    assert unique == expected and len(expected) >= 60


def test_the_worker_refuses_zstd_stream_without_a_library_in_one_line():
    config = WorkerConfig(shard_ids=[0], shard_count=1, gateway_url="ws://127.0.0.1:9",
                          compress="zstd-stream")
    hide = ("import sys; sys.modules['backports.zstd'] = sys.modules['compression.zstd'] = None; "
            "from shard_worker.__main__ import main; sys.exit(main())")
    env = {**os.environ, CONFIG_ENV: config.to_json(), TOKEN_ENV: TOKEN}
    env.pop("SPECTACLES_IPC_FD", None)
    proc = subprocess.run([sys.executable, "-c", hide], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "zstd-stream needs a zstd library" in lines[0], proc.stderr
    assert "spectacles-supervisor[zstd]" in lines[0] and "Traceback" not in proc.stderr


def test_worker_config_compress_names_and_older_json():
    # The configuration a child reads (stdin, or SPECTACLES_WORKER_CONFIG by hand) may come from
    # a version whose compress was a bool: true / false keep meaning zlib-stream / none.
    new = WorkerConfig(shard_ids=[0], shard_count=1, gateway_url="ws://g", token=TOKEN,
                       compress="zstd-stream")
    data = json.loads(new.to_json())
    assert data["compress"] == "zstd-stream"
    assert WorkerConfig.from_json(new.to_json(), TOKEN) == new
    for old, name in ((True, "zlib-stream"), (False, "none")):
        data["compress"] = old
        assert WorkerConfig.from_dict(data, TOKEN).compress == name
    del data["compress"]  # older still: not there at all
    assert WorkerConfig.from_dict(data, TOKEN).compress == "zlib-stream"
    data["compress"] = "gzip"
    try:
        WorkerConfig.from_dict(data, TOKEN)
    except ValueError as error:  # read_config turns it into one "bad configuration" line
        assert "expected zlib-stream, zstd-stream or none" in str(error)
    else:
        raise AssertionError("a bad compress name was accepted")
