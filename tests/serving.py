"""Serving ASGI apps on uvicorn at 127.0.0.1 on a free port, for tests.

``serve`` runs the server in the test's own event loop (for apps that share objects with the
test, such as an in-memory queue); ``serve_in_thread`` runs it in a thread with its own loop
(for synchronous tests and session-wide servers). Both stop the server on exit.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import anyio
import uvicorn
from starlette.applications import Starlette
from starlette.routing import BaseRoute

from flowcraft_puller.emulator.runs import RunService


def _bound_socket() -> socket.socket:
    # With proto IPPROTO_TCP asyncio sets TCP_NODELAY on accepted connections; with proto 0 it
    # does not, and every response then stalls ~40 ms on Nagle plus delayed ACKs.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def _server(app: Any) -> uvicorn.Server:
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
    return uvicorn.Server(config)


def run_service_app(service: RunService, extra: list[BaseRoute] | None = None) -> Starlette:
    """A Starlette app serving ``service`` under /v1, started and closed by its lifespan."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await service.start()
        try:
            yield
        finally:
            await service.aclose()

    return Starlette(routes=[*service.routes(), *(extra or [])], lifespan=lifespan)


@asynccontextmanager
async def serve(app: Any) -> AsyncIterator[str]:
    """Serve ``app`` in this event loop; yields its base URL (``http://127.0.0.1:<port>``)."""
    sock = _bound_socket()
    server = _server(app)
    async with anyio.create_task_group() as group:
        group.start_soon(server.serve, [sock])
        with anyio.fail_after(10):
            while not server.started:
                await anyio.sleep(0.005)
        try:
            yield f"http://127.0.0.1:{sock.getsockname()[1]}"
        finally:
            server.should_exit = True


@contextmanager
def serve_in_thread(app_factory: Callable[[], Any]) -> Iterator[str]:
    """Serve the app ``app_factory`` builds, in a thread of its own; yields its base URL."""
    sock = _bound_socket()
    server = _server(app_factory())
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start; see the log above")
        time.sleep(0.005)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
