"""Prometheus metrics of the daemon, on a registry of their own (the list is in docs/metrics.md).

Every label value is bounded: queue names come from the configuration, blueprint ids must be
declared (others are counted as ``other``), and reasons, outcomes, endpoints and statuses come
from the closed sets below (anything else is counted as ``other``). The hot-path methods cache
their label children, so a finished job costs a dictionary lookup and two increments.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Final, Literal

import structlog
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.gc_collector import GCCollector

from flowcraft_puller import __version__

log = structlog.get_logger(__name__)

OTHER: Final = "other"

JOB_OUTCOMES: Final = (
    "completed",
    "awaiting",
    "deferred",
    "failed",
    "rejected",
    "conflict",
    "duplicate",
    "stale",
    "terminal",
    "busy",
    "unknown_blueprint",
    "version_skew",
    "store_unavailable",
    "error",
    "lease_expired",
)
"""The adapter's ``JobOutcome.outcome`` values."""

RETRY_REASONS: Final = (
    "busy",
    "deferred",
    "unknown_blueprint",
    "version_skew",
    "store_unavailable",
    "error",
    "drain",
)
"""Why a message went back to the queue: the adapter's retry outcomes, or ``drain``."""

REJECT_REASONS: Final = ("undecodable", "malformed", "unknown_blueprint", "run_not_found")
"""Why a message was acked without running: it could not be decoded, its body is not a job,
its blueprint or node is still unknown after the last delivery, or its run does not exist."""

NODE_OUTCOMES: Final = ("completed", "awaiting", "deferred", "failed", "error")
"""How one execution of a node's code ended (commit, wait, retry later, fail, exception)."""

RUN_STATUSES: Final = ("completed", "failed", "cancelled")

API_ENDPOINTS: Final = (
    "pull",
    "ack",
    "health",
    "start",
    "claim",
    "commit",
    "attempts",
    "fail",
    "resume",
    "cancel",
    "reconcile",
    "get",
    "list",
    "ops",
    "hook",
    "batch",
)
"""``pull``/``ack``: the Cloudflare Queues REST API; the rest: the Worker's ``/v1`` routes."""

PULL_RESULTS: Final = ("messages", "empty", "error")
SHUTDOWN_KINDS: Final = ("graceful", "forced")
RELOAD_RESULTS: Final = ("ok", "error")

JOB_BUCKETS: Final = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
)
"""1 ms … 5 min, for job and node durations."""

API_BUCKETS: Final = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
"""1 ms … 30 s, for HTTP requests."""

ShutdownKind = Literal["graceful", "forced"]


class LabelSet:
    """A closed set of label values; anything else becomes ``other`` (reported once per value)."""

    _REPORT_LIMIT: Final = 32

    def __init__(self, label: str, values: Iterable[str]) -> None:
        self.label = label
        self.values = frozenset(values)
        self._reported: set[str] = set()

    def normalise(self, value: str) -> str:
        if value in self.values:
            return value
        if value not in self._reported and len(self._reported) < self._REPORT_LIMIT:
            self._reported.add(value)
            log.warning(
                "label value outside its set; counted as other", label=self.label, value=value
            )
        return OTHER


def _status_label(status: int | None) -> str:
    if status is None or not 100 <= status <= 599:
        return "error"
    return str(status)


