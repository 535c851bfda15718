"""The emulator's HTTP application: the Cloudflare Queues REST API, admin routes, and the run
service's ``/v1`` routes when one is given.

Queue API: ``/client/v4/accounts/{account_id}/queues`` (create, list) and
``.../queues/{queue_id}/messages`` (send), ``/messages/batch``, ``/messages/pull``,
``/messages/ack``, with Cloudflare's v4 envelope on every answer, its validation and error
codes (``../shared/reference/cloudflare-apis.md`` §1, cited as "§n"). Where Cloudflare's
behaviour is not documented the emulator takes the stricter choice; each is marked
"(stricter)" below.

Admin (``/_emulator``, no auth, never faulted): ``GET queues``, ``GET queues/{ref}``,
``POST queues/{ref}/expire-leases``, ``POST queues/{ref}/messages`` (inject a message with an
exact wire body), ``GET|POST faults``, ``GET|POST stats`` (POST resets), ``POST clock``.
"""

from __future__ import annotations

import base64
import hmac
import re
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Protocol, TypeVar

import orjson
import structlog
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from flowcraft_puller.emulator.faults import FaultInjector, FaultMiddleware, FaultPlan
from flowcraft_puller.emulator.queues import (
    DEFAULT_PULL_BATCH,
    DEFAULT_THROUGHPUT_LIMIT,
    MAX_DELAY_MS,
    MAX_PULL_BATCH,
    MAX_VISIBILITY_TIMEOUT_MS,
    QUEUE_NAME_PATTERN,
    BrokerQueue,
    ConsumerSettings,
    Delivery,
    NewMessage,
    QueueBroker,
    QueueMetrics,
    RetryRequest,
    check_batch,
    check_batch_count,
)
from flowcraft_puller.queue.errors import QueueError, QueueRateLimited, QueueRequestRejected
from flowcraft_puller.runstore.protocol import RunStoreError

log = structlog.get_logger(__name__)

DEFAULT_ACCOUNT_ID: Final = "0123456789abcdef0123456789abcdef"
ACCOUNT_ID_PATTERN: Final = re.compile(r"^[0-9a-f]{32}$")
"""Cloudflare account ids are 32 lowercase hex characters; others get 7003 (stricter)."""
TOKEN_PATTERN: Final = re.compile(r"^[A-Za-z0-9_-]+$")
MAX_ACK_ENTRIES: Final = 100
"""Acks plus retries per request. Cloudflare documents no cap (§1.3); 100 (stricter)."""
QUEUE_API_PREFIX: Final = "/client/v4/"
_QUEUES_PATH: Final = "/client/v4/accounts/{account_id}/queues"
_MESSAGES_PATH: Final = _QUEUES_PATH + "/{queue_id}/messages"


# ---- configuration ----------------------------------------------------------------------------


