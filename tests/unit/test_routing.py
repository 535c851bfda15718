"""Routing a completed node (TS §5.1, §5.4; SEMANTICS rules 8, 10, 12)."""

from __future__ import annotations

import math
from typing import Any

import pytest

from flowcraft_puller.engine.blueprint import Blueprint, load_blueprint
from flowcraft_puller.engine.evaluators import PropertyEvaluator
from flowcraft_puller.engine.executor import ExecutionEnv
from flowcraft_puller.engine.jsexpr import ExpressionEvaluator
from flowcraft_puller.engine.jsvalues import UNDEFINED
from flowcraft_puller.engine.nodes import NodeResult
from flowcraft_puller.engine.routing import Route, edge_input, route
from flowcraft_puller.engine.step import Engine, NodeJob

PROPERTY = PropertyEvaluator()


def node(node_id: str, uses: str = "echo", **fields: Any) -> dict[str, Any]:
    return {"id": node_id, "uses": uses, **fields}


def edge(source: str, target: str, **fields: Any) -> dict[str, Any]:
    return {"source": source, "target": target, **fields}


def blueprint(nodes: list[dict[str, Any]], edges: list[dict[str, Any]]) -> Blueprint:
    return load_blueprint({"id": "routing", "nodes": nodes, "edges": edges})


def fan(edges: list[dict[str, Any]], targets: str = "BCDE") -> Blueprint:
    return blueprint([node("A"), *(node(t) for t in targets)], edges)


def route_a(bp: Blueprint, result: NodeResult, context: dict[str, Any] | None = None) -> Route:
    return route(bp, "A", result, context or {}, PROPERTY)


ACTION_FAN = [
    edge("A", "B", action="approve"),
    edge("A", "C", action="reject"),
    edge("A", "D"),
]


def test_matching_action_edges_win_and_default_edges_are_skipped() -> None:
    decided = route_a(fan(ACTION_FAN), NodeResult(output=1, action="approve"))
    assert decided.arrivals == ("B",)
    assert decided.skips == ("C", "D")


def test_default_edges_are_taken_when_no_action_edge_matches() -> None:
    decided = route_a(fan(ACTION_FAN), NodeResult(output=1, action="nomatch"))
    assert decided.arrivals == ("D",)
    assert decided.skips == ("B", "C")


def test_action_edges_are_never_taken_without_an_action() -> None:
    decided = route_a(fan(ACTION_FAN), NodeResult(output=1))
    assert decided.arrivals == ("D",)
    assert decided.skips == ("B", "C")


def test_an_action_edge_whose_condition_fails_lets_default_edges_run() -> None:
    bp = fan([edge("A", "B", action="go", condition="result.output.ok"), edge("A", "C")])
    decided = route_a(bp, NodeResult(output={"ok": False}, action="go"))
    assert decided.arrivals == ("C",)
    assert decided.skips == ("B",)


def test_nothing_matching_skips_every_successor() -> None:
    bp = fan([edge("A", "B", action="x"), edge("A", "C", condition="result.output.missing")])
    decided = route_a(bp, NodeResult(output={}, action="y"))
    assert decided.arrivals == ()
    assert decided.skips == ("B", "C")


def test_several_matching_edges_fan_out_in_edge_order() -> None:
    bp = fan([edge("A", "D"), edge("A", "B"), edge("A", "C", condition="result.output.ok")])
    decided = route_a(bp, NodeResult(output={"ok": True}))
    assert decided.arrivals == ("D", "B", "C")
    assert decided.skips == ()


def test_duplicate_edges_to_one_target_arrive_once() -> None:
    bp = fan([edge("A", "C", action="x"), edge("A", "C")], "C")
    decided = route_a(bp, NodeResult(output=1, action="x"))
    assert decided.arrivals == ("C",)
    assert decided.skips == ()


