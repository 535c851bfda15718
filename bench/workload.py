"""The benchmark workload: a 12-node fan-out/fan-in blueprint of no-op Python nodes.

``A → B1..B10 → J``: ``A`` and every ``B`` output 1, ``J`` (an ``all`` join) sums its ten
inputs, so a correct run ends with ``_outputs.J == 10``.
"""

from __future__ import annotations

from typing import Any, Final

BLUEPRINT_ID: Final = "bench-fan"
FAN_OUT: Final = 10
NODES_PER_RUN: Final = FAN_OUT + 2
EXPECTED_SUM: Final = FAN_OUT
NODE_MODULE: Final = "bench.nodes:NODES"
"""The ``workflows.nodes`` entry of daemons running the workload (project root on PYTHONPATH)."""


def fan_blueprint() -> dict[str, Any]:
    """The flowcraft JSON of the workload."""
    branches = [f"B{i}" for i in range(1, FAN_OUT + 1)]
    return {
        "id": BLUEPRINT_ID,
        "nodes": [
            {"id": "A", "uses": "noop"},
            *({"id": b, "uses": "noop"} for b in branches),
            {
                "id": "J",
                "uses": "sum",
                "inputs": {b.lower(): b for b in branches},
                "config": {"joinStrategy": "all"},
            },
        ],
        "edges": [
            *({"source": "A", "target": b} for b in branches),
            *({"source": b, "target": "J"} for b in branches),
        ],
    }
