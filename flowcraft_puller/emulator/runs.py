"""The emulator's run store served over HTTP: the Worker protocol of docs/protocol.md.

``RunService.routes()`` is mounted at ``/v1``. Requests are checked in the protocol's order:
body size (413) → route and bearer auth (401, then 404/405) → JSON and schema (400) → run
existence (404) → run state (409). Webhooks need no bearer: their token is the credential.
Nothing ever answers a stack trace; unexpected failures are logged and answer ``500 internal``.
"""

from __future__ import annotations

import hmac
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Annotated, Any, Final, Literal, TypeVar, get_args
from urllib.parse import unquote

import anyio
import anyio.abc
import orjson
import structlog
from pydantic import BaseModel, Field, ValidationError
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount
from starlette.types import Receive, Scope, Send

from flowcraft_puller import __version__
from flowcraft_puller.queue.protocol import JobSender
from flowcraft_puller.runstore.memory import MemoryRunStore
from flowcraft_puller.runstore.protocol import (
    RUN_ID_PATTERN,
    AttemptsRequest,
    BadRequest,
    CancelRequest,
    ClaimRequest,
    CommitRequest,
    FailRequest,
    OpsRequest,
    PayloadTooLarge,
    ResumeRequest,
    RunId,
    RunNotFound,
    RunStatus,
    RunStoreError,
    StartRequest,
    Unauthorized,
    Wire,
    field_path,
)
from flowcraft_puller.runstore.sqlite import SqliteRunStore

log = structlog.get_logger(__name__)

W = TypeVar("W", bound=Wire)

MAX_BODY_BYTES: Final = 4 * 1024 * 1024
DRAIN_LIMIT_BYTES: Final = 64 * 1024 * 1024
"""An oversized body is read and discarded up to this size so the client sees the 413."""
MAX_BATCH_ENTRIES: Final = 256
MAX_LIST_LIMIT: Final = 1000
PREFIX: Final = b"/v1"

_RUN_ID: Final = re.compile(RUN_ID_PATTERN)
_STATUSES: Final = frozenset(get_args(RunStatus))

BatchOp = Literal["claim", "commit", "attempts", "fail", "get"]


class MethodNotAllowed(RunStoreError):
    code = "method_not_allowed"
    http_status = 405

    def __init__(self, message: str, *, allow: tuple[str, ...]) -> None:
        super().__init__(message)
        self.allow = allow


class _BatchEntry(Wire):
    op: BatchOp
    run_id: RunId
    body: Any = Field(default_factory=dict)


class _BatchRequest(Wire):
    entries: Annotated[list[_BatchEntry], Field(min_length=1, max_length=MAX_BATCH_ENTRIES)]


class _Empty(Wire):
    """The body of ``get`` in a batch and of ``reconcile``: no fields."""


@dataclass(frozen=True, slots=True)
class _Route:
    name: Literal["health", "list", "batch", "view", "call", "hook"]
    method: str
    public: bool = False
    """Public routes need no bearer secret (webhooks: their token is the credential)."""


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(data), status, headers, media_type="application/json")


def _dump(model: BaseModel) -> Any:
    return model.model_dump(mode="json", by_alias=True)


def _error_body(exc: RunStoreError) -> Any:
    return exc.body().model_dump(mode="json", by_alias=True, exclude_none=True)


def _error(exc: RunStoreError) -> Response:
    headers = None
    if isinstance(exc, MethodNotAllowed):
        headers = {"Allow": ", ".join(exc.allow)}
    elif isinstance(exc, Unauthorized):
        headers = {"WWW-Authenticate": "Bearer"}
    return _json(_error_body(exc), exc.http_status, headers)


def validate(model: type[W], data: Any) -> W:
    """``data`` as ``model`` (camelCase names only), or :class:`BadRequest` naming the field."""
    if not isinstance(data, dict):
        raise BadRequest("the request body must be a JSON object")
    try:
        return model.model_validate(data, by_alias=True, by_name=False)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = field_path(error["loc"])
        raise BadRequest(f"{where or 'body'}: {error['msg']}", field=where or None) from None


def _parse_json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"malformed JSON: {exc}") from None


def _check_run_id(run_id: str) -> str:
    if not _RUN_ID.fullmatch(run_id):
        raise BadRequest(f"run id {run_id[:140]!r} does not match {RUN_ID_PATTERN}", field="runId")
    return run_id


RunCall = Callable[[MemoryRunStore, str, Any], Awaitable[BaseModel]]

