"""Blueprint analysis: roles, routing candidates, successors, loops, cycles and topology."""

from __future__ import annotations

from typing import Any

from flowcraft_puller.engine.analysis import TopologyNode
from flowcraft_puller.engine.blueprint import Blueprint, load_blueprint


def node(node_id: str, uses: str = "echo", **fields: Any) -> dict[str, Any]:
    return {"id": node_id, "uses": uses, **fields}


def edge(source: str, target: str, **fields: Any) -> dict[str, Any]:
    return {"source": source, "target": target, **fields}


def blueprint(nodes: list[dict[str, Any]], edges: list[dict[str, Any]]) -> Blueprint:
    return load_blueprint({"id": "an", "nodes": nodes, "edges": edges})


def loop_blueprint() -> Blueprint:
    """init → L; L -continue→ b1 → b2 → L; b1 → side; L -break→ done."""
    return blueprint(
        [
            node("init"),
            node("L", uses="loop-controller", params={"condition": "go"}),
            node("b1"),
            node("b2"),
            node("side"),
            node("done"),
        ],
        [
            edge("init", "L"),
            edge("L", "b1", action="continue"),
            edge("b1", "b2"),
            edge("b2", "L"),
            edge("b1", "side"),
            edge("L", "done", action="break"),
        ],
    )


def test_start_and_terminal_nodes_follow_blueprint_order() -> None:
    bp = blueprint(
        [node("C"), node("A"), node("B"), node("D")],
        [edge("A", "B"), edge("C", "B")],
    )
    assert bp.analysis.start_nodes == ("C", "A", "D")
    assert bp.analysis.terminal_nodes == ("B", "D")


def test_fallback_nodes_are_neither_start_nor_terminal() -> None:
    bp = blueprint(
        [node("S"), node("A", config={"fallback": "F"}), node("F"), node("E")],
        [edge("S", "A"), edge("A", "E")],
    )
    analysis = bp.analysis
    assert analysis.start_nodes == ("S",)
    assert analysis.terminal_nodes == ("E",)
    assert analysis.fallback_only == frozenset({"F"})
    assert "F" not in analysis.succs
    assert "F" not in analysis.topology


def test_a_fallback_node_with_incoming_edges_still_runs_as_a_node() -> None:
    bp = blueprint(
        [node("S"), node("A", config={"fallback": "F"}), node("F")],
        [edge("S", "A"), edge("S", "F")],
    )
    analysis = bp.analysis
    assert analysis.fallback_only == frozenset()
    assert analysis.start_nodes == ("S",)
    assert analysis.terminal_nodes == ("A", "F")
    assert analysis.succs["S"] == ("A", "F")


def test_a_fallback_node_that_names_the_start_is_not_a_start_node() -> None:
    bp = blueprint([node("A", config={"fallback": "F"}), node("F")], [])
    assert bp.analysis.start_nodes == ("A",)
    assert bp.analysis.terminal_nodes == ("A",)


def test_duplicate_candidate_edges_keep_the_first_position_and_the_last_value() -> None:
    bp = blueprint(
        [node("A"), node("B"), node("C")],
        [
            edge("A", "B", action="x", transform="input.first"),
            edge("A", "C"),
            edge("A", "B", action="x", transform="input.last"),
            edge("A", "B", action="y"),
        ],
    )
    candidates = bp.analysis.candidate_edges("A", via_fallback=False)
    assert [(e.target, e.action, e.transform) for e in candidates] == [
        ("B", "x", "input.last"),
        ("C", None, None),
        ("B", "y", None),
    ]


def test_edges_differing_in_condition_are_not_duplicates() -> None:
    bp = blueprint(
        [node("A"), node("B")],
        [edge("A", "B", condition="result.output.a"), edge("A", "B", condition="result.output.b")],
    )
    assert len(bp.analysis.candidate_edges("A", via_fallback=False)) == 2


def test_a_fallback_node_inherits_the_edges_of_the_node_it_rescues() -> None:
    bp = blueprint(
        [node("S"), node("A", config={"fallback": "F"}), node("F"), node("E"), node("G")],
        [edge("S", "A"), edge("A", "E"), edge("F", "G")],
    )
    analysis = bp.analysis
    own = analysis.candidate_edges("F", via_fallback=False)
    assert [(e.source, e.target) for e in own] == [("F", "G"), ("A", "E")]
    plain = analysis.candidate_edges("A", via_fallback=False)
    assert [(e.source, e.target) for e in plain] == [("A", "E")]
    rescued = analysis.candidate_edges("A", via_fallback=True)
    assert [(e.source, e.target) for e in rescued] == [("A", "E"), ("F", "G")]
    assert analysis.succs["A"] == ("E", "G")
    assert analysis.preds["G"] == ("A",)


