"""docs/grafana/spectacles-dashboard.json against what the supervisor really exports.

The set of metric names is not written down here: a :class:`MetricsState` with two groups is fed
every kind of report the arbiter passes on, scraped with ``generate_latest`` and parsed back, so a
renamed or removed metric breaks this test rather than a dashboard in production.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from supervisor.observe.metrics import SHARD_STATES, STATE_CODE, MetricsState, build_registry

DASHBOARD = Path(__file__).resolve().parents[2] / "docs" / "grafana" / "spectacles-dashboard.json"
READY = STATE_CODE["ready"]

# -- extracting metric names from PromQL ------------------------------------------------------

#: Words of PromQL that look like identifiers but are not metric names. Functions and aggregations
#: written as ``name(`` are skipped anyway; these are the ones that can stand before a space.
PROMQL_WORDS = frozenset({
    # aggregation operators (``sum by (x) (...)``, ``sum without (x) (...)``)
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk",
    "topk", "quantile", "limitk", "limit_ratio",
    # binary operators and modifiers
    "and", "or", "unless", "atan2", "bool", "by", "without", "on", "ignoring", "group_left",
    "group_right", "offset",
    # literals and @ modifiers
    "inf", "nan", "start", "end",
})  # fmt: skip

_STRING = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(
    r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", re.IGNORECASE
)
_VARIABLE = re.compile(r"\$(?:\{[^}]*\}|\w+)")
#: an identifier not glued to a number, a dot or a ``$``; what follows it is checked below
_IDENTIFIER = re.compile(r"(?<![\w:.$])([A-Za-z_:][\w:]*)")
_LABEL_VALUES = re.compile(r"^\s*label_values\s*\((.*),\s*\w+\s*\)\s*$", re.DOTALL)


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects.

    Label values (strings) go first, then label matchers (``{...}``), ranges and subqueries
    (``[...]``), grouping clauses (``by (...)``, ``on (...)``, ...) and Grafana variables
    (``$job``, ``$__rate_interval``). What remains that is an identifier, not followed by ``(``
    (a function or an aggregation) and not a PromQL word, is a metric name.
    """
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    text = _VARIABLE.sub(" ", text)
    names = set()
    for match in _IDENTIFIER.finditer(text):
        name = match.group(1)
        rest = text[match.end():].lstrip()
        if rest.startswith("("):
            continue  # rate(, sum (, histogram_quantile(
        if name.lower() in PROMQL_WORDS:
            continue
        names.add(name)
    return names


def variable_query_names(query: str) -> set[str]:
    """Metric names of a Grafana Prometheus variable query (``label_values(selector, label)``)."""
    match = _LABEL_VALUES.match(query)
    return metric_names(match.group(1) if match else query)


def unknown_metrics(expr: str, known: set[str]) -> set[str]:
    return metric_names(expr) - known


# -- what the project exports -----------------------------------------------------------------


def _shard_report(state: str, seq: int) -> dict[str, Any]:
    return {
        "state": state, "seq": seq, "session": None, "latency_ms": 41.5, "received": 12,
        "published": 10, "reconnects": 1, "identifies": 1, "resumes": 1, "sent": 2, "outbox": 1,
    }  # fmt: skip


def _process_report() -> dict[str, Any]:
    return {
        "buffered": 3,
        "buffered_bytes": 300,
        "broker_connected": True,
        "received_by_type": {"MESSAGE_CREATE": 20, "READY": 2},
        "published_by_type": {"MESSAGE_CREATE": 18, "READY": 2},
        "confirm_latency": {"bounds": [0.01, 0.1], "counts": [1, 1, 0], "sum": 0.1, "count": 2},
        "rejected": {"reserved_op": 1},
        "broker": {"published": 20, "confirmed": 19},
    }


def scrape() -> dict[str, set[str]]:
    """``{sample name: its label names}`` of a fully fed :class:`MetricsState`."""
    groups = {0: [0, 1, 2], 1: [3, 4, 5]}
    state = MetricsState(groups)
    for group, shards in groups.items():
        pid = 100 + group
        state.child_started(group, pid, state.clock())
        state.child_report(group, pid, _process_report())
        state.shard_reports(group, pid, {str(s): _shard_report("ready", 10 + s) for s in shards})
        state.child_sampled(group, pid, 50_000_000, 12.5)
    state.set_supervisor(
        identify_budget_remaining=900, identifies_granted=3, identify_waiting=0, shards_ready=4
    )
    text = generate_latest(build_registry(state)).decode()
    samples: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, set()).update(sample.labels)
    return samples


