"""Micro-batching of the daemon's hot calls into ``POST /v1/batch`` requests.

``claim``, ``commit``, ``attempts``, ``fail`` and ``get`` calls made by many tasks at once wait
in one list; a single flusher task sends them as one batch when ``max_entries`` are waiting or
``linger_ms`` after the first arrived, and each caller gets its own entry's answer (or error).
A call that turns out to be alone — nothing else waiting once the tasks scheduled with it had
their turn, nothing in flight — goes straight to its endpoint, so a lone caller pays no linger,
while the calls a burst of tasks makes together (the claims of one pull) share one batch.
Every other call passes through to the HTTP store.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, TypeVar

import anyio
import anyio.abc
import anyio.lowlevel
from pydantic import BaseModel

from flowcraft_puller.runstore.http import (
    BatchEntry,
    BatchOp,
    BatchResult,
    HttpRunStore,
    decode_result,
    request_body,
)
from flowcraft_puller.runstore.protocol import (
    AttemptsRequest,
    CancelRequest,
    ClaimRequest,
    ClaimResponse,
    CommitRequest,
    CommitResponse,
    FailRequest,
    HookResponse,
    OpsRequest,
    OpsResponse,
    ReconcileResponse,
    ResumeRequest,
    ResumeResponse,
    RunList,
    RunStatus,
    RunView,
    StartRequest,
    StartResponse,
    StatusResponse,
    StoreUnavailable,
)

M = TypeVar("M", bound=BaseModel)


class _Slot:
    """One waiting call: its batch entry, and its answer once the batch came back (or the
    go-ahead to call its endpoint directly)."""

    __slots__ = ("abandoned", "direct", "done", "entry", "error", "result")

    def __init__(self, entry: BatchEntry) -> None:
        self.entry = entry
        self.done = anyio.Event()
        self.result: BatchResult | None = None
        self.error: BaseException | None = None
        self.abandoned = False
        self.direct = False


class BatchingRunStore:
    """A :class:`RunStore` that coalesces concurrent hot calls into ``/v1/batch`` requests.

    Use it as ``async with BatchingRunStore(inner) as store:``; the flusher task lives inside.
    Up to ``max_in_flight`` batch requests are outstanding at once.
    """

    def __init__(
        self,
        inner: HttpRunStore,
        *,
        linger_ms: float = 2.0,
        max_entries: int = 64,
        max_in_flight: int = 4,
        direct_when_idle: bool = True,
    ) -> None:
        if not 1 <= max_entries <= 256:
            raise ValueError(
                f"max_entries must be within 1..256 (protocol §4.14), not {max_entries}"
            )
        self.inner = inner
        self.linger_s = linger_ms / 1000
        self.max_entries = max_entries
        self.direct_when_idle = direct_when_idle
        self._waiting: list[_Slot] = []
        self._sending: list[list[_Slot]] = []
        self._wake = anyio.Event()
        self._in_flight = 0
        self._free = anyio.Semaphore(max_in_flight)
        self._group: anyio.abc.TaskGroup | None = None
        self._closed = False

    async def __aenter__(self) -> BatchingRunStore:
        self._group = anyio.create_task_group()
        await self._group.__aenter__()
        self._group.start_soon(self._flush_forever)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._group is not None, "BatchingRunStore was not entered"
        self._closed = True
        self._group.cancel_scope.cancel()
        try:
            return await self._group.__aexit__(exc_type, exc, tb)
        finally:
            for batch in [self._waiting, *self._sending]:
                self._fail_all(batch, "the batching run store was closed")
            self._waiting.clear()

    # ---- batched calls ----------------------------------------------------------------------

    async def claim(self, run_id: str, request: ClaimRequest) -> ClaimResponse:
        return await self._call(
            "claim",
            run_id,
            request_body(request),
            ClaimResponse,
            lambda: self.inner.claim(run_id, request),
        )

    async def commit(self, run_id: str, request: CommitRequest) -> CommitResponse:
        return await self._call(
            "commit",
            run_id,
            request_body(request),
            CommitResponse,
            lambda: self.inner.commit(run_id, request),
        )

    async def attempts(self, run_id: str, request: AttemptsRequest) -> StatusResponse:
        return await self._call(
            "attempts",
            run_id,
            request_body(request),
            StatusResponse,
            lambda: self.inner.attempts(run_id, request),
        )

    async def fail(self, run_id: str, request: FailRequest) -> StatusResponse:
        return await self._call(
            "fail",
            run_id,
            request_body(request),
            StatusResponse,
            lambda: self.inner.fail(run_id, request),
        )

    async def get(self, run_id: str) -> RunView:
        return await self._call("get", run_id, {}, RunView, lambda: self.inner.get(run_id))

    # ---- passed through ---------------------------------------------------------------------

    async def start(self, run_id: str, request: StartRequest) -> StartResponse:
        return await self.inner.start(run_id, request)

    async def resume(self, run_id: str, request: ResumeRequest) -> ResumeResponse:
        return await self.inner.resume(run_id, request)

    async def cancel(self, run_id: str, request: CancelRequest) -> StatusResponse:
        return await self.inner.cancel(run_id, request)

    async def reconcile(self, run_id: str) -> ReconcileResponse:
        return await self.inner.reconcile(run_id)

    async def ops(self, run_id: str, request: OpsRequest) -> OpsResponse:
        return await self.inner.ops(run_id, request)

    async def hook(self, run_id: str, node_id: str, token: str, body: Any) -> HookResponse:
        return await self.inner.hook(run_id, node_id, token, body)

    async def list_runs(
        self,
        *,
        status: RunStatus | None = None,
        stale_seconds: int | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> RunList:
        return await self.inner.list_runs(
            status=status, stale_seconds=stale_seconds, limit=limit, cursor=cursor
        )

    # ---- batching ---------------------------------------------------------------------------

    async def _call(
        self,
        op: BatchOp,
        run_id: str,
        body: dict[str, Any],
        model: type[M],
        direct: Callable[[], Awaitable[M]],
    ) -> M:
        if self._group is None or self._closed:
            raise StoreUnavailable(
                "the batching run store is not open; use it as `async with BatchingRunStore(...)`"
            )
        slot = _Slot(BatchEntry(op, run_id, body))
        self._waiting.append(slot)
        if len(self._waiting) == 1 or len(self._waiting) >= self.max_entries:
            self._wake.set()
        try:
            await slot.done.wait()
        except BaseException:
            slot.abandoned = True
            if slot.direct:
                self._in_flight -= 1
            raise
        if slot.direct:
            try:
                return await direct()
            finally:
                self._in_flight -= 1
        if slot.error is not None:
            raise slot.error
        assert slot.result is not None
        return decode_result(slot.result, model, f"{op} of run {run_id!r} in a batch")

    async def _flush_forever(self) -> None:
        """Send waiting calls: at once when ``max_entries`` wait, else after the linger; a call
        that is alone goes to its endpoint."""
        assert self._group is not None
        while True:
            while not self._waiting:
                self._wake = anyio.Event()
                await self._wake.wait()
            if self.direct_when_idle and self._in_flight == 0:
                await anyio.lowlevel.checkpoint()
                if self._go_direct():
                    continue
            if len(self._waiting) < self.max_entries and self.linger_s > 0:
                self._wake = anyio.Event()
                with anyio.move_on_after(self.linger_s):
                    await self._wake.wait()
            await self._free.acquire()
            batch = [slot for slot in self._waiting[: self.max_entries] if not slot.abandoned]
            del self._waiting[: self.max_entries]
            if not batch:
                self._free.release()
                continue
            self._in_flight += 1
            self._sending.append(batch)
            self._group.start_soon(self._send, batch)

    def _go_direct(self) -> bool:
        """Let a call that is still alone, with nothing in flight, call its endpoint itself."""
        live = [slot for slot in self._waiting if not slot.abandoned]
        if len(live) > 1 or self._in_flight:
            return False
        self._waiting.clear()
        for slot in live:
            slot.direct = True
            self._in_flight += 1
            slot.done.set()
        return True

    async def _send(self, batch: list[_Slot]) -> None:
        """Send one batch and hand every caller its answer, whatever happens to the request."""
        try:
            results = await self.inner.batch([slot.entry for slot in batch])
            for slot, result in zip(batch, results, strict=True):
                slot.result = result
        except Exception as exc:
            for slot in batch:
                slot.error = exc
        finally:
            self._fail_all(batch, "the batching run store was closed before the answer arrived")
            self._sending.remove(batch)
            self._in_flight -= 1
            self._free.release()

    @staticmethod
    def _fail_all(slots: list[_Slot], reason: str) -> None:
        """Wake every caller in ``slots``; those still without an answer get ``reason``."""
        for slot in slots:
            if slot.result is None and slot.error is None:
                slot.error = StoreUnavailable(reason)
            slot.done.set()