def test_inherited_duplicates_collapse_with_the_last_one_winning() -> None:
    bp = blueprint(
        [node("S"), node("A", config={"fallback": "F"}), node("F"), node("E")],
        [edge("S", "A"), edge("A", "E", transform="input.a"), edge("F", "E", transform="input.f")],
    )
    rescued = bp.analysis.candidate_edges("A", via_fallback=True)
    assert [(e.source, e.transform) for e in rescued] == [("A", "input.a"), ("F", "input.f")]
    assert bp.analysis.succs["A"] == ("E",)


def test_succs_and_preds_count_distinct_nodes() -> None:
    bp = blueprint(
        [node("A"), node("B"), node("C")],
        [
            edge("A", "C", action="x"),
            edge("A", "C"),
            edge("A", "B"),
            edge("B", "C", condition="result.output"),
            edge("B", "C"),
        ],
    )
    assert bp.analysis.succs == {"A": ("C", "B"), "B": ("C",), "C": ()}
    assert bp.analysis.preds == {"A": (), "B": ("A",), "C": ("A", "B")}


def test_loop_body_is_the_nodes_on_a_path_from_continue_back_to_the_controller() -> None:
    analysis = loop_blueprint().analysis
    assert analysis.loop_controllers == ("L",)
    assert analysis.continue_targets("L") == ("b1",)
    assert analysis.loop_bodies["L"] == frozenset({"b1", "b2"})
    assert analysis.rearm_set("L") == ("L", "b1", "b2")


def test_a_single_node_loop_body_rearms_the_controller_and_the_body() -> None:
    bp = blueprint(
        [
            node("init"),
            node("L", uses="loop-controller", params={"condition": "go"}),
            node("body"),
        ],
        [edge("init", "L"), edge("L", "body", action="continue"), edge("body", "L")],
    )
    assert bp.analysis.rearm_set("L") == ("L", "body")


def test_cycles_are_strongly_connected_groups_in_blueprint_order() -> None:
    bp = blueprint(
        [node("S"), node("X"), node("A"), node("B"), node("C"), node("Y"), node("T")],
        [
            edge("S", "A"),
            edge("A", "B"),
            edge("B", "C"),
            edge("C", "A"),
            edge("S", "X"),
            edge("X", "Y"),
            edge("Y", "X"),
            edge("C", "T"),
        ],
    )
    assert bp.analysis.cycles == (("X", "Y"), ("A", "B", "C"))


def test_a_self_loop_is_a_cycle_and_a_dag_has_none() -> None:
    looped = blueprint([node("S"), node("A")], [edge("S", "A"), edge("A", "A")])
    assert looped.analysis.cycles == (("A",),)
    dag = blueprint(
        [node("A"), node("B"), node("C"), node("D")],
        [edge("A", "B"), edge("A", "C"), edge("B", "D"), edge("C", "D")],
    )
    assert dag.analysis.cycles == ()


def test_loop_cycle_is_found() -> None:
    assert loop_blueprint().analysis.cycles == (("L", "b1", "b2"),)


def test_topology_carries_succs_join_and_loop_back_predecessors() -> None:
    bp = load_blueprint(
        {
            "id": "topo",
            "nodes": [
                node("init"),
                node(
                    "L",
                    uses="loop-controller",
                    params={"condition": "go"},
                    config={"joinStrategy": "any"},
                ),
                node("b1"),
                node("b2"),
                node("done"),
            ],
            "edges": [
                edge("init", "L"),
                edge("L", "b1", action="continue"),
                edge("b1", "b2"),
                edge("b2", "L"),
                edge("L", "done", action="break"),
            ],
        }
    )
    assert bp.analysis.topology == {
        "init": TopologyNode(succs=("L",), join="all"),
        "L": TopologyNode(succs=("b1", "done"), join="any", back_preds=("b2",)),
        "b1": TopologyNode(succs=("b2",), join="all"),
        "b2": TopologyNode(succs=("L",), join="all"),
        "done": TopologyNode(succs=(), join="all"),
    }


def test_analysis_is_computed_once_per_blueprint() -> None:
    bp = loop_blueprint()
    assert bp.analysis is bp.analysis
