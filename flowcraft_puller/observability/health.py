"""Liveness and readiness state, the event-loop lag monitor, and the HTTP server for probes and
Prometheus (``/metrics``, ``/livez``, ``/readyz``, ``/healthz``) running inside the daemon's loop.

Liveness never looks at Cloudflare or the Worker (restarting does not fix a remote outage): it
fails when the event loop lags or the supervisor stops beating. Readiness fails before start-up
is done, as soon as draining starts, and when no pull or commit succeeded recently.
"""

from __future__ import annotations

import contextlib
import gzip
import socket
import time
from collections import deque
from collections.abc import Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from types import TracebackType

import anyio
import structlog
import uvicorn
from anyio.abc import TaskStatus
from prometheus_client.exposition import choose_encoder, gzip_accepted
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp

from flowcraft_puller.observability.metrics import Metrics

log = structlog.get_logger(__name__)

OK = "ok"


@dataclass(frozen=True, slots=True)
class HealthReport:
    """The verdict of a probe: each check maps to ``"ok"`` or the reason it fails."""

    checks: dict[str, str]

    @property
    def ok(self) -> bool:
        return all(result == OK for result in self.checks.values())


@dataclass(slots=True)
class HealthState:
    """What the probes judge, updated by the supervisor and the event loop monitor.

    Times are ``time.monotonic()`` seconds. The heartbeat check starts with the first
    :meth:`beat`; after that the supervisor must beat at least every ``heartbeat_timeout``
    seconds, except while draining (the drain deadline bounds that phase).
    """

    readiness_window: float = 60.0
    """Readiness needs a successful pull or commit within this many seconds."""
    lag_threshold: float = 5.0
    """Liveness fails when the event loop lags more than this."""
    lag_hold: float = 10.0
    """…and keeps failing this long afterwards, so that a probe answered after a stall sees it."""
    heartbeat_timeout: float = 30.0
    """Liveness fails when the supervisor has not beaten for this long."""
    started: bool = False
    draining: bool = False
    last_pull_success: float | None = None
    last_commit_success: float | None = None
    last_heartbeat: float | None = None
    loop_lag_exceeded_at: float | None = None
    loop_lag_exceeded_by: float = 0.0
    loop_monitor_due: float | None = None
    """When the event loop monitor should report next (None: no monitor is running)."""

    def mark_started(self) -> None:
        self.started = True

    def begin_draining(self) -> None:
        self.draining = True

    def beat(self) -> None:
        self.last_heartbeat = time.monotonic()

    def pull_succeeded(self) -> None:
        self.last_pull_success = time.monotonic()

    def commit_succeeded(self) -> None:
        self.last_commit_success = time.monotonic()

    def record_loop_lag(self, lag: float, next_due: float) -> None:
        """Record a lag sample; ``next_due`` is when the monitor expects to report again."""
        self.loop_monitor_due = next_due
        if lag > self.lag_threshold:
            self.loop_lag_exceeded_at = time.monotonic()
            self.loop_lag_exceeded_by = lag

    def heartbeat_fresh(self) -> bool:
        last = self.last_heartbeat
        return self.draining or last is None or time.monotonic() - last <= self.heartbeat_timeout

    def liveness(self) -> HealthReport:
        now = time.monotonic()
        return HealthReport(
            {"event_loop": self._loop_check(now), "heartbeat": self._beat_check(now)}
        )

    def _loop_check(self, now: float) -> str:
        if self.loop_monitor_due is not None and now - self.loop_monitor_due > self.lag_threshold:
            return (
                f"event loop monitor is {now - self.loop_monitor_due:.3f}s overdue "
                f"(threshold {self.lag_threshold:g}s)"
            )
        exceeded_at = self.loop_lag_exceeded_at
        if exceeded_at is not None and now - exceeded_at < self.lag_hold:
            return (
                f"event loop lagged {self.loop_lag_exceeded_by:.3f}s "
                f"(threshold {self.lag_threshold:g}s) {now - exceeded_at:.1f}s ago"
            )
        return OK

    def _beat_check(self, now: float) -> str:
        if self.heartbeat_fresh() or self.last_heartbeat is None:
            return OK
        return (
            f"supervisor heartbeat is {now - self.last_heartbeat:.1f}s old "
            f"(limit {self.heartbeat_timeout:g}s)"
        )

    def readiness(self) -> HealthReport:
        now = time.monotonic()
        return HealthReport(
            {
                "started": OK if self.started else "start-up has not finished",
                "draining": "draining for shutdown" if self.draining else OK,
                "recent_success": self._success_check(now),
            }
        )

    def _success_check(self, now: float) -> str:
        times = [t for t in (self.last_pull_success, self.last_commit_success) if t is not None]
        if not times:
            return "no pull or commit has succeeded yet"
        age = now - max(times)
        if age > self.readiness_window:
            return (
                f"last successful pull or commit was {age:.1f}s ago "
                f"(window {self.readiness_window:g}s)"
            )
        return OK


def _probe_response(report: HealthReport, request: Request) -> JSONResponse:
    body: dict[str, object] = {"status": OK if report.ok else "fail"}
    if "verbose" in request.query_params:
        body["checks"] = report.checks
    return JSONResponse(
        body, status_code=200 if report.ok else 503, headers={"Cache-Control": "no-store"}
    )


