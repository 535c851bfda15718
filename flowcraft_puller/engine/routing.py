"""Routing a completed node: which edges are taken, which are skipped, what inputs they carry.

Rules: SEMANTICS 8, 10 and 12 (TS §5.1 and §5.4, with the W1/W10/W13 fixes).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from flowcraft_puller.engine.analysis import LOOP_CONTROLLER
from flowcraft_puller.engine.blueprint import Blueprint, EdgeDef
from flowcraft_puller.engine.context import WithResult
from flowcraft_puller.engine.evaluators import Evaluator
from flowcraft_puller.engine.jsvalues import truthy
from flowcraft_puller.engine.nodes import NodeResult


@dataclass(frozen=True, slots=True)
class Route:
    """The outcome of routing: targets that receive an arrival, targets that receive a skip,
    and the ``_inputs.<target>`` values the taken edges deliver (UNDEFINED means delete)."""

    arrivals: tuple[str, ...]
    skips: tuple[str, ...]
    inputs: dict[str, Any] = field(default_factory=dict)


def select_edges(
    blueprint: Blueprint,
    node_id: str,
    result: NodeResult,
    context: Mapping[str, Any],
    evaluator: Evaluator,
    *,
    via_fallback: bool = False,
) -> list[EdgeDef]:
    """The matched edges, in edge order (TS ``determineNextNodes``).

    A loop controller's conditional edges are tried first; then edges whose action equals the
    result's action; default (action-less) edges only when nothing matched so far.
    """
    candidates = blueprint.analysis.candidate_edges(node_id, via_fallback=via_fallback)
    scope = WithResult(context, result.as_js())

    def passes(edge: EdgeDef) -> bool:
        return edge.condition is None or truthy(evaluator.evaluate(edge.condition, scope))

    if blueprint.node(node_id).uses == LOOP_CONTROLLER:
        matched = [e for e in candidates if e.condition is not None and passes(e)]
        if matched:
            return matched
    matched = []
    if result.action:
        matched = [e for e in candidates if e.action == result.action and passes(e)]
    if not matched:
        matched = [e for e in candidates if e.action is None and passes(e)]
    return matched


def edge_input(
    blueprint: Blueprint,
    edge: EdgeDef,
    result: NodeResult,
    context: Mapping[str, Any],
    evaluator: Evaluator,
) -> Any:
    """The value an edge writes to ``_inputs.<target>`` (TS ``applyEdgeTransform``)."""
    source_output: Any = result.output
    target_inputs = blueprint.node(edge.target).inputs
    if (
        edge.transform is not None
        and isinstance(target_inputs, str)
        and target_inputs != edge.source
    ):
        key = target_inputs if target_inputs.startswith("_") else f"_outputs.{target_inputs}"
        if key in context:
            source_output = context[key]
    if edge.transform is None:
        return source_output
    return evaluator.evaluate(edge.transform, {"input": source_output, "context": context})


def route(
    blueprint: Blueprint,
    node_id: str,
    result: NodeResult,
    context: Mapping[str, Any],
    evaluator: Evaluator,
    *,
    via_fallback: bool = False,
) -> Route:
    """Route a completed node: arrivals to matched targets, skips to every other successor.

    A loop controller that continues skips nothing: its other edges are decided on a later
    iteration.
    """
    matched = select_edges(
        blueprint, node_id, result, context, evaluator, via_fallback=via_fallback
    )
    arrivals: dict[str, None] = {}
    inputs: dict[str, Any] = {}
    for edge in matched:
        arrivals[edge.target] = None
        inputs[f"_inputs.{edge.target}"] = edge_input(blueprint, edge, result, context, evaluator)
    node = blueprint.node(node_id)
    if node.uses == LOOP_CONTROLLER and result.action == "continue":
        skips: tuple[str, ...] = ()
    else:
        skips = tuple(t for t in blueprint.analysis.succs[node_id] if t not in arrivals)
    return Route(arrivals=tuple(arrivals), skips=skips, inputs=inputs)
