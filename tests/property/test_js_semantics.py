"""Properties of the JavaScript value semantics shared by both evaluators."""

from __future__ import annotations

import copy
import math
import string

from hypothesis import example, given
from hypothesis import strategies as st

from flowcraft_puller.engine.evaluators import PropertyEvaluator
from flowcraft_puller.engine.jsexpr import ExpressionEvaluator
from flowcraft_puller.engine.jsvalues import UNDEFINED, loose_equals, strict_equals, truthy

expression_evaluator = ExpressionEvaluator()
property_evaluator = PropertyEvaluator()

primitives = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53), max_value=2**53)
    | st.floats(allow_nan=False)
    | st.text(max_size=8)
)
json_values = st.recursive(
    primitives,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=4), children, max_size=4)
    ),
    max_leaves=12,
)
js_values = json_values | st.sampled_from([UNDEFINED, math.nan])
tricky_values = st.sampled_from(
    [0, 1, -0.0, 1.0, math.nan, "", "0", "1", " 1 ", "1,2", "[object Object]", "false", "true"]
) | st.sampled_from([False, True, None, UNDEFINED, [], [0], [1], [1, 2], [None], {}, {"a": 1}])


def js_falsy(value: object) -> bool:
    """The falsy values of JavaScript, written out from the specification's ToBoolean table."""
    if value is None or value is UNDEFINED or value is False:
        return True
    if type(value) in (int, float):
        return value == 0 or value != value
    return value == ""


def utf16_code_units(text: str) -> list[str]:
    data = text.encode("utf-16-le")
    return [chr(int.from_bytes(data[i : i + 2], "little")) for i in range(0, len(data), 2)]


def same(actual: object, expected: object) -> bool:
    return actual is expected if expected is UNDEFINED else actual == expected


@given(js_values)
@example([])
@example({})
@example("0")
@example("false")
@example(" ")
@example(0.0)
@example(-0.0)
@example(math.nan)
@example("")
@example(UNDEFINED)
def test_double_negation_is_javascript_truthiness(value: object) -> None:
    assert expression_evaluator.evaluate("!!v", {"v": value}) is truthy(value)
    assert truthy(value) is not js_falsy(value)


@given(st.lists(json_values, max_size=6) | st.text(max_size=8), st.integers(0, 9))
@example("😀x", 0)
@example("😀x", 2)
def test_length_and_canonical_indices_of_arrays_and_strings(xs: list[object] | str, i: int) -> None:
    units = utf16_code_units(xs) if isinstance(xs, str) else xs
    expected = units[i] if i < len(units) else UNDEFINED
    scope = {"v": xs}
    assert property_evaluator.evaluate("v.length", scope) == len(units)
    assert expression_evaluator.evaluate("v.length", scope) == len(units)
    assert same(property_evaluator.evaluate(f"v.{i}", scope), expected)
    assert same(expression_evaluator.evaluate(f"v[{i}]", scope), expected)
    assert same(expression_evaluator.evaluate(f"v['{i}']", scope), expected)
    assert same(expression_evaluator.evaluate(f"v[{i}.0]", scope), expected)
    for key in (f"0{i}", f"{i}.0", f"+{i}", f" {i}"):
        assert expression_evaluator.evaluate(f"v['{key}']", scope) is UNDEFINED
    assert property_evaluator.evaluate(f"v.0{i}", scope) is UNDEFINED
    assert expression_evaluator.evaluate(f"v[{-1 - i}]", scope) is UNDEFINED


@given(st.dictionaries(st.sampled_from(["length", "0", "a"]) | st.text(max_size=3), json_values))
def test_objects_expose_only_their_own_keys(obj: dict[str, object]) -> None:
    scope = {"v": obj}
    length, zero = obj.get("length", UNDEFINED), obj.get("0", UNDEFINED)
    assert same(property_evaluator.evaluate("v.length", scope), length)
    assert same(expression_evaluator.evaluate("v.length", scope), length)
    assert same(property_evaluator.evaluate("v.0", scope), zero)
    assert same(expression_evaluator.evaluate("v[0]", scope), zero)
    assert expression_evaluator.evaluate("v.toString", scope) is obj.get("toString", UNDEFINED)


@given(primitives | st.just(UNDEFINED))
def test_strict_equality_is_reflexive_for_primitives_other_than_nan(value: object) -> None:
    assert strict_equals(value, value)
    assert expression_evaluator.evaluate("a === b", {"a": value, "b": copy.copy(value)}) is True


@st.composite
def value_pairs(draw: st.DrawFn) -> tuple[object, object]:
    left = draw(tricky_values | js_values)
    how = draw(st.sampled_from(["same", "copy", "other"]))
    if how == "same":
        return left, left
    if how == "copy":
        return left, copy.deepcopy(left)
    return left, draw(tricky_values | js_values)


@given(value_pairs())
def test_strict_equality_implies_loose_equality_and_both_are_symmetric(
    pair: tuple[object, object],
) -> None:
    scope = {"a": pair[0], "b": pair[1]}
    strict = expression_evaluator.evaluate("a === b", scope)
    loose = expression_evaluator.evaluate("a == b", scope)
    assert strict is strict_equals(*pair)
    assert loose is loose_equals(*pair)
    assert not strict or loose
    assert expression_evaluator.evaluate("b === a", scope) is strict
    assert expression_evaluator.evaluate("b == a", scope) is loose
    assert expression_evaluator.evaluate("a !== b", scope) is not strict
    assert expression_evaluator.evaluate("a != b", scope) is not loose


PATH_CHARACTERS = string.ascii_letters + string.digits + "_$."


@given(
    st.text(alphabet=PATH_CHARACTERS, max_size=6),
    st.characters().filter(lambda c: c not in PATH_CHARACTERS),
    st.text(alphabet=PATH_CHARACTERS, max_size=6),
    json_values,
)
def test_property_evaluator_rejects_any_character_outside_a_dotted_path(
    prefix: str, character: str, suffix: str, value: object
) -> None:
    expression = prefix + character + suffix
    scope = {expression: value, expression.split(".")[0]: value, prefix: value, suffix: value}
    assert property_evaluator.evaluate(expression, scope) is UNDEFINED
    assert property_evaluator.check(expression) is not None


@given(st.text(st.sampled_from("ab01xe.,'\"\\[]{}()!?:+-*/%<>=&|`$_ \n") | st.characters()))
def test_any_text_evaluates_without_raising_and_check_gives_a_one_line_reason(
    expression: str,
) -> None:
    result = expression_evaluator.evaluate(expression, {"a": [1, "b"], "b": {"a": None}})
    reason = expression_evaluator.check(expression)
    if reason is not None:
        assert result is UNDEFINED
        assert reason
        assert "\n" not in reason