def test_conditions_see_the_context_and_the_result() -> None:
    bp = fan(
        [
            edge("A", "B", condition="flag"),
            edge("A", "C", condition="result.output.ok"),
            edge("A", "D", condition="result.action"),
            edge("A", "E", condition="_outputs.A"),
        ]
    )
    decided = route_a(bp, NodeResult(output={"ok": True}), {"flag": 1, "_outputs.A": 1})
    assert decided.arrivals == ("B", "C")
    assert decided.skips == ("D", "E")


def test_the_result_shadows_a_context_key_named_result() -> None:
    bp = fan([edge("A", "B", condition="result.output"), edge("A", "C", condition="result.old")])
    decided = route_a(bp, NodeResult(output="yes"), {"result": {"old": True}})
    assert decided.arrivals == ("B",)


@pytest.mark.parametrize(
    ("output", "taken"),
    [
        ([], True),
        ({}, True),
        ("0", True),
        ("false", True),
        (-1, True),
        (0, False),
        (0.0, False),
        ("", False),
        (None, False),
        (False, False),
        (math.nan, False),
    ],
)
def test_conditions_use_javascript_truthiness(output: object, taken: bool) -> None:
    bp = fan([edge("A", "B", condition="result.output")], "B")
    decided = route_a(bp, NodeResult(output=output))
    assert decided.arrivals == (("B",) if taken else ())


def test_expression_conditions_use_javascript_semantics() -> None:
    bp = fan(
        [
            edge("A", "B", condition="result.output.n === 7 && count < 3"),
            edge("A", "C", condition="result.output.n === '7'"),
        ],
        "BC",
    )
    decided = route(bp, "A", NodeResult(output={"n": 7}), {"count": 2}, ExpressionEvaluator())
    assert decided.arrivals == ("B",)
    assert decided.skips == ("C",)


def loop(conditional_edge: dict[str, Any] | None = None) -> Blueprint:
    edges = [
        edge("init", "L"),
        edge("L", "body", action="continue"),
        edge("body", "L"),
        edge("L", "done", action="break"),
    ]
    if conditional_edge is not None:
        edges.append(conditional_edge)
    return blueprint(
        [
            node("init"),
            node("L", uses="loop-controller", params={"condition": "go"}),
            node("body"),
            node("done"),
            node("alarm"),
        ],
        edges,
    )


def test_a_continuing_loop_controller_arrives_at_its_body_and_skips_nothing() -> None:
    decided = route(loop(), "L", NodeResult(action="continue"), {}, PROPERTY)
    assert decided.arrivals == ("body",)
    assert decided.skips == ()


def test_a_breaking_loop_controller_skips_its_body() -> None:
    decided = route(loop(), "L", NodeResult(output=None, action="break"), {}, PROPERTY)
    assert decided.arrivals == ("done",)
    assert decided.skips == ("body",)


def test_loop_controller_conditional_edges_are_tried_first_whatever_their_action() -> None:
    bp = loop(edge("L", "alarm", action="break", condition="overflow"))
    decided = route(bp, "L", NodeResult(action="continue"), {"overflow": True}, PROPERTY)
    assert decided.arrivals == ("alarm",)
    assert decided.skips == ()
    decided = route(bp, "L", NodeResult(action="continue"), {"overflow": False}, PROPERTY)
    assert decided.arrivals == ("body",)


def test_a_loop_controller_conditional_edge_taken_on_break_skips_the_rest() -> None:
    bp = loop(edge("L", "alarm", condition="overflow"))
    decided = route(bp, "L", NodeResult(output=None, action="break"), {"overflow": 1}, PROPERTY)
    assert decided.arrivals == ("alarm",)
    assert decided.skips == ("body", "done")


def test_taken_edges_deliver_the_output_or_its_transform() -> None:
    bp = fan([edge("A", "B"), edge("A", "C", transform="input.n"), edge("A", "D", transform="x")])
    decided = route_a(bp, NodeResult(output={"n": 7}))
    assert decided.inputs == {"_inputs.B": {"n": 7}, "_inputs.C": 7, "_inputs.D": UNDEFINED}


