"""Input resolution (SEMANTICS rule 7, TS HEAD §3.6)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flowcraft_puller.engine.blueprint import Blueprint, NodeDef
from flowcraft_puller.engine.jsvalues import UNDEFINED, JSTypeError, get_property


def resolve_value(reference: str, context: Mapping[str, Any]) -> Any:
    """One input reference: ``_key`` reads the key; ``node.path`` walks ``_outputs.node``;
    a bare name is ``_outputs.<name>`` if present, else the context key ``<name>``."""
    if reference.startswith("_"):
        return context.get(reference, UNDEFINED)
    if "." in reference:
        base, path = reference.split(".", 1)
        current = context.get(f"_outputs.{base}", UNDEFINED)
        for segment in path.split("."):
            if current is None or current is UNDEFINED:
                return UNDEFINED
            try:
                current = get_property(current, segment)
            except JSTypeError:
                return UNDEFINED
        return current
    output_key = f"_outputs.{reference}"
    if output_key in context:
        return context[output_key]
    return context.get(reference, UNDEFINED)


def effective_inputs(blueprint: Blueprint, node: NodeDef) -> str | Mapping[str, str] | None:
    """The node's ``inputs``, or ``_inputs.<id>`` when an incoming edge has a transform.

    The TypeScript adapter rewrites the target's ``inputs`` in the shared blueprint when it
    applies a transform (TS W13); reading ``_inputs.<id>`` instead has the same effect without
    mutating anything.
    """
    if node.inputs is not None and any(
        edge.transform for edge in blueprint.in_edges.get(node.id, ())
    ):
        return f"_inputs.{node.id}"
    return node.inputs


def resolve_input(
    node_id: str, inputs: str | Mapping[str, str] | None, context: Mapping[str, Any]
) -> Any:
    """The node's input: a reference, a map of references, or ``_inputs.<id>``."""
    if isinstance(inputs, str) and inputs:
        return resolve_value(inputs, context)
    if isinstance(inputs, Mapping):
        resolved = {key: resolve_value(ref, context) for key, ref in inputs.items()}
        return {key: value for key, value in resolved.items() if value is not UNDEFINED}
    return context.get(f"_inputs.{node_id}", UNDEFINED)
