"""What a benchmark run measures, at full or quick size."""

from __future__ import annotations

from dataclasses import dataclass, field

from bench.workflow_path import WorkflowSetup


@dataclass(frozen=True, slots=True)
class Plan:
    mode: str
    queue_messages: int
    workflow: WorkflowSetup
    scaling: list[WorkflowSetup] = field(default_factory=list)
    idle_seconds: float = 30.0
    memory_runs: int = 200


def full_plan(runs: int = 200, in_flight: int = 50) -> Plan:
    """Parts 1–4 at full size (about four minutes on a 2-core machine)."""
    workflow = WorkflowSetup(runs=runs, in_flight=in_flight)
    scaling = [
        WorkflowSetup(runs=runs, in_flight=in_flight, daemons=2),
        WorkflowSetup(runs=runs, in_flight=in_flight, daemons=4),
        WorkflowSetup(runs=max(runs, 20), in_flight=10),
        WorkflowSetup(runs=max(runs, 200), in_flight=100),
        WorkflowSetup(runs=1000, in_flight=1000),
        WorkflowSetup(runs=1000, in_flight=1000, concurrency=1000),
    ]
    return Plan(
        mode="full",
        queue_messages=20_000,
        workflow=workflow,
        scaling=scaling,
        idle_seconds=30.0,
        memory_runs=runs,
    )


def quick_plan(runs: int = 100, in_flight: int = 50) -> Plan:
    """Parts 1, 2 and 4 at reduced size (well under 90 seconds)."""
    return Plan(
        mode="quick",
        queue_messages=5_000,
        workflow=WorkflowSetup(runs=runs, in_flight=in_flight, warmup_runs=5),
        idle_seconds=12.0,
        memory_runs=runs,
    )
