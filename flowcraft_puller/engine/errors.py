"""Typed errors raised by the engine."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True, slots=True)
class BlueprintIssue:
    """One problem found in a blueprint, located by the path of the bad field."""

    blueprint_id: str
    path: str
    message: str
    severity: Literal["error", "warning"] = "error"

    def __str__(self) -> str:
        return f"{self.blueprint_id}: {self.path}: {self.message}"


class BlueprintError(ValueError):
    """A blueprint failed validation; ``issues`` lists every problem found, not just the first."""

    def __init__(self, blueprint_id: str, issues: list[BlueprintIssue]) -> None:
        self.blueprint_id = blueprint_id
        self.issues = issues
        lines = "\n".join(f"  - {issue.path}: {issue.message}" for issue in issues)
        super().__init__(
            f"blueprint {blueprint_id!r} is invalid ({len(issues)} problem(s)):\n{lines}"
        )


class FlowcraftError(Exception):
    """An error raised by or on behalf of a node.

    A *fatal* error (``fatal=True``) skips the node's remaining attempts and its fallback, as
    the TypeScript engine's ``FlowcraftError`` with ``isFatal`` does.
    """

    def __init__(self, message: str, *, fatal: bool = False, node_id: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.fatal = fatal
        self.node_id = node_id


class FatalNodeError(FlowcraftError):
    """A node error that must not be retried and must not trigger a fallback."""

    def __init__(self, message: str, *, node_id: str | None = None) -> None:
        super().__init__(message, fatal=True, node_id=node_id)


class NodeTimeoutError(FlowcraftError):
    """An attempt ran longer than the node's ``config.timeout``."""

    def __init__(self, node_id: str, timeout_ms: float) -> None:
        shown = int(timeout_ms) if float(timeout_ms).is_integer() else timeout_ms
        super().__init__(f"timed out after {shown} ms", node_id=node_id)
        self.timeout_ms = timeout_ms


class OutputNotSerializableError(FlowcraftError):
    """A node produced an output or context write that JSON cannot represent."""
