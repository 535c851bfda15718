"""Fault injection for the emulator: a per-route fault plan and the ASGI middleware applying it.

Routes are keyed ``pull``, ``ack``, ``send``, ``batch`` and ``create`` (the Queues REST API),
``v1.batch``, ``v1`` and ``hooks`` (the Worker protocol) and ``*`` (any route). A request uses
the first of its keys present in the plan, most specific first: ``/v1/batch`` tries
``v1.batch``, then ``v1``, then ``*``; webhooks try ``hooks`` then ``*`` (they come from outside,
so faults meant for the daemon's calls leave them alone). ``/_emulator`` routes are never
faulted. Faults apply in this order: added latency; connection reset (nothing applied); 429,
500, 503 (nothing applied); lease expiry storm; "apply then drop the response" (the request
succeeds but the client never hears it).
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Callable
from typing import Final, Literal

import anyio
import orjson
from pydantic import BaseModel, ConfigDict, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

RouteKey = Literal["pull", "ack", "send", "batch", "create", "v1", "v1.batch", "hooks", "*"]
Rate = float

_QUEUE_ROUTE: Final = re.compile(
    r"^/client/v4/accounts/[^/]+/queues"
    r"(?:/(?P<queue>[^/]+)/messages(?P<action>/pull|/ack|/batch)?)?/?$"
)
_QUEUE_ACTIONS: Final[dict[str | None, RouteKey]] = {
    "/pull": "pull",
    "/ack": "ack",
    "/batch": "batch",
    None: "send",
}

GATEWAY_LIMIT_MESSAGE: Final = (
    "More than 1200 requests per 300 seconds reached. Please wait and consider throttling your "
    "request speed"
)
"""Error 971's message as seen in the wild (cloudflare-apis.md §1.6)."""


class RouteFaults(BaseModel):
    """Faults for one route key; rates are probabilities per request."""

    model_config = ConfigDict(extra="forbid")

    error_429_rate: Rate = Field(0.0, ge=0.0, le=1.0)
    retry_after_seconds: int | None = Field(1, ge=0)
    """``Retry-After`` header of injected 429s; ``None`` sends none."""
    rate_limit_code: int = 971
    """Error code of injected 429s on queue routes: 971 (account API limit) or 10250."""
    error_500_rate: Rate = Field(0.0, ge=0.0, le=1.0)
    error_503_rate: Rate = Field(0.0, ge=0.0, le=1.0)
    reset_rate: Rate = Field(0.0, ge=0.0, le=1.0)
    """Close the connection without an answer, before applying the request."""
    latency_ms: int = Field(0, ge=0, le=60_000)
    drop_response_rate: Rate = Field(0.0, ge=0.0, le=1.0)
    """Apply the request, then close the connection instead of answering."""
    lease_expiry_rate: Rate = Field(0.0, ge=0.0, le=1.0)
    """Expire every lease of the route's queue (all queues for other routes) first."""


class FaultPlan(BaseModel):
    """The faults in force, by route key. ``seed`` makes the random draws repeatable."""

    model_config = ConfigDict(extra="forbid")

    seed: int | None = None
    routes: dict[RouteKey, RouteFaults] = Field(default_factory=dict)


def route_keys(path: str) -> tuple[RouteKey, ...] | None:
    """The fault keys of a request path, most specific first; ``None`` for exempt routes."""
    if path.startswith("/_emulator"):
        return None
    match = _QUEUE_ROUTE.match(path)
    if match is not None:
        if match.group("queue") is None:
            return ("create", "*")
        return (_QUEUE_ACTIONS[match.group("action")], "*")
    if path == "/v1/batch":
        return ("v1.batch", "v1", "*")
    if path.startswith("/v1/hooks/"):
        return ("hooks", "*")
    if path == "/v1" or path.startswith("/v1/"):
        return ("v1", "*")
    return ("*",)


def queue_in_path(path: str) -> str | None:
    match = _QUEUE_ROUTE.match(path)
    return match.group("queue") if match is not None else None