class Metrics:
    """The daemon's collectors, plus the process, platform and GC collectors, on one registry."""

    def __init__(
        self,
        *,
        version: str = __version__,
        queues: Iterable[str] = (),
        blueprints: Iterable[str] = (),
    ) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self._queues: set[str] = set()
        self._blueprints: set[str] = set()
        self._outcomes = LabelSet("outcome", JOB_OUTCOMES)
        self._node_outcomes = LabelSet("outcome", NODE_OUTCOMES)
        self._retry_reasons = LabelSet("reason", RETRY_REASONS)
        self._reject_reasons = LabelSet("reason", REJECT_REASONS)
        self._run_statuses = LabelSet("status", RUN_STATUSES)
        self._endpoints = LabelSet("endpoint", API_ENDPOINTS)
        self._define(version)
        self._jobs: dict[tuple[str, str, str], tuple[Counter, Histogram]] = {}
        self._nodes: dict[tuple[str, str], Histogram] = {}
        self._retries: dict[tuple[str, str], Counter] = {}
        self._api: dict[tuple[str, int | None], tuple[Counter, Histogram]] = {}
        self.declare_queues(queues)
        self.declare_blueprints(blueprints)

    def _define(self, version: str) -> None:
        r = self.registry
        info = Gauge(
            "flowcraft_build_info", "Build information; always 1.", ["version"], registry=r
        )
        info.labels(version).set(1)
        self.messages_pulled = Counter(
            "flowcraft_messages_pulled_total", "Messages leased by pulls.", ["queue"], registry=r
        )
        self.messages_acked = Counter(
            "flowcraft_messages_acked_total",
            "Messages acknowledged (acks the queue API accepted).",
            ["queue"],
            registry=r,
        )
        self.messages_retried = Counter(
            "flowcraft_messages_retried_total",
            "Messages handed back to the queue for another delivery.",
            ["queue", "reason"],
            registry=r,
        )
        self.messages_rejected = Counter(
            "flowcraft_messages_rejected_total",
            "Messages acked without running because they can never run.",
            ["queue", "reason"],
            registry=r,
        )
        self.pulls = Counter(
            "flowcraft_pulls_total", "Pull requests by result.", ["queue", "result"], registry=r
        )
        self.jobs = Counter(
            "flowcraft_jobs_total",
            "Jobs handled, by outcome.",
            ["queue", "blueprint", "outcome"],
            registry=r,
        )
        self.job_duration = Histogram(
            "flowcraft_job_duration_seconds",
            "Time from dispatch to outcome of one job (claim, node code, commit).",
            ["queue", "outcome"],
            buckets=JOB_BUCKETS,
            registry=r,
        )
        self.node_duration = Histogram(
            "flowcraft_node_duration_seconds",
            "Time spent in one execution of a node's code.",
            ["blueprint", "outcome"],
            buckets=JOB_BUCKETS,
            registry=r,
        )
        self.jobs_in_flight = Gauge(
            "flowcraft_jobs_in_flight", "Jobs leased and running now.", registry=r
        )
        self.max_in_flight = Gauge(
            "flowcraft_max_in_flight", "The configured limit of jobs in flight.", registry=r
        )
        self.queue_backlog = Gauge(
            "flowcraft_queue_backlog_messages",
            "Messages in the queue, as reported by the last successful pull.",
            ["queue"],
            registry=r,
        )
        self.api_requests = Counter(
            "flowcraft_api_requests_total",
            "HTTP requests to the queue API and the Worker, by HTTP status ('error': no response).",
            ["endpoint", "status"],
            registry=r,
        )
        self.api_request_duration = Histogram(
            "flowcraft_api_request_duration_seconds",
            "Time until the response headers of an HTTP request (or its failure).",
            ["endpoint"],
            buckets=API_BUCKETS,
            registry=r,
        )
        self.runs_finished = Counter(
            "flowcraft_runs_finished_total",
            "Runs this daemon saw reach a terminal status.",
            ["blueprint", "status"],
            registry=r,
        )
        self.lease_expired = Counter(
            "flowcraft_lease_expired_total",
            "Messages left to be redelivered because processing outlived the lease.",
            ["queue"],
            registry=r,
        )
        self.last_pull_success = Gauge(
            "flowcraft_last_pull_success_timestamp_seconds",
            "Unix time of the last successful pull (absent until the first).",
            ["queue"],
            registry=r,
        )
        self.last_commit_success = Gauge(
            "flowcraft_last_commit_success_timestamp_seconds",
            "Unix time of the last successful commit to the Worker (0 until the first).",
            registry=r,
        )
        self.loop_lag = Gauge(
            "flowcraft_event_loop_lag_seconds",
            "How late the event loop monitor woke up, latest sample.",
            registry=r,
        )
        self.loop_lag_max = Gauge(
            "flowcraft_event_loop_lag_max_seconds",
            "The largest event loop lag within the monitor's window.",
            registry=r,
        )
        self.draining = Gauge(
            "flowcraft_draining", "1 while shutting down (draining), else 0.", registry=r
        )
        self.shutdowns = Counter(
            "flowcraft_shutdowns_total",
            "Shutdowns by kind: graceful (drained) or forced (in-flight jobs handed back).",
            ["kind"],
            registry=r,
        )
        self.drain_handed_back = Counter(
            "flowcraft_drain_handed_back_total",
            "Messages retried with delay 0 during shutdown.",
            registry=r,
        )
        self.reloads = Counter(
            "flowcraft_reloads_total", "Configuration reloads (SIGHUP).", ["result"], registry=r
        )
        for kind in SHUTDOWN_KINDS:
            self.shutdowns.labels(kind)
        for result in RELOAD_RESULTS:
            self.reloads.labels(result)

    # ---- declarations ------------------------------------------------------------------

    def declare_queues(self, queues: Iterable[str]) -> None:
        """Export zero for every known label set of these queues."""
        for queue in queues:
            if queue in self._queues:
                continue
            self._queues.add(queue)
            self.messages_pulled.labels(queue)
            self.messages_acked.labels(queue)
            self.lease_expired.labels(queue)
            for result in PULL_RESULTS:
                self.pulls.labels(queue, result)
            for reason in (*RETRY_REASONS, OTHER):
                self.messages_retried.labels(queue, reason)
            for reason in (*REJECT_REASONS, OTHER):
                self.messages_rejected.labels(queue, reason)
            self.job_duration.labels(queue, "completed")
            for blueprint in self._blueprints:
                self._declare_jobs(queue, blueprint)

    def declare_blueprints(self, blueprints: Iterable[str]) -> None:
        """Make these ids label values of their own (others are ``other``); export zeros."""
        for blueprint in (*blueprints, OTHER):
            if blueprint in self._blueprints:
                continue
            self._blueprints.add(blueprint)
            self.node_duration.labels(blueprint, "completed")
            for status in RUN_STATUSES:
                self.runs_finished.labels(blueprint, status)
            for queue in self._queues:
                self._declare_jobs(queue, blueprint)

    def _declare_jobs(self, queue: str, blueprint: str) -> None:
        for outcome in JOB_OUTCOMES:
            self.jobs.labels(queue, blueprint, outcome)

    def _blueprint(self, blueprint: str) -> str:
        return blueprint if blueprint in self._blueprints else OTHER

    # ---- hot path ----------------------------------------------------------------------

    def job_finished(self, queue: str, blueprint: str, outcome: str, seconds: float) -> None:
        """Count one job by outcome and observe its duration."""
        series = self._jobs.get((queue, blueprint, outcome))
        if series is None:
            series = self._job_series(queue, blueprint, outcome)
        series[0].inc()
        series[1].observe(seconds)

    def _job_series(self, queue: str, blueprint: str, outcome: str) -> tuple[Counter, Histogram]:
        key = (queue, self._blueprint(blueprint), self._outcomes.normalise(outcome))
        series = self._jobs.get(key)
        if series is None:
            series = (self.jobs.labels(*key), self.job_duration.labels(queue, key[2]))
            self._jobs[key] = series
        return series

    def node_finished(self, blueprint: str, outcome: str, seconds: float) -> None:
        """Observe one execution of a node's code."""
        series = self._nodes.get((blueprint, outcome))
        if series is None:
            key = (self._blueprint(blueprint), self._node_outcomes.normalise(outcome))
            series = self._nodes.get(key)
            if series is None:
                series = self._nodes[key] = self.node_duration.labels(*key)
        series.observe(seconds)

    def api_request(self, endpoint: str, status: int | None, seconds: float) -> None:
        """Count one HTTP request; ``status`` is None when no response arrived."""
        series = self._api.get((endpoint, status))
        if series is None:
            series = self._api_series(endpoint, status)
        series[0].inc()
        series[1].observe(seconds)

    def _api_series(self, endpoint: str, status: int | None) -> tuple[Counter, Histogram]:
        name = self._endpoints.normalise(endpoint)
        series = (
            self.api_requests.labels(name, _status_label(status)),
            self.api_request_duration.labels(name),
        )
        if name == endpoint:
            self._api[(endpoint, status)] = series
        return series

    def pulled(self, queue: str, count: int, backlog: int | None) -> None:
        """A pull succeeded with ``count`` messages; ``backlog`` is the queue's reported depth."""
        self.pulls.labels(queue, "messages" if count else "empty").inc()
        if count:
            self.messages_pulled.labels(queue).inc(count)
        if backlog is not None:
            self.queue_backlog.labels(queue).set(backlog)
        self.last_pull_success.labels(queue).set(time.time())

    def pull_failed(self, queue: str) -> None:
        self.pulls.labels(queue, "error").inc()

    def acked(self, queue: str, count: int) -> None:
        self.messages_acked.labels(queue).inc(count)

    def retried(self, queue: str, reason: str, count: int = 1) -> None:
        series = self._retries.get((queue, reason))
        if series is None:
            key = (queue, self._retry_reasons.normalise(reason))
            series = self._retries.get(key)
            if series is None:
                series = self._retries[key] = self.messages_retried.labels(*key)
        series.inc(count)

    def rejected(self, queue: str, reason: str) -> None:
        self.messages_rejected.labels(queue, self._reject_reasons.normalise(reason)).inc()

    def leases_expired(self, queue: str, count: int = 1) -> None:
        self.lease_expired.labels(queue).inc(count)

    def set_in_flight(self, count: int) -> None:
        self.jobs_in_flight.set(count)

    def set_max_in_flight(self, limit: int) -> None:
        self.max_in_flight.set(limit)

    def run_finished(self, blueprint: str, status: str) -> None:
        self.runs_finished.labels(
            self._blueprint(blueprint), self._run_statuses.normalise(status)
        ).inc()

    def commit_succeeded(self) -> None:
        self.last_commit_success.set(time.time())

    def record_loop_lag(self, latest: float, window_max: float) -> None:
        self.loop_lag.set(latest)
        self.loop_lag_max.set(window_max)

    # ---- lifecycle ---------------------------------------------------------------------

    def set_draining(self, draining: bool) -> None:
        self.draining.set(1 if draining else 0)

    def handed_back(self, queue: str, count: int) -> None:
        """``count`` messages were retried with delay 0 at drain."""
        self.drain_handed_back.inc(count)
        self.messages_retried.labels(queue, "drain").inc(count)

    def shut_down(self, kind: ShutdownKind) -> None:
        self.shutdowns.labels(kind).inc()

    def reloaded(self, ok: bool) -> None:
        self.reloads.labels("ok" if ok else "error").inc()
