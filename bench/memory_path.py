"""The in-memory comparison: the same workload through :class:`MemoryStack` (the real supervisor,
adapter and engine, an in-memory queue and run store) — the engine's cost without any I/O.

``python -m bench.memory_path --runs R --in-flight N --out FILE`` writes its figures as JSON.
"""

from __future__ import annotations

import json
import resource
import time
import uuid
from pathlib import Path
from typing import Annotated, Any

import anyio
import typer

from bench.nodes import NODES
from bench.stats import percentile, ratio
from bench.workload import BLUEPRINT_ID, EXPECTED_SUM, NODES_PER_RUN, fan_blueprint
from flowcraft_puller.config import DaemonConfig
from flowcraft_puller.testing import MemoryStack


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def run_in_memory(runs: int, in_flight: int) -> dict[str, Any]:
    concurrency = DaemonConfig().concurrency
    async with MemoryStack(
        blueprints=[fan_blueprint()], registry=NODES, concurrency=concurrency
    ) as stack:
        limiter = anyio.Semaphore(in_flight)
        latencies: list[float] = []
        wrong: list[str] = []

        async def one() -> None:
            async with limiter:
                began = time.monotonic()
                run_id = await stack.start(BLUEPRINT_ID, run_id=uuid.uuid4().hex)
                result = await stack.wait(run_id, timeout=120)
                latencies.append((time.monotonic() - began) * 1000)
                if result.status != "completed" or result.outputs.get("J") != EXPECTED_SUM:
                    wrong.append(run_id)

        cpu_before = _cpu_seconds()
        began = time.monotonic()
        async with anyio.create_task_group() as group:
            for _ in range(runs):
                group.start_soon(one)
        seconds = time.monotonic() - began
        cpu = _cpu_seconds() - cpu_before
    nodes = (runs - len(wrong)) * NODES_PER_RUN
    return {
        "runs": runs,
        "in_flight": in_flight,
        "nodes": nodes,
        "seconds": seconds,
        "nodes_per_s": ratio(nodes, seconds),
        "runs_per_s": ratio(runs - len(wrong), seconds),
        "run_latency_p50_ms": percentile(latencies, 0.5),
        "run_latency_p99_ms": percentile(latencies, 0.99),
        "cpu_s_per_1000_nodes": ratio(cpu * 1000, nodes),
        "problems": [f"run {r} did not complete with J == {EXPECTED_SUM}" for r in wrong[:10]],
    }


def main(
    runs: Annotated[int, typer.Option()],
    in_flight: Annotated[int, typer.Option()],
    out: Annotated[Path, typer.Option()],
) -> None:
    """Run the workload in memory and write the figures to ``out``."""
    figures = anyio.run(run_in_memory, runs, in_flight)
    out.write_text(json.dumps(figures))


if __name__ == "__main__":
    typer.run(main)
