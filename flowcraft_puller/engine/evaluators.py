"""Evaluators for edge conditions, edge transforms and loop conditions (SEMANTICS rule 9)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Final, Literal, Protocol

from flowcraft_puller.engine.jsvalues import UNDEFINED, get_property

EvaluatorName = Literal["property", "expression"]


class Evaluator(Protocol):
    """Evaluates an expression against a scope; never raises, returns ``UNDEFINED`` on error."""

    name: EvaluatorName

    def evaluate(self, expression: str, scope: Mapping[str, object]) -> object: ...

    def check(self, expression: str) -> str | None:
        """A reason the expression can never evaluate, or None if it is well-formed."""
        ...


_PROPERTY_PATH: Final = re.compile(r"^[a-zA-Z0-9_$.]+$")


class PropertyEvaluator:
    """The TypeScript ``PropertyEvaluator``: dotted property paths, nothing else.

    The first segment must be an own key of the scope; later segments are JavaScript property
    reads (``length`` and numeric indices on arrays and strings). Anything that is not a plain
    path (operators, spaces, quotes, brackets) evaluates to ``undefined``.
    """

    name: EvaluatorName = "property"

    def evaluate(self, expression: str, scope: Mapping[str, object]) -> object:
        if not _PROPERTY_PATH.fullmatch(expression):
            return UNDEFINED
        head, *rest = expression.split(".")
        if head not in scope:
            return UNDEFINED
        current = scope[head]
        for segment in rest:
            if current is UNDEFINED or current is None:
                return UNDEFINED
            current = get_property(current, segment)
        return current

    def check(self, expression: str) -> str | None:
        if not _PROPERTY_PATH.fullmatch(expression):
            return (
                "the property evaluator accepts only dotted paths such as 'result.output.ok'; "
                "this expression always evaluates to undefined (set the evaluator to "
                "'expression' to use operators)"
            )
        return None


def make_evaluator(name: EvaluatorName) -> Evaluator:
    """The evaluator called ``name``."""
    if name == "property":
        return PropertyEvaluator()
    if name == "expression":
        from flowcraft_puller.engine.jsexpr import ExpressionEvaluator

        return ExpressionEvaluator()
    raise ValueError(f"unknown evaluator {name!r}: expected 'property' or 'expression'")
