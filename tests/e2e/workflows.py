"""Blueprints of the end-to-end tests and the outputs their runs must commit."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from flowcraft_puller.runstore.protocol import RunView

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
RECORDING_NODES = "tests.e2e.nodes.recording:NODES"
"""The ``workflows.nodes`` entry of daemons running the test nodes (``ROOT`` on PYTHONPATH)."""


def diamond(blueprint_id: str = "e2e-diamond", ms: int = 100) -> dict[str, Any]:
    """a → (b, c) → d, an ``all`` join; every node is ``record`` sleeping ``ms``."""
    step = {"uses": "record", "params": {"ms": ms}}
    return {
        "id": blueprint_id,
        "nodes": [
            {"id": "a", **step},
            {"id": "b", **step, "inputs": "a"},
            {"id": "c", **step, "inputs": "a"},
            {
                "id": "d",
                **step,
                "inputs": {"left": "b", "right": "c"},
                "config": {"joinStrategy": "all"},
            },
        ],
        "edges": [
            {"source": "a", "target": "b"},
            {"source": "a", "target": "c"},
            {"source": "b", "target": "d"},
            {"source": "c", "target": "d"},
        ],
    }


def diamond_outputs(run_id: str) -> dict[str, Any]:
    """What every node of a :func:`diamond` run must have committed."""
    a = {"node": "a", "run": run_id, "input": None}
    b = {"node": "b", "run": run_id, "input": a}
    c = {"node": "c", "run": run_id, "input": a}
    d = {"node": "d", "run": run_id, "input": {"left": b, "right": c}}
    return {"a": a, "b": b, "c": c, "d": d}


def chain(blueprint_id: str, first_ms: int, then_ms: int = 0) -> dict[str, Any]:
    """first → then, both ``record``; a long ``first_ms`` keeps a job in flight."""
    return {
        "id": blueprint_id,
        "nodes": [
            {"id": "first", "uses": "record", "params": {"ms": first_ms}},
            {"id": "then", "uses": "record", "params": {"ms": then_ms}, "inputs": "first"},
        ],
        "edges": [{"source": "first", "target": "then"}],
    }


def chain_outputs(run_id: str) -> dict[str, Any]:
    first = {"node": "first", "run": run_id, "input": None}
    return {"first": first, "then": {"node": "then", "run": run_id, "input": first}}


def failing(blueprint_id: str, uses: str) -> dict[str, Any]:
    """One ``record`` node, then a node ``uses`` that raises (tried twice)."""
    return {
        "id": blueprint_id,
        "nodes": [
            {"id": "prepare", "uses": "record"},
            {
                "id": "pay",
                "uses": uses,
                "inputs": "prepare",
                "config": {"maxRetries": 2, "retryDelay": 10},
            },
        ],
        "edges": [{"source": "prepare", "target": "pay"}],
    }


def example_blueprint() -> dict[str, Any]:
    """The example workflow ``flowcraft-puller dev`` runs."""
    blueprint: dict[str, Any] = json.loads(
        (EXAMPLES / "blueprints" / "order-fulfilment.json").read_text()
    )
    return blueprint


def example_order_id(run_id: str) -> str:
    """The order id ``examples/nodes.py`` derives from a run id."""
    return "ord-" + hashlib.sha256(run_id.encode()).hexdigest()[:8]


def example_problems(run_id: str, outputs: dict[str, Any]) -> list[str]:
    """How a completed example run's outputs differ from what its nodes must produce."""
    order = example_order_id(run_id)
    tracking = "trk-" + order[4:]
    expected = {
        ("receive", "orderId"): order,
        ("receive", "total"): 25.0,
        ("reserve", "reserved"): ["tea-earl-grey", "mug-blue"],
        ("charge", "chargeId"): f"ch-{order}",
        ("charge", "amount"): 25.0,
        ("charge", "attempt"): 2,
        ("fraud", "score"): 0.1,
        ("decide", "approved"): True,
        ("decide", "needsReview"): False,
        ("ship", "trackingId"): tracking,
        ("notify", "orderId"): order,
        ("notify", "trackingId"): tracking,
    }
    problems = [
        f"{node}.{key} is {outputs.get(node, {}).get(key)!r}, expected {value!r}"
        for (node, key), value in expected.items()
        if outputs.get(node, {}).get(key) != value
    ]
    if "review" in outputs:
        problems.append("review ran although the order was approved")
    return problems


def outputs_of(view: RunView) -> dict[str, Any]:
    """The committed node outputs of a run (``_outputs.<node>`` context keys), by node."""
    return {
        key.removeprefix("_outputs."): value
        for key, value in view.context.items()
        if key.startswith("_outputs.")
    }