@pytest.fixture(scope="module")
def exported() -> dict[str, set[str]]:
    return scrape()


@pytest.fixture(scope="module")
def known(exported) -> set[str]:
    return set(exported)


# -- the dashboard ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def walk(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, with those nested in (collapsed) rows."""
    for panel in panels:
        yield panel
        yield from walk(panel.get("panels") or [])


def exprs(panel: dict[str, Any]) -> list[str]:
    return [t["expr"] for t in panel.get("targets") or [] if t.get("expr")]


def all_panels(dashboard) -> list[dict[str, Any]]:
    return list(walk(dashboard["panels"]))


def data_panels(dashboard) -> list[dict[str, Any]]:
    return [p for p in all_panels(dashboard) if p.get("type") != "row"]


def uses(panel: dict[str, Any], metric: str) -> bool:
    return any(metric in metric_names(e) for e in exprs(panel))


# -- the extractor itself ---------------------------------------------------------------------

KNOWN_FOR_EXTRACTOR = {
    "spectacles_shard_state", "spectacles_events_published_total", "spectacles_child_rss_bytes",
    "spectacles_publish_confirm_latency_seconds_bucket",
    "spectacles_supervisor_process_resident_memory_bytes",
    "spectacles_child_up", "spectacles_buffer_bytes",
}  # fmt: skip


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ('sum by (type) (rate(spectacles_events_published_total{job=~"$job"}[1m]))',
         {"spectacles_events_published_total"}),
        ("count(spectacles_shard_state != 5) or vector(0)", {"spectacles_shard_state"}),
        ("histogram_quantile(0.99, sum by (le, group) "
         "(rate(spectacles_publish_confirm_latency_seconds_bucket[$__rate_interval])))",
         {"spectacles_publish_confirm_latency_seconds_bucket"}),
        ("spectacles_child_rss_bytes or spectacles_supervisor_process_resident_memory_bytes",
         {"spectacles_child_rss_bytes", "spectacles_supervisor_process_resident_memory_bytes"}),
        ('count_values("code", spectacles_shard_state{instance=~"$instance", job="a b"})',
         {"spectacles_shard_state"}),
        ("spectacles_child_rss_bytes / on (group) group_left (instance) spectacles_child_up",
         {"spectacles_child_rss_bytes", "spectacles_child_up"}),
        ("sum without (shard, group) (spectacles_shard_state > bool 4)", {"spectacles_shard_state"}),
        ("1e3 * max_over_time(spectacles_buffer_bytes[$__range:1m] offset 5m)", {"spectacles_buffer_bytes"}),
        ("spectacles_child_up\n  and\nspectacles_shard_state",
         {"spectacles_child_up", "spectacles_shard_state"}),
        # misspelled: extracted as written, so the dashboard check reports it
        ("count(spectacles_shard_sate != 5) or vector(0)", {"spectacles_shard_sate"}),
        ("sum(rate(spectacles_events_publish_total[5m]))", {"spectacles_events_publish_total"}),
    ],
)  # fmt: skip
def test_metric_names_of_promql(expr, names):
    assert metric_names(expr) == names


@pytest.mark.parametrize(
    ("expr", "unknown"),
    [
        ("count(spectacles_shard_state != 5) or vector(0)", set()),
        ("count(spectacles_shard_sate != 5) or vector(0)", {"spectacles_shard_sate"}),
        ("sum(rate(spectacles_events_publish_total[5m]))", {"spectacles_events_publish_total"}),
        # a histogram is only exported as _bucket/_sum/_count series
        ("histogram_quantile(0.5, rate(spectacles_publish_confirm_latency_seconds[5m]))",
         {"spectacles_publish_confirm_latency_seconds"}),
    ],
)  # fmt: skip
def test_unknown_metrics_are_reported(expr, unknown):
    assert unknown_metrics(expr, KNOWN_FOR_EXTRACTOR) == unknown


def test_label_values_query():
    assert variable_query_names('label_values(spectacles_shards_ready{job=~"$job"}, instance)') == {
        "spectacles_shards_ready"
    }


