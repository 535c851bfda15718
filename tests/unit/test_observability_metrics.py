"""The Prometheus exposition of ``Metrics``, parsed back with the client's own parser."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from flowcraft_puller import __version__
from flowcraft_puller.observability.metrics import (
    API_ENDPOINTS,
    JOB_OUTCOMES,
    NODE_OUTCOMES,
    REJECT_REASONS,
    RETRY_REASONS,
    RUN_STATUSES,
    Metrics,
)

DOCS = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"


def families(metrics: Metrics) -> dict[str, Metric]:
    """Families by their exposed name (counters with their ``_total``), ``_created`` dropped."""
    parsed = text_string_to_metric_families(generate_latest(metrics.registry).decode())
    result = {}
    for family in parsed:
        if family.name.endswith("_created"):
            continue
        name = family.name + "_total" if family.type == "counter" else family.name
        result[name] = family
    return result


def value(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def exercise(metrics: Metrics) -> None:
    """Touch every metric once, so that every family has samples with its labels."""
    metrics.pulled("jobs", 3, backlog=40)
    metrics.pull_failed("jobs")
    metrics.acked("jobs", 2)
    metrics.retried("jobs", "busy")
    metrics.rejected("jobs", "malformed")
    metrics.leases_expired("jobs")
    metrics.job_finished("jobs", "orders", "completed", 0.02)
    metrics.node_finished("orders", "completed", 0.01)
    metrics.set_in_flight(2)
    metrics.set_max_in_flight(64)
    metrics.api_request("batch", 200, 0.004)
    metrics.run_finished("orders", "completed")
    metrics.commit_succeeded()
    metrics.record_loop_lag(0.001, 0.003)
    metrics.set_draining(True)
    metrics.handed_back("jobs", 1)
    metrics.shut_down("graceful")
    metrics.reloaded(ok=True)


def documented_metrics() -> dict[str, tuple[str, set[str]]]:
    """``docs/metrics.md``'s metric table: name → (type, label names)."""
    rows = re.findall(r"^\| `(flowcraft_\w+)` \| (\w+) \|([^|]*)\|", DOCS.read_text(), re.M)
    return {name: (kind, set(re.findall(r"`(\w+)`", labels))) for name, kind, labels in rows}


def test_every_metric_matches_its_row_in_docs_metrics_md() -> None:
    metrics = Metrics(queues=["jobs"], blueprints=["orders"])
    exercise(metrics)
    exposed = {
        name: (family.type, {k for s in family.samples for k in s.labels} - {"le"})
        for name, family in families(metrics).items()
        if name.startswith("flowcraft_")
    }
    assert exposed == documented_metrics()


@pytest.mark.parametrize(
    ("label_cell", "values"),
    [
        ("`outcome` (`flowcraft_jobs_total`, `flowcraft_job_duration_seconds`)", JOB_OUTCOMES),
        ("`outcome` (`flowcraft_node_duration_seconds`)", NODE_OUTCOMES),
        ("`reason` (`flowcraft_messages_retried_total`)", RETRY_REASONS),
        ("`reason` (`flowcraft_messages_rejected_total`)", REJECT_REASONS),
        ("`status` (`flowcraft_runs_finished_total`)", RUN_STATUSES),
        ("`endpoint`", API_ENDPOINTS),
    ],
)
def test_docs_metrics_md_lists_each_closed_label_set(
    label_cell: str, values: tuple[str, ...]
) -> None:
    prefix = f"| {label_cell} | "
    rows = [line for line in DOCS.read_text().splitlines() if line.startswith(prefix)]
    assert len(rows) == 1, label_cell
    assert set(re.findall(r"`(\w+)`", rows[0][len(prefix) :])) == {*values, "other"}


def test_names_follow_prometheus_conventions() -> None:
    metrics = Metrics(queues=["jobs"], blueprints=["orders"])
    exercise(metrics)
    for name, family in families(metrics).items():
        if not name.startswith("flowcraft_"):
            continue
        if family.type == "counter":
            assert name.endswith("_total"), name
        if family.type == "histogram":
            assert name.endswith("_seconds"), name
        labels = {k for s in family.samples for k in s.labels}
        assert not labels & {"run_id", "message_id", "node_id", "lease_id", "url"}, name