def create_health_app(state: HealthState, metrics: Metrics) -> Starlette:
    """The ASGI app serving ``/metrics``, ``/livez``, ``/readyz`` and ``/healthz`` (= livez)."""

    async def metrics_endpoint(request: Request) -> Response:
        """The exposition, rendered in a worker thread: a few hundred series take 5–20 ms."""
        encoder, content_type = choose_encoder(request.headers.get("accept", ""))
        compress = gzip_accepted(request.headers.get("accept-encoding", ""))

        def render() -> bytes:
            body = encoder(metrics.registry)
            return gzip.compress(body, compresslevel=6) if compress else body

        headers = {"Content-Type": content_type, "Vary": "Accept-Encoding"}
        if compress:
            headers["Content-Encoding"] = "gzip"
        return Response(await anyio.to_thread.run_sync(render), headers=headers)

    async def livez(request: Request) -> Response:
        return _probe_response(state.liveness(), request)

    async def readyz(request: Request) -> Response:
        return _probe_response(state.readiness(), request)

    return Starlette(
        routes=[
            Route("/metrics", metrics_endpoint, methods=["GET"]),
            Route("/livez", livez, methods=["GET"]),
            Route("/healthz", livez, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
        ]
    )


class HealthServerError(OSError):
    """The health/metrics server could not listen on its address."""


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without its own signal handlers: the supervisor owns SIGTERM and SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class HealthServer:
    """Serves an ASGI app with uvicorn as a task of the running event loop.

    Use ``url = await task_group.start(server.run)`` or ``async with server:``. Port 0 picks a
    free port; :attr:`url` tells which. Access logs are off. Stopping closes the listener and
    lets open requests finish for up to ``shutdown_timeout`` seconds.
    """

    def __init__(
        self, app: ASGIApp, *, host: str = "127.0.0.1", port: int = 0, shutdown_timeout: int = 2
    ) -> None:
        self.app = app
        self.host = host
        self.port = port
        self.shutdown_timeout = shutdown_timeout
        self._url: str | None = None
        self._exit_stack: AsyncExitStack | None = None

    @property
    def url(self) -> str:
        """``http://host:port`` of the running server."""
        if self._url is None:
            raise RuntimeError("the health server is not running; start it first")
        return self._url

    def _listen(self) -> socket.socket:
        try:
            family, kind, proto, _, address = socket.getaddrinfo(
                self.host, self.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )[0]
            sock = socket.socket(family, kind, proto)
        except OSError as exc:
            raise HealthServerError(
                f"cannot listen on {self.host}:{self.port} for metrics and health checks: {exc}"
            ) from exc
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.listen(128)
        except OSError as exc:
            sock.close()
            raise HealthServerError(
                f"cannot listen on {self.host}:{self.port} for metrics and health checks: "
                f"{exc.strerror or exc}; choose another address or port"
            ) from exc
        return sock

    async def run(self, *, task_status: TaskStatus[str] = anyio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled; reports the URL through ``task_status`` once listening."""
        await self._run_on(self._listen(), task_status=task_status)

    async def _run_on(
        self, sock: socket.socket, *, task_status: TaskStatus[str] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        host, port = sock.getsockname()[:2]
        self._url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
        server = _EmbeddedServer(
            uvicorn.Config(
                self.app,
                log_config=None,
                access_log=False,
                lifespan="off",
                http="h11",
                ws="none",
                server_header=False,
                timeout_graceful_shutdown=self.shutdown_timeout,
            )
        )
        log.info("health server listening", url=self._url)
        try:
            async with anyio.create_task_group() as group:
                group.start_soon(self._serve, server, sock)
                task_status.started(self._url)
                try:
                    await anyio.sleep_forever()
                finally:
                    server.should_exit = True
        finally:
            sock.close()
            self._url = None

    @staticmethod
    async def _serve(server: uvicorn.Server, sock: socket.socket) -> None:
        with anyio.CancelScope(shield=True):
            await server.serve(sockets=[sock])

    async def __aenter__(self) -> HealthServer:
        sock = self._listen()
        async with AsyncExitStack() as stack:
            stack.callback(sock.close)
            group = await stack.enter_async_context(anyio.create_task_group())
            stack.callback(group.cancel_scope.cancel)
            await group.start(self._run_on, sock)
            self._exit_stack = stack.pop_all()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool | None:
        stack, self._exit_stack = self._exit_stack, None
        if stack is None:
            return None
        return await stack.__aexit__(exc_type, exc, traceback)


class EventLoopMonitor:
    """Sleeps ``interval`` seconds in a loop and records how late it woke up (the loop lag).

    Feeds ``flowcraft_event_loop_lag_seconds`` / ``…_max_seconds`` (max over ``window``) and
    the liveness state.
    """

    def __init__(
        self,
        health: HealthState | None = None,
        metrics: Metrics | None = None,
        *,
        interval: float = 0.25,
        window: float = 60.0,
    ) -> None:
        self.health = health
        self.metrics = metrics
        self.interval = interval
        self.window = window
        self._samples: deque[tuple[float, float]] = deque()

    def _record(self, lag: float, now: float) -> float:
        """Add a sample; returns the largest lag within the window."""
        samples = self._samples
        samples.append((now, lag))
        while samples[0][0] < now - self.window:
            samples.popleft()
        return max(sample for _, sample in samples)

    async def run(self) -> None:
        """Measure until cancelled."""
        while True:
            before = time.monotonic()
            await anyio.sleep(self.interval)
            now = time.monotonic()
            lag = max(0.0, now - before - self.interval)
            window_max = self._record(lag, now)
            if self.health is not None:
                self.health.record_loop_lag(lag, now + self.interval)
            if self.metrics is not None:
                self.metrics.record_loop_lag(lag, window_max)
