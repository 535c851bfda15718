"""Every conformance scenario through MemoryStack: clean, duplicated, reordered, crashing."""

from __future__ import annotations

from collections import Counter

import pytest

from flowcraft_puller.testing import STANDARD_NODES, MemoryStack, StackFaults
from tests.conformance.corpus import Scenario, load_scenarios, play, problems

SCENARIOS = load_scenarios()


def _id(scenario: Scenario) -> str:
    return scenario.name


async def _run(scenario: Scenario, faults: StackFaults | None) -> list[str]:
    async with MemoryStack(
        blueprints=scenario.blueprints,
        registry=STANDARD_NODES,
        evaluator=scenario.evaluator,  # type: ignore[arg-type]
        faults=faults,
    ) as stack:
        played = await play(stack, scenario)
    extra: Counter[str] = Counter()
    if faults is not None:
        extra.update(node for _, node, _ in faults.crashes)
    return problems(
        scenario, played, extra_runs=extra, check_timing=faults is None or not faults.crash_rate
    )


@pytest.mark.parametrize("scenario", SCENARIOS, ids=_id)
@pytest.mark.anyio
async def test_scenario_passes_with_exactly_once_delivery(scenario: Scenario) -> None:
    assert await _run(scenario, None) == []


@pytest.mark.parametrize("scenario", SCENARIOS, ids=_id)
@pytest.mark.anyio
async def test_scenario_passes_when_every_message_is_delivered_twice(scenario: Scenario) -> None:
    assert await _run(scenario, StackFaults(duplicate=True, reorder=True, seed=7)) == []


@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("scenario", SCENARIOS, ids=_id)
@pytest.mark.anyio
async def test_scenario_passes_when_jobs_crash_and_are_redelivered(
    scenario: Scenario, seed: int
) -> None:
    faults = StackFaults(crash_rate=0.5, reorder=True, seed=seed)
    assert await _run(scenario, faults) == []
