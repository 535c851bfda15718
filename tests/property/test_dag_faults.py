"""Random DAG workflows give the same outcome under duplicated, reordered and crashing delivery.

SEMANTICS rule 21: every step can be delivered twice, in any order, after a crash at any point,
and the run's status and each node's output are those of exactly-once delivery; node code runs
again only when a daemon died mid-node.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import anyio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flowcraft_puller.testing import STANDARD_NODES, MemoryStack, RunResult, StackFaults

ACTIONS = st.sampled_from([None, None, "x", "y"])
CONDITIONS = st.sampled_from([None, None, "result.output.flag"])


@st.composite
def dag_blueprints(draw: st.DrawFn) -> dict[str, Any]:
    """1–30 nodes ``n0..``; edges only from lower to higher index, so the graph is a DAG.

    Every node's output depends only on its params or, for ``all`` joins, on an explicit
    ``inputs`` map over its predecessors' outputs, so it never depends on arrival order.
    """
    size = draw(st.integers(min_value=1, max_value=30))
    nodes: list[dict[str, Any]] = []
    edges: list[dict[str, Any]] = []
    for index in range(size):
        preds = sorted(
            draw(st.lists(st.integers(0, index - 1), max_size=3, unique=True)) if index else []
        )
        for pred in preds:
            edges.append(_edge(pred, index, draw(ACTIONS), draw(CONDITIONS)))
            if draw(st.integers(0, 5)) == 0:
                edges.append(_edge(pred, index, draw(ACTIONS), draw(CONDITIONS)))
        join = draw(st.sampled_from(["all", "any"])) if len(preds) > 1 else "all"
        node: dict[str, Any] = {"id": f"n{index}", "config": {"joinStrategy": join}}
        if join == "all" and preds and draw(st.booleans()):
            read = draw(st.lists(st.sampled_from(preds), min_size=1, unique=True))
            inputs = {f"from_n{pred}": f"n{pred}" for pred in read}
            inputs["flag"] = f"n{read[0]}.flag"
            node |= {"uses": "echo", "inputs": inputs}
        else:
            output = {"flag": draw(st.booleans()), "v": index}
            node |= {"uses": "act", "params": {"output": output, "action": draw(ACTIONS)}}
        nodes.append(node)
    return {"id": "dag", "nodes": nodes, "edges": edges}


def _edge(source: int, target: int, action: str | None, condition: str | None) -> dict[str, Any]:
    edge: dict[str, Any] = {"source": f"n{source}", "target": f"n{target}"}
    if action is not None:
        edge["action"] = action
    if condition is not None:
        edge["condition"] = condition
    return edge


async def _run(blueprint: dict[str, Any], faults: StackFaults | None) -> RunResult:
    options: dict[str, Any] = {}
    if faults is not None and faults.crash_rate:
        options["visibility_timeout_ms"] = 150
    async with MemoryStack(
        blueprints=[blueprint], registry=STANDARD_NODES, faults=faults, **options
    ) as stack:
        run_id = await stack.start("dag")
        return await stack.wait(run_id, timeout=60)


def _run_sync(blueprint: dict[str, Any], faults: StackFaults | None) -> RunResult:
    return anyio.run(_run, blueprint, faults)


def _same_outcome(clean: RunResult, other: RunResult) -> None:
    assert other.status == clean.status == "completed", other.reason
    assert other.outputs == clean.outputs


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(blueprint=dag_blueprints(), seed=st.integers(min_value=0, max_value=2**16))
def test_random_dags_survive_duplicates_reordering_and_crashes(
    blueprint: dict[str, Any], seed: int
) -> None:
    clean = _run_sync(blueprint, None)
    assert clean.status == "completed", clean.reason
    assert all(count == 1 for count in clean.invocations.values())

    noisy = _run_sync(blueprint, StackFaults(duplicate=True, reorder=True, seed=seed))
    _same_outcome(clean, noisy)
    assert noisy.invocations == clean.invocations

    faults = StackFaults(crash_rate=0.5, reorder=True, seed=seed)
    crashed = _run_sync(blueprint, faults)
    _same_outcome(clean, crashed)
    crashes = Counter(node for _, node, _ in faults.crashes)
    for node in {*clean.invocations, *crashed.invocations}:
        expected = clean.invocations.get(node, 0)
        actual = crashed.invocations.get(node, 0)
        assert expected <= actual <= expected + crashes[node], (node, actual, expected)
