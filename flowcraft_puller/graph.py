"""Rendering a blueprint as a Mermaid flowchart or a Graphviz DOT digraph."""

from __future__ import annotations

import json
from typing import Literal

from flowcraft_puller.engine.blueprint import Blueprint, EdgeDef

GraphFormat = Literal["mermaid", "dot"]


def _edge_label(edge: EdgeDef) -> str:
    parts = []
    if edge.action:
        parts.append(edge.action)
    if edge.condition:
        parts.append(f"if {edge.condition}")
    if edge.transform:
        parts.append(f"→ {edge.transform}")
    return "; ".join(parts)


def _mermaid_text(text: str) -> str:
    return '"' + text.replace('"', "#quot;") + '"'


def to_mermaid(blueprint: Blueprint) -> str:
    """A Mermaid ``flowchart TD``; fallbacks are dotted edges, start nodes are stadium-shaped."""
    ids = {node.id: f"n{index}" for index, node in enumerate(blueprint.nodes)}
    starts = set(blueprint.analysis.start_nodes)
    lines = ["flowchart TD"]
    for node in blueprint.nodes:
        label = _mermaid_text(f"{node.id}<br/><small>{node.uses}</small>")
        shape = f"([{label}])" if node.id in starts else f"[{label}]"
        lines.append(f"    {ids[node.id]}{shape}")
    for edge in blueprint.edges:
        label = _edge_label(edge)
        arrow = f" -->|{_mermaid_text(label)}| " if label else " --> "
        lines.append(f"    {ids[edge.source]}{arrow}{ids[edge.target]}")
    for node in blueprint.nodes:
        if node.config.fallback in ids:
            lines.append(f"    {ids[node.id]} -.->|fallback| {ids[node.config.fallback]}")
    return "\n".join(lines) + "\n"


def to_dot(blueprint: Blueprint) -> str:
    """A Graphviz ``digraph``; fallbacks are dashed edges."""
    starts = set(blueprint.analysis.start_nodes)
    lines = [f"digraph {json.dumps(blueprint.id)} {{", "    rankdir=TB;", "    node [shape=box];"]
    for node in blueprint.nodes:
        shape = ', shape="oval"' if node.id in starts else ""
        label = json.dumps(f"{node.id}\n{node.uses}")
        lines.append(f"    {json.dumps(node.id)} [label={label}{shape}];")
    for edge in blueprint.edges:
        label = _edge_label(edge)
        attrs = f" [label={json.dumps(label)}]" if label else ""
        lines.append(f"    {json.dumps(edge.source)} -> {json.dumps(edge.target)}{attrs};")
    for node in blueprint.nodes:
        if node.config.fallback is not None:
            target = json.dumps(node.config.fallback)
            lines.append(f'    {json.dumps(node.id)} -> {target} [style=dashed, label="fallback"];')
    lines.append("}")
    return "\n".join(lines) + "\n"


def render(blueprint: Blueprint, fmt: GraphFormat) -> str:
    return to_mermaid(blueprint) if fmt == "mermaid" else to_dot(blueprint)
