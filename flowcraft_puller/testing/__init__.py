"""Test support: the standard test nodes and in-process stacks that run whole workflows."""

from flowcraft_puller.testing.memory_stack import MemoryStack, StackFaults, run_workflow
from flowcraft_puller.testing.nodes import STANDARD_NODES
from flowcraft_puller.testing.stack import RunResult, load_blueprints

__all__ = [
    "STANDARD_NODES",
    "MemoryStack",
    "RunResult",
    "StackFaults",
    "load_blueprints",
    "run_workflow",
]