RUN_CALLS: Final[dict[str, tuple[type[Wire], RunCall]]] = {
    "start": (StartRequest, lambda s, r, b: s.start(r, b)),
    "claim": (ClaimRequest, lambda s, r, b: s.claim(r, b)),
    "commit": (CommitRequest, lambda s, r, b: s.commit(r, b)),
    "attempts": (AttemptsRequest, lambda s, r, b: s.attempts(r, b)),
    "fail": (FailRequest, lambda s, r, b: s.fail(r, b)),
    "resume": (ResumeRequest, lambda s, r, b: s.resume(r, b)),
    "cancel": (CancelRequest, lambda s, r, b: s.cancel(r, b)),
    "reconcile": (_Empty, lambda s, r, b: s.reconcile(r)),
    "ops": (OpsRequest, lambda s, r, b: s.ops(r, b)),
    "get": (_Empty, lambda s, r, b: s.get(r)),
}
"""The run-store calls by protocol name: the request model and how to make the call."""
_PATH_CALLS: Final = frozenset(RUN_CALLS) - {"get"}
"""Calls with a path of their own, ``POST /v1/runs/{runId}/{call}``; ``get`` is ``GET``."""


def _match(segments: list[str]) -> tuple[_Route, list[str]] | None:
    """The route for the path segments after ``/v1`` and its path parameters."""
    match segments:
        case ["health"]:
            return _Route("health", "GET"), []
        case ["runs"]:
            return _Route("list", "GET"), []
        case ["batch"]:
            return _Route("batch", "POST"), []
        case ["runs", run_id]:
            return _Route("view", "GET"), [run_id]
        case ["runs", run_id, action] if action in _PATH_CALLS:
            return _Route("call", "POST"), [run_id, action]
        case ["hooks", run_id, node_id, token]:
            return _Route("hook", "POST", public=True), [run_id, node_id, token]
    return None


def _segments(scope: Scope) -> list[str] | None:
    """The percent-decoded path segments after ``/v1`` (encoded slashes stay inside)."""
    raw: bytes = scope.get("raw_path") or scope["path"].encode()
    if not raw.startswith(PREFIX + b"/"):
        return None
    try:
        return [unquote(s, errors="strict") for s in raw[len(PREFIX) + 1 :].decode().split("/")]
    except UnicodeDecodeError:
        return None


