"""The expression evaluator against a table of JavaScript results (checked with Node.js)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import pytest

from flowcraft_puller.engine import jsexpr, jsparse
from flowcraft_puller.engine.evaluators import make_evaluator
from flowcraft_puller.engine.jsexpr import MAX_EXPRESSION_LENGTH, ExpressionEvaluator
from flowcraft_puller.engine.jsparse import MAX_DEPTH, Node
from flowcraft_puller.engine.jsvalues import UNDEFINED

NAN = math.nan
INF = math.inf

S: dict[str, object] = {
    "result": {
        "output": {
            "count": 2,
            "ok": True,
            "status": "SUCCESS",
            "items": [1, 2, 3],
            "nothing": None,
        }
    },
    "n": None,
    "s": "héllo",
    "e": "😀x",
    "arr": [10, 20, 30],
    "obj": {"a": 1, "length": 7, "b": {"c": "deep"}},
    "k": "a",
    "my-key": "dash",
    "_outputs.A": "hidden",
}
ABC: dict[str, object] = {"a": 1, "b": 2, "c": 3}

CASES: list[tuple[str, Mapping[str, object], object]] = [
    # literals
    ("42", S, 42),
    ("4.5", S, 4.5),
    ("1e3", S, 1000),
    ("1.5e-3", S, 0.0015),
    ("0x1F", S, 31),
    (".5", S, 0.5),
    ("9007199254740993", S, 9007199254740992.0),
    ("'it\\'s'", S, "it's"),
    ('"a\\nb\\t\\\\"', S, "a\nb\t\\"),
    ("'\\u0041\\x42\\u{1F600}'", S, "AB😀"),
    ("'\\uD83D\\uDE00' === '😀'", S, True),
    ("true", S, True),
    ("false", S, False),
    ("null", S, None),
    ("undefined", S, UNDEFINED),
    ("[1, 'a', null, [true]]", S, [1, "a", None, [True]]),
    ("{a: 1, 'b': 2, 3: [true], k}", S, {"a": 1, "b": 2, "3": [True], "k": "a"}),
    ("[1, , 2].length", S, 3),
    ("{}", S, {}),
    # identifiers and member access
    ("result.output.count", S, 2),
    ("result['output'].status", S, "SUCCESS"),
    ("obj[k]", S, 1),
    ("obj.b.c", S, "deep"),
    ("obj.length", S, 7),
    ("obj.missing", S, UNDEFINED),
    ("$x + _y", {"$x": 1, "_y": 2}, 3),
    ("arr[1]", S, 20),
    ("arr['2']", S, 30),
    ("arr[1.0]", S, 20),
    ("arr[[1]]", S, 20),
    ("arr[3]", S, UNDEFINED),
    ("arr[-1]", S, UNDEFINED),
    ("arr['01']", S, UNDEFINED),
    ("arr.length", S, 3),
    ("s.length", S, 5),
    ("s[1]", S, "é"),
    ("s[5]", S, UNDEFINED),
    ("e.length", S, 3),
    ("e[2]", S, "x"),
    ("true.x", S, UNDEFINED),
    ("(5).length", S, UNDEFINED),
    ("n?.a", S, UNDEFINED),
    ("n?.a.b.c", S, UNDEFINED),
    ("obj?.b?.c", S, "deep"),
    ("arr?.[0]", S, 10),
    ("result.output.items[0] + result.output.items[2]", S, 4),
    # unary
    ("!0", S, True),
    ("!'0'", S, False),
    ("![]", S, False),
    ("!!''", S, False),
    ("-'3'", S, -3),
    ("- -2", S, 2),
    ("+'  12  '", S, 12),
    ("+''", S, 0),
    ("+'abc'", S, NAN),
    ("+'0x1f'", S, 31),
    ("+true", S, 1),
    ("+null", S, 0),
    ("+undefined", S, NAN),
    ("+[]", S, 0),
    ("+[7]", S, 7),
    ("+[1, 2]", S, NAN),
    ("+{}", S, NAN),
    ("typeof 1", S, "number"),
    ("typeof 'x'", S, "string"),
    ("typeof true", S, "boolean"),
    ("typeof null", S, "object"),
    ("typeof undefined", S, "undefined"),
    ("typeof arr", S, "object"),
    ("typeof NaN", S, "number"),
    ("typeof missing", S, "undefined"),
    ("typeof missing.x", S, UNDEFINED),
    ("typeof typeof 1", S, "string"),
    # arithmetic
    ("1 + 2 * 3", S, 7),
    ("(1 + 2) * 3", S, 9),
    ("10 - 4 - 3", S, 3),
    ("2 * 3 % 4", S, 2),
    ("7 / 2", S, 3.5),
    ("6 / 3", S, 2),
    ("1 / 0", S, INF),
    ("-1 / 0", S, -INF),
    ("0 / 0", S, NAN),
    ("5 % 3", S, 2),
    ("-5 % 3", S, -2),
    ("5 % -3", S, 2),
    ("5.5 % 2", S, 1.5),
    ("5 % 0", S, NAN),
    ("0.1 + 0.2", S, 0.30000000000000004),
    ("'3' * '4'", S, 12),
    ("'10' - 1", S, 9),
    ("'a' - 1", S, NAN),
    ("true + true", S, 2),
    ("null + 1", S, 1),
    ("undefined + 1", S, NAN),
    ("Infinity - Infinity", S, NAN),
    ("Infinity > 1e308", S, True),
    # string concatenation
    ("'a' + 1", S, "a1"),
    ("1 + '1'", S, "11"),
    ("1 + 2 + '3'", S, "33"),
    ("'3' + 1 + 2", S, "312"),
    ("'a' + [1, 2]", S, "a1,2"),
    ("1 + {}", S, "1[object Object]"),
    ("[] + {}", S, "[object Object]"),
    ("[1] + [2]", S, "12"),
    ("'x' + null + undefined + true", S, "xnullundefinedtrue"),
    ("'' + [null, [1, [2]], undefined]", S, ",1,2,"),
    ("'' + 0.000001234", S, "0.000001234"),
    ("'' + 1e-7", S, "1e-7"),
    ("'' + 1e21", S, "1e+21"),
    ("'' + 123456789012345680000", S, "123456789012345680000"),
    ("'' + 1 / 3", S, "0.3333333333333333"),
    ("'' + -0", S, "0"),
    ("'b' + 'a' + +'a' + 'a'", S, "baNaNa"),
    # relational
    ("2 < 10", S, True),
    ("'2' < '10'", S, False),
    ("'2' < 10", S, True),
    ("'abc' < 'abd'", S, True),
    ("'a' < 'B'", S, False),
    ("'a' < 1", S, False),
    ("'a' >= 1", S, False),
    ("null >= 0", S, True),
    ("null > 0", S, False),
    ("undefined < 1", S, False),
    ("[2] > 1", S, True),
    ("'10' <= 10", S, True),
    ("NaN <= NaN", S, False),
    ("'\\uFFFF' > '😀'", S, True),
    ("1 < 2 < 3", S, True),
    ("3 > 2 > 1", S, False),
    # equality
    ("null == undefined", S, True),
    ("null === undefined", S, False),
    ("'1' == 1", S, True),
    ("'1' === 1", S, False),
    ("0 == ''", S, True),
    ("0 == '0'", S, True),
    ("'' == '0'", S, False),
    ("[] == false", S, True),
    ("[0] == false", S, True),
    ("[] == ![]", S, True),
    ("null == 0", S, False),
    ("undefined == false", S, False),
    ("NaN == NaN", S, False),
    ("NaN != NaN", S, True),
    ("NaN !== NaN", S, True),
    ("1 === 1.0", S, True),
    ("'a' !== 'a'", S, False),
    ("[] == []", S, False),
    ("arr === arr", S, True),
    ("obj == '[object Object]'", S, True),
    ("true == 1", S, True),
    ("true === 1", S, False),
    ("'  1  ' == 1", S, True),
    ("1 == 1 == 1", S, True),
    ("result.output.status === 'SUCCESS'", S, True),
    # logical operators return operands and short-circuit
    ("0 || 'x'", S, "x"),
    ("'' || null", S, None),
    ("false || 0 || ''", S, ""),
    ("1 && 0", S, 0),
    ("'a' && 'b'", S, "b"),
    ("null && missing", S, None),
    ("1 || missing", S, 1),
    ("0 ?? 'x'", S, 0),
    ("'' ?? 'x'", S, ""),
    ("null ?? 'x'", S, "x"),
    ("undefined ?? n ?? 3", S, 3),
    ("1 ?? missing", S, 1),
    ("n ?? missing", S, UNDEFINED),
    ("1 || 2 && 0", S, 1),
    ("(1 || 2) && 0", S, 0),
    ("(null ?? 0) || 5", S, 5),
    ("a ?? (b || c)", ABC, 1),
    # conditional
    ("result.output.ok ? 'yes' : 'no'", S, "yes"),
    ("0 ? 1 : 2", S, 2),
    ("1 ? 2 ? 3 : 4 : 5", S, 3),
    ("0 ? 1 : 0 ? 2 : 3", S, 3),
    ("true ? missing : 1", S, UNDEFINED),
    ("false ? missing : 1", S, 1),
    ("1 + 1 === 2 ? 'two' : 'other'", S, "two"),
    ("a ? b : c ? 4 : 5", ABC, 2),
    # precedence
    ("1 + 2 < 4 === true", S, True),
    ("!1 == 0", S, True),
    ("-2 * -3", S, 6),
    ("2 - -2", S, 4),
    ("typeof 1 + 1", S, "number1"),
    ("1 + 2 * 3 - 4 / 2 % 3", S, 5),
    # errors evaluate to undefined
    ("n.a", S, UNDEFINED),
    ("result.output.nothing.x", S, UNDEFINED),
    ("(n?.a).b", S, UNDEFINED),
    ("missing", S, UNDEFINED),
    ("missing ?? 1", S, UNDEFINED),
    ("f(1)", {"f": 1}, UNDEFINED),
    ("arr.map(x)", S, UNDEFINED),
    ("a = 1", ABC, UNDEFINED),
    ("new Date()", S, UNDEFINED),
    ("this", S, UNDEFINED),
    ("`t`", S, UNDEFINED),
    ("/re/", S, UNDEFINED),
    ("2 ** 3", S, UNDEFINED),
    ("a, b", ABC, UNDEFINED),
    ("a++", ABC, UNDEFINED),
    ("--a", ABC, UNDEFINED),
    ("1 +", S, UNDEFINED),
    ("(1", S, UNDEFINED),
    ("", S, UNDEFINED),
    ("1 2", S, UNDEFINED),
    ("01", S, UNDEFINED),
    ("1a", S, UNDEFINED),
    ("'unterminated", S, UNDEFINED),
    ("a ?? b || c", ABC, UNDEFINED),
    ("a && b ?? c", ABC, UNDEFINED),
    ("'a' in obj", S, UNDEFINED),
    ("void 0", S, UNDEFINED),
    # the context identifier and dotted keys
    ("context['my-key']", S, "dash"),
    ("context.result.output.count", S, 2),
    ("context['_outputs.A']", S, UNDEFINED),
    ("_outputs.A", S, UNDEFINED),
    ("context", {"a": 1, "b.c": 2, "d-e": 3, "f g": 4}, {"a": 1, "d-e": 3}),
    ("context.x", {"context": {"x": 1}, "x": 2}, 1),
    ("typeof context", {}, "object"),
    # globals
    ("NaN", S, NAN),
    ("undefined", {"undefined": 5}, 5),
]


def same(actual: object, expected: object) -> bool:
    """Deep equality where NaN equals NaN, ``undefined`` is compared by identity, types match."""
    if expected is UNDEFINED or actual is UNDEFINED:
        return actual is expected
    if type(actual) is not type(expected):
        return False
    if isinstance(expected, float) and isinstance(actual, float):
        return actual == expected or (math.isnan(actual) and math.isnan(expected))
    if isinstance(expected, list) and isinstance(actual, list):
        return len(actual) == len(expected) and all(map(same, actual, expected))
    if isinstance(expected, dict) and isinstance(actual, dict):
        return actual.keys() == expected.keys() and all(
            same(actual[k], expected[k]) for k in expected
        )
    return actual == expected


def test_the_table_covers_every_operator() -> None:
    operators = ["!", "-", "+", "typeof", "*", "/", "%", "<", "<=", ">", ">=", "==", "!="]
    operators += ["===", "!==", "&&", "||", "??", "?", "?.", "[", "."]
    assert len(CASES) >= 80
    assert all(any(op in expression for expression, _, _ in CASES) for op in operators)


@pytest.mark.parametrize(("expression", "scope", "expected"), CASES)
def test_expression_evaluates_as_javascript(
    expression: str, scope: Mapping[str, object], expected: object
) -> None:
    actual = ExpressionEvaluator().evaluate(expression, scope)
    assert same(actual, expected), f"{expression!r} gave {actual!r}, expected {expected!r}"


def test_array_and_object_literals_are_new_values_on_every_evaluation() -> None:
    evaluator = ExpressionEvaluator()
    first = evaluator.evaluate("[1, {a: 2}]", {})
    second = evaluator.evaluate("[1, {a: 2}]", {})
    assert first == second
    assert first is not second


def test_make_evaluator_builds_the_expression_evaluator() -> None:
    evaluator = make_evaluator("expression")
    assert evaluator.name == "expression"
    assert evaluator.evaluate("a + b", ABC) == 3


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("(a + b))", "unexpected token ')' at column 8"),
        ("1 +", "unexpected end of expression at column 4"),
        ("", "unexpected end of expression at column 1"),
        ("f(1)", "unexpected token '(' at column 2 (function calls are not supported)"),
        ("a.b(1)", "unexpected token '(' at column 4 (function calls are not supported)"),
        ("a = 1", "unexpected character '=' at column 3"),
        ("x ?? y || z", "cannot mix '??' with '||' or '&&' without parentheses at column 8"),
        ("new Foo", "unsupported keyword 'new' at column 1"),
        ("'abc", "unterminated string literal at column 1"),
        ("'\\x4g'", "invalid escape sequence '\\x' at column 2"),
        ("'\\1'", "octal escape sequence '\\1' is not supported at column 2"),
        ("1 + 08", "invalid number '08' at column 5"),
        ("3in", "invalid number '3i' at column 1"),
        ("a /* b", "unterminated comment at column 3"),
        ("a\n  + )", "unexpected token ')' at line 2, column 5"),
        ("{__proto__: 1}", "'__proto__' keys are not supported at column 2"),
    ],
)
def test_check_explains_malformed_expressions(expression: str, message: str) -> None:
    assert ExpressionEvaluator().check(expression) == message


@pytest.mark.parametrize(
    "expression",
    ["result.output.count < 3", "a ? b : c", "{a: [1, {b: 2}]}", "x?.[0] ?? 'd' // note"],
)
def test_check_accepts_well_formed_expressions(expression: str) -> None:
    assert ExpressionEvaluator().check(expression) is None


def test_overlong_expressions_are_rejected() -> None:
    expression = "1" + " + 1" * MAX_EXPRESSION_LENGTH
    evaluator = ExpressionEvaluator()
    assert evaluator.evaluate(expression, {}) is UNDEFINED
    assert evaluator.check(expression) == "expression is longer than 4096 characters"


@pytest.mark.parametrize(
    "build",
    [
        lambda depth: "(" * depth + "1" + ")" * depth,
        lambda depth: "[" * depth + "]" * depth,
        lambda depth: "!" * depth + "1",
        lambda depth: "1" + " + 1" * depth,
        lambda depth: "a" + ".b" * depth,
        lambda depth: "1 ? " * depth + "1" + " : 2" * depth,
    ],
)
def test_deep_nesting_is_a_syntax_error_not_a_recursion_error(
    build: Callable[[int], str],
) -> None:
    evaluator = ExpressionEvaluator()
    assert evaluator.check(build(MAX_DEPTH // 2)) is None
    for depth in (MAX_DEPTH + 1, 500):
        expression = build(depth)
        assert evaluator.check(expression) is not None
        assert "nested more than 100 levels deep" in (evaluator.check(expression) or "")
        assert evaluator.evaluate(expression, {"a": {}}) is UNDEFINED


def test_each_expression_is_parsed_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real_parse = jsparse.parse

    def counting_parse(source: str) -> Node:
        calls.append(source)
        return real_parse(source)

    monkeypatch.setattr(jsexpr, "parse", counting_parse)
    evaluator = ExpressionEvaluator()
    for count in range(5):
        assert evaluator.evaluate("parse_once.count < 3", {"parse_once": {"count": count}}) == (
            count < 3
        )
        assert evaluator.evaluate("parse_once +", {}) is UNDEFINED
    assert evaluator.check("parse_once +") == "unexpected end of expression at column 13"
    assert calls == ["parse_once.count < 3", "parse_once +"]


def test_evaluation_never_raises_on_unusual_scope_values() -> None:
    evaluator = ExpressionEvaluator()
    scope: dict[str, object] = {"big": 10**400, "obj": object(), "t": (1, 2)}
    assert evaluator.evaluate("big + 0.5", scope) is UNDEFINED  # OverflowError: not a JS number
    assert evaluator.evaluate("obj.x", scope) is UNDEFINED
    assert evaluator.evaluate("t.length + t[1]", scope) == 4
