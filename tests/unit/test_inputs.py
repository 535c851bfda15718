"""Input resolution as TypeScript HEAD §3.6 (SEMANTICS rule 7)."""

from __future__ import annotations

from typing import Any

import pytest

from flowcraft_puller.engine.blueprint import load_blueprint
from flowcraft_puller.engine.inputs import effective_inputs, resolve_input, resolve_value
from flowcraft_puller.engine.jsvalues import UNDEFINED

CONTEXT: dict[str, Any] = {
    "_outputs.A": {"ok": True, "n": 7, "items": ["x", "y"], "s": "abc", "none": None},
    "_outputs.N": None,
    "_outputs.Z": 0,
    "_inputs.B": "edge-delivered",
    "seed": "S",
    "A.n": "literal dotted key",
    "N": "shadowed by the output",
    "N.x": "literal",
    "_batch.X_1_item_0": 10,
}


@pytest.mark.parametrize(
    ("reference", "expected"),
    [
        ("A", CONTEXT["_outputs.A"]),
        ("seed", "S"),
        ("N", None),
        ("Z", 0),
        ("A.n", 7),
        ("A.ok", True),
        ("A.items.1", "y"),
        ("A.items.length", 2),
        ("A.s.length", 3),
        ("A.none", None),
        ("_outputs.A", CONTEXT["_outputs.A"]),
        ("_inputs.B", "edge-delivered"),
        ("_batch.X_1_item_0", 10),
    ],
)
def test_references_resolve_against_outputs_and_context(reference: str, expected: object) -> None:
    assert resolve_value(reference, CONTEXT) == expected


@pytest.mark.parametrize(
    "reference",
    [
        "missing",
        "A.missing",
        "A.none.deeper",
        "A.items.5",
        "N.x",
        "seed.length",
        "missing.n",
        "_outputs.missing",
        "_seed",
    ],
)
def test_unresolvable_references_are_undefined(reference: str) -> None:
    assert resolve_value(reference, CONTEXT) is UNDEFINED


def test_a_dotted_reference_has_no_fallback_to_a_literal_key() -> None:
    assert resolve_value("A.n", {"A.n": "literal"}) is UNDEFINED


def test_a_bare_name_prefers_the_node_output_even_when_it_is_null() -> None:
    assert resolve_value("N", CONTEXT) is None
    assert resolve_value("N", {"N": "plain"}) == "plain"


def test_an_underscore_reference_is_read_literally_even_with_dots() -> None:
    assert resolve_value("_a.b", {"_a.b": 1, "_outputs._a": {"b": 2}}) == 1


def test_a_string_inputs_resolves_one_reference() -> None:
    assert resolve_input("B", "A.n", CONTEXT) == 7


def test_an_inputs_map_resolves_every_key_and_omits_undefined_ones() -> None:
    inputs = {"x": "A", "y": "seed", "z": "A.n", "w": "_outputs.A", "gone": "missing"}
    assert resolve_input("B", inputs, CONTEXT) == {
        "x": CONTEXT["_outputs.A"],
        "y": "S",
        "z": 7,
        "w": CONTEXT["_outputs.A"],
    }


def test_an_empty_inputs_map_gives_an_empty_object() -> None:
    assert resolve_input("B", {}, CONTEXT) == {}


@pytest.mark.parametrize("inputs", [None, ""])
def test_without_inputs_the_node_reads_its_edge_delivered_input(inputs: str | None) -> None:
    assert resolve_input("B", inputs, CONTEXT) == "edge-delivered"
    assert resolve_input("C", inputs, CONTEXT) is UNDEFINED


def test_a_transform_on_an_incoming_edge_makes_the_node_read_its_edge_input() -> None:
    bp = load_blueprint(
        {
            "id": "t",
            "nodes": [
                {"id": "A", "uses": "okObj"},
                {"id": "B", "uses": "echo", "inputs": "A"},
                {"id": "C", "uses": "echo", "inputs": {"v": "A.n"}},
                {"id": "D", "uses": "echo"},
                {"id": "E", "uses": "echo", "inputs": "A.ok"},
            ],
            "edges": [
                {"source": "A", "target": "B", "transform": "input.n"},
                {"source": "A", "target": "C"},
                {"source": "A", "target": "D", "transform": "input.n"},
                {"source": "A", "target": "E"},
            ],
        }
    )
    assert effective_inputs(bp, bp.node("B")) == "_inputs.B"
    assert effective_inputs(bp, bp.node("C")) == {"v": "A.n"}
    assert effective_inputs(bp, bp.node("D")) is None
    assert effective_inputs(bp, bp.node("E")) == "A.ok"
    assert bp.node("B").inputs == "A"
