"""The example workflow under load through LocalStack (the emulator and the real daemon over
HTTP, in this process): 200 concurrent runs, every output checked."""

from __future__ import annotations

import pytest

from flowcraft_puller.config import load_config
from flowcraft_puller.daemon import workflows_from
from flowcraft_puller.testing.local_stack import LocalStack
from flowcraft_puller.testing.runs import RunClient
from tests.e2e.workflows import EXAMPLES, example_problems, outputs_of

pytestmark = pytest.mark.anyio

RUNS = 200


async def test_two_hundred_concurrent_example_runs_complete_with_correct_outputs() -> None:
    workflows = workflows_from(load_config(EXAMPLES / "dev.toml"))
    async with LocalStack(
        blueprints=workflows.blueprints.values(),
        registry=workflows.registry,
        concurrency=64,
        visibility_timeout_s=30,
    ) as stack:
        assert stack.emulator is not None
        async with RunClient(
            stack.emulator.url, stack.secret, workflows.blueprints.values()
        ) as runs:
            run_ids = await runs.start_many("order-fulfilment", RUNS)
            views = await runs.wait_terminal(run_ids, timeout=90)

    assert {view.status for view in views.values()} == {"completed"}
    problems = {}
    for run_id, view in views.items():
        found = example_problems(run_id, outputs_of(view))
        if found:
            problems[run_id] = found
    assert problems == {}
    invocations = {run_id: dict(stack.invocations[run_id]) for run_id in run_ids}
    nodes = ("receive", "reserve", "charge", "fraud", "decide", "ship", "cool_down", "notify")
    expected = {**dict.fromkeys(nodes, 1), "charge": 2}
    assert [r for r, counts in invocations.items() if counts != expected] == []
