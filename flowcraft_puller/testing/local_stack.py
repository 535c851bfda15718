"""LocalStack: the whole system over real HTTP on loopback — the emulator (queue API and,
by default, the run store), optionally the real Worker under workerd, and the real daemon.

It offers the same API as :class:`MemoryStack` (``start``, ``wait``, ``resume``, ``cancel``,
results with ``invocations``), so the same tests run against both.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Any, Literal

import anyio
import anyio.abc

from flowcraft_puller.config import (
    CloudflareConfig,
    CoordinatorConfig,
    DaemonConfig,
    QueueConfig,
    Secrets,
    Settings,
)
from flowcraft_puller.daemon import Daemon, Running
from flowcraft_puller.emulator.app import EmulatorConfig
from flowcraft_puller.emulator.faults import FaultPlan
from flowcraft_puller.emulator.server import EmulatorServer
from flowcraft_puller.engine.evaluators import EvaluatorName
from flowcraft_puller.engine.nodes import NodeImplementation
from flowcraft_puller.progress import follow_run
from flowcraft_puller.testing.stack import AdapterRuns, RunResult, load_blueprints
from flowcraft_puller.workflows import Workflows

JOB_QUEUE = "flowcraft-jobs"

Coordinator = Literal["emulator", "worker"]


def standard_faults(seed: int = 0) -> FaultPlan:
    """Issue 4's fault mix: 10 % 5xx/429 on every route, 5 % dropped responses, 50 ms jitter."""
    route = {
        "error_429_rate": 0.04,
        "retry_after_seconds": 0,
        "rate_limit_code": 10250,
        "error_500_rate": 0.03,
        "error_503_rate": 0.03,
        "drop_response_rate": 0.05,
        "latency_ms": 50,
    }
    return FaultPlan.model_validate({"seed": seed, "routes": {"*": route}})


class LocalStack(AdapterRuns):
    """``async with LocalStack(blueprints=..., registry=...) as stack:`` then start/wait/resume."""

    def __init__(
        self,
        *,
        blueprints: Mapping[str, Any] | Iterable[Any],
        registry: Mapping[str, NodeImplementation],
        evaluator: EvaluatorName = "property",
        concurrency: int = 16,
        faults: FaultPlan | None = None,
        coordinator: Coordinator = "emulator",
        visibility_timeout_s: float | None = None,
        daemons: int = 1,
    ) -> None:
        self.faults = faults
        super().__init__()
        self.coordinator = coordinator
        self.workflows = Workflows(blueprints=load_blueprints(blueprints), registry=registry)
        self.evaluator = evaluator
        self.concurrency = concurrency
        self.visibility_timeout_s = visibility_timeout_s or (3.0 if faults else 10.0)
        """Short under faults: a pull whose answer is dropped leaves its messages leased."""
        self.daemon_count = daemons
        self.token = secrets.token_hex(16)
        self.secret = secrets.token_urlsafe(24)
        self.emulator: EmulatorServer | None = None
        self.daemons: list[Daemon] = []
        self._running: list[Running] = []
        self._stack = AsyncExitStack()
        self._group: anyio.abc.TaskGroup | None = None

    @property
    def running(self) -> Running:
        """The first daemon's parts (its adapter starts, resumes and cancels runs)."""
        return self._running[0]

    async def __aenter__(self) -> LocalStack:
        stack = self._stack
        await stack.__aenter__()
        try:
            emulator = EmulatorServer(
                EmulatorConfig(
                    port=0,
                    token=self.token,
                    secret=self.secret,
                    faults=self.faults or FaultPlan(),
                    visibility_timeout_ms=int(self.visibility_timeout_s * 1000),
                    max_retries=100,
                )
            )
            self.emulator = await stack.enter_async_context(emulator)
            coordinator_url = emulator.url
            if self.coordinator == "worker":
                coordinator_url = await self._start_worker(emulator)
            settings = Settings(
                cloudflare=CloudflareConfig(
                    account_id=emulator.account_id, api_base_url=emulator.api_url
                ),
                coordinator=CoordinatorConfig(url=coordinator_url),
                queues=[
                    QueueConfig(
                        name=JOB_QUEUE,
                        id=emulator.queue_id(JOB_QUEUE),
                        visibility_timeout=self.visibility_timeout_s,
                        max_deliveries=100,
                    )
                ],
                daemon=DaemonConfig(
                    concurrency=self.concurrency,
                    evaluator=self.evaluator,
                    idle_backoff_min=0.005,
                    idle_backoff_max=0.05,
                    ack_linger=0.005,
                ),
            )
            group = self._group = anyio.create_task_group()
            await stack.enter_async_context(group)
            stack.callback(group.cancel_scope.cancel)
            for _ in range(self.daemon_count):
                daemon = Daemon(
                    settings,
                    Secrets(api_token=self.token, coordinator_secret=self.secret),
                    self.workflows,
                    serve_health=False,
                    on_invoke=self._count,
                )
                self.daemons.append(daemon)
                self._running.append(await group.start(daemon.run))
            self.adapter = self.running.adapter
        except BaseException:
            await stack.__aexit__(None, None, None)
            raise
        return self

    async def _start_worker(self, emulator: EmulatorServer) -> str:
        from flowcraft_puller.testing.worker import WorkerProcess

        queue_id = emulator.queue_id(JOB_QUEUE)
        queue_url = f"{emulator.api_url}/accounts/{emulator.account_id}/queues/{queue_id}"
        worker = WorkerProcess(
            secret=self.secret,
            variables={"QUEUE_REST_URL": queue_url, "QUEUE_REST_TOKEN": self.token},
        )
        await self._stack.enter_async_context(worker)
        return worker.url

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        return await self._stack.__aexit__(exc_type, exc, tb)

    async def wait(self, run_id: str, timeout: float = 20.0) -> RunResult:
        """The run once it is completed, failed, cancelled or awaiting (TimeoutError otherwise)."""
        with anyio.fail_after(timeout):
            view = await follow_run(self.running.store, run_id, interval_s=0.02)
        return RunResult.from_view(view, self.invocations[run_id])
