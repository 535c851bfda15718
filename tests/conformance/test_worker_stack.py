"""Every conformance scenario with the production Worker (workerd) as the run store.

The emulator provides the queue (the Worker sends jobs through ``QUEUE_REST_URL``) and the real
daemon consumes it, so the only Python-side fake is the Cloudflare queue itself.
"""

from __future__ import annotations

import pytest

from flowcraft_puller.testing import STANDARD_NODES
from flowcraft_puller.testing.local_stack import LocalStack
from tests.conformance.corpus import Scenario, load_scenarios, play, problems

SCENARIOS = load_scenarios()

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
async def test_scenario_passes_with_the_worker_as_run_store(scenario: Scenario) -> None:
    async with LocalStack(
        blueprints=scenario.blueprints,
        registry=STANDARD_NODES,
        evaluator=scenario.evaluator,  # type: ignore[arg-type]
        coordinator="worker",
    ) as stack:
        played = await play(stack, scenario, timeout=60)
    assert problems(scenario, played) == []