class RunService:
    """The run store of the emulator (SQLite at ``state_path``, in memory when None) and its
    HTTP routes; released jobs go to ``sender``. ``secret`` None disables bearer auth."""

    def __init__(
        self,
        *,
        state_path: Path | None,
        sender: JobSender,
        secret: str | None,
        clock_ms: Callable[[], float] = lambda: time.time() * 1000,
        retention_s: float = 604_800,
        status_interval_s: float = 10.0,
        sweep_interval_s: float = 1.0,
    ) -> None:
        self.store = SqliteRunStore(
            state_path,
            sender,
            clock_ms=clock_ms,
            retention_s=retention_s,
            status_interval_s=status_interval_s,
            wire_copies=False,
        )
        self._secret = secret.encode() if secret is not None else None
        self._sweep_interval_s = sweep_interval_s
        self._group: anyio.abc.TaskGroup | None = None

    def routes(self) -> list[BaseRoute]:
        """Everything under ``/v1``: health, runs, the runs list, batch and hooks."""
        return [Mount(PREFIX.decode(), app=self._asgi)]

    async def start(self) -> None:
        """Start the sweepers (outbox re-send, TTL expiry, retention). Call :meth:`aclose` from
        the same task (an ASGI lifespan does)."""
        self._group = anyio.create_task_group()
        await self._group.__aenter__()
        self._group.start_soon(self.store.run_sweepers, self._sweep_interval_s)

    async def aclose(self) -> None:
        if self._group is not None:
            self._group.cancel_scope.cancel()
            await self._group.__aexit__(None, None, None)
            self._group = None
        self.store.close()

    # ---- request handling ------------------------------------------------------------------

    async def _asgi(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        request = Request(scope, receive)
        try:
            response = await self._handle(request)
        except ClientDisconnect:
            return
        except RunStoreError as exc:
            response = _error(exc)
        except Exception:
            log.exception("run-store request failed", method=request.method, path=scope["path"])
            response = _error(RunStoreError("internal error; the emulator log has the details"))
        await response(scope, receive, send)

    async def _handle(self, request: Request) -> Response:
        body = await self._read_body(request)
        segments = _segments(request.scope)
        found = _match(segments) if segments is not None else None
        if (found is None or not found[0].public) and not self._authorized(request):
            raise Unauthorized("missing or wrong bearer secret in the Authorization header")
        if found is None:
            raise RunNotFound(f"no such path: {request.url.path}")
        route, params = found
        if request.method != route.method:
            raise MethodNotAllowed(
                f"{request.method} is not allowed on {request.url.path}; use {route.method}",
                allow=(route.method,),
            )
        if route.name == "health":
            return _json({"ok": True, "version": __version__, "store": "emulator"})
        if route.name == "list":
            return await self._list(request)
        if route.name == "batch":
            return await self._batch(body)
        if route.name == "hook":
            run_id, node_id, token = params
            return await self._hook(run_id, node_id, token, body)
        if route.name == "view":
            return _json(_dump(await self.store.get(_check_run_id(params[0]))))
        run_id, action = params
        _check_run_id(run_id)
        data = {} if not body and action == "reconcile" else _parse_json(body)
        return _json(_dump(await self._call(action, run_id, data)))

    async def _read_body(self, request: Request) -> bytes:
        """The request body, or :class:`PayloadTooLarge` once it exceeds the limit."""
        declared = request.headers.get("content-length", "")
        too_large = declared.isdigit() and int(declared) > MAX_BODY_BYTES
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            too_large = too_large or size > MAX_BODY_BYTES
            if not too_large:
                chunks.append(chunk)
            elif size > DRAIN_LIMIT_BYTES:
                break
        if too_large:
            raise PayloadTooLarge(f"the request body exceeds {MAX_BODY_BYTES} bytes")
        return b"".join(chunks)

    def _authorized(self, request: Request) -> bool:
        if self._secret is None:
            return True
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            token.strip().encode(), self._secret
        )

    async def _call(self, action: str, run_id: str, data: Any) -> BaseModel:
        model, call = RUN_CALLS[action]
        return await call(self.store, run_id, validate(model, data))

    async def _list(self, request: Request) -> Response:
        query = request.query_params
        status = query.get("status") or None
        if status is not None and status not in _STATUSES:
            raise BadRequest(f"status must be one of {sorted(_STATUSES)}", field="status")
        stale = _int_param(query.get("stale"), "stale", 0, None)
        limit = _int_param(query.get("limit"), "limit", 1, MAX_LIST_LIMIT)
        listing = await self.store.list_runs(
            status=status,  # type: ignore[arg-type]
            stale_seconds=stale,
            limit=100 if limit is None else limit,
            cursor=query.get("cursor") or None,
        )
        return _json(_dump(listing))

    async def _hook(self, run_id: str, node_id: str, token: str, body: bytes) -> Response:
        if not _RUN_ID.fullmatch(run_id):
            raise RunNotFound("no such webhook")
        payload = _parse_json(body) if body else None
        try:
            answer = await self.store.hook(run_id, node_id, token, payload)
        except RunNotFound:
            raise RunNotFound("no such webhook") from None
        return _json(_dump(answer))

    async def _batch(self, body: bytes) -> Response:
        """Every entry in entry order. The Worker runs the entries of different runs
        concurrently; the emulator's store answers without waiting on anything but its own
        job queue, so one after another gives the same answers without a task per run. The
        entries share one SQLite transaction (each atomic on its own), one snapshot write per
        run and one outbox send."""
        entries = validate(_BatchRequest, _parse_json(body)).entries
        outcomes = await self.store.run_grouped(
            [partial(self._call, entry.op, entry.run_id, entry.body) for entry in entries]
        )
        pairs = enumerate(zip(entries, outcomes, strict=True))
        return _json({"results": [_entry_result(entry, i, out) for i, (entry, out) in pairs]})


def _entry_result(entry: _BatchEntry, index: int, outcome: BaseModel | Exception) -> dict[str, Any]:
    """One batch entry's ``{status, body}``; its failure never affects the others."""
    if isinstance(outcome, RunStoreError):
        return {"status": outcome.http_status, "body": _error_body(outcome)}
    if isinstance(outcome, Exception):
        log.error(
            "batch entry failed",
            op=entry.op,
            run_id=entry.run_id,
            entry=index,
            exc_info=outcome,
        )
        internal = RunStoreError("internal error; the emulator log has the details")
        return {"status": internal.http_status, "body": _error_body(internal)}
    return {"status": 200, "body": _dump(outcome)}


def _int_param(value: str | None, name: str, low: int, high: int | None) -> int | None:
    if value is None or value == "":
        return None
    bound = f"{low}..{high}" if high is not None else f">= {low}"
    try:
        number = int(value)
    except ValueError:
        raise BadRequest(f"{name} must be an integer {bound}", field=name) from None
    if number < low or (high is not None and number > high):
        raise BadRequest(f"{name} must be an integer {bound}", field=name)
    return number
