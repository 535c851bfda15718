"""Every conformance scenario through LocalStack: the emulator and the real daemon over HTTP."""

from __future__ import annotations

import pytest

from flowcraft_puller.testing import STANDARD_NODES
from flowcraft_puller.testing.local_stack import LocalStack, standard_faults
from tests.conformance.corpus import Scenario, load_scenarios, play, problems

SCENARIOS = load_scenarios()

pytestmark = pytest.mark.anyio


def _id(scenario: Scenario) -> str:
    return scenario.name


async def _run(scenario: Scenario, *, faulty: bool) -> list[str]:
    async with LocalStack(
        blueprints=scenario.blueprints,
        registry=STANDARD_NODES,
        evaluator=scenario.evaluator,  # type: ignore[arg-type]
        faults=standard_faults(seed=len(scenario.name)) if faulty else None,
    ) as stack:
        played = await play(stack, scenario, timeout=60)
    return problems(scenario, played, check_timing=not faulty)


@pytest.mark.parametrize("scenario", SCENARIOS, ids=_id)
async def test_scenario_passes_over_http(scenario: Scenario) -> None:
    assert await _run(scenario, faulty=False) == []


@pytest.mark.parametrize("scenario", SCENARIOS, ids=_id)
async def test_scenario_passes_over_http_with_faults_on_every_route(scenario: Scenario) -> None:
    assert await _run(scenario, faulty=True) == []
