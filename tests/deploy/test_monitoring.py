"""The Grafana dashboard and the Prometheus alert rules only use metrics and labels that exist:
those of docs/metrics.md, the Prometheus client's process_* collector, and ``up``. Runbook links
point at headings of docs/operations.md. (``make deploy-lint`` also has promtool check the PromQL
syntax and run the alert rules' unit tests.)"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final

import pytest
import yaml
from prometheus_client import ProcessCollector

from tests.deploy.unit_files import REPO

GRAFANA: Final = REPO / "deploy" / "grafana"
DASHBOARD: Final = GRAFANA / "flowcraft-puller-dashboard.json"
ALERTS: Final = GRAFANA / "flowcraft-puller-alerts.yml"
METRICS_DOC: Final = REPO / "docs" / "metrics.md"
OPERATIONS_DOC: Final = REPO / "docs" / "operations.md"

_TABLE_ROW: Final = re.compile(r"^\| `(flowcraft_\w+)` \| (counter|gauge|histogram) \|([^|]*)\|")
_STRING: Final = re.compile(r'"(?:[^"\\]|\\.)*"')
_MATCHERS: Final = re.compile(r"\{([^}]*)\}")
_MATCHER_LABEL: Final = re.compile(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)")
_GROUPING: Final = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_RANGE: Final = re.compile(r"\[[^\]]*\]")
_FUNCTION: Final = re.compile(r"(?<![\w.:])[a-zA-Z_][\w]*(?=\s*\()")
_IDENTIFIER: Final = re.compile(r"(?<![\w.:$])[a-zA-Z_:][\w:]*")
_KEYWORDS: Final = {
    *("and", "or", "unless", "bool", "offset", "inf", "nan"),
    *("by", "without", "on", "ignoring", "group_left", "group_right"),
}
_LABEL_VALUES: Final = re.compile(r"label_values\(\s*([a-zA-Z_:][\w:]*)")
_HISTOGRAM_SERIES: Final = ("_bucket", "_sum", "_count")
_TARGET_LABELS: Final = {"job", "instance"}


@dataclass(frozen=True)
class Metric:
    kind: str
    labels: frozenset[str]


def documented_metrics() -> dict[str, Metric]:
    """Series names of docs/metrics.md (histograms as their _bucket/_sum/_count series)."""
    metrics = {}
    for line in METRICS_DOC.read_text().splitlines():
        match = _TABLE_ROW.match(line)
        if not match:
            continue
        name, kind, labels = match.groups()
        metric = Metric(kind, frozenset(re.findall(r"`(\w+)`", labels)))
        if kind == "histogram":
            for suffix in _HISTOGRAM_SERIES:
                histogram_labels = metric.labels | {"le"} if suffix == "_bucket" else metric.labels
                metrics[name + suffix] = Metric(kind, histogram_labels)
        else:
            metrics[name] = metric
    return metrics


def standard_metrics() -> dict[str, Metric]:
    """The process_* series of the client's collector (as this platform exports them), and up."""
    names = {
        sample.name
        for family in ProcessCollector(registry=None).collect()
        for sample in family.samples
    }
    assert names, "the process collector exported nothing on this platform"
    return {name: Metric("standard", frozenset()) for name in names | {"up"}}


@dataclass(frozen=True)
class Parsed:
    metrics: frozenset[str]
    labels: frozenset[str]


def parse_promql(expr: str) -> Parsed:
    """Metric and label names of a PromQL expression, by regular expressions."""
    text = _STRING.sub('""', expr)
    labels: set[str] = set()
    for content in _MATCHERS.findall(text):
        labels.update(_MATCHER_LABEL.findall(content))
    text = _MATCHERS.sub(" ", text)
    for content in _GROUPING.findall(text):
        labels.update(name.strip() for name in content.split(",") if name.strip())
    text = _RANGE.sub(" ", _GROUPING.sub(" ", text))
    text = _FUNCTION.sub(" ", text)
    names = {name for name in _IDENTIFIER.findall(text) if name.lower() not in _KEYWORDS}
    return Parsed(frozenset(names), frozenset(labels))


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def dashboard_panels() -> Iterator[dict[str, Any]]:
    for panel in dashboard()["panels"]:
        yield panel
        yield from panel.get("panels", [])


