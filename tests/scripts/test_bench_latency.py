"""scripts/bench_latency.py's pure helpers: the stamp in a body, percentiles, Prometheus'
histogram_quantile over the confirm histogram of a scrape, the case syntax."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

import bench_latency  # noqa: E402


def test_parse_stamp_reads_the_nonce_of_any_encoding() -> None:
    assert bench_latency.parse_stamp(b'{"id":"1","nonce":"1765123456789012","x":1}') == 1765123456789012
    assert bench_latency.parse_stamp(b'{"nonce": "1765123456789012"}') == 1765123456789012
    # no nonce, a null nonce (other events), a snowflake-sized but short or non-numeric nonce
    assert bench_latency.parse_stamp(b'{"user_id":"5","timestamp":1765123456}') is None
    assert bench_latency.parse_stamp(b'{"nonce":null}') is None
    assert bench_latency.parse_stamp(b'{"nonce":"12345"}') is None
    assert bench_latency.parse_stamp(b'{"nonce":"abc1765123456789012"}') is None


def test_percentile_is_nearest_rank() -> None:
    values = list(range(1, 101))  # 1..100
    assert bench_latency.percentile(values, 0.5) == 50
    assert bench_latency.percentile(values, 0.99) == 99
    assert bench_latency.percentile(values, 1.0) == 100
    assert bench_latency.percentile([7], 0.99) == 7
    assert bench_latency.percentile([1, 2, 3], 0.9) == 3
    with pytest.raises(ValueError):
        bench_latency.percentile([], 0.5)
    with pytest.raises(ValueError):
        bench_latency.percentile([1], 0)


def test_summarize_in_milliseconds() -> None:
    out = bench_latency.summarize([1000 * k for k in range(1, 1001)])  # 1..1000 ms in µs
    assert out == {"count": 1000, "p50_ms": 500.0, "p90_ms": 900.0, "p99_ms": 990.0, "max_ms": 1000.0, "mean_ms": 500.5}
    assert bench_latency.summarize([]) == {"count": 0}
    assert bench_latency.summarize([1500, 500])["p50_ms"] == 0.5


def test_histogram_quantile_like_prometheus() -> None:
    inf = math.inf
    # 10 observations <= 1 ms, 90 in (1, 5] ms, none above
    buckets = [(0.001, 10), (0.005, 100), (0.01, 100), (inf, 100)]
    assert bench_latency.histogram_quantile(0.1, buckets) == pytest.approx(0.001)
    assert bench_latency.histogram_quantile(0.55, buckets) == pytest.approx(0.001 + 0.004 * 45 / 90)
    assert bench_latency.histogram_quantile(0.99, list(reversed(buckets))) == pytest.approx(0.001 + 0.004 * 89 / 90)
    # the rank in +Inf: the highest finite bound; no observations: None
    assert bench_latency.histogram_quantile(0.99, [(0.001, 1), (inf, 100)]) == 0.001
    assert bench_latency.histogram_quantile(0.5, [(0.001, 0), (inf, 0)]) is None
    assert bench_latency.histogram_quantile(0.5, []) is None


def test_confirm_buckets_sum_every_series() -> None:
    text = "\n".join([
        "# HELP spectacles_publish_confirm_latency_seconds x",
        'spectacles_publish_confirm_latency_seconds_bucket{group="0",le="0.001"} 3.0',
        'spectacles_publish_confirm_latency_seconds_bucket{group="0",le="+Inf"} 5.0',
        'spectacles_publish_confirm_latency_seconds_bucket{group="1",le="0.001"} 1.0',
        'spectacles_publish_confirm_latency_seconds_bucket{group="1",le="+Inf"} 2.0',
        'spectacles_publish_confirm_latency_seconds_count{group="1"} 2.0',
        'other_bucket{le="0.001"} 100.0',
    ])  # fmt: skip
    assert bench_latency.confirm_buckets(text) == {0.001: 4.0, math.inf: 7.0}


def test_parse_case() -> None:
    assert bench_latency.parse_case("issue:16:100") == {"name": "issue", "shards": 16, "rate": 100.0, "per_process": 16}
    assert bench_latency.parse_case("big:2000:2.5:500")["per_process"] == 500
    for bad in ("x:16", ":16:100", "x:0:100", "x:16:0", "x:16:1:0:9"):
        with pytest.raises(ValueError):
            bench_latency.parse_case(bad)
    for case in bench_latency.DEFAULT_CASES:
        bench_latency.parse_case(case)


def test_parse_case_auto_rate() -> None:
    assert bench_latency.parse_case("near:16:auto")["rate"] is None


def _step(offered: float, received: float, rate: float = 100, shards: int = 16) -> dict:
    return {"shards": shards, "rate_per_shard": rate, "offered_per_s": offered, "received_per_s": received}


def test_a_sweep_step_is_sustained_when_nothing_held_back() -> None:
    assert bench_latency.sustained(_step(1600, 1600), 1600)
    assert bench_latency.sustained(_step(1530, 1500), 1600)
    assert not bench_latency.sustained(_step(1500, 1500), 1600)  # the forwarder pushed back
    assert not bench_latency.sustained(_step(1600, 1560), 1600)  # the consumer fell behind
    assert not bench_latency.sustained({"error": "x", **_step(1600, 1600)}, 1600)
    assert not bench_latency.sustained(_step(0, 0), 1600)


def test_limit_is_the_highest_sustained_rate() -> None:
    steps = [_step(4800, 4800, 300), _step(7150, 7100, 450), _step(8000, 7000, 600)]
    assert bench_latency.limit_of(steps) == 7100
    assert bench_latency.limit_of([_step(100, 50, 300)]) is None
