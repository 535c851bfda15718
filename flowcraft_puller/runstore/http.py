"""The run-store client over HTTP (docs/protocol.md): the Worker or the local emulator.

Every call is idempotent (protocol §1.2), so every call is retried on connection failures,
``429`` (honouring ``Retry-After``) and ``5xx``; after the retry budget it raises
:class:`StoreUnavailable`. Other non-2xx answers raise the typed error named by ``error.code``.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal, TypeVar
from urllib.parse import quote

import anyio
import httpx
import orjson
import structlog
from pydantic import BaseModel, ValidationError
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
)

from flowcraft_puller.api_client import (
    ApiClient,
    RequestObserver,
    jittered_backoff,
    retry_after_seconds,
)
from flowcraft_puller.runstore.protocol import (
    ERRORS_BY_CODE,
    AttemptsRequest,
    BadRequest,
    CancelRequest,
    ClaimRequest,
    ClaimResponse,
    CommitRequest,
    CommitResponse,
    Conflict,
    ErrorBody,
    FailRequest,
    HookResponse,
    NodeRef,
    OpsRequest,
    OpsResponse,
    PayloadTooLarge,
    ReconcileResponse,
    ResumeRequest,
    ResumeResponse,
    RunList,
    RunNotFound,
    RunStatus,
    RunStoreError,
    RunView,
    StartRequest,
    StartResponse,
    StatusResponse,
    StoreUnavailable,
    Unauthorized,
    Wire,
)

log = structlog.get_logger(__name__)

M = TypeVar("M", bound=BaseModel)

DEFAULT_TIMEOUT: Final = httpx.Timeout(connect=5.0, read=30.0, write=30.0, pool=10.0)
DEFAULT_LIMITS: Final = httpx.Limits(
    max_connections=32, max_keepalive_connections=32, keepalive_expiry=30.0
)

BatchOp = Literal["claim", "commit", "attempts", "fail", "get"]
Sleep = Callable[[float], Awaitable[None]]

_ERRORS_BY_STATUS: Final[dict[int, type[RunStoreError]]] = {
    cls.http_status: cls
    for cls in (BadRequest, Unauthorized, RunNotFound, Conflict, PayloadTooLarge)
}


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How calls are retried: ``attempts`` in all, exponential back-off with jitter between
    them, or the server's ``Retry-After`` (at most ``max_retry_after`` seconds)."""

    attempts: int = 5
    initial_backoff: float = 0.05
    max_backoff: float = 2.0
    max_retry_after: float = 30.0
    sleep: Sleep = field(default=anyio.sleep)


@dataclass(slots=True)
class RequestCounts:
    """HTTP requests sent to the run store per endpoint (retries included), and the calls
    carried inside ``/v1/batch`` requests per operation."""

    requests: Counter[str] = field(default_factory=Counter)
    batched: Counter[str] = field(default_factory=Counter)

    @property
    def total(self) -> int:
        """All HTTP requests sent."""
        return sum(self.requests.values())


@dataclass(frozen=True, slots=True)
class BatchEntry:
    """One call inside a ``/v1/batch`` request; ``body`` is the call's JSON request body."""

    op: BatchOp
    run_id: str
    body: dict[str, Any]


@dataclass(frozen=True, slots=True)
class BatchResult:
    """One entry's answer: its HTTP status and its response (or error) body."""

    status: int
    body: Any


class UnexpectedResponse(RunStoreError):
    """The store answered with a status or body this protocol does not define."""

    def __init__(self, message: str, *, http_status: int, code: str = "unexpected") -> None:
        super().__init__(message)
        self.http_status = http_status
        self.code = code


class _RetryableStatus(Exception):
    """A ``429`` or ``5xx`` answer, retried; ``retry_after`` in seconds when the server said."""

    def __init__(self, result: BatchResult, retry_after: float | None) -> None:
        super().__init__(f"HTTP {result.status}")
        self.result = result
        self.retry_after = retry_after


class _EntriesPending(Exception):
    """Some batch entries were answered ``429`` or ``5xx`` and are sent again."""