LeaseStorm = Callable[[str | None], int]
"""Expire all leases of a queue id (or of every queue for ``None``); returns how many."""


class FaultInjector:
    """The fault plan in force, its random source, and counters of requests and faults."""

    def __init__(self, plan: FaultPlan | None = None) -> None:
        self.requests: Counter[str] = Counter()
        self.injected: Counter[str] = Counter()
        self.plan = FaultPlan()
        self._rng = random.Random()
        self.replace(plan or FaultPlan())

    def replace(self, plan: FaultPlan) -> None:
        """Put a new plan in force (reseeding the random draws)."""
        self.plan = plan
        self._rng = random.Random(plan.seed)

    def reset_counters(self) -> None:
        self.requests.clear()
        self.injected.clear()

    def faults_for(self, keys: tuple[RouteKey, ...]) -> tuple[RouteKey, RouteFaults] | None:
        for key in keys:
            faults = self.plan.routes.get(key)
            if faults is not None:
                return key, faults
        return None

    def hit(self, rate: float) -> bool:
        return rate > 0.0 and self._rng.random() < rate


def _queue_error(code: int, message: str) -> bytes:
    return orjson.dumps(
        {
            "success": False,
            "errors": [{"code": code, "message": message}],
            "messages": [],
            "result": None,
        }
    )


def _run_error(code: str, message: str) -> bytes:
    return orjson.dumps({"error": {"code": code, "message": message}})


def _error_body(path: str, status: int, faults: RouteFaults) -> bytes:
    """An injected error in the shape of the route family (v4 envelope or docs/protocol.md)."""
    if path.startswith("/v1"):
        codes = {429: "rate_limited", 500: "internal", 503: "unavailable"}
        return _run_error(codes[status], f"injected fault: HTTP {status}")
    if status == 429:
        code = faults.rate_limit_code
        message = GATEWAY_LIMIT_MESSAGE if code == 971 else "Queue is overloaded"
        return _queue_error(code, message)
    return _queue_error(15000, "Unknown error")


class FaultMiddleware:
    """ASGI middleware applying the injector's plan to each HTTP request (see module doc)."""

    def __init__(self, app: ASGIApp, *, injector: FaultInjector, storm: LeaseStorm) -> None:
        self.app = app
        self.injector = injector
        self.storm = storm

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        keys = route_keys(path)
        if keys is None:
            await self.app(scope, receive, send)
            return
        injector = self.injector
        injector.requests[keys[0]] += 1
        chosen = injector.faults_for(keys)
        if chosen is None:
            await self.app(scope, receive, send)
            return
        key, faults = chosen
        if faults.latency_ms:
            injector.injected[f"{key}.latency"] += 1
            await anyio.sleep(faults.latency_ms / 1000)
        if injector.hit(faults.reset_rate):
            injector.injected[f"{key}.reset"] += 1
            await _abort(send)
            return
        for status, rate in (
            (429, faults.error_429_rate),
            (500, faults.error_500_rate),
            (503, faults.error_503_rate),
        ):
            if injector.hit(rate):
                injector.injected[f"{key}.{status}"] += 1
                await _respond(send, status, _error_body(path, status, faults), faults)
                return
        if injector.hit(faults.lease_expiry_rate):
            injector.injected[f"{key}.lease_storm"] += 1
            self.storm(queue_in_path(path))
        if injector.hit(faults.drop_response_rate):
            injector.injected[f"{key}.drop_response"] += 1
            await self.app(scope, receive, _discard)
            await _abort(send)
            return
        await self.app(scope, receive, send)


async def _discard(message: Message) -> None:
    """An ASGI ``send`` that throws the response away."""


async def _abort(send: Send) -> None:
    """Start a response and end the exchange without completing it: the server closes the
    connection and the client sees it drop (there is no socket-level reset in ASGI)."""
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json")],
        }
    )


async def _respond(send: Send, status: int, body: bytes, faults: RouteFaults) -> None:
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    if status == 429 and faults.retry_after_seconds is not None:
        headers.append((b"retry-after", str(faults.retry_after_seconds).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})