def test_a_transform_sees_the_context_snapshot() -> None:
    bp = fan([edge("A", "B", transform="context.seed")], "B")
    assert route_a(bp, NodeResult(output=1), {"seed": "S"}).inputs == {"_inputs.B": "S"}


def test_a_transform_applies_to_the_node_the_target_asked_for() -> None:
    bp = blueprint(
        [node("A"), node("X"), node("B", inputs="X"), node("U", inputs="_outputs.X")],
        [
            edge("A", "B", transform="input.n"),
            edge("A", "U", transform="input.n"),
            edge("X", "B"),
            edge("X", "U"),
        ],
    )
    context = {"_outputs.X": {"n": "from X"}}
    edges = bp.analysis.candidate_edges("A", via_fallback=False)
    values = [edge_input(bp, e, NodeResult(output={"n": 7}), context, PROPERTY) for e in edges]
    assert values == ["from X", "from X"]


def test_the_asked_for_node_is_ignored_until_it_has_an_output() -> None:
    bp = blueprint(
        [node("A"), node("X"), node("B", inputs="X")],
        [edge("A", "B", transform="input.n"), edge("X", "B")],
    )
    (only,) = bp.analysis.candidate_edges("A", via_fallback=False)
    assert edge_input(bp, only, NodeResult(output={"n": 7}), {}, PROPERTY) == 7


def test_the_special_case_needs_a_transform_and_a_different_source() -> None:
    bp = blueprint(
        [node("A"), node("X"), node("B", inputs="X"), node("C", inputs="A")],
        [edge("A", "B"), edge("A", "C", transform="input.n"), edge("X", "B")],
    )
    context = {"_outputs.X": {"n": "from X"}, "_outputs.A": {"n": "stored A"}}
    plain, transformed = bp.analysis.candidate_edges("A", via_fallback=False)
    result = NodeResult(output={"n": 7})
    assert edge_input(bp, plain, result, context, PROPERTY) == {"n": 7}
    assert edge_input(bp, transformed, result, context, PROPERTY) == 7


def test_routing_a_rescued_node_follows_its_fallback_edges_too() -> None:
    bp = blueprint(
        [node("S"), node("A", config={"fallback": "F"}), node("F"), node("E"), node("G")],
        [edge("S", "A"), edge("A", "E"), edge("F", "G")],
    )
    rescued = route(bp, "A", NodeResult(output=1), {}, PROPERTY, via_fallback=True)
    assert rescued.arrivals == ("E", "G")
    assert rescued.skips == ()
    plain = route(bp, "A", NodeResult(output=1), {}, PROPERTY)
    assert plain.arrivals == ("E",)
    assert plain.skips == ("G",)


def test_an_undefined_transform_result_deletes_the_target_input() -> None:
    bp = blueprint([node("A"), node("B")], [edge("A", "B", transform="input.missing")])
    engine = Engine(blueprints={bp.id: bp}, env=ExecutionEnv(registry={}))
    job = NodeJob(
        blueprint=bp, node=bp.node("A"), run_id="r", gen=0, snapshot={"_inputs.B": "stale"}
    )
    commit = engine.resume(job, NodeResult(output={"n": 1}))
    assert "_inputs.B" not in commit.writes
    assert commit.deletes == ("_inputs.B",)
    assert commit.arrivals == ("B",)
    assert commit.writes["_outputs.A"] == {"n": 1}


def test_completion_writes_the_output_and_the_delivered_inputs() -> None:
    bp = blueprint(
        [node("A"), node("B"), node("C")],
        [edge("A", "B", transform="input.n"), edge("A", "C", action="other")],
    )
    engine = Engine(blueprints={bp.id: bp}, env=ExecutionEnv(registry={}))
    job = NodeJob(blueprint=bp, node=bp.node("A"), run_id="r", gen=0, snapshot={})
    commit = engine.resume(job, NodeResult(output={"n": 3}))
    assert commit.writes == {"_outputs.A": {"n": 3}, "_inputs.B": 3}
    assert commit.deletes == ()
    assert (commit.arrivals, commit.skips) == (("B",), ("C",))
