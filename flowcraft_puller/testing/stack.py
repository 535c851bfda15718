"""What the test stacks share: run results, blueprint loading, and runs driven by an adapter."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from flowcraft_puller.adapter import Adapter
from flowcraft_puller.engine.blueprint import Blueprint, load_blueprint
from flowcraft_puller.runstore.protocol import RunStatus, RunView


@dataclass(frozen=True, slots=True)
class RunResult:
    """A run as a test sees it once it settled."""

    run_id: str
    status: RunStatus
    reason: str | None
    context: dict[str, Any]
    outputs: dict[str, Any]
    invocations: dict[str, int]

    @classmethod
    def from_view(cls, view: RunView, invocations: Mapping[str, int]) -> RunResult:
        return cls(
            view.run_id, view.status, view.reason, view.context, view.outputs, dict(invocations)
        )


def load_blueprints(blueprints: Mapping[str, Any] | Iterable[Any]) -> dict[str, Blueprint]:
    """Blueprints from :class:`Blueprint` objects or flowcraft JSON dicts, by id."""
    items = blueprints.values() if isinstance(blueprints, Mapping) else blueprints
    loaded = [b if isinstance(b, Blueprint) else load_blueprint(b) for b in items]
    return {b.id: b for b in loaded}


class AdapterRuns:
    """Starts, resumes and cancels runs through ``self.adapter``; counts node invocations."""

    adapter: Adapter

    def __init__(self) -> None:
        self.invocations: dict[str, Counter[str]] = defaultdict(Counter)

    def _count(self, run_id: str, node_id: str, attempt: int) -> None:
        self.invocations[run_id][node_id] += 1

    async def start(
        self,
        blueprint_id: str,
        context: Mapping[str, Any] | None = None,
        *,
        run_id: str | None = None,
    ) -> str:
        return await self.adapter.start_run(blueprint_id, context, run_id=run_id)

    async def resume(
        self,
        run_id: str,
        action: str | None = None,
        output: Any = None,
        *,
        node_id: str | None = None,
    ) -> None:
        await self.adapter.resume_with_action(run_id, action, output, node_id=node_id)

    async def cancel(self, run_id: str) -> None:
        await self.adapter.cancel(run_id)
