"""Counters of a daemon's ``/metrics``, summed by the labels a benchmark needs."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Final

from prometheus_client.parser import text_string_to_metric_families

QUEUE_ENDPOINTS: Final = frozenset({"pull", "ack"})
"""The Cloudflare Queues REST calls; every other endpoint is a request to the Worker."""


@dataclass(frozen=True, slots=True)
class DaemonCounters:
    """HTTP requests by endpoint, pulls by result, and messages pulled, acked and retried."""

    requests: Counter[str] = field(default_factory=Counter)
    pulls: Counter[str] = field(default_factory=Counter)
    pulled: int = 0
    acked: int = 0
    retried: int = 0
    jobs: Counter[str] = field(default_factory=Counter)

    @property
    def queue_calls(self) -> int:
        return sum(v for k, v in self.requests.items() if k in QUEUE_ENDPOINTS)

    @property
    def worker_requests(self) -> int:
        return sum(v for k, v in self.requests.items() if k not in QUEUE_ENDPOINTS)

    def __sub__(self, before: DaemonCounters) -> DaemonCounters:
        return DaemonCounters(
            requests=self.requests - before.requests,
            pulls=self.pulls - before.pulls,
            pulled=self.pulled - before.pulled,
            acked=self.acked - before.acked,
            retried=self.retried - before.retried,
            jobs=self.jobs - before.jobs,
        )

    def __add__(self, other: DaemonCounters) -> DaemonCounters:
        return DaemonCounters(
            requests=self.requests + other.requests,
            pulls=self.pulls + other.pulls,
            pulled=self.pulled + other.pulled,
            acked=self.acked + other.acked,
            retried=self.retried + other.retried,
            jobs=self.jobs + other.jobs,
        )


def daemon_counters(exposition: str) -> DaemonCounters:
    """The counters of one ``/metrics`` text exposition."""
    counters = DaemonCounters()
    totals: Counter[str] = Counter()
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if not sample.name.endswith("_total"):
                continue
            labels = sample.labels
            match sample.name:
                case "flowcraft_api_requests_total":
                    counters.requests[labels["endpoint"]] += int(sample.value)
                case "flowcraft_pulls_total":
                    counters.pulls[labels["result"]] += int(sample.value)
                case "flowcraft_jobs_total":
                    counters.jobs[labels["outcome"]] += int(sample.value)
                case (
                    "flowcraft_messages_pulled_total"
                    | "flowcraft_messages_acked_total"
                    | "flowcraft_messages_retried_total"
                ):
                    totals[sample.name] += int(sample.value)
    return DaemonCounters(
        requests=counters.requests,
        pulls=counters.pulls,
        pulled=totals["flowcraft_messages_pulled_total"],
        acked=totals["flowcraft_messages_acked_total"],
        retried=totals["flowcraft_messages_retried_total"],
        jobs=counters.jobs,
    )
