"""The property evaluator: dotted paths only, as the TypeScript ``PropertyEvaluator``."""

from __future__ import annotations

import pytest

from flowcraft_puller.engine.evaluators import PropertyEvaluator, make_evaluator
from flowcraft_puller.engine.jsvalues import UNDEFINED

SCOPE: dict[str, object] = {
    "result": {"output": {"ok": True, "items": ["a", "b"], "none": None, "deep": {"x": 0}}},
    "null": None,
    "$_9": "odd name",
    "_outputs.A": "dotted",
}


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("result.output.ok", True),
        ("result.output.items.1", "b"),
        ("result.output.items.length", 2),
        ("result.output.items.1.length", 1),
        ("result.output.deep.x", 0),
        ("result.output.none", None),
        ("null", None),
        ("$_9", "odd name"),
    ],
)
def test_paths_read_nested_values(expression: str, expected: object) -> None:
    assert PropertyEvaluator().evaluate(expression, SCOPE) == expected


@pytest.mark.parametrize(
    "expression",
    [
        "missing",
        "toString",
        "result.missing",
        "result.output.items.2",
        "result.output.items.01",
        "result.output.none.x",
        "result.output.none.x.y",
        "null.x",
        "result.missing.x",
        "_outputs.A",
        "",
        "...",
        ".result",
        "result..output",
    ],
)
def test_missing_values_and_nullish_intermediates_are_undefined(expression: str) -> None:
    assert PropertyEvaluator().evaluate(expression, SCOPE) is UNDEFINED


@pytest.mark.parametrize(
    "expression",
    ["result.output.ok === true", "result['output']", "result.output.ok ", "!result", "a-b", "ü"],
)
def test_anything_but_a_dotted_path_is_undefined_and_reported(expression: str) -> None:
    evaluator = PropertyEvaluator()
    assert evaluator.evaluate(expression, {**SCOPE, expression: 1}) is UNDEFINED
    assert "only dotted paths" in (evaluator.check(expression) or "")


def test_check_accepts_dotted_paths() -> None:
    assert PropertyEvaluator().check("result.output.ok") is None


def test_make_evaluator_builds_the_property_evaluator() -> None:
    assert make_evaluator("property").name == "property"


def test_a_trailing_newline_is_an_invalid_character() -> None:
    assert PropertyEvaluator().evaluate("v\n", {"v\n": 1}) is UNDEFINED