def test_scrape_has_every_kind_of_series(exported):
    """The fed state really exports the optional series (gauges absent until reported, the
    histogram's buckets), or the name check below would be checking against too little."""
    for name in (
        "spectacles_heartbeat_latency_seconds", "spectacles_shard_seq", "spectacles_outbound_queued_messages",
        "spectacles_publish_confirm_latency_seconds_bucket",
        "spectacles_publish_confirm_latency_seconds_count",
        "spectacles_child_rss_bytes", "spectacles_identify_budget_remaining", "spectacles_buffer_messages",
    ):  # fmt: skip
        assert name in exported, name
    assert any(name.startswith("spectacles_supervisor_process_") for name in exported)


# -- the dashboard against the exports --------------------------------------------------------


def test_dashboard_is_an_importable_grafana_dashboard(dashboard):
    assert 36 <= dashboard["schemaVersion"] <= 41
    assert dashboard["title"] and dashboard["uid"]
    assert dashboard.get("id") is None
    inputs = {i["name"]: i for i in dashboard["__inputs"]}
    assert inputs["DS_PROMETHEUS"]["type"] == "datasource"
    assert inputs["DS_PROMETHEUS"]["pluginId"] == "prometheus"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    # importing picks the data source: the input is the variable's default
    assert "${DS_PROMETHEUS}" in json.dumps(variables["datasource"]["current"])
    ids = [p["id"] for p in all_panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in all_panels(dashboard):
        pos = panel["gridPos"]
        assert {"h", "w", "x", "y"} <= set(pos) and pos["x"] + pos["w"] <= 24, panel["title"]


def _references_variable(datasource: Any) -> bool:
    return isinstance(datasource, dict) and datasource.get("uid") in ("${datasource}", "$datasource")


def test_every_panel_and_query_uses_the_datasource_variable(dashboard):
    for panel in data_panels(dashboard):
        assert _references_variable(panel.get("datasource")), panel["title"]
        assert panel.get("targets"), f"{panel['title']}: no query"
        for target in panel["targets"]:
            assert _references_variable(target.get("datasource")), panel["title"]
            assert target.get("expr"), panel["title"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            assert _references_variable(variable["datasource"]), variable["name"]


def test_every_metric_in_the_dashboard_is_exported(dashboard, known):
    unknown = {}
    seen = set()
    for panel in data_panels(dashboard):
        for expr in exprs(panel):
            names = metric_names(expr)
            assert names, f"{panel['title']}: no metric found in {expr!r}"
            seen |= names
            if missing := names - known:
                unknown[f"{panel['title']}: {expr}"] = sorted(missing)
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
            if missing := variable_query_names(query) - known:
                unknown[f"variable {variable['name']}: {query}"] = sorted(missing)
    assert not unknown, unknown
    assert len(seen) >= 15  # the walk found the queries, nested rows included


@pytest.mark.parametrize(
    "metric",
    [
        "spectacles_shard_state",
        "spectacles_events_published_total",
        "spectacles_events_received_total",
        "spectacles_publish_confirm_latency_seconds_bucket",
        "spectacles_child_rss_bytes",
        "spectacles_supervisor_process_resident_memory_bytes",
        "spectacles_identify_budget_remaining",
        "spectacles_identifies_granted_total",
        "spectacles_identify_requests_waiting",
    ],
)
def test_a_panel_for_each_topic(dashboard, metric):
    assert any(uses(p, metric) for p in data_panels(dashboard)), metric


def test_nested_row_panels_are_walked(dashboard):
    nested = [p for row in dashboard["panels"] if row.get("type") == "row" for p in row.get("panels") or []]
    assert nested, "the dashboard has a collapsed row; its panels must be checked too"
    assert all(p in all_panels(dashboard) for p in nested)


def _mappings(panel: dict[str, Any]) -> list[dict[str, Any]]:
    config = panel.get("fieldConfig") or {}
    found = list((config.get("defaults") or {}).get("mappings") or [])
    for override in config.get("overrides") or []:
        for prop in override.get("properties") or []:
            if prop.get("id") == "mappings":
                found.extend(prop.get("value") or [])
    return found


def test_shard_state_overview_maps_every_state(dashboard):
    overview = [
        p for p in data_panels(dashboard)
        if p["type"] in ("state-timeline", "status-history", "table") and uses(p, "spectacles_shard_state")
    ]  # fmt: skip
    assert {p["type"] for p in overview} >= {"table"}
    assert any(p["type"] in ("state-timeline", "status-history") for p in overview)
    for panel in overview:
        options: dict[str, dict[str, Any]] = {}
        for mapping in _mappings(panel):
            if mapping.get("type") == "value":
                options.update(mapping["options"])
        for name in SHARD_STATES:
            code = str(STATE_CODE[name])
            assert code in options, f"{panel['title']}: no mapping for {code} ({name})"
            assert options[code]["text"].lower() == name, panel["title"]
            colour = options[code].get("color", "")
            if name == "ready":
                assert "green" in colour, panel["title"]
            else:
                assert colour and "green" not in colour, f"{panel['title']}: {name} is {colour!r}"


#: ``spectacles_shard_state{...} != 5``: the shards not READY
NOT_READY = re.compile(rf"spectacles_shard_state(\{{[^}}]*\}})?\s*!=\s*{READY}\b")


def _lists_not_ready(panel: dict[str, Any]) -> bool:
    return any(NOT_READY.search(e) for e in exprs(panel))


def test_not_ready_shards_are_counted_and_listed(dashboard):
    stats = [p for p in data_panels(dashboard) if p["type"] == "stat" and _lists_not_ready(p)]
    assert stats, f"a stat counting spectacles_shard_state != {READY}"
    assert any(e.startswith("count(") and "or vector(0)" in e for p in stats for e in exprs(p))
    tables = [p for p in data_panels(dashboard) if p["type"] == "table" and _lists_not_ready(p)]
    assert tables, "a table of the shards not READY"
    for target in tables[0]["targets"]:
        assert target.get("instant") and target.get("format") == "table"


_AGGREGATION = re.compile(
    r"\b(?:sum|count|avg|min|max|quantile|topk|bottomk|count_values|group)\s*(?:by|without|\()"
)


def _grouping_labels(expr: str, keywords: str = "by|on") -> list[set[str]]:
    """The label sets of the ``by (...)`` / ``on (...)`` clauses of ``expr``."""
    return [{label.strip() for label in clause.split(",")}
            for clause in re.findall(rf"\b(?:{keywords})\s*\(([^)]*)\)", expr)]  # fmt: skip


def test_per_shard_series_are_aggregated(dashboard, exported):
    """At 5000 shards a graph line per shard is too much: every query over a per-shard metric
    aggregates it away, but for the instant list of the shards not READY."""
    per_shard = {name for name, labels in exported.items() if "shard" in labels}
    assert "spectacles_shard_state" in per_shard and "spectacles_shard_seq" in per_shard
    for panel in data_panels(dashboard):
        for target in panel["targets"]:
            expr = target["expr"]
            if not metric_names(expr) & per_shard:
                continue
            if panel["type"] == "table" and target.get("instant") and NOT_READY.search(expr):
                continue
            assert _AGGREGATION.search(expr), f"{panel['title']}: {expr}"
            for labels in _grouping_labels(expr):
                assert "shard" not in labels, f"{panel['title']}: {expr}"


def test_histogram_quantiles_keep_le(dashboard):
    for panel in data_panels(dashboard):
        for expr in exprs(panel):
            if "histogram_quantile" in expr:
                clauses = _grouping_labels(expr, "by")
                assert clauses and all("le" in labels for labels in clauses), expr


def test_confirm_latency_p99_is_on_a_visible_panel_in_seconds(dashboard):
    """Issue 23: the p99 of the publish-confirm histogram is shown, not hidden in a collapsed row,
    and its axis is a time (Prometheus gives seconds)."""
    visible = [p for p in dashboard["panels"] if p.get("type") != "row"]  # collapsed rows nest theirs
    p99 = re.compile(r"histogram_quantile\(\s*0\.99\s*,.*spectacles_publish_confirm_latency_seconds_bucket")
    panels = [p for p in visible if any(p99.search(e) for e in exprs(p))]
    assert panels, "no visible panel plots the confirm-latency p99"
    for panel in panels:
        assert "p99" in panel["title"] and "confirm" in panel["title"].lower(), panel["title"]
        assert panel["fieldConfig"]["defaults"].get("unit") == "s", panel["title"]
