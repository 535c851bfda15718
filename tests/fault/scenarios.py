"""The runs of the fault campaign: corpus scenarios whose clean result does not depend on timing
or arrival order, a slow chain for lease-expiry storms, and each one's clean reference result.

Scenarios are read from the shared corpus (never copied). Left out: scenarios that need a
person (resume, cancel), that fail the daemon's start-up check on purpose (unknown
implementation, a timeout longer than a short visibility timeout), and ``any`` joins, whose
output is whichever predecessor arrived first.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from flowcraft_puller.runstore.protocol import RunStatus
from flowcraft_puller.testing import STANDARD_NODES, MemoryStack
from tests.conformance.corpus import Scenario, load_scenarios

EXCLUDED: Final = frozenset(
    {
        "03-any-join-two",
        "04-any-join-three",
        "12-wait-resume",
        "13-wait-actions",
        "15-sleep-string",
        "27-unknown-implementation",
        "28-cancel",
        "30-timeout",
    }
)
_BATCH_ID: Final = re.compile(r"_[0-9a-f]{12}_")
SLOW_NODE_MS: Final = 1_300
"""Longer than the lease-expiry campaign's visibility timeout (1 s)."""


@dataclass(frozen=True, slots=True)
class Workload:
    """One kind of run: its blueprints (flowcraft JSON), the one to start and its context."""

    name: str
    blueprints: dict[str, dict[str, Any]]
    start_id: str
    context: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Reference:
    """What a clean run of a workload ends with."""

    status: RunStatus
    reason: str | None
    outputs: dict[str, Any]


def _blueprints(scenario: Scenario) -> dict[str, dict[str, Any]]:
    """The scenario's blueprints, each asking for the scenario's evaluator itself (a daemon
    has one default evaluator for every blueprint it loads)."""
    blueprints = copy.deepcopy(scenario.blueprints)
    if scenario.evaluator != "property":
        for blueprint in blueprints.values():
            blueprint["metadata"] = {
                **blueprint.get("metadata", {}),
                "evaluator": scenario.evaluator,
            }
    return blueprints


def corpus_workloads() -> list[Workload]:
    return [
        Workload(
            name=scenario.name,
            blueprints=_blueprints(scenario),
            start_id=scenario.data["start"]["blueprintId"],
            context=dict(scenario.data["start"].get("context") or {}),
        )
        for scenario in load_scenarios()
        if scenario.name not in EXCLUDED
    ]


def slow_chain() -> Workload:
    """``A → S → B`` where ``S`` runs longer than a short visibility timeout."""
    blueprint_id = "fault-slow-chain"
    blueprint: dict[str, Any] = {
        "id": blueprint_id,
        "nodes": [
            {"id": "A", "uses": "const", "params": {"value": 1}},
            {"id": "S", "uses": "slow", "params": {"ms": SLOW_NODE_MS}, "inputs": "A"},
            {"id": "B", "uses": "inc", "inputs": "S"},
        ],
        "edges": [{"source": "A", "target": "S"}, {"source": "S", "target": "B"}],
    }
    return Workload("slow-chain", {blueprint_id: blueprint}, blueprint_id, {})


def all_blueprints(workloads: Iterable[Workload]) -> list[dict[str, Any]]:
    return [b for w in workloads for b in w.blueprints.values()]


async def clean_reference(workload: Workload) -> Reference:
    """The workload run once in memory, without faults."""
    async with MemoryStack(
        blueprints=workload.blueprints.values(), registry=STANDARD_NODES
    ) as stack:
        run_id = await stack.start(workload.start_id, workload.context)
        result = await stack.wait(run_id, timeout=30)
    return Reference(result.status, result.reason, outputs_of(result.context))


def outputs_of(context: Mapping[str, Any]) -> dict[str, Any]:
    """The committed node outputs (``_outputs.<node>``) of a run's context, by node. The ids of
    dynamic nodes (``double_<batch id>_0``) carry a batch id derived from the run id; it is
    replaced by ``*`` so that runs compare."""
    return {
        _BATCH_ID.sub("_*_", key.removeprefix("_outputs.")): value
        for key, value in context.items()
        if key.startswith("_outputs.")
    }
