"""MemoryStack: the whole system in one process — in-memory queue, run store and consumers.

It drives the real adapter with real concurrency, and can misbehave on purpose: deliver every
message twice, deliver in random order, and abandon jobs between any two steps of
``handle_job`` (a simulated crash) so that they are redelivered.
"""

from __future__ import annotations

import contextvars
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Protocol

import anyio
import anyio.abc

from flowcraft_puller.adapter import Adapter, AdapterSettings, JobAbandoned, JobOutcome
from flowcraft_puller.engine.evaluators import EvaluatorName
from flowcraft_puller.engine.executor import ExecutionEnv
from flowcraft_puller.engine.nodes import NodeImplementation
from flowcraft_puller.engine.step import Engine
from flowcraft_puller.queue.memory import MemoryQueue, MemoryQueueFaults
from flowcraft_puller.queue.protocol import QueueMessage
from flowcraft_puller.runstore.memory import MemoryRunStore
from flowcraft_puller.runstore.protocol import SETTLED_STATUSES, RunStore
from flowcraft_puller.supervisor import QueueBinding, Supervisor, SupervisorSettings
from flowcraft_puller.testing.stack import AdapterRuns, RunResult, load_blueprints

CRASH_STEPS = ("decoded", "claimed", "executed", "committed")


@dataclass(slots=True)
class StackFaults:
    """Misbehaviour to inject: duplicate and reordered deliveries, crashes between steps.

    ``crash_rate`` is the chance that a delivery is abandoned at one random step of
    ``handle_job``; each message crashes at most once, so every run still finishes.
    """

    duplicate: bool = False
    reorder: bool = False
    crash_rate: float = 0.0
    seed: int = 0
    crashes: list[tuple[str, str, str]] = field(default_factory=list)
    """(run id, node id, step) of every simulated crash."""


class StatusWatch(Protocol):
    def changed(self, run_id: str) -> anyio.Event:
        """An event set the next time the run's status record is written."""
        ...


@dataclass(frozen=True, slots=True)
class StackBackend:
    """A run store and job queue to use instead of the in-memory pair: the adapter calls
    ``store``, which sends jobs to ``queue`` (consumed by the stack; its own faults apply, not
    the stack's duplicate/reorder); ``watch`` signals status changes to :meth:`MemoryStack.wait`.
    """

    store: RunStore
    queue: MemoryQueue
    watch: StatusWatch


_current: contextvars.ContextVar[QueueMessage] = contextvars.ContextVar("flowcraft_current_message")


class _Abandoning:
    """Turns a simulated crash into a message left leased (redelivered after its timeout)."""

    def __init__(self, adapter: Adapter) -> None:
        self.adapter = adapter

    async def handle_job(
        self, message: QueueMessage, *, deadline: float | None = None
    ) -> JobOutcome:
        token = _current.set(message)
        try:
            return await self.adapter.handle_job(message, deadline=deadline)
        except JobAbandoned:
            return JobOutcome("leave", "abandoned")
        finally:
            _current.reset(token)


class MemoryStack(AdapterRuns):
    """``async with MemoryStack(blueprints=..., registry=...) as stack:`` then start/wait/resume."""

    def __init__(
        self,
        *,
        blueprints: Mapping[str, Any] | Iterable[Any],
        registry: Mapping[str, NodeImplementation],
        evaluator: EvaluatorName = "property",
        concurrency: int = 8,
        faults: StackFaults | None = None,
        visibility_timeout_ms: int | None = None,
        max_loop_iterations: int = 10_000,
        backend: StackBackend | None = None,
    ) -> None:
        self.faults = faults or StackFaults()
        self.concurrency = concurrency
        noisy = self.faults.crash_rate > 0
        self.visibility_timeout_ms = visibility_timeout_ms or (250 if noisy else 30_000)
        self._rng = random.Random(self.faults.seed)
        self._crashed: set[str] = set()
        super().__init__()
        if backend is None:
            queue = MemoryQueue(
                faults=MemoryQueueFaults(
                    duplicate=self.faults.duplicate,
                    reorder=self.faults.reorder,
                    rng=random.Random(self.faults.seed),
                )
            )
            memory = MemoryRunStore(queue)
            backend = StackBackend(memory, queue, memory)
        self.queue = backend.queue
        self.store = backend.store
        self._watch = backend.watch
        env = ExecutionEnv(registry=registry, on_invoke=self._count)
        self.engine = Engine(
            blueprints=load_blueprints(blueprints),
            env=env,
            evaluator=evaluator,
            hooks_base_url="http://memory-stack.invalid",
            max_loop_iterations=max_loop_iterations,
        )
        settings = AdapterSettings(
            lease_ms=self.visibility_timeout_ms, max_deliveries=100, skew_retry_seconds=1
        )
        checkpoint = self._checkpoint if self.faults.crash_rate > 0 else None
        self.adapter = Adapter(self.engine, self.store, settings, checkpoint=checkpoint)
        self.supervisor = Supervisor(
            _Abandoning(self.adapter),
            [
                QueueBinding(
                    "memory", self.queue, visibility_timeout_s=self.visibility_timeout_ms / 1000
                )
            ],
            SupervisorSettings(
                concurrency=concurrency,
                idle_backoff_min_s=0.002,
                idle_backoff_max_s=0.05,
                ack_linger_s=0.001,
                fill_wait_s=0.0,
                lease_margin_s=0.0,
            ),
        )
        self._task_group: anyio.abc.TaskGroup | None = None

    async def _checkpoint(self, step: str) -> None:
        message = _current.get()
        if message.id in self._crashed or self._rng.random() >= self.faults.crash_rate / len(
            CRASH_STEPS
        ):
            return
        self._crashed.add(message.id)
        body = message.body if isinstance(message.body, dict) else {}
        self.faults.crashes.append((str(body.get("runId")), str(body.get("nodeId")), step))
        raise JobAbandoned(step)

    async def __aenter__(self) -> MemoryStack:
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        self._task_group.start_soon(self.supervisor.run)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._task_group is not None
        self._task_group.cancel_scope.cancel()
        return await self._task_group.__aexit__(exc_type, exc, tb)

    async def wait(self, run_id: str, timeout: float = 10.0) -> RunResult:
        """The run once it is completed, failed, cancelled or awaiting (TimeoutError otherwise)."""
        with anyio.fail_after(timeout):
            while True:
                changed = self._watch.changed(run_id)
                view = await self.store.get(run_id)
                if view.status in SETTLED_STATUSES:
                    return RunResult.from_view(view, self.invocations[run_id])
                await changed.wait()


def run_workflow(
    blueprints: Mapping[str, Any] | Iterable[Any],
    registry: Mapping[str, NodeImplementation],
    blueprint_id: str,
    context: Mapping[str, Any] | None = None,
    *,
    timeout: float = 30.0,
    **options: Any,
) -> RunResult:
    """Run one workflow to a settled status in a fresh :class:`MemoryStack` (synchronously)."""

    async def main() -> RunResult:
        async with MemoryStack(blueprints=blueprints, registry=registry, **options) as stack:
            run_id = await stack.start(blueprint_id, context)
            return await stack.wait(run_id, timeout=timeout)

    return anyio.run(main)