class QueueSpec(BaseModel):
    """A queue that exists from start, with its http_pull consumer settings (§1.3, §1.8)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=QUEUE_NAME_PATTERN.pattern)
    dead_letter_queue: str | None = Field(None, pattern=QUEUE_NAME_PATTERN.pattern)
    max_retries: int | None = Field(None, ge=0, le=100)
    """``None``: the emulator-wide ``max_retries``. At most 100 (§1.6)."""
    visibility_timeout_ms: int | None = Field(None, ge=1, le=MAX_VISIBILITY_TIMEOUT_MS)
    retry_delay_seconds: int | None = Field(None, ge=0, le=MAX_DELAY_MS // 1000)
    """``None``: the emulator-wide ``retry_delay_seconds``."""


def _default_queues() -> list[QueueSpec]:
    return [
        QueueSpec(name="flowcraft-jobs", dead_letter_queue="flowcraft-jobs-dlq"),
        QueueSpec(name="flowcraft-jobs-dlq"),
    ]


class EmulatorConfig(BaseModel):
    """Settings of one emulator process."""

    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(8787, ge=0, le=65535)
    """0 binds a free port."""
    state_path: Path | None = None
    """SQLite file keeping queues (and runs) across restarts; ``None`` keeps them in memory."""
    token: str | None = Field(None, pattern=TOKEN_PATTERN.pattern)
    """The queue API token; ``None`` accepts any well-formed bearer token."""
    secret: str | None = None
    """The Worker protocol's bearer secret (``/v1``)."""
    account_id: str = Field(DEFAULT_ACCOUNT_ID, pattern=ACCOUNT_ID_PATTERN.pattern)
    """The account id clients are told to use; any well-formed account id is accepted."""
    queues: list[QueueSpec] = Field(default_factory=_default_queues)
    job_queue: str = "flowcraft-jobs"
    """The queue the run service's outbox sends jobs to."""
    max_retries: int = Field(3, ge=0, le=100)
    visibility_timeout_ms: int = Field(30_000, ge=1, le=MAX_VISIBILITY_TIMEOUT_MS)
    retry_delay_seconds: int = Field(0, ge=0, le=MAX_DELAY_MS // 1000)
    """The consumers' default delay before a retried message is delivered again."""
    throughput_limit: int = Field(DEFAULT_THROUGHPUT_LIMIT, ge=1)
    """Messages per second per queue (§1.6); lower it to make tests trip it."""
    max_request_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    """Queue API request bodies above this are refused with 413 before parsing."""
    faults: FaultPlan = Field(default_factory=FaultPlan)

    @field_validator("queues", mode="before")
    @classmethod
    def _names_as_specs(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [{"name": v} if isinstance(v, str) else v for v in value]
        return value

    @model_validator(mode="after")
    def _job_queue_is_configured(self) -> EmulatorConfig:
        names = [q.name for q in self.queues]
        if len(set(names)) != len(names):
            raise ValueError("queue names must be unique")
        if self.job_queue not in names:
            raise ValueError(f"job_queue {self.job_queue!r} is not among the queues {names}")
        return self


def broker_from_config(config: EmulatorConfig) -> QueueBroker:
    """A broker with the configured queues (created, or updated when kept in ``state_path``)."""
    broker = QueueBroker(
        state_path=config.state_path,
        throughput_limit=config.throughput_limit,
        defaults=ConsumerSettings(
            max_retries=config.max_retries, visibility_timeout_ms=config.visibility_timeout_ms
        ),
    )
    for spec in config.queues:
        broker.configure_queue(
            spec.name,
            ConsumerSettings(
                max_retries=config.max_retries if spec.max_retries is None else spec.max_retries,
                dead_letter_queue=spec.dead_letter_queue,
                visibility_timeout_ms=spec.visibility_timeout_ms or config.visibility_timeout_ms,
                retry_delay_seconds=config.retry_delay_seconds
                if spec.retry_delay_seconds is None
                else spec.retry_delay_seconds,
            ),
        )
    return broker


class RunRoutes(Protocol):
    """What the app needs of the run service (``flowcraft_puller.emulator.runs.RunService``)."""

    def routes(self) -> list[BaseRoute]: ...

    async def start(self) -> None: ...

    async def aclose(self) -> None: ...


# ---- envelopes --------------------------------------------------------------------------------


class JsonResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def envelope(result: Any, **extra: Any) -> JsonResponse:
    """A successful v4 envelope (§1.4)."""
    return JsonResponse({"success": True, "errors": [], "messages": [], "result": result, **extra})


def error_envelope(
    status: int,
    code: int,
    message: str,
    *,
    pointer: str | None = None,
    chain: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> JsonResponse:
    """A failed v4 envelope: ``errors[{code, message, source?{pointer}, error_chain?}]``."""
    error: dict[str, Any] = {"code": code, "message": message}
    if pointer:
        error["source"] = {"pointer": pointer}
    if chain:
        error["error_chain"] = chain
    body = {"success": False, "errors": [error], "messages": [], "result": None}
    return JsonResponse(body, status_code=status, headers=headers)


def _run_error(status: int, code: str, message: str) -> JsonResponse:
    """An error in the shape of docs/protocol.md §1.1, for ``/v1`` paths."""
    return JsonResponse({"error": {"code": code, "message": message}}, status_code=status)


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")


# ---- authentication ---------------------------------------------------------------------------


class QueueApiAuth:
    """Checks ``Authorization: Bearer <token>`` on the queue API before routing (§1.2).

    Cloudflare's answers, as observed (the reference only documents the 403): no credentials →
    400 / 9106 (cloudflare/cloudflare-python#2678); a malformed Authorization header → 400 /
    6003 with error_chain 6111 (jeessy2/ddns-go#916); a wrong token → 403 / 10000
    "Authentication error" (§1.2: "Wrong/insufficient token on send -> HTTP 403";
    hieunc229/mailflare#1). Legacy X-Auth-Key credentials are refused with the same 403: the
    emulator knows no global API keys.
    """

    def __init__(self, app: ASGIApp, *, token: str | None) -> None:
        self.app = app
        self.token = token.encode() if token is not None else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(QUEUE_API_PREFIX):
            refusal = self._refusal(dict(scope["headers"]))
            if refusal is not None:
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _refusal(self, headers: dict[bytes, bytes]) -> JsonResponse | None:
        authorization = headers.get(b"authorization")
        if authorization is None:
            if b"x-auth-key" in headers or b"x-auth-email" in headers:
                return error_envelope(403, 10000, "Authentication error")
            return error_envelope(
                400, 9106, "Missing X-Auth-Key, X-Auth-Email or Authorization headers"
            )
        scheme, _, credential = authorization.partition(b" ")
        if scheme.lower() != b"bearer" or not TOKEN_PATTERN.match(credential.decode("latin-1")):
            return error_envelope(
                400,
                6003,
                "Invalid request headers",
                chain=[{"code": 6111, "message": "Invalid format for Authorization header"}],
            )
        if self.token is not None and not hmac.compare_digest(credential, self.token):
            return error_envelope(403, 10000, "Authentication error")
        return None


# ---- request parsing --------------------------------------------------------------------------


class _Strict(BaseModel):
    """Request bodies: JSON types exactly, unknown fields refused (stricter: catches the
    docs' ``visibility_timeout`` misnomer, §1.3)."""

    model_config = ConfigDict(extra="forbid", strict=True)


class PullBody(_Strict):
    """§1.3: ``batch_size`` default 5, 1..100; ``visibility_timeout_ms`` ≤ 12 h. The minimum
    of 1 ms is not documented (stricter)."""

    batch_size: int = Field(DEFAULT_PULL_BATCH, ge=1, le=MAX_PULL_BATCH)
    visibility_timeout_ms: int | None = Field(None, ge=1, le=MAX_VISIBILITY_TIMEOUT_MS)


class AckEntry(_Strict):
    lease_id: str = Field(min_length=1, max_length=4096)


class RetryEntry(_Strict):
    lease_id: str = Field(min_length=1, max_length=4096)
    delay_seconds: float | None = None


class AckBody(_Strict):
    """§1.3: ``{"acks": [{lease_id}], "retries": [{lease_id, delay_seconds}]}``, both optional."""

    acks: list[AckEntry] = Field(default_factory=list)
    retries: list[RetryEntry] = Field(default_factory=list)


class SendEntry(_Strict):
    """§1.3: ``{"body", "content_type": "text"|"json", "delay_seconds"}``; ``body`` required."""

    body: Any
    content_type: str = "json"
    delay_seconds: float | None = None


class BatchBody(_Strict):
    messages: list[dict[str, Any]]
    delay_seconds: float | None = None


class CreateQueueBody(_Strict):
    queue_name: str


Model = TypeVar("Model", bound=BaseModel)


def parse(model: type[Model], data: Any, pointer: str = "") -> Model:
    """Validate a JSON value, or raise 10207 JSONRequestBodyInvalid naming the field."""
    if not isinstance(data, dict):
        raise QueueRequestRejected(
            "Request JSON body does not match expected schema: expected a JSON object",
            code=10207,
            http_status=400,
            pointer=pointer or "/",
        )
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = pointer + "".join(f"/{part}" for part in error["loc"])
        raise QueueRequestRejected(
            f"Request JSON body does not match expected schema: {where or '/'}: {error['msg']}",
            code=10207,
            http_status=400,
            pointer=where or "/",
        ) from None


def _delay_ms(seconds: float | None, pointer: str) -> int | None:
    """A delay in ms, or 10203 MessageMetadataInvalid when outside 0..12 h (§1.6)."""
    if seconds is None:
        return None
    if not 0 <= seconds <= MAX_DELAY_MS / 1000:
        raise QueueRequestRejected(
            f"Invalid message metadata: delay_seconds must be within 0 and "
            f"{MAX_DELAY_MS // 1000} seconds",
            code=10203,
            http_status=400,
            pointer=pointer,
        )
    return round(seconds * 1000)


def _new_message(entry: SendEntry, default_delay_ms: int, pointer: str) -> NewMessage:
    """A REST message: only ``text`` and ``json`` exist on the REST API (§1.3, SDK params)."""
    if entry.content_type not in ("json", "text"):
        raise QueueRequestRejected(
            f"Invalid message metadata: content_type {entry.content_type!r} is not supported by "
            "the REST API; use json or text",
            code=10203,
            http_status=400,
            pointer=f"{pointer}/content_type",
        )
    if entry.content_type == "text":
        if not isinstance(entry.body, str):
            raise QueueRequestRejected(
                "Request JSON body does not match expected schema: a text body must be a string",
                code=10207,
                http_status=400,
                pointer=f"{pointer}/body",
            )
        body = entry.body.encode()
    else:
        body = orjson.dumps(entry.body)
    delay = _delay_ms(entry.delay_seconds, f"{pointer}/delay_seconds")
    return NewMessage(
        body=body,
        content_type=entry.content_type,
        delay_ms=default_delay_ms if delay is None else delay,
    )


def _wire_message(delivery: Delivery) -> dict[str, Any]:
    """A pulled message (§1.4): json/bytes/v8 bodies base64, text as is (§1.5)."""
    if delivery.wire or delivery.content_type == "text":
        body = delivery.body.decode()
    else:
        body = base64.b64encode(delivery.body).decode()
    return {
        "id": delivery.id,
        "body": body,
        "timestamp_ms": delivery.timestamp_ms,
        "attempts": delivery.attempts,
        "lease_id": delivery.lease_id,
        "metadata": {
            "CF-sourceMessageSource": delivery.source,
            "CF-Content-Type": delivery.content_type,
        },
    }


def _metrics(metrics: QueueMetrics) -> dict[str, Any]:
    return {"metrics": asdict(metrics)}


# ---- the queue API ----------------------------------------------------------------------------


class QueueApi:
    """Handlers of the Cloudflare Queues REST routes."""

    def __init__(self, broker: QueueBroker, *, max_request_bytes: int) -> None:
        self.broker = broker
        self.max_request_bytes = max_request_bytes

    def routes(self) -> list[BaseRoute]:
        return [
            Route(_QUEUES_PATH, self.create_queue, methods=["POST"]),
            Route(_QUEUES_PATH, self.list_queues, methods=["GET"]),
            Route(_MESSAGES_PATH, self.send, methods=["POST"]),
            Route(_MESSAGES_PATH + "/batch", self.send_batch, methods=["POST"]),
            Route(_MESSAGES_PATH + "/pull", self.pull, methods=["POST"]),
            Route(_MESSAGES_PATH + "/ack", self.ack, methods=["POST"]),
        ]

    @staticmethod
    def _account(request: Request) -> None:
        if not ACCOUNT_ID_PATTERN.match(request.path_params["account_id"]):
            raise QueueError(
                f"Could not route to {request.url.path}, perhaps your object identifier is "
                "invalid?",
                code=7003,
                http_status=404,
            )

    def _queue(self, request: Request) -> BrokerQueue:
        self._account(request)
        return self.broker.resolve(request.path_params["queue_id"])

    async def read_json(self, request: Request, too_large_code: int) -> Any:
        """The JSON body, read at most ``max_request_bytes`` far (413 beyond; 10208 if not JSON)."""
        limit = self.max_request_bytes
        declared = request.headers.get("content-length", "")
        too_large = QueueRequestRejected(
            f"Request body is larger than {limit} bytes", code=too_large_code, http_status=413
        )
        if declared.isdigit() and int(declared) > limit:
            raise too_large
        data = bytearray()
        try:
            async for chunk in request.stream():
                data += chunk
                if len(data) > limit:
                    raise too_large
        except ClientDisconnect:
            raise QueueRequestRejected(
                "Client disconnected during request processing", code=10201, http_status=400
            ) from None
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise QueueRequestRejected(
                f"Request body is not valid JSON: {exc}", code=10208, http_status=400
            ) from None

    async def create_queue(self, request: Request) -> Response:
        self._account(request)
        body = parse(CreateQueueBody, await self.read_json(request, 10207))
        return envelope(self._describe(self.broker.create_queue(body.queue_name)))

    async def list_queues(self, request: Request) -> Response:
        self._account(request)
        queues = [self._describe(q) for q in self.broker.queues()]
        info = {
            "page": 1,
            "per_page": len(queues),
            "count": len(queues),
            "total_count": len(queues),
        }
        return envelope(queues, result_info=info)

    @staticmethod
    def _describe(queue: BrokerQueue) -> dict[str, Any]:
        """A queue as the create/list calls return it (PYSDK ``types/queues/queue.py``)."""
        settings = queue.settings
        consumer: dict[str, Any] = {
            "type": "http_pull",
            "queue_name": queue.name,
            "settings": {
                "batch_size": DEFAULT_PULL_BATCH,
                "max_retries": settings.max_retries,
                "retry_delay": settings.retry_delay_seconds,
                "visibility_timeout_ms": settings.visibility_timeout_ms,
            },
        }
        if settings.dead_letter_queue is not None:
            consumer["dead_letter_queue"] = settings.dead_letter_queue
        return {
            "queue_id": queue.id,
            "queue_name": queue.name,
            "created_on": _iso(queue.created_ms),
            "modified_on": _iso(queue.created_ms),
            "producers": [],
            "producers_total_count": 0,
            "consumers": [consumer],
            "consumers_total_count": 1,
        }

    async def send(self, request: Request) -> Response:
        queue = self._queue(request)
        entry = parse(SendEntry, await self.read_json(request, 10204))
        message = _new_message(entry, 0, "")
        metrics = self.broker.send(queue.id, [message], source="api")
        return envelope({"metadata": _metrics(metrics)})

    async def send_batch(self, request: Request) -> Response:
        queue = self._queue(request)
        body = parse(BatchBody, await self.read_json(request, 10205))
        batch_delay = body.delay_seconds
        if batch_delay is not None and not 0 <= batch_delay <= MAX_DELAY_MS / 1000:
            raise QueueRequestRejected(
                f"Invalid batch delay: delay_seconds must be within 0 and {MAX_DELAY_MS // 1000}",
                code=10202,
                http_status=400,
                pointer="/delay_seconds",
            )
        default_delay = round((batch_delay or 0) * 1000)
        check_batch_count(len(body.messages))
        messages = [
            _new_message(parse(SendEntry, raw, f"/messages/{i}"), default_delay, f"/messages/{i}")
            for i, raw in enumerate(body.messages)
        ]
        check_batch(messages)
        metrics = self.broker.send(queue.id, messages, source="api")
        return envelope({"metadata": _metrics(metrics)})

    async def pull(self, request: Request) -> Response:
        queue = self._queue(request)
        body = parse(PullBody, await self.read_json(request, 10207))
        batch = self.broker.pull(queue.id, body.batch_size, body.visibility_timeout_ms)
        return envelope(
            {
                "message_backlog_count": batch.metrics.backlog_count,
                "messages": [_wire_message(d) for d in batch.deliveries],
                "metadata": _metrics(batch.metrics),
            }
        )

    async def ack(self, request: Request) -> Response:
        queue = self._queue(request)
        body = parse(AckBody, await self.read_json(request, 10207))
        if len(body.acks) + len(body.retries) > MAX_ACK_ENTRIES:
            raise QueueRequestRejected(
                "Request JSON body does not match expected schema: at most "
                f"{MAX_ACK_ENTRIES} acks and retries per request",
                code=10207,
                http_status=400,
                pointer="/acks",
            )
        acked = {a.lease_id for a in body.acks}
        retries = []
        for index, entry in enumerate(body.retries):
            if entry.lease_id in acked:
                # Undocumented; refused (stricter) rather than guessing which one wins.
                raise QueueRequestRejected(
                    "Request JSON body does not match expected schema: a lease id is both "
                    "acked and retried",
                    code=10207,
                    http_status=400,
                    pointer=f"/retries/{index}/lease_id",
                )
            delay = _delay_ms(entry.delay_seconds, f"/retries/{index}/delay_seconds")
            retries.append(RetryRequest(entry.lease_id, delay))
        outcome = self.broker.ack(queue.id, [a.lease_id for a in body.acks], retries)
        return envelope(
            {
                "ackCount": outcome.acked,
                "retryCount": outcome.retried,
                "warnings": outcome.warnings,
            }
        )


# ---- admin ------------------------------------------------------------------------------------


class InjectedMessage(BaseModel):
    """A message whose pulled ``body`` is exactly ``wire_body`` (odd encodings, v8, bytes)."""

    model_config = ConfigDict(extra="forbid")

    wire_body: str
    content_type: str = Field("json", min_length=1)
    delay_seconds: float = Field(0, ge=0, le=MAX_DELAY_MS / 1000)


class InjectBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    messages: list[InjectedMessage] = Field(min_length=1, max_length=100)


class ClockBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    advance_ms: int = Field(ge=0)


class AdminApi:
    """Routes under ``/_emulator`` for tests and operators."""

    def __init__(self, broker: QueueBroker, injector: FaultInjector, queue_api: QueueApi) -> None:
        self.broker = broker
        self.injector = injector
        self.queue_api = queue_api

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/_emulator/queues", self.queues, methods=["GET"]),
            Route("/_emulator/queues/{ref}", self.queue, methods=["GET"]),
            Route("/_emulator/queues/{ref}/expire-leases", self.expire_leases, methods=["POST"]),
            Route("/_emulator/queues/{ref}/messages", self.inject, methods=["POST"]),
            Route("/_emulator/faults", self.faults, methods=["GET", "POST"]),
            Route("/_emulator/stats", self.stats, methods=["GET", "POST"]),
            Route("/_emulator/clock", self.clock, methods=["GET", "POST"]),
        ]

    @staticmethod
    def _limit(request: Request) -> int:
        value = request.query_params.get("messages", "100")
        return int(value) if value.isdigit() else 100

    async def queues(self, request: Request) -> Response:
        self.broker.settle()
        limit = self._limit(request)
        return JsonResponse(
            {"queues": [self.broker.describe(q, limit=limit) for q in self.broker.queues()]}
        )

    async def queue(self, request: Request) -> Response:
        self.broker.settle()
        queue = self.broker.find(request.path_params["ref"])
        return JsonResponse(self.broker.describe(queue, limit=self._limit(request)))

    async def expire_leases(self, request: Request) -> Response:
        queue = self.broker.find(request.path_params["ref"])
        return JsonResponse({"expired": self.broker.expire_leases(queue.id)})

    async def inject(self, request: Request) -> Response:
        queue = self.broker.find(request.path_params["ref"])
        body = parse(InjectBody, await self.queue_api.read_json(request, 10207))
        messages = [
            NewMessage(
                body=m.wire_body.encode(),
                content_type=m.content_type,
                delay_ms=round(m.delay_seconds * 1000),
                wire=True,
            )
            for m in body.messages
        ]
        metrics = self.broker.send(queue.id, messages, source="emulator")
        return JsonResponse({"depth": metrics.backlog_count})

    async def faults(self, request: Request) -> Response:
        if request.method == "POST":
            plan = parse(FaultPlan, await self.queue_api.read_json(request, 10207))
            self.injector.replace(plan)
            log.info("fault plan replaced", routes=sorted(plan.routes))
        return JsonResponse(self.injector.plan.model_dump())

    async def stats(self, request: Request) -> Response:
        if request.method == "POST":
            self.injector.reset_counters()
            self.broker.stats.clear()
        return JsonResponse(
            {
                "requests": dict(self.injector.requests),
                "faults": dict(self.injector.injected),
                "broker": dict(self.broker.stats),
            }
        )

    async def clock(self, request: Request) -> Response:
        if request.method == "POST":
            body = parse(ClockBody, await self.queue_api.read_json(request, 10207))
            self.broker.advance_clock(body.advance_ms)
        return JsonResponse(
            {"now_ms": self.broker.now_ms(), "offset_ms": self.broker.clock_offset_ms}
        )


# ---- errors -----------------------------------------------------------------------------------


def _queue_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, QueueError)
    headers = None
    if isinstance(exc, QueueRateLimited) and exc.retry_after is not None:
        headers = {"Retry-After": str(max(0, round(exc.retry_after)))}
    return error_envelope(
        exc.http_status or 400,
        exc.code if exc.code is not None else 10207,
        exc.message,
        pointer=exc.pointer,
        headers=headers,
    )


def _run_store_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RunStoreError)
    return JsonResponse(exc.body().model_dump(exclude_none=True), status_code=exc.http_status)


