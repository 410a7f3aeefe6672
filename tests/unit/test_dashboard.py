"""``dashboards/cachebus.json`` is a valid Grafana dashboard whose every PromQL query
names only metrics the code exports, and the docs name no metric the code does not
export. The exported names come from the code's registries: the worker's and the
consistency monitor's (prometheus_client's global registry, where their modules
register), and the library exporter's collector."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import promql_parser
import pytest
from prometheus_client import REGISTRY
from prometheus_client.metrics_core import Metric

import worker.metrics
import worker.monitor_stats
from cachebus.prometheus import LayerCollector

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "dashboards" / "cachebus.json"
DOCS = [ROOT / "README.md", ROOT / "docs" / "operations.md", ROOT / "schemas" / "README.md"]
SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_sum", "_count"),
    "summary": ("", "_sum", "_count"),
    "gauge": ("",),
    "info": ("_info",),
    "unknown": ("",),
}


def sample_names(families: list[Metric]) -> set[str]:
    """The names a scrape shows for these families (``_total``, ``_bucket``...)."""
    return {f.name + suffix for f in families for suffix in SUFFIXES[f.type]}


def exported() -> set[str]:
    assert worker.metrics.EVENT_LAG_SECONDS and worker.monitor_stats.CHECKS  # registered
    names = sample_names(list(REGISTRY.collect()))
    names |= sample_names(list(LayerCollector().describe()))
    return names


def test_registries_export_what_the_dashboard_is_about() -> None:
    names = exported()
    for name in (
        "cachebus_events_total",
        "cachebus_event_lag_seconds_bucket",
        "cachebus_cache_hits_total",
        "cachebus_consistency_violations_total",
    ):
        assert name in names
    assert not any("_ms" in n for n in names if n.startswith("cachebus_")), "base units"


GRAFANA_RANGES = re.compile(r"\$__(?:rate_interval|interval|range)\b")


def metric_names(expr: str) -> list[str]:
    """The metric names a PromQL expression selects, by a real PromQL parser
    (promql-parser, the Rust one of GreptimeDB): a syntax error fails the test. Grafana's
    range variables are given a duration first (``$layer``-style variables only occur
    inside label-matcher strings here)."""
    tree = promql_parser.parse(GRAFANA_RANGES.sub("5m", expr))
    names: list[str] = []

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            names.append(node.name)

    promql_parser.walk(tree, visit)
    return names


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ("sum by (outcome) (rate(cachebus_events_total[$__rate_interval]))",
         ["cachebus_events_total"]),
        ('histogram_quantile(0.99, sum by (le) (rate(a_bucket{x="y(", le!="1"}[5m])))',
         ["a_bucket"]),
        ("a / on (layer) group_left b offset 5m > bool 1", ["a", "b"]),
        ("sum(x) without (instance) + count(y)", ["x", "y"]),
    ],
)
def test_metric_names_of_promql(expr: str, names: list[str]) -> None:
    assert metric_names(expr) == names


def test_a_promql_syntax_error_fails() -> None:
    with pytest.raises(ValueError):
        metric_names("sum(rate(cachebus_events_total[5m])")


def dashboard() -> dict[str, Any]:
    data = json.loads(DASHBOARD.read_text("utf-8"))
    assert isinstance(data, dict)
    return data


def test_dashboard_queries_name_exported_metrics() -> None:
    names = exported()
    unknown: dict[str, list[str]] = {}
    checked = 0
    for panel in dashboard()["panels"]:
        for target in panel.get("targets", []):
            found = metric_names(target["expr"])
            assert found, f"panel {panel['title']!r}: no metric in {target['expr']!r}"
            checked += len(found)
            for name in found:
                if name not in names:
                    unknown.setdefault(panel["title"], []).append(name)
    assert checked >= 20
    assert not unknown, f"metrics the code does not export: {unknown}"


def test_dashboard_is_valid() -> None:
    data = dashboard()
    assert data["title"] and data["uid"] and isinstance(data["schemaVersion"], int)
    assert any(i["name"] == "DS_PROMETHEUS" and i["pluginId"] == "prometheus"
               for i in data["__inputs"])
    variables = {v["name"]: v for v in data["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    ids = [p["id"] for p in data["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    cells: set[tuple[int, int]] = set()
    graphs = 0
    for panel in data["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24 and grid["h"] > 0 and grid["w"] > 0
        area = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not area & cells, f"panel {panel['title']!r} overlaps another"
        cells |= area
        if panel["type"] == "row":
            continue
        graphs += 1
        assert panel["type"] in {"timeseries", "stat"}, panel["type"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
        assert panel["targets"], panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs))
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${DS_PROMETHEUS}"
            assert target["expr"].strip()
    assert graphs >= 15


def test_docs_name_only_exported_metrics() -> None:
    """Every ``cachebus_*`` metric the README and docs name in inline code exists (a
    rename such as cachebus_event_lag_ms -> cachebus_event_lag_seconds leaves no stale
    reference)."""
    names = exported()
    families = {n.removesuffix(s) for n in names for s in ("_total", "_bucket", "_sum", "_count")}
    stale = {}
    for path in DOCS:
        text = re.sub(r"renamed from\s+`cachebus_\w+`", "", path.read_text("utf-8"))
        # Inline code that starts with a metric name (`cachebus_x_total{label}`).
        for name in re.findall(r"`(cachebus_[a-z0-9_]+)[^`\n]*`", text):
            if name not in names and name not in families:
                stale.setdefault(name, path.name)
    assert not stale, f"documented metrics the code does not export: {stale}"
