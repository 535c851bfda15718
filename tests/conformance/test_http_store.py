"""Every conformance scenario through the HTTP path: the adapter's store is
``BatchingRunStore(HttpRunStore(...))`` talking to the emulator's RunService on uvicorn, whose
outbox feeds the in-memory queue the stack consumes."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from flowcraft_puller.emulator.runs import RunService
from flowcraft_puller.queue.memory import MemoryQueue, MemoryQueueFaults
from flowcraft_puller.runstore.batching import BatchingRunStore
from flowcraft_puller.runstore.http import HttpRunStore
from flowcraft_puller.testing import STANDARD_NODES, MemoryStack, StackFaults
from flowcraft_puller.testing.memory_stack import StackBackend
from tests.conformance.corpus import Scenario, load_scenarios, play, problems
from tests.serving import run_service_app, serve

SCENARIOS = load_scenarios()
SECRET = "conformance-secret"


def _id(scenario: Scenario) -> str:
    return scenario.name


async def _run(scenario: Scenario, faults: StackFaults) -> list[str]:
    queue = MemoryQueue(
        faults=MemoryQueueFaults(
            duplicate=faults.duplicate, reorder=faults.reorder, rng=random.Random(faults.seed)
        )
    )
    service = RunService(state_path=None, sender=queue, secret=SECRET)
    async with (
        serve(run_service_app(service)) as url,
        HttpRunStore(f"{url}/v1", SECRET) as http,
        BatchingRunStore(http) as store,
        MemoryStack(
            blueprints=scenario.blueprints,
            registry=STANDARD_NODES,
            evaluator=scenario.evaluator,  # type: ignore[arg-type]
            faults=faults,
            backend=StackBackend(store, queue, service.store),
        ) as stack,
    ):
        played = await play(stack, scenario)
    extra: Counter[str] = Counter(node for _, node, _ in faults.crashes)
    return problems(scenario, played, extra_runs=extra, check_timing=not faults.crash_rate)


@pytest.mark.parametrize("scenario", SCENARIOS, ids=_id)
@pytest.mark.anyio
async def test_scenario_passes_over_http(scenario: Scenario) -> None:
    assert await _run(scenario, StackFaults()) == []


@pytest.mark.parametrize("scenario", SCENARIOS, ids=_id)
@pytest.mark.anyio
async def test_scenario_passes_over_http_when_jobs_are_duplicated_and_crash(
    scenario: Scenario,
) -> None:
    faults = StackFaults(duplicate=True, reorder=True, crash_rate=0.3, seed=3)
    assert await _run(scenario, faults) == []
