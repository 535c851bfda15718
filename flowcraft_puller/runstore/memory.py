"""The in-memory run store: the state machine behind the protocol, for tests and MemoryStack.

Requests and responses cross a JSON round trip, exactly as they would over HTTP, so nothing
the daemon holds aliases the store's state and every value is checked to be JSON. A store served
over HTTP (the emulator's) turns that off with ``wire_copies=False``: its requests are freshly
validated from JSON and its answers are encoded at once, so the round trip would only cost time.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

import anyio
import orjson
from pydantic import BaseModel

from flowcraft_puller.queue.protocol import JobSender, OutgoingMessage
from flowcraft_puller.runstore.protocol import (
    TERMINAL_STATUSES,
    AttemptsRequest,
    CancelRequest,
    ClaimRequest,
    ClaimResponse,
    CommitRequest,
    CommitResponse,
    Conflict,
    FailRequest,
    HookResponse,
    OpsRequest,
    OpsResponse,
    ReconcileResponse,
    ResumeRequest,
    ResumeResponse,
    RunList,
    RunStatus,
    RunSummary,
    RunView,
    StartRequest,
    StartResponse,
    StatusResponse,
)
from flowcraft_puller.runstore.state import RunState, require

M = TypeVar("M", bound=BaseModel)


def _wire(model: BaseModel, cls: type[M]) -> M:
    """A JSON round trip that keeps which fields were given (``resume`` tells absent ``output``)."""
    return cls.model_validate_json(model.model_dump_json(exclude_unset=True))


class MemoryRunStore:
    """All runs in one process's memory; released jobs go to ``sender``."""

    def __init__(
        self,
        sender: JobSender | None = None,
        *,
        clock_ms: Callable[[], float] = lambda: time.time() * 1000,
        status_interval_s: float = 10.0,
        wire_copies: bool = True,
    ) -> None:
        self.sender = sender
        self.wire_copies = wire_copies
        self.runs: dict[str, RunState] = {}
        self.status_records: dict[str, dict[str, Any]] = {}
        self._clock_ms = clock_ms
        self._status_interval_ms = status_interval_s * 1000
        self._status_written: dict[str, tuple[RunStatus, float]] = {}
        self._changed: dict[str, anyio.Event] = {}

    def _now(self) -> int:
        return int(self._clock_ms())

    def _wire(self, model: BaseModel, cls: type[M]) -> M:
        """``model`` after a JSON round trip as ``cls`` (or as it is, without ``wire_copies``)."""
        if not self.wire_copies and isinstance(model, cls):
            return model
        return _wire(model, cls)

    async def _after(self, run: RunState) -> None:
        """Deliver the run's outbox, write its status record, and wake status watchers."""
        now = self._now()
        jobs = run.take_outbox()
        if jobs and self.sender is not None:
            try:
                await self.sender.send_batch([OutgoingMessage(j.body, j.delay_ms) for j in jobs])
            except Exception:
                run.outbox[:0] = jobs
                raise
        if self._status_due(run, now):
            self.status_records[run.run_id] = orjson.loads(orjson.dumps(run.status_record(now)))
            self._status_written_at(run, now)

    def _status_due(self, run: RunState, now: int) -> bool:
        """Whether the run's status record is due: a new status, or the interval has passed."""
        last = self._status_written.get(run.run_id)
        return last is None or last[0] != run.status or now - last[1] >= self._status_interval_ms

    def _status_written_at(self, run: RunState, now: int) -> None:
        """Remember that the run's status record was written and wake its watchers."""
        self._status_written[run.run_id] = (run.status, now)
        event = self._changed.pop(run.run_id, None)
        if event is not None:
            event.set()

    def changed(self, run_id: str) -> anyio.Event:
        """An event set the next time the run's status record is written."""
        event = self._changed.get(run_id)
        if event is None:
            event = self._changed[run_id] = anyio.Event()
        return event

    def _run(self, run_id: str) -> RunState:
        return require(self.runs.get(run_id), run_id)

    async def start(self, run_id: str, request: StartRequest) -> StartResponse:
        request = self._wire(request, StartRequest)
        existing = self.runs.get(run_id)
        if existing is not None:
            if not existing.same_start(request):
                raise Conflict(
                    f"run {run_id!r} already exists with blueprint {existing.blueprint_id!r}"
                )
            return StartResponse(run_id=run_id, created=False, status=existing.status)
        run = RunState.start(run_id, request, self._now())
        self.runs[run_id] = run
        await self._after(run)
        return StartResponse(run_id=run_id, created=True, status=run.status)

    async def claim(self, run_id: str, request: ClaimRequest) -> ClaimResponse:
        run = self._run(run_id)
        response = run.claim(self._wire(request, ClaimRequest), self._now())
        await self._after(run)
        return self._wire(response, ClaimResponse)

    async def commit(self, run_id: str, request: CommitRequest) -> CommitResponse:
        run = self._run(run_id)
        response = run.commit(self._wire(request, CommitRequest), self._now())
        await self._after(run)
        return self._wire(response, CommitResponse)

    async def attempts(self, run_id: str, request: AttemptsRequest) -> StatusResponse:
        run = self._run(run_id)
        response = run.attempts(self._wire(request, AttemptsRequest), self._now())
        await self._after(run)
        return response

    async def fail(self, run_id: str, request: FailRequest) -> StatusResponse:
        run = self._run(run_id)
        response = run.fail(self._wire(request, FailRequest), self._now())
        await self._after(run)
        return response

    async def resume(self, run_id: str, request: ResumeRequest) -> ResumeResponse:
        run = self._run(run_id)
        response = run.resume(self._wire(request, ResumeRequest), self._now())
        await self._after(run)
        return response

    async def cancel(self, run_id: str, request: CancelRequest) -> StatusResponse:
        run = self._run(run_id)
        response = run.cancel(self._wire(request, CancelRequest), self._now())
        await self._after(run)
        return response

    async def reconcile(self, run_id: str) -> ReconcileResponse:
        run = self._run(run_id)
        response = run.reconcile(self._now())
        await self._after(run)
        return response

    async def get(self, run_id: str) -> RunView:
        return self._wire(self._run(run_id).view(), RunView)

    async def ops(self, run_id: str, request: OpsRequest) -> OpsResponse:
        run = self._run(run_id)
        response = run.ops(self._wire(request, OpsRequest).ops, self._now())
        await self._after(run)
        return self._wire(response, OpsResponse)

    async def hook(self, run_id: str, node_id: str, token: str, body: Any) -> HookResponse:
        run = self._run(run_id)
        if self.wire_copies:
            body = orjson.loads(orjson.dumps(body))
        response = run.hook(node_id, token, body, self._now())
        await self._after(run)
        return response

    async def list_runs(
        self,
        *,
        status: RunStatus | None = None,
        stale_seconds: int | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> RunList:
        now_s = self._now() / 1000
        ids = sorted(self.status_records)
        if cursor is not None:
            ids = [i for i in ids if i > cursor]
        runs = []
        for run_id in ids:
            record = self.status_records[run_id]
            if status is not None and record["status"] != status:
                continue
            if stale_seconds is not None and record["lastUpdated"] > now_s - stale_seconds:
                continue
            runs.append(
                RunSummary(
                    run_id=run_id,
                    status=record["status"],
                    last_updated=record["lastUpdated"],
                    blueprint_id=record.get("blueprintId"),
                )
            )
            if len(runs) == limit:
                break
        next_cursor = runs[-1].run_id if len(runs) == limit else None
        return RunList(runs=runs, cursor=next_cursor)

    def finished(self, run_id: str) -> bool:
        run = self.runs.get(run_id)
        return run is not None and run.status in TERMINAL_STATUSES
