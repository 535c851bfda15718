"""Start runs and follow them through a coordinator's ``/v1`` API, as a client would."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Any, Self

import anyio

from flowcraft_puller.adapter import Adapter
from flowcraft_puller.engine.executor import ExecutionEnv
from flowcraft_puller.engine.step import Engine
from flowcraft_puller.runstore.http import HttpRunStore
from flowcraft_puller.runstore.protocol import TERMINAL_STATUSES, RunView
from flowcraft_puller.testing.stack import load_blueprints


class RunClient:
    """Starts runs and follows them through a coordinator's ``/v1`` API (the emulator's or the
    Worker's). It executes no node code: it only needs the blueprints to start their runs."""

    def __init__(
        self,
        coordinator_url: str,
        secret: str,
        blueprints: Iterable[Any] | Mapping[str, Any],
    ) -> None:
        self.coordinator_url = coordinator_url.rstrip("/")
        self.secret = secret
        self.blueprints = load_blueprints(blueprints)
        self._stack = AsyncExitStack()
        self._store: HttpRunStore | None = None
        self._adapter: Adapter | None = None

    async def __aenter__(self) -> Self:
        store = HttpRunStore(self.coordinator_url + "/v1", self.secret)
        self._store = await self._stack.enter_async_context(store)
        engine = Engine(blueprints=self.blueprints, env=ExecutionEnv(registry={}))
        self._adapter = Adapter(engine, store)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stack.aclose()

    @property
    def store(self) -> HttpRunStore:
        if self._store is None:
            raise RuntimeError("use `async with RunClient(...)` first")
        return self._store

    def add_blueprint(self, blueprint: Any) -> None:
        """Make another blueprint startable (e.g. one a daemon loaded on SIGHUP)."""
        self.blueprints.update(load_blueprints([blueprint]))

    async def start(
        self,
        blueprint_id: str,
        context: Mapping[str, Any] | None = None,
        *,
        run_id: str | None = None,
    ) -> str:
        if self._adapter is None:
            raise RuntimeError("use `async with RunClient(...)` first")
        return await self._adapter.start_run(blueprint_id, context, run_id=run_id)

    async def start_many(
        self,
        blueprint_id: str,
        count: int,
        *,
        context: Callable[[int], Mapping[str, Any]] | None = None,
        concurrency: int = 16,
    ) -> list[str]:
        """Start ``count`` runs, ``concurrency`` requests at a time; their ids in order."""
        run_ids: list[str] = [uuid.uuid4().hex for _ in range(count)]
        limiter = anyio.Semaphore(concurrency)

        async def one(index: int) -> None:
            async with limiter:
                initial = context(index) if context is not None else None
                await self.start(blueprint_id, initial, run_id=run_ids[index])

        async with anyio.create_task_group() as group:
            for index in range(count):
                group.start_soon(one, index)
        return run_ids

    async def get(self, run_id: str) -> RunView:
        return await self.store.get(run_id)

    async def statuses(self) -> dict[str, str]:
        """The status of every run the coordinator knows, by run id."""
        found: dict[str, str] = {}
        cursor = None
        while True:
            page = await self.store.list_runs(limit=1000, cursor=cursor)
            found.update((run.run_id, run.status) for run in page.runs)
            cursor = page.cursor
            if cursor is None:
                return found

    async def wait_terminal(
        self, run_ids: Iterable[str], *, timeout: float = 60.0, interval: float = 0.1
    ) -> dict[str, RunView]:
        """Every run once completed, failed or cancelled (TimeoutError, naming the stragglers,
        after ``timeout``)."""
        pending = set(run_ids)
        try:
            with anyio.fail_after(timeout):
                while True:
                    statuses = await self.statuses()
                    pending = {r for r in pending if statuses.get(r) not in TERMINAL_STATUSES}
                    if not pending:
                        break
                    await anyio.sleep(interval)
        except TimeoutError:
            sample = sorted(pending)[:5]
            raise TimeoutError(
                f"{len(pending)} run(s) did not finish within {timeout:g}s, e.g. {sample}"
            ) from None
        return await self.views(run_ids)

    async def views(self, run_ids: Iterable[str], *, concurrency: int = 16) -> dict[str, RunView]:
        """The current view of each run."""
        views: dict[str, RunView] = {}
        limiter = anyio.Semaphore(concurrency)

        async def one(run_id: str) -> None:
            async with limiter:
                views[run_id] = await self.get(run_id)

        async with anyio.create_task_group() as group:
            for run_id in run_ids:
                group.start_soon(one, run_id)
        return views
