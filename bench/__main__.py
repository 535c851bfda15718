"""``python -m bench [--quick] [--json PATH]``: run the benchmark, print a table, write JSON."""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated

import anyio
import structlog
import typer

from bench.children import run_child
from bench.idle import measure_idle
from bench.machine import describe
from bench.plan import Plan, full_plan, quick_plan
from bench.queue_path import measure_queue
from bench.report import Results, table
from bench.workflow_path import measure_workflow
from flowcraft_puller.observability.logging import configure_logging

log = structlog.get_logger("bench")


async def run_plan(plan: Plan, directory: Path) -> Results:
    results = Results(mode=plan.mode, machine=describe())
    began = time.monotonic()
    log.info("part 1: queue path", messages=plan.queue_messages)
    results.queue = await measure_queue(plan.queue_messages, directory / "queue")
    log.info("part 2: workflow path", setup=plan.workflow.label)
    results.workflow = await measure_workflow(plan.workflow, directory / "workflow")
    log.info("in memory", runs=plan.memory_runs)
    results.memory = await run_child(
        "bench.memory_path",
        ["--runs", str(plan.memory_runs), "--in-flight", str(plan.workflow.in_flight)],
        directory / "memory.json",
    )
    for index, setup in enumerate(plan.scaling):
        log.info("part 3: scaling", setup=setup.label)
        results.scaling.append(await measure_workflow(setup, directory / f"scaling-{index}"))
    if plan.scaling:
        results.scaling.insert(0, results.workflow)
    log.info("part 4: idle daemon", seconds=plan.idle_seconds)
    results.idle = await measure_idle(plan.idle_seconds, directory / "idle")
    results.seconds = time.monotonic() - began
    return results


def main(
    quick: Annotated[
        bool, typer.Option(help="Parts 1, 2 and 4 at reduced size (under 90 s).")
    ] = False,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Write every figure as JSON to this file.")
    ] = None,
    runs: Annotated[
        int | None, typer.Option(help="Runs of the workflow path (default 200; quick 100).")
    ] = None,
    in_flight: Annotated[int, typer.Option(help="Runs in flight on the workflow path.")] = 50,
    keep: Annotated[
        Path | None, typer.Option(help="Keep the processes' logs in this directory.")
    ] = None,
) -> None:
    """Benchmark the queue path, the workflow path, scaling and the idle daemon."""
    configure_logging("info", "console", stream=sys.stderr)
    plan = quick_plan(runs or 100, in_flight) if quick else full_plan(runs or 200, in_flight)
    with tempfile.TemporaryDirectory(prefix="flowcraft-bench-") as scratch:
        directory = keep or Path(scratch)
        results = anyio.run(run_plan, plan, directory)
    typer.echo(table(results))
    if json_path is not None:
        json_path.write_text(json.dumps(results.as_json(), indent=2) + "\n")
        log.info("figures written", path=str(json_path))
    if results.problems():
        raise typer.Exit(1)


if __name__ == "__main__":
    typer.run(main)