def dashboard_queries() -> Iterator[tuple[str, str]]:
    for panel in dashboard_panels():
        for target in panel.get("targets", []):
            yield f"panel {panel['title']!r} {target['refId']}", target["expr"]
    for annotation in dashboard()["annotations"]["list"]:
        if "expr" in annotation:
            yield f"annotation {annotation['name']!r}", annotation["expr"]


def alert_rules() -> list[dict[str, Any]]:
    loaded = yaml.safe_load(ALERTS.read_text())
    return [rule for group in loaded["groups"] for rule in group["rules"]]


def all_queries() -> list[tuple[str, str]]:
    alerts = [(f"alert {rule['alert']}", rule["expr"]) for rule in alert_rules()]
    return [*dashboard_queries(), *alerts]


def heading_anchors(markdown: str) -> set[str]:
    """GitHub's anchors of the headings of a Markdown document."""
    anchors = set()
    for line in markdown.splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return anchors


def test_promql_parser_finds_metrics_and_labels() -> None:
    parsed = parse_promql(
        'histogram_quantile(0.95, sum by (le, endpoint) (rate(a_bucket{job=~"$job"}[5m])))'
        ' / on (instance) group_left b and time() - c{x!="y"} offset 5m > 1e3'
    )
    assert parsed.metrics == {"a_bucket", "b", "c"}
    assert parsed.labels == {"le", "endpoint", "job", "instance", "x"}


@pytest.mark.parametrize(("where", "expr"), all_queries())
def test_query_uses_only_existing_metrics_and_labels(where: str, expr: str) -> None:
    known = documented_metrics() | standard_metrics()
    parsed = parse_promql(expr)
    assert parsed.metrics, f"{where}: no metric found in {expr!r}"
    unknown = sorted(parsed.metrics - set(known))
    assert not unknown, f"{where}: metrics not in docs/metrics.md: {unknown}"
    allowed = _TARGET_LABELS.union(*(known[name].labels for name in parsed.metrics))
    assert parsed.labels <= allowed, f"{where}: unknown labels {sorted(parsed.labels - allowed)}"


def test_dashboard_variables_query_documented_metrics() -> None:
    known = documented_metrics()
    variables = dashboard()["templating"]["list"]
    queried = [v for v in variables if v["type"] == "query"]
    assert queried
    for variable in queried:
        metric = _LABEL_VALUES.search(variable["definition"])
        assert metric is not None, variable["definition"]
        assert metric.group(1) in known, variable["name"]


def test_dashboard_selects_a_prometheus_data_source_by_variable() -> None:
    board = dashboard()
    assert board["schemaVersion"] >= 39
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in dashboard_panels():
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert all(t["datasource"] == panel["datasource"] for t in panel["targets"])


def test_dashboard_panels_have_unique_ids_and_fit_the_grid() -> None:
    panels = list(dashboard_panels())
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids))
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0, panel["title"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]


def test_dashboard_covers_the_operational_questions() -> None:
    used = {name for _, expr in dashboard_queries() for name in parse_promql(expr).metrics}
    for metric in (
        "flowcraft_jobs_total",
        "flowcraft_queue_backlog_messages",
        "flowcraft_jobs_in_flight",
        "flowcraft_api_requests_total",
        "flowcraft_node_duration_seconds_bucket",
        "flowcraft_draining",
    ):
        assert metric in used, metric


def test_alert_rules_are_labelled_and_link_a_runbook() -> None:
    anchors = heading_anchors(OPERATIONS_DOC.read_text())
    names = [rule["alert"] for rule in alert_rules()]
    assert len(names) == len(set(names))
    for rule in alert_rules():
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        assert rule["annotations"]["description"], rule["alert"]
        document, _, anchor = rule["annotations"]["runbook"].partition("#")
        assert document == "docs/operations.md", rule["alert"]
        assert anchor in anchors, f"{rule['alert']}: no heading #{anchor} in docs/operations.md"


def test_alert_rules_cover_backlog_pulls_errors_and_restarts() -> None:
    used = {name for rule in alert_rules() for name in parse_promql(rule["expr"]).metrics}
    for metric in (
        "flowcraft_queue_backlog_messages",
        "flowcraft_last_pull_success_timestamp_seconds",
        "flowcraft_jobs_total",
        "process_start_time_seconds",
    ):
        assert metric in used, metric
