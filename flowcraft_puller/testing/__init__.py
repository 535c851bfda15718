"""Test support: the standard test nodes and in-process stacks that run whole workflows."""

from flowcraft_puller.testing.memory_stack import (
    MemoryStack,
    RunResult,
    StackFaults,
    load_blueprints,
    run_workflow,
)
from flowcraft_puller.testing.nodes import STANDARD_NODES

__all__ = [
    "STANDARD_NODES",
    "MemoryStack",
    "RunResult",
    "StackFaults",
    "load_blueprints",
    "run_workflow",
]