def test_process_platform_and_gc_collectors_are_registered() -> None:
    exposed = families(Metrics())
    for name in (
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "python_info",
        "python_gc_collections_total",
    ):
        assert name in exposed, name


def test_build_info_carries_the_version() -> None:
    metrics = Metrics()
    assert value(metrics, "flowcraft_build_info", version=__version__) == 1


def test_known_label_sets_are_exported_as_zero_before_anything_happens() -> None:
    metrics = Metrics(queues=["jobs"], blueprints=["orders"])

    for outcome in JOB_OUTCOMES:
        labels = {"queue": "jobs", "blueprint": "orders", "outcome": outcome}
        assert value(metrics, "flowcraft_jobs_total", **labels) == 0
    for reason in (*RETRY_REASONS, "other"):
        assert value(metrics, "flowcraft_messages_retried_total", queue="jobs", reason=reason) == 0
    for reason in (*REJECT_REASONS, "other"):
        assert value(metrics, "flowcraft_messages_rejected_total", queue="jobs", reason=reason) == 0
    for result in ("messages", "empty", "error"):
        assert value(metrics, "flowcraft_pulls_total", queue="jobs", result=result) == 0
    for kind in ("graceful", "forced"):
        assert value(metrics, "flowcraft_shutdowns_total", kind=kind) == 0
    for result in ("ok", "error"):
        assert value(metrics, "flowcraft_reloads_total", result=result) == 0
    assert value(metrics, "flowcraft_runs_finished_total", blueprint="other", status="failed") == 0
    assert value(metrics, "flowcraft_lease_expired_total", queue="jobs") == 0
    assert value(metrics, "flowcraft_draining") == 0


def test_blueprints_declared_later_get_their_own_series() -> None:
    metrics = Metrics(queues=["jobs"], blueprints=["orders"])
    metrics.declare_blueprints(["invoices"])
    labels = {"queue": "jobs", "blueprint": "invoices", "outcome": "completed"}
    assert value(metrics, "flowcraft_jobs_total", **labels) == 0

    metrics.job_finished("jobs", "invoices", "completed", 0.5)
    assert value(metrics, "flowcraft_jobs_total", **labels) == 1


def test_a_finished_job_is_counted_and_timed() -> None:
    metrics = Metrics(queues=["jobs"], blueprints=["orders"])
    metrics.job_finished("jobs", "orders", "completed", 0.02)
    metrics.job_finished("jobs", "orders", "completed", 0.2)

    labels = {"queue": "jobs", "blueprint": "orders", "outcome": "completed"}
    assert value(metrics, "flowcraft_jobs_total", **labels) == 2
    timing = {"queue": "jobs", "outcome": "completed"}
    assert value(metrics, "flowcraft_job_duration_seconds_count", **timing) == 2
    assert value(metrics, "flowcraft_job_duration_seconds_sum", **timing) == pytest.approx(0.22)
    assert value(metrics, "flowcraft_job_duration_seconds_bucket", le="0.025", **timing) == 1


def test_unknown_blueprints_and_outcomes_are_counted_as_other() -> None:
    metrics = Metrics(queues=["jobs"], blueprints=["orders"])
    for index in range(50):
        metrics.job_finished("jobs", f"made-up-{index}", "completed", 0.01)
    metrics.job_finished("jobs", "orders", "exploded", 0.01)
    metrics.node_finished("nope", "weird", 0.01)
    metrics.retried("jobs", "because")
    metrics.rejected("jobs", "free text reason from somewhere")
    metrics.run_finished("nope", "completed")

    other = {"queue": "jobs", "blueprint": "other"}
    assert value(metrics, "flowcraft_jobs_total", outcome="completed", **other) == 50
    labels = {"queue": "jobs", "blueprint": "orders", "outcome": "other"}
    assert value(metrics, "flowcraft_jobs_total", **labels) == 1
    node = {"blueprint": "other", "outcome": "other"}
    assert value(metrics, "flowcraft_node_duration_seconds_count", **node) == 1
    assert value(metrics, "flowcraft_messages_retried_total", queue="jobs", reason="other") == 1
    assert value(metrics, "flowcraft_messages_rejected_total", queue="jobs", reason="other") == 1
    run = {"blueprint": "other", "status": "completed"}
    assert value(metrics, "flowcraft_runs_finished_total", **run) == 1
    blueprints = {s.labels["blueprint"] for s in families(metrics)["flowcraft_jobs_total"].samples}
    assert blueprints == {"orders", "other"}


