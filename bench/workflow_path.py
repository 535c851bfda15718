"""Part 2 and 3: runs of the fan-out/fan-in workload through real daemons against the emulator.

A few warm-up runs go first (imports, connections); the figures cover only the measured runs:
counters are read from the daemons' ``/metrics`` and CPU from ``/proc`` before and after them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from bench.cluster import Cluster
from bench.driver import drive
from bench.machine import BusyMeter
from bench.stats import percentile, ratio
from bench.timings import read_timings, scheduling_delays_ms
from bench.workload import BLUEPRINT_ID, EXPECTED_SUM, NODES_PER_RUN, fan_blueprint
from flowcraft_puller.config import DaemonConfig
from flowcraft_puller.runstore.protocol import RunView
from flowcraft_puller.testing.runs import RunClient

SETTLE_S = 0.3
"""Wait after the last run finished, so the last acks are flushed before counting."""


@dataclass(frozen=True, slots=True)
class WorkflowSetup:
    runs: int = 200
    in_flight: int = 50
    daemons: int = 1
    concurrency: int | None = None
    """``daemon.concurrency``; None keeps the production default."""
    warmup_runs: int = 10

    @property
    def label(self) -> str:
        concurrency = "" if self.concurrency is None else f", concurrency {self.concurrency}"
        plural = "s" if self.daemons > 1 else ""
        return (
            f"{self.runs} runs, {self.in_flight} in flight, "
            f"{self.daemons} daemon{plural}{concurrency}"
        )


@dataclass(frozen=True, slots=True)
class WorkflowFigures:
    setup: WorkflowSetup
    nodes: int
    seconds: float
    nodes_per_s: float
    runs_per_s: float
    run_latency_p50_ms: float
    run_latency_p95_ms: float
    run_latency_p99_ms: float
    scheduling_delay_p50_ms: float
    scheduling_delay_p99_ms: float
    coordinator_requests_per_node: float
    queue_calls_per_message: float
    daemon_cpu_s_per_1000_nodes: float
    emulator_cpu_s_per_1000_nodes: float
    peak_rss_mb: float
    """The largest peak RSS (VmHWM) of the daemons."""
    emulator_peak_rss_mb: float
    machine_busy_cores: float
    """CPU cores the whole machine kept busy meanwhile (daemons, emulator, driver, others)."""
    tested_cores: float
    """CPU cores the daemons and the emulator used meanwhile."""
    requests: dict[str, int] = field(default_factory=dict)
    """Daemon HTTP requests by endpoint during the measured runs."""
    problems: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        data = {
            name: getattr(self, name)
            for name in self.__dataclass_fields__
            if name not in ("setup", "requests", "problems")
        }
        return {
            "label": self.setup.label,
            "runs": self.setup.runs,
            "in_flight": self.setup.in_flight,
            "daemons": self.setup.daemons,
            "concurrency": self.setup.concurrency,
            **data,
            "requests": self.requests,
            "problems": self.problems,
        }


def _problems(views: dict[str, RunView]) -> list[str]:
    found = []
    for run_id, view in views.items():
        if view.status != "completed":
            found.append(f"run {run_id} ended {view.status}: {view.reason}")
        elif view.context.get("_outputs.J") != EXPECTED_SUM:
            found.append(f"run {run_id}: J is {view.context.get('_outputs.J')!r}")
    return found[:10]


async def measure_workflow(setup: WorkflowSetup, directory: Path) -> WorkflowFigures:
    """Run the workload as ``setup`` says and measure it."""
    config = (
        DaemonConfig() if setup.concurrency is None else DaemonConfig(concurrency=setup.concurrency)
    )
    async with Cluster(directory, daemons=setup.daemons, daemon_config=config) as cluster:
        emulator = cluster.emulator
        async with RunClient(emulator.url, emulator.secret, [fan_blueprint()]) as client:
            if setup.warmup_runs:
                await drive(client, BLUEPRINT_ID, setup.warmup_runs, setup.in_flight)
                await anyio.sleep(SETTLE_S)
            counters_before = await cluster.counters()
            daemons_before = cluster.daemon_samples()
            emulator_before = cluster.emulator_sample()
            meter = BusyMeter()
            meter.start(time.monotonic())
            run = await drive(client, BLUEPRINT_ID, setup.runs, setup.in_flight)
            await anyio.sleep(SETTLE_S)
            daemons_after = cluster.daemon_samples()
            emulator_after = cluster.emulator_sample()
            busy_cores = meter.cores(time.monotonic())
            counters = await cluster.counters() - counters_before
            views = await client.views(run.run_ids)
        await cluster.stop_daemons()
        executions = read_timings(cluster.timings_prefix)

    completed = [v for v in views.values() if v.status == "completed"]
    nodes = len(completed) * NODES_PER_RUN
    created = {run_id: view.created_at_ms for run_id, view in views.items()}
    latencies = [float(v.updated_at_ms - v.created_at_ms) for v in completed]
    span_s = (
        (max(v.updated_at_ms for v in completed) - min(v.created_at_ms for v in views.values()))
        / 1000
        if completed
        else 0.0
    )
    delays = scheduling_delays_ms(executions, created, run.run_ids)
    daemon_cpu = sum(a.cpu_s - b.cpu_s for a, b in zip(daemons_after, daemons_before, strict=True))
    emulator_cpu = emulator_after.cpu_s - emulator_before.cpu_s
    window_s = run.seconds + SETTLE_S
    messages = max(counters.pulled, 1)
    return WorkflowFigures(
        setup=setup,
        nodes=nodes,
        seconds=span_s,
        nodes_per_s=ratio(nodes, span_s),
        runs_per_s=ratio(len(completed), span_s),
        run_latency_p50_ms=percentile(latencies, 0.50),
        run_latency_p95_ms=percentile(latencies, 0.95),
        run_latency_p99_ms=percentile(latencies, 0.99),
        scheduling_delay_p50_ms=percentile(delays, 0.50),
        scheduling_delay_p99_ms=percentile(delays, 0.99),
        coordinator_requests_per_node=ratio(counters.worker_requests, nodes),
        queue_calls_per_message=ratio(counters.queue_calls, messages),
        daemon_cpu_s_per_1000_nodes=ratio(daemon_cpu * 1000, nodes),
        emulator_cpu_s_per_1000_nodes=ratio(emulator_cpu * 1000, nodes),
        peak_rss_mb=max(s.peak_rss_mb for s in daemons_after),
        emulator_peak_rss_mb=emulator_after.peak_rss_mb,
        machine_busy_cores=busy_cores,
        tested_cores=(daemon_cpu + emulator_cpu) / window_s,
        requests={
            **counters.requests,
            **{f"pulls.{k}": v for k, v in counters.pulls.items()},
            **{f"jobs.{k}": v for k, v in counters.jobs.items()},
        },
        problems=_problems(views),
    )
