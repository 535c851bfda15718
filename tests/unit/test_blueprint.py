"""Loading, validating and linting blueprints (engine/blueprint.py, engine/validation.py)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from flowcraft_puller.engine.blueprint import Blueprint, load_blueprint, parse_blueprint
from flowcraft_puller.engine.errors import BlueprintError, BlueprintIssue
from flowcraft_puller.engine.evaluators import PropertyEvaluator
from flowcraft_puller.engine.validation import lint_blueprint

LOOP_TEXT = (
    "Loop 'L' has no continue edge to start node. Ensure edges are wired inside the loop and "
    "incoming/breaking edges point to the loop controller."
)


def node(node_id: str, uses: str = "echo", **fields: Any) -> dict[str, Any]:
    return {"id": node_id, "uses": uses, **fields}


def edge(source: str, target: str, **fields: Any) -> dict[str, Any]:
    return {"source": source, "target": target, **fields}


def issues_of(data: object) -> list[BlueprintIssue]:
    with pytest.raises(BlueprintError) as caught:
        load_blueprint(data)
    return caught.value.issues


def paths_of(data: object) -> dict[str, str]:
    return {issue.path: issue.message for issue in issues_of(data)}


def lint(data: dict[str, Any], known_uses: set[str] | None = None) -> list[BlueprintIssue]:
    return lint_blueprint(
        load_blueprint(data), evaluator=PropertyEvaluator(), known_uses=known_uses
    )


# ---- loading ------------------------------------------------------------------------------------


def test_nodes_and_edges_given_as_objects_take_their_values_in_order() -> None:
    bp = load_blueprint(
        {
            "id": "obj",
            "nodes": {"first": node("A"), "second": node("B")},
            "edges": {"only": edge("A", "B")},
        }
    )
    assert [n.id for n in bp.nodes] == ["A", "B"]
    assert [(e.source, e.target) for e in bp.edges] == [("A", "B")]


def test_unknown_fields_anywhere_are_ignored() -> None:
    bp = load_blueprint(
        {
            "id": "extra",
            "owner": "someone",
            "nodes": [
                {
                    **node("A", params={"p": 1}),
                    "_sourceLocation": {"file": "f.ts", "line": 1, "column": 2},
                    "config": {"maxRetries": 2, "priority": "high"},
                },
                node("B"),
            ],
            "edges": [{**edge("A", "B"), "label": "x", "_sourceLocation": {}}],
            "metadata": {"version": "1.0", "author": "x"},
        }
    )
    assert bp.node("A").config.max_retries == 2
    assert bp.node("A").params == {"p": 1}
    assert bp.version == "1.0"
    assert bp.metadata["author"] == "x"


def test_missing_optional_parts_take_typescript_defaults() -> None:
    bp = load_blueprint({"id": "d", "nodes": [node("A", params=None, config=None)]})
    config = bp.node("A").config
    assert (config.max_retries, config.retry_delay_ms, config.timeout_ms) == (1, None, None)
    assert (config.fallback, config.join) == (None, "all")
    assert bp.node("A").params == {}
    assert bp.edges == ()
    assert bp.version is None


@pytest.mark.parametrize(("raw", "expected"), [("2.0.1", "2.0.1"), ("", None), (None, None)])
def test_version_is_metadata_version_or_null_when_falsy(raw: object, expected: object) -> None:
    bp = load_blueprint({"id": "v", "nodes": [node("A")], "metadata": {"version": raw}})
    assert bp.version == expected


@pytest.mark.parametrize(
    ("raw", "attempts"),
    [(2.5, 2), ("2", 2), (" 3 ", 3), (None, 1), (0, 0), (-1, 0), (-3.5, 0), (1, 1), (7, 7)],
)
def test_max_retries_is_coerced_like_the_javascript_attempt_loop(
    raw: object, attempts: int
) -> None:
    bp = load_blueprint({"id": "r", "nodes": [node("A", config={"maxRetries": raw})]})
    assert bp.node("A").config.max_retries == attempts


def test_blueprint_fields_cannot_be_assigned() -> None:
    bp = load_blueprint({"id": "frozen", "nodes": [node("A", params={"k": 1})]})
    with pytest.raises(ValidationError, match="frozen"):
        bp.id = "other"  # type: ignore[misc]
    with pytest.raises(ValidationError, match="frozen"):
        bp.nodes[0].uses = "other"  # type: ignore[misc]
    with pytest.raises(ValidationError, match="frozen"):
        bp.nodes[0].config.max_retries = 5  # type: ignore[misc]
    assert isinstance(bp.nodes, tuple)
    assert isinstance(bp.edges, tuple)


def test_params_are_read_only() -> None:
    bp = load_blueprint({"id": "frozen", "nodes": [node("A", params={"k": 1})]})
    params: Any = bp.node("A").params
    with pytest.raises(TypeError):
        params["k"] = 2
    with pytest.raises(TypeError):
        params["new"] = 1
    assert bp.node("A").params == {"k": 1}


def test_loading_copies_params_so_the_source_dict_cannot_change_the_blueprint() -> None:
    source = {"k": 1}
    bp = load_blueprint({"id": "copy", "nodes": [node("A", params=source)]})
    source["k"] = 2
    assert bp.node("A").params == {"k": 1}


def test_metadata_and_input_maps_are_read_only() -> None:
    bp = load_blueprint(
        {"id": "frozen", "nodes": [node("A", inputs={"x": "y"})], "metadata": {"version": "1"}}
    )
    metadata: Any = bp.metadata
    inputs: Any = bp.node("A").inputs
    with pytest.raises(TypeError):
        metadata["version"] = "2"
    with pytest.raises(TypeError):
        inputs["x"] = "z"


def test_to_json_round_trips_through_the_loader() -> None:
    data = {
        "id": "rt",
        "nodes": [
            node("A", params={"p": [1, 2]}, config={"maxRetries": 3, "fallback": "F"}),
            node("F"),
            node("B", inputs={"x": "A.n"}, config={"joinStrategy": "any", "retryDelay": 5}),
        ],
        "edges": [edge("A", "B", action="go", condition="result.output.ok", transform="input.n")],
        "metadata": {"version": "3"},
    }
    bp = load_blueprint(data)
    again = load_blueprint(bp.to_json())
    assert again == bp


# ---- errors: every problem at once, with the blueprint id and the field path --------------------


def test_every_error_is_reported_at_once_with_blueprint_id_and_path() -> None:
    data = {
        "id": "broken",
        "nodes": [
            node("A", config={"fallback": "nowhere"}),
            node("A"),
            node("D", config={"fallback": "D"}),
            node("L", uses="loop-controller", params={"condition": "go"}),
            node("S", uses="batch-scatter"),
            node("F", uses="subflow"),
            node("R", config={"maxRetries": "many", "retryDelay": -5, "joinStrategy": "most"}),
            {"id": "B"},
            node("C", uses=""),
        ],
        "edges": [edge("A", "ghost"), edge("phantom", "A"), edge("L", "A", action="break")],
    }
    with pytest.raises(BlueprintError) as caught:
        load_blueprint(data)
    error = caught.value
    assert error.blueprint_id == "broken"
    assert all(issue.blueprint_id == "broken" for issue in error.issues)
    assert all(issue.severity == "error" for issue in error.issues)
    assert {issue.path for issue in error.issues} == {
        "nodes[0].config.fallback",
        "nodes[1].id",
        "nodes[2].config.fallback",
        "nodes[3].uses",
        "nodes[4].params.workerUsesKey",
        "nodes[4].params.gatherNodeId",
        "nodes[5].params.blueprintId",
        "nodes[6].config.maxRetries",
        "nodes[6].config.retryDelay",
        "nodes[6].config.joinStrategy",
        "nodes[7].uses",
        "nodes[8].uses",
        "edges[0].target",
        "edges[1].source",
    }
    text = str(error)
    assert "'broken'" in text
    assert f"({len(error.issues)} problem(s))" in text
    assert "nodes[1].id: duplicate node id 'A' (first at nodes[0])" in text


def test_graph_error_paths_use_source_indices_after_a_field_error() -> None:
    found = paths_of(
        {
            "id": "shift",
            "nodes": [
                node("A"),
                {"id": "B"},
                node("C", config={"fallback": "C"}),
                node("A"),
            ],
            "edges": [{"source": "A"}, edge("A", "ghost")],
        }
    )
    assert set(found) == {
        "nodes[1].uses",
        "nodes[2].config.fallback",
        "nodes[3].id",
        "edges[0].target",
        "edges[1].target",
    }


def test_duplicate_node_ids_name_the_first_occurrence() -> None:
    found = paths_of({"id": "dup", "nodes": [node("A"), node("B"), node("A")]})
    assert found == {"nodes[2].id": "duplicate node id 'A' (first at nodes[0])"}


def test_edges_to_unknown_nodes_name_the_end() -> None:
    found = paths_of({"id": "e", "nodes": [node("A")], "edges": [edge("A", "Z"), edge("Y", "A")]})
    assert found == {"edges[0].target": "unknown node 'Z'", "edges[1].source": "unknown node 'Y'"}


def test_edges_to_a_node_with_field_errors_are_not_reported_twice() -> None:
    found = paths_of(
        {"id": "e", "nodes": [node("A"), {"id": "B", "uses": 3}], "edges": [edge("A", "B")]}
    )
    assert list(found) == ["nodes[1].uses"]


@pytest.mark.parametrize("uses", [None, "", 5])
def test_missing_or_empty_uses_is_an_error(uses: object) -> None:
    data = {
        "id": "u",
        "nodes": [node("A"), {"id": "B", **({} if uses is None else {"uses": uses})}],
    }
    assert list(paths_of(data)) == ["nodes[1].uses"]


def test_a_fallback_must_name_another_node() -> None:
    found = paths_of(
        {
            "id": "fb",
            "nodes": [node("A", config={"fallback": "A"}), node("B", config={"fallback": "Q"})],
        }
    )
    assert found == {
        "nodes[0].config.fallback": "a node cannot be its own fallback",
        "nodes[1].config.fallback": "names no node of this blueprint: 'Q'",
    }


def test_a_loop_controller_without_a_continue_edge_gives_the_typescript_message() -> None:
    found = paths_of(
        {
            "id": "loop",
            "nodes": [node("A"), node("L", uses="loop-controller", params={"condition": "c"})],
            "edges": [edge("A", "L"), edge("L", "A", action="break")],
        }
    )
    assert found == {"nodes[1].uses": LOOP_TEXT}


def test_a_loop_controller_needs_a_string_condition() -> None:
    found = paths_of(
        {
            "id": "loop",
            "nodes": [node("A"), node("L", uses="loop-controller"), node("B")],
            "edges": [edge("A", "L"), edge("L", "B", action="continue"), edge("B", "L")],
        }
    )
    assert list(found) == ["nodes[1].params.condition"]


def test_batch_scatter_needs_worker_uses_key_and_a_gather_node() -> None:
    found = paths_of(
        {
            "id": "batch",
            "nodes": [
                node("S", uses="batch-scatter", params={"workerUsesKey": "w", "gatherNodeId": "B"}),
                node("B"),
                node("T", uses="batch-scatter", params={"workerUsesKey": "", "chunkSize": 0}),
            ],
            "edges": [edge("S", "B")],
        }
    )
    assert set(found) == {
        "nodes[0].params.gatherNodeId",
        "nodes[2].params.workerUsesKey",
        "nodes[2].params.gatherNodeId",
        "nodes[2].params.chunkSize",
    }
    assert (
        found["nodes[0].params.gatherNodeId"] == "'B' is not a batch-gather node of this blueprint"
    )


def test_subflow_without_blueprint_id_gives_the_typescript_message() -> None:
    found = paths_of(
        {"id": "sub", "nodes": [node("P", uses="subflow", params={"inputs": {"a": 1}})]}
    )
    assert found == {
        "nodes[0].params.blueprintId": "Subflow node 'P' is missing 'blueprintId' parameter.",
        "nodes[0].params.inputs": "must map names to context keys (strings)",
    }


def test_a_blueprint_without_start_node_is_an_error() -> None:
    found = paths_of(
        {"id": "cyc", "nodes": [node("A"), node("B")], "edges": [edge("A", "B"), edge("B", "A")]}
    )
    assert list(found) == ["nodes"]
    assert "no start node" in found["nodes"]


def test_a_blueprint_whose_only_root_is_a_fallback_has_no_start_node() -> None:
    found = paths_of(
        {
            "id": "fb",
            "nodes": [node("F"), node("A", config={"fallback": "F"})],
            "edges": [edge("F", "A")],
        }
    )
    assert list(found) == ["nodes"]


def test_a_field_error_on_the_start_node_does_not_also_report_no_start_node() -> None:
    found = paths_of(
        {"id": "x", "nodes": [node("A"), node("B", uses="")], "edges": [edge("B", "A")]}
    )
    assert list(found) == ["nodes[1].uses"]


@pytest.mark.parametrize(
    ("config", "path"),
    [
        ({"maxRetries": "many"}, "nodes[0].config.maxRetries"),
        ({"maxRetries": [3]}, "nodes[0].config.maxRetries"),
        ({"maxRetries": True}, "nodes[0].config.maxRetries"),
        ({"retryDelay": -1}, "nodes[0].config.retryDelay"),
        ({"timeout": 0}, "nodes[0].config.timeout"),
        ({"joinStrategy": "most"}, "nodes[0].config.joinStrategy"),
    ],
)
def test_bad_config_values_are_errors_at_their_path(config: dict[str, Any], path: str) -> None:
    assert list(paths_of({"id": "c", "nodes": [node("A", config=config)]})) == [path]


@pytest.mark.parametrize(
    ("data", "blueprint_id", "path"),
    [
        ([1, 2], "<unknown>", "$"),
        ({"nodes": [node("A")]}, "<unknown>", "id"),
        ({"id": "", "nodes": [node("A")]}, "<unknown>", "id"),
        ({"id": "n"}, "n", "nodes"),
        ({"id": "n", "nodes": []}, "n", "nodes"),
        ({"id": "n", "nodes": "A"}, "n", "nodes"),
        ({"id": "n", "nodes": [node("A")], "edges": 3}, "n", "edges"),
        ({"id": "n", "nodes": [node("A")], "metadata": [1]}, "n", "metadata"),
        ({"id": "n", "nodes": [node("A"), 7]}, "n", "nodes[1]"),
        ({"id": "n", "nodes": [node("A")], "edges": [{"source": "A"}]}, "n", "edges[0].target"),
    ],
)
def test_structural_errors_name_the_blueprint_and_the_field(
    data: object, blueprint_id: str, path: str
) -> None:
    with pytest.raises(BlueprintError) as caught:
        load_blueprint(data)
    assert caught.value.blueprint_id == blueprint_id
    assert [issue.path for issue in caught.value.issues] == [path]


def test_parse_blueprint_reports_invalid_json_under_the_source_name() -> None:
    with pytest.raises(BlueprintError) as caught:
        parse_blueprint(b'{"id": "x", "nodes": [', source="flows/x.json")
    error = caught.value
    assert error.blueprint_id == "flows/x.json"
    assert [issue.path for issue in error.issues] == ["$"]
    assert error.issues[0].message.startswith("not valid JSON")


def test_parse_blueprint_loads_valid_text() -> None:
    bp = parse_blueprint('{"id": "t", "nodes": [{"id": "A", "uses": "echo"}]}')
    assert isinstance(bp, Blueprint)
    assert bp.node("A").uses == "echo"


def test_parse_blueprint_validates_decoded_json() -> None:
    with pytest.raises(BlueprintError) as caught:
        parse_blueprint('{"id": "t", "nodes": [{"id": "A"}]}')
    assert caught.value.blueprint_id == "t"


# ---- lint: warnings, never errors ---------------------------------------------------------------


def test_an_unknown_uses_is_a_warning_not_an_error() -> None:
    found = lint(
        {"id": "w", "nodes": [node("A", uses="mystery"), node("B", uses="wait")]}, {"echo"}
    )
    assert [(i.path, i.severity) for i in found] == [("nodes[0].uses", "warning")]
    assert "'mystery'" in found[0].message


def test_unknown_uses_is_not_checked_without_a_registry() -> None:
    assert lint({"id": "w", "nodes": [node("A", uses="mystery")]}) == []


@pytest.mark.parametrize(
    ("duration", "message"),
    [
        ("10x", "SleepNode 'Z' received an invalid duration string: '10x'"),
        (-1, "SleepNode 'Z' received a negative duration."),
        (True, "SleepNode 'Z' received an invalid duration type: boolean"),
        ("", "SleepNode 'Z' received an invalid duration string: ''"),
    ],
)
def test_invalid_sleep_durations_are_warnings(duration: object, message: str) -> None:
    found = lint({"id": "s", "nodes": [node("Z", uses="sleep", params={"duration": duration})]})
    assert [(i.path, i.severity) for i in found] == [("nodes[0].params.duration", "warning")]
    assert message in found[0].message


def test_a_missing_sleep_duration_lints_with_the_run_time_text() -> None:
    found = lint({"id": "s", "nodes": [node("Z", uses="sleep")]})
    assert [i.message for i in found] == [
        "SleepNode 'Z' received an invalid duration type: undefined"
    ]


def test_valid_sleep_durations_lint_clean() -> None:
    nodes = [node(f"S{i}", uses="sleep", params={"duration": d}) for i, d in enumerate([0, "5m"])]
    assert lint({"id": "s", "nodes": nodes}) == []


def test_property_evaluator_expressions_with_operators_are_warnings() -> None:
    found = lint(
        {
            "id": "ops",
            "nodes": [
                node("A"),
                node("B"),
                node("L", uses="loop-controller", params={"condition": "count < 3"}),
            ],
            "edges": [
                edge("A", "B", condition="result.output.n > 1", transform="input.n"),
                edge("B", "L"),
                edge("L", "B", action="continue"),
                edge("A", "B", transform="input['n']"),
            ],
        }
    )
    assert {i.path for i in found} == {
        "nodes[2].params.condition",
        "edges[0].condition",
        "edges[3].transform",
    }
    assert all(i.severity == "warning" for i in found)


def test_a_cycle_without_a_loop_controller_is_a_warning() -> None:
    found = lint(
        {
            "id": "cyc",
            "nodes": [node("S"), node("A"), node("B")],
            "edges": [edge("S", "A"), edge("A", "B"), edge("B", "A")],
        }
    )
    assert [(i.path, i.severity) for i in found] == [("edges", "warning")]
    assert "A -> B" in found[0].message


def test_a_cycle_through_a_loop_controller_lints_clean() -> None:
    found = lint(
        {
            "id": "loop",
            "nodes": [
                node("S"),
                node("L", uses="loop-controller", params={"condition": "go"}),
                node("B"),
                node("D"),
            ],
            "edges": [
                edge("S", "L"),
                edge("L", "B", action="continue"),
                edge("B", "L"),
                edge("L", "D", action="break"),
            ],
        }
    )
    assert found == []


def test_zero_attempts_is_a_warning() -> None:
    found = lint({"id": "z", "nodes": [node("A", config={"maxRetries": 0})]})
    assert [(i.path, i.severity) for i in found] == [("nodes[0].config.maxRetries", "warning")]


def test_issue_text_names_blueprint_and_path() -> None:
    issue = BlueprintIssue("bp", "nodes[0].uses", "bad")
    assert str(issue) == "bp: nodes[0].uses: bad"