def test_api_requests_label_status_codes_and_transport_errors() -> None:
    metrics = Metrics()
    metrics.api_request("pull", 200, 0.01)
    metrics.api_request("pull", 200, 0.01)
    metrics.api_request("ack", 429, 0.01)
    metrics.api_request("batch", None, 5.0)
    metrics.api_request("/v1/runs/abc/claim", 200, 0.01)

    assert value(metrics, "flowcraft_api_requests_total", endpoint="pull", status="200") == 2
    assert value(metrics, "flowcraft_api_requests_total", endpoint="ack", status="429") == 1
    assert value(metrics, "flowcraft_api_requests_total", endpoint="batch", status="error") == 1
    assert value(metrics, "flowcraft_api_requests_total", endpoint="other", status="200") == 1
    assert value(metrics, "flowcraft_api_request_duration_seconds_count", endpoint="pull") == 2
    endpoints = {
        s.labels["endpoint"] for s in families(metrics)["flowcraft_api_requests_total"].samples
    }
    assert endpoints <= {*API_ENDPOINTS, "other"}


def test_pulls_record_result_messages_backlog_and_success_time() -> None:
    metrics = Metrics(queues=["jobs"])
    assert value(metrics, "flowcraft_last_pull_success_timestamp_seconds", queue="jobs") is None

    metrics.pulled("jobs", 5, backlog=120)
    metrics.pulled("jobs", 0, backlog=None)
    metrics.pull_failed("jobs")

    assert value(metrics, "flowcraft_pulls_total", queue="jobs", result="messages") == 1
    assert value(metrics, "flowcraft_pulls_total", queue="jobs", result="empty") == 1
    assert value(metrics, "flowcraft_pulls_total", queue="jobs", result="error") == 1
    assert value(metrics, "flowcraft_messages_pulled_total", queue="jobs") == 5
    assert value(metrics, "flowcraft_queue_backlog_messages", queue="jobs") == 120
    last = value(metrics, "flowcraft_last_pull_success_timestamp_seconds", queue="jobs")
    assert last is not None
    assert last > 1_700_000_000


def test_drain_hand_back_counts_as_a_retry_for_drain() -> None:
    metrics = Metrics(queues=["jobs"])
    metrics.set_draining(True)
    metrics.handed_back("jobs", 7)
    metrics.shut_down("forced")

    assert value(metrics, "flowcraft_draining") == 1
    assert value(metrics, "flowcraft_drain_handed_back_total") == 7
    assert value(metrics, "flowcraft_messages_retried_total", queue="jobs", reason="drain") == 7
    assert value(metrics, "flowcraft_shutdowns_total", kind="forced") == 1


def test_node_outcomes_are_a_closed_set() -> None:
    metrics = Metrics(blueprints=["orders"])
    for outcome in NODE_OUTCOMES:
        metrics.node_finished("orders", outcome, 0.001)
        count = value(
            metrics, "flowcraft_node_duration_seconds_count", blueprint="orders", outcome=outcome
        )
        assert count == 1


def test_two_instances_do_not_share_a_registry() -> None:
    first, second = Metrics(queues=["jobs"]), Metrics(queues=["jobs"])
    first.acked("jobs", 3)
    assert value(second, "flowcraft_messages_acked_total", queue="jobs") == 0