def retryable(status: int) -> bool:
    return status == 429 or status >= 500


def request_body(model: Wire) -> dict[str, Any]:
    """A request model as its camelCase JSON body. ``resume`` sends ``output`` only if given."""
    if isinstance(model, ResumeRequest) and "output" not in model.model_fields_set:
        return model.model_dump(mode="json", by_alias=True, exclude={"output"})
    return model.model_dump(mode="json", by_alias=True)


def error_from(result: BatchResult, where: str) -> RunStoreError:
    """The typed error for a non-2xx answer (``error.code`` first, then the HTTP status)."""
    try:
        detail = ErrorBody.model_validate(result.body).error
    except ValidationError:
        message = f"{where} answered HTTP {result.status} without an error body"
        if retryable(result.status):
            return StoreUnavailable(message)
        return UnexpectedResponse(message, http_status=result.status)
    message = f"{where}: {detail.message}"
    if retryable(result.status):
        return StoreUnavailable(message)
    known = ERRORS_BY_CODE.get(detail.code) or _ERRORS_BY_STATUS.get(result.status)
    if known is not None:
        return known(message, field=detail.field)
    return UnexpectedResponse(message, http_status=result.status, code=detail.code)


def decode_result(result: BatchResult, model: type[M], where: str) -> M:
    """A 2xx answer as ``model``, or the typed error of any other answer."""
    if not 200 <= result.status < 300:
        raise error_from(result, where)
    try:
        return model.model_validate(result.body)
    except ValidationError as exc:
        raise UnexpectedResponse(
            f"{where} answered a body that is not a {model.__name__}: {exc.errors()[:3]}",
            http_status=502,
        ) from exc


def _loads(content: bytes) -> Any:
    if not content:
        return None
    try:
        return orjson.loads(content)
    except orjson.JSONDecodeError:
        return None


def _resumed_from_view(request: ResumeRequest, view: RunView) -> ResumeResponse | None:
    """The answer to a resume whose response was lost, if ``view`` shows it took effect."""
    if "_resume.action" not in view.context or view.context["_resume.action"] != request.action:
        return None
    if "output" in request.model_fields_set and view.context.get("_resume.output") != (
        request.output
    ):
        return None
    if request.node_id is not None:
        node = view.nodes.get(request.node_id)
        awaiting = view.awaiting.get(request.node_id)
        resolved = awaiting is not None and awaiting.resolution is not None
        if node is None or not (resolved or node.state == "completed"):
            return None
        return ResumeResponse(
            status=view.status, resumed=[NodeRef(node_id=request.node_id, gen=node.gen)]
        )
    resumed = [
        NodeRef(node_id=node_id, gen=view.nodes[node_id].gen)
        for node_id, awaiting in view.awaiting.items()
        if awaiting.reason == "external_event"
        and awaiting.resolution is not None
        and node_id in view.nodes
    ]
    return ResumeResponse(status=view.status, resumed=resumed)


