"""The supervisor's and the adapter's events recorded as metrics and health state.

Pull attempts are deliberately not taken as the supervisor's heartbeat: a saturated pool of
long jobs stops pulling for minutes while perfectly healthy.
"""

from __future__ import annotations

from flowcraft_puller.adapter import JobOutcome
from flowcraft_puller.observability.health import HealthState
from flowcraft_puller.observability.metrics import Metrics
from flowcraft_puller.observability.systemd import SystemdNotifier


class Reporter:
    """Implements ``SupervisorEvents`` and ``AdapterObserver`` on top of :class:`Metrics` and
    :class:`HealthState`."""

    def __init__(
        self, metrics: Metrics, health: HealthState, notifier: SystemdNotifier | None = None
    ) -> None:
        self.metrics = metrics
        self.health = health
        self.notifier = notifier
        self.jobs = 0
        """Jobs finished so far (for throughput in status lines)."""

    def pulled(self, queue: str, count: int, backlog: int | None) -> None:
        self.metrics.pulled(queue, count, backlog)
        self.health.pull_succeeded()

    def pull_failed(self, queue: str, error: BaseException) -> None:
        self.metrics.pull_failed(queue)

    def job_finished(self, queue: str, blueprint: str, outcome: JobOutcome, seconds: float) -> None:
        self.jobs += 1
        name = outcome.outcome
        self.metrics.job_finished(queue, blueprint, name, seconds)
        if outcome.action == "retry":
            self.metrics.retried(queue, name)
        elif name == "rejected":
            self.metrics.rejected(queue, outcome.reject or "other")
        elif name == "lease_expired":
            self.metrics.leases_expired(queue)

    def in_flight(self, count: int) -> None:
        self.metrics.set_in_flight(count)

    def acked(self, queue: str, acks: int, retries: int) -> None:
        """Retries were already counted, with their reason, when the job finished."""
        self.metrics.acked(queue, acks)

    def ack_failed(self, queue: str, error: BaseException) -> None:
        """Nothing to count here: the queue client counts the failed request itself."""

    def draining(self) -> None:
        self.metrics.set_draining(True)
        self.health.begin_draining()
        if self.notifier is not None:
            self.notifier.stopping()

    def handed_back(self, queue: str, count: int) -> None:
        self.metrics.handed_back(queue, count)

    def node_finished(self, blueprint: str, outcome: str, seconds: float) -> None:
        self.metrics.node_finished(blueprint, outcome, seconds)

    def run_finished(self, blueprint: str, status: str) -> None:
        self.metrics.run_finished(blueprint, status)

    def committed(self) -> None:
        self.metrics.commit_succeeded()
        self.health.commit_succeeded()
