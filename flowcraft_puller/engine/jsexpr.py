"""The ``expression`` evaluator: a safe interpreter for a JavaScript expression subset.

Expressions are parsed by :mod:`flowcraft_puller.engine.jsparse` and compiled once into nested
closures over :mod:`flowcraft_puller.engine.jsvalues`; no Python code is ever generated or
evaluated, and values are only read through JavaScript property semantics.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Mapping
from typing import Final, NamedTuple, assert_never

from flowcraft_puller.engine.evaluators import EvaluatorName
from flowcraft_puller.engine.jsparse import (
    MAX_DEPTH,
    ArrayLiteral,
    Binary,
    Conditional,
    Identifier,
    JSSyntaxError,
    Literal,
    Member,
    Node,
    ObjectLiteral,
    OptionalChain,
    Unary,
    parse,
    too_deep,
)
from flowcraft_puller.engine.jsvalues import (
    UNDEFINED,
    add,
    arithmetic,
    compare,
    get_property,
    loose_equals,
    normalize_number,
    strict_equals,
    to_number,
    truthy,
    typeof,
)

MAX_EXPRESSION_LENGTH: Final = 4096

Scope = Mapping[str, object]
Program = Callable[[Scope], object]


class JSReferenceError(Exception):
    """An identifier that is neither in the scope nor a supported global."""


class _ShortCircuit(Exception):
    """Raised by ``?.`` on a nullish base; the enclosing optional chain yields ``undefined``."""


class _Compiled(NamedTuple):
    run: Program
    error: str | None


class ExpressionEvaluator:
    """JavaScript expressions (operators, literals, member access) with exact JS semantics.

    Mirrors the TypeScript ``UnsafeEvaluator`` without executing code: any error (syntax,
    unknown identifier, reading a property of ``null``) makes the result ``undefined``.
    """

    name: EvaluatorName = "expression"

    def evaluate(self, expression: str, scope: Mapping[str, object]) -> object:
        try:
            return _lookup(expression).run(scope)
        except Exception:  # the Evaluator contract: never raise, a failed evaluation is undefined
            return UNDEFINED

    def check(self, expression: str) -> str | None:
        return _lookup(expression).error


def _undefined(_scope: Scope) -> object:
    return UNDEFINED


def _lookup(expression: str) -> _Compiled:
    if len(expression) > MAX_EXPRESSION_LENGTH:
        return _Compiled(
            _undefined, f"expression is longer than {MAX_EXPRESSION_LENGTH} characters"
        )
    return _compile_cached(expression)


@functools.lru_cache(maxsize=1024)
def _compile_cached(expression: str) -> _Compiled:
    """Parse and compile once per distinct expression; syntax errors are cached too."""
    try:
        return _Compiled(_compile(parse(expression), 0), None)
    except JSSyntaxError as error:
        return _Compiled(_undefined, str(error))


def _compile(node: Node, depth: int) -> Program:
    if depth > MAX_DEPTH:
        raise too_deep()
    inner = depth + 1
    match node:
        case Literal(value):
            return lambda _scope: value
        case Identifier(name):
            return _identifier(name, inside_typeof=False)
        case ArrayLiteral(elements):
            items = [_compile(element, inner) for element in elements]
            return lambda scope: [item(scope) for item in items]
        case ObjectLiteral(entries):
            fields = [(key, _compile(value, inner)) for key, value in entries]
            return lambda scope: {key: value(scope) for key, value in fields}
        case Member(obj, key, optional):
            return _member(_compile(obj, inner), _compile(key, inner), optional)
        case OptionalChain(expression):
            return _optional_chain(_compile(expression, inner))
        case Unary("typeof", Identifier(name)):
            variable = _identifier(name, inside_typeof=True)
            return lambda scope: typeof(variable(scope))
        case Unary(op, operand_node):
            operator = _UNARY_OPERATORS[op]
            operand = _compile(operand_node, inner)
            return lambda scope: operator(operand(scope))
        case Binary(op, left, right):
            return _binary(op, _compile(left, inner), _compile(right, inner))
        case Conditional(test, consequent, alternate):
            return _conditional(
                _compile(test, inner), _compile(consequent, inner), _compile(alternate, inner)
            )
        case _:
            assert_never(node)


_CONTEXT_KEY: Final = re.compile(r"[a-zA-Z0-9_$-]+")
_MISSING: Final = object()
_GLOBALS: Final[dict[str, object]] = {"undefined": UNDEFINED, "NaN": math.nan, "Infinity": math.inf}


def _identifier(name: str, *, inside_typeof: bool) -> Program:
    """Resolve ``name`` in the scope, then among the globals; unresolvable names throw.

    ``context`` not in the scope is the scope's entries with plain keys, as in the TypeScript
    engine. ``typeof`` of an unresolvable name is ``"undefined"``, as in JavaScript.
    """
    fallback = _GLOBALS.get(name, _MISSING)

    def run(scope: Scope) -> object:
        value = scope.get(name, _MISSING)
        if value is not _MISSING:
            return value
        if fallback is not _MISSING:
            return fallback
        if name == "context":
            return {key: item for key, item in scope.items() if _CONTEXT_KEY.fullmatch(key)}
        if inside_typeof:
            return UNDEFINED
        raise JSReferenceError(f"{name} is not defined")

    return run


def _member(obj: Program, key: Program, optional: bool) -> Program:
    def run(scope: Scope) -> object:
        base = obj(scope)
        if optional and (base is None or base is UNDEFINED):
            raise _ShortCircuit
        return get_property(base, key(scope))

    return run


def _optional_chain(chain: Program) -> Program:
    def run(scope: Scope) -> object:
        try:
            return chain(scope)
        except _ShortCircuit:
            return UNDEFINED

    return run


_UNARY_OPERATORS: Final[dict[str, Callable[[object], object]]] = {
    "!": lambda value: not truthy(value),
    "-": lambda value: normalize_number(-to_number(value)),
    "+": lambda value: normalize_number(to_number(value)),
    "typeof": typeof,
}


_OPERATORS: Final[dict[str, Callable[[object, object], object]]] = {
    "+": add,
    "-": lambda a, b: arithmetic(a, b, "-"),
    "*": lambda a, b: arithmetic(a, b, "*"),
    "/": lambda a, b: arithmetic(a, b, "/"),
    "%": lambda a, b: arithmetic(a, b, "%"),
    "<": lambda a, b: compare(a, b, "<"),
    "<=": lambda a, b: compare(a, b, "<="),
    ">": lambda a, b: compare(a, b, ">"),
    ">=": lambda a, b: compare(a, b, ">="),
    "==": loose_equals,
    "!=": lambda a, b: not loose_equals(a, b),
    "===": strict_equals,
    "!==": lambda a, b: not strict_equals(a, b),
}


def _binary(op: str, left: Program, right: Program) -> Program:
    if op == "&&":
        return lambda scope: right(scope) if truthy(value := left(scope)) else value
    if op == "||":
        return lambda scope: value if truthy(value := left(scope)) else right(scope)
    if op == "??":
        return lambda scope: (
            right(scope) if (value := left(scope)) is None or value is UNDEFINED else value
        )
    operator = _OPERATORS[op]
    return lambda scope: operator(left(scope), right(scope))


def _conditional(test: Program, consequent: Program, alternate: Program) -> Program:
    return lambda scope: consequent(scope) if truthy(test(scope)) else alternate(scope)
