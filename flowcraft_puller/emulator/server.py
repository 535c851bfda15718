"""Run the emulator: in process (:class:`EmulatorServer`, for tests and ``dev``) or as a
blocking server (:func:`serve`, for the CLI)."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable, Iterator
from types import TracebackType

import anyio
import anyio.abc
import structlog
import uvicorn
from starlette.applications import Starlette

from flowcraft_puller.emulator.app import (
    EmulatorConfig,
    RunRoutes,
    broker_from_config,
    create_app,
)
from flowcraft_puller.emulator.faults import FaultInjector
from flowcraft_puller.emulator.queues import QueueBroker

log = structlog.get_logger(__name__)

RunsFactory = Callable[[EmulatorConfig, QueueBroker], RunRoutes]


class EmulatorStartError(RuntimeError):
    """The emulator's server did not come up (see the log for uvicorn's reason)."""


def run_service(config: EmulatorConfig, broker: QueueBroker) -> RunRoutes:
    """The Worker-protocol run service, sending jobs to the configured job queue and sharing
    the broker's clock (so ``POST /_emulator/clock`` moves both)."""
    from flowcraft_puller.emulator.runs import RunService

    return RunService(
        state_path=config.state_path,
        sender=broker.sender(config.job_queue),
        secret=config.secret,
        clock_ms=lambda: float(broker.now_ms()),
    )


def build_app(config: EmulatorConfig, runs_factory: RunsFactory | None = run_service) -> Starlette:
    """The emulator app with its broker and, unless ``runs_factory`` is ``None``, the run
    service."""
    broker = broker_from_config(config)
    runs = runs_factory(config, broker) if runs_factory is not None else None
    return create_app(config, runs, broker=broker)


def _listening_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket (port 0 picks a free one); connections wait in its backlog
    until the server starts accepting."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY on accepted connections only when the
    # listening socket says so, and without it every keep-alive request waits ~40 ms for a
    # delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise EmulatorStartError(f"cannot listen on {_url(host, port)}: {exc.strerror}") from exc
    return sock


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _uvicorn_config(app: Starlette, host: str, port: int) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http="h11",
        ws="none",
        lifespan="on",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=5,
    )


class _EmbeddedServer(uvicorn.Server):
    """A uvicorn server that leaves signal handling to the process hosting it."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class EmulatorServer:
    """The emulator served by uvicorn inside the current event loop.

    ``async with EmulatorServer() as emulator:`` binds a free port on 127.0.0.1 (or the
    config's host and port; port 0 means a free one) and stops the server on exit.
    """

    def __init__(
        self,
        config: EmulatorConfig | None = None,
        *,
        runs_factory: RunsFactory | None = run_service,
    ) -> None:
        self.config = config or EmulatorConfig(port=0)
        self._runs_factory = runs_factory
        self._app: Starlette | None = None
        self._server: _EmbeddedServer | None = None
        self._task_group: anyio.abc.TaskGroup | None = None
        self._port = 0

    @property
    def app(self) -> Starlette:
        if self._app is None:
            raise RuntimeError("the emulator is not running")
        return self._app

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:41234``; the queue API lives under ``/client/v4``."""
        return _url(self.config.host, self._port)

    @property
    def api_url(self) -> str:
        """The queue API base URL, as ``CloudflareQueue(base_url=...)`` takes it."""
        return f"{self.url}/client/v4"

    @property
    def account_id(self) -> str:
        return self.config.account_id

    @property
    def broker(self) -> QueueBroker:
        broker: QueueBroker = self.app.state.broker
        return broker

    @property
    def faults(self) -> FaultInjector:
        injector: FaultInjector = self.app.state.faults
        return injector

    def queue_id(self, name: str) -> str:
        return self.broker.queue_id(name)

    async def __aenter__(self) -> EmulatorServer:
        sock = _listening_socket(self.config.host, self.config.port)
        try:
            self._app = build_app(self.config, self._runs_factory)
        except BaseException:
            sock.close()
            raise
        self._port = sock.getsockname()[1]
        stopped = anyio.Event()
        self._server = _EmbeddedServer(_uvicorn_config(self._app, self.config.host, self._port))
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        self._task_group.start_soon(self._serve, self._server, sock, stopped)
        while not self._server.started:
            if stopped.is_set():
                await self._task_group.__aexit__(None, None, None)
                raise EmulatorStartError(f"the emulator did not start on {self.url}; see the log")
            await anyio.sleep(0.005)
        log.debug("emulator started", url=self.url)
        return self

    async def _serve(
        self, server: _EmbeddedServer, sock: socket.socket, stopped: anyio.Event
    ) -> None:
        try:
            await server.serve(sockets=[sock])
        except SystemExit:
            log.error("emulator server exited during startup", url=self.url)
        finally:
            sock.close()
            stopped.set()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Shut the server down gracefully (its lifespan closes the broker and run service)."""
        if self._server is not None:
            self._server.should_exit = True
        if self._task_group is not None:
            await self._task_group.__aexit__(None, None, None)
            self._task_group = None


def serve(config: EmulatorConfig, runs_factory: RunsFactory | None = run_service) -> None:
    """Serve the emulator until SIGINT or SIGTERM."""
    sock = _listening_socket(config.host, config.port)
    port = sock.getsockname()[1]
    app = build_app(config, runs_factory)
    broker: QueueBroker = app.state.broker
    log.info(
        "emulator listening",
        url=_url(config.host, port),
        account_id=config.account_id,
        queues={q.name: q.id for q in broker.queues()},
        state=str(config.state_path) if config.state_path else None,
    )
    uvicorn.Server(_uvicorn_config(app, config.host, port)).run(sockets=[sock])