class HttpRunStore(ApiClient):
    """A :class:`RunStore` at ``base_url`` (ending in ``/v1``) with bearer ``secret``.

    One long-lived ``httpx.AsyncClient`` carries every call; a shared ``client`` is used as is
    and not closed. ``counts`` tallies the requests sent.
    """

    def __init__(
        self,
        base_url: str,
        secret: str | None,
        *,
        client: httpx.AsyncClient | None = None,
        retry: RetryPolicy | None = None,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        limits: httpx.Limits = DEFAULT_LIMITS,
        observer: RequestObserver | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._observer = observer
        self.retry = retry or RetryPolicy()
        self.counts = RequestCounts()
        super().__init__(client, timeout, limits)
        self._auth = {"Authorization": f"Bearer {secret}"} if secret is not None else {}
        self._content = {"Content-Type": "application/json"}
        self._backoff = jittered_backoff(self.retry.initial_backoff, self.retry.max_backoff)

    # ---- the protocol -------------------------------------------------------------------

    async def start(self, run_id: str, request: StartRequest) -> StartResponse:
        return await self._run_call("start", run_id, "start", request, StartResponse)

    async def claim(self, run_id: str, request: ClaimRequest) -> ClaimResponse:
        return await self._run_call("claim", run_id, "claim", request, ClaimResponse)

    async def commit(self, run_id: str, request: CommitRequest) -> CommitResponse:
        return await self._run_call("commit", run_id, "commit", request, CommitResponse)

    async def attempts(self, run_id: str, request: AttemptsRequest) -> StatusResponse:
        return await self._run_call("attempts", run_id, "attempts", request, StatusResponse)

    async def fail(self, run_id: str, request: FailRequest) -> StatusResponse:
        return await self._run_call("fail", run_id, "fail", request, StatusResponse)

    async def cancel(self, run_id: str, request: CancelRequest) -> StatusResponse:
        return await self._run_call("cancel", run_id, "cancel", request, StatusResponse)

    async def reconcile(self, run_id: str) -> ReconcileResponse:
        path = f"/runs/{quote(run_id, safe='')}/reconcile"
        result, _ = await self._exchange("reconcile", "POST", path, content=b"{}")
        return decode_result(result, ReconcileResponse, self._where("reconcile", run_id))

    async def ops(self, run_id: str, request: OpsRequest) -> OpsResponse:
        return await self._run_call("ops", run_id, "ops", request, OpsResponse)

    async def get(self, run_id: str) -> RunView:
        result, _ = await self._exchange("get", "GET", f"/runs/{quote(run_id, safe='')}")
        return decode_result(result, RunView, self._where("get", run_id))

    async def resume(self, run_id: str, request: ResumeRequest) -> ResumeResponse:
        """Resume awaiting nodes. A ``409`` to a request sent more than once is a success when
        the run shows the resume took effect (its first response was lost)."""
        path = f"/runs/{quote(run_id, safe='')}/resume"
        content = orjson.dumps(request_body(request))
        result, attempts = await self._exchange("resume", "POST", path, content=content)
        where = self._where("resume", run_id)
        if result.status == Conflict.http_status and attempts > 1:
            resumed = _resumed_from_view(request, await self.get(run_id))
            if resumed is not None:
                log.info("resume answered 409 after a retry; the first attempt took effect")
                return resumed
        return decode_result(result, ResumeResponse, where)

    async def hook(self, run_id: str, node_id: str, token: str, body: Any) -> HookResponse:
        path = f"/hooks/{quote(run_id, safe='')}/{quote(node_id, safe='')}/{quote(token, safe='')}"
        result, _ = await self._exchange(
            "hook", "POST", path, content=orjson.dumps(body), authenticate=False
        )
        return decode_result(result, HookResponse, self._where("hook", run_id))

    async def list_runs(
        self,
        *,
        status: RunStatus | None = None,
        stale_seconds: int | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> RunList:
        params: dict[str, str | int] = {"limit": limit}
        if status is not None:
            params["status"] = status
        if stale_seconds is not None:
            params["stale"] = stale_seconds
        if cursor is not None:
            params["cursor"] = cursor
        result, _ = await self._exchange("list", "GET", "/runs", params=params)
        return decode_result(result, RunList, f"list on the run store at {self.base_url}")

    async def batch(self, entries: Sequence[BatchEntry]) -> list[BatchResult]:
        """Many calls in one ``/v1/batch`` request, answered per entry in entry order.

        Entries answered ``429`` or ``5xx`` are sent again (only those) within the retry
        budget; after it they keep that answer.
        """
        results: list[BatchResult | None] = [None] * len(entries)
        todo = list(range(len(entries)))

        async def send_pending() -> None:
            answers = await self._send_batch([entries[i] for i in todo])
            still = []
            for index, answer in zip(todo, answers, strict=True):
                results[index] = answer
                if retryable(answer.status):
                    still.append(index)
            todo[:] = still
            if still:
                raise _EntriesPending(f"{len(still)} of the batch entries answered 429/5xx")

        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.retry.attempts),
            wait=self._backoff,
            retry=retry_if_exception_type(_EntriesPending),
            sleep=self.retry.sleep,
            reraise=True,
        )
        try:
            await retrying(send_pending)
        except _EntriesPending:
            log.warning("batch entries still failing after retries", entries=len(todo))
        return [result for result in results if result is not None]

    # ---- HTTP ---------------------------------------------------------------------------

    def _where(self, op: str, run_id: str) -> str:
        return f"{op} of run {run_id!r} on the run store at {self.base_url}"

    async def _run_call(
        self, op: str, run_id: str, action: str, request: Wire, model: type[M]
    ) -> M:
        path = f"/runs/{quote(run_id, safe='')}/{action}"
        result, _ = await self._exchange(
            op, "POST", path, content=orjson.dumps(request_body(request))
        )
        return decode_result(result, model, self._where(op, run_id))

    async def _send_batch(self, entries: Sequence[BatchEntry]) -> list[BatchResult]:
        content = orjson.dumps(
            {"entries": [{"op": e.op, "runId": e.run_id, "body": e.body} for e in entries]}
        )
        for entry in entries:
            self.counts.batched[entry.op] += 1
        where = f"batch on the run store at {self.base_url}"
        result, _ = await self._exchange("batch", "POST", "/batch", content=content)
        if result.status != 200:
            raise error_from(result, where)
        answers = result.body.get("results") if isinstance(result.body, dict) else None
        if not isinstance(answers, list) or len(answers) != len(entries):
            raise UnexpectedResponse(
                f"{where} answered {len(answers) if isinstance(answers, list) else 'no'} results"
                f" for {len(entries)} entries",
                http_status=502,
            )
        decoded = []
        for answer in answers:
            status = answer.get("status") if isinstance(answer, dict) else None
            if not isinstance(status, int):
                raise UnexpectedResponse(
                    f"{where} answered an entry without a status", http_status=502
                )
            decoded.append(BatchResult(status, answer.get("body")))
        return decoded

    async def _exchange(
        self,
        op: str,
        method: str,
        path: str,
        *,
        content: bytes | None = None,
        params: dict[str, str | int] | None = None,
        authenticate: bool = True,
    ) -> tuple[BatchResult, int]:
        """One call with retries: its final non-retryable answer and how many attempts it took."""
        url = self.base_url + path
        headers = {**self._auth, **self._content} if authenticate else self._content
        attempts = 0

        async def attempt() -> BatchResult:
            nonlocal attempts
            attempts += 1
            self.counts.requests[op] += 1
            started = time.monotonic()
            status: int | None = None
            try:
                response = await self._client.request(
                    method, url, content=content, params=params, headers=headers
                )
                status = response.status_code
            finally:
                if self._observer is not None:
                    self._observer(op, status, time.monotonic() - started)
            result = BatchResult(response.status_code, _loads(response.content))
            if retryable(response.status_code):
                raise _RetryableStatus(result, retry_after_seconds(response.headers))
            return result

        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.retry.attempts),
            wait=self._wait,
            retry=retry_if_exception_type((httpx.TransportError, _RetryableStatus)),
            sleep=self.retry.sleep,
            before_sleep=self._log_retry,
            reraise=True,
        )
        where = f"{op} on the run store at {self.base_url}"
        try:
            return await retrying(attempt), attempts
        except _RetryableStatus as exc:
            raise StoreUnavailable(
                f"{where} still answered HTTP {exc.result.status} after {attempts} attempts: "
                f"{error_from(exc.result, where).message}"
            ) from exc
        except httpx.TransportError as exc:
            raise StoreUnavailable(
                f"{where} is unreachable after {attempts} attempts "
                f"({type(exc).__name__}: {exc}); check the URL and that the store is running"
            ) from exc

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome is not None else None
        if isinstance(exc, _RetryableStatus) and exc.retry_after is not None:
            return min(exc.retry_after, self.retry.max_retry_after)
        return self._backoff(state)

    @staticmethod
    def _log_retry(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        log.warning(
            "run store call failed; retrying",
            attempt=state.attempt_number,
            wait_seconds=round(state.upcoming_sleep, 3),
            error=f"{type(exc).__name__}: {exc}",
        )