def _http_error(request: Request, exc: Exception) -> Response:
    """Unknown routes and wrong methods, in the shape of the path's API."""
    assert isinstance(exc, HTTPException)
    status = exc.status_code
    headers = dict(exc.headers or {})
    if request.url.path.startswith("/v1"):
        code = {404: "not_found", 405: "method_not_allowed"}.get(status, "bad_request")
        response = _run_error(status, code, f"{request.method} {request.url.path}: {exc.detail}")
    elif status == 405:
        # Cloudflare's code for a wrong method is not documented; 7001 is its "method not
        # allowed" family of routing errors.
        response = error_envelope(405, 7001, "Method not allowed")
    else:
        response = error_envelope(status, 7003, "No route for the URI")
    response.headers.update(headers)
    return response


def _internal_error(request: Request, exc: Exception) -> Response:
    """A bug: logged with its traceback, answered without one."""
    log.error("emulator request failed", path=request.url.path, exc_info=exc)
    if request.url.path.startswith("/v1"):
        return _run_error(500, "internal", "internal error")
    return error_envelope(500, 15000, "Unknown error")


Handler = Callable[[Request, Exception], Response | Coroutine[Any, Any, Response]]


def create_app(
    config: EmulatorConfig,
    runs: RunRoutes | None = None,
    *,
    broker: QueueBroker | None = None,
) -> Starlette:
    """The emulator app. It owns ``broker`` (made from ``config`` when not given) and ``runs``:
    its lifespan starts the run service and closes both. ``app.state`` exposes ``broker``,
    ``faults`` (the :class:`FaultInjector`) and ``config``."""
    broker = broker or broker_from_config(config)
    injector = FaultInjector(config.faults)
    queue_api = QueueApi(broker, max_request_bytes=config.max_request_bytes)
    routes = queue_api.routes() + AdminApi(broker, injector, queue_api).routes()
    if runs is not None:
        routes += runs.routes()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if runs is not None:
            await runs.start()
        try:
            yield
        finally:
            if runs is not None:
                await runs.aclose()
            broker.close()

    handlers: dict[Any, Handler] = {
        QueueError: _queue_error,
        RunStoreError: _run_store_error,
        HTTPException: _http_error,
        Exception: _internal_error,
    }
    app = Starlette(
        routes=routes,
        middleware=[
            Middleware(FaultMiddleware, injector=injector, storm=broker.expire_leases),
            Middleware(QueueApiAuth, token=config.token),
        ],
        exception_handlers=handlers,
        lifespan=lifespan,
    )
    app.state.broker = broker
    app.state.faults = injector
    app.state.config = config
    return app
