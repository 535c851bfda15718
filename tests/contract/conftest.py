"""The run stores the contract suite runs against, reached over HTTP only.

``run_store_url`` yields ``(base_url, secret)`` with ``base_url`` ending in ``/v1``;
``job_sink`` returns a callable giving the job bodies the store has delivered so far. The
stores are the emulator's RunService on uvicorn and the production Worker under workerd
(Miniflare), which sends its jobs through ``QUEUE_REST_URL`` to a recording endpoint here.
``worker_with_job_log`` is a Worker of its own whose sent jobs are kept with their delays (the
differential test compares them with the reference store's).
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from flowcraft_puller.emulator.runs import RunService
from flowcraft_puller.queue.protocol import OutgoingMessage
from flowcraft_puller.testing.worker import WORKER_DIR, WorkerProcess
from tests.serving import run_service_app, serve_in_thread

JobSink = Callable[[], list[Any]]


@dataclass(frozen=True)
class StoreUnderTest:
    base_url: str
    secret: str
    jobs: JobSink


class RecordingSender:
    """A JobSender that keeps every job body it is given (read from the test thread)."""

    def __init__(self) -> None:
        self._bodies: list[Any] = []
        self._lock = threading.Lock()

    async def send_batch(self, messages: list[OutgoingMessage]) -> None:
        with self._lock:
            self._bodies.extend(message.body for message in messages)

    def delivered(self) -> list[Any]:
        with self._lock:
            return list(self._bodies)


def _queue_endpoint(sender: RecordingSender) -> Starlette:
    """Cloudflare's batch-send route, enough for the Worker's ``QUEUE_REST_URL``."""

    async def batch(request: Request) -> JSONResponse:
        messages = orjson.loads(await request.body())["messages"]
        await sender.send_batch([OutgoingMessage(m["body"]) for m in messages])
        return JSONResponse({"success": True, "errors": [], "messages": [], "result": {}})

    return Starlette(
        routes=[Route("/accounts/{account}/queues/{queue}/messages/batch", batch, methods=["POST"])]
    )


@contextmanager
def _worker_in_thread(secret: str, queue_url: str) -> Iterator[str]:
    """Run the Worker (a Node process) from a thread's own event loop; yields its origin."""
    ready, stop = threading.Event(), threading.Event()
    found: dict[str, Any] = {}

    async def main() -> None:
        try:
            async with WorkerProcess(
                secret=secret, variables={"QUEUE_REST_URL": queue_url}
            ) as worker:
                found["url"] = worker.url
                ready.set()
                while not stop.is_set():
                    await anyio.sleep(0.05)
        except BaseException as exc:
            found["error"] = exc
            ready.set()

    thread = threading.Thread(target=anyio.run, args=(main,), daemon=True)
    thread.start()
    ready.wait(90)
    try:
        if "url" not in found:
            raise RuntimeError(f"the Worker did not start: {found.get('error')!r}")
        yield found["url"]
    finally:
        stop.set()
        thread.join(30)


@pytest.fixture(scope="session", params=["emulator", "worker"])
def store_under_test(request: pytest.FixtureRequest) -> Iterator[StoreUnderTest]:
    secret = secrets.token_urlsafe(24)
    sender = RecordingSender()
    if request.param == "emulator":

        def app() -> Any:
            return run_service_app(RunService(state_path=None, sender=sender, secret=secret))

        with serve_in_thread(app) as url:
            yield StoreUnderTest(f"{url}/v1", secret, sender.delivered)
        return
    with (
        serve_in_thread(lambda: _queue_endpoint(sender)) as queue,
        _worker_in_thread(secret, f"{queue}/accounts/a/queues/q") as url,
    ):
        yield StoreUnderTest(f"{url}/v1", secret, sender.delivered)


@pytest.fixture(scope="session")
def run_store_url(store_under_test: StoreUnderTest) -> tuple[str, str]:
    return store_under_test.base_url, store_under_test.secret


@pytest.fixture(scope="session")
def job_sink(store_under_test: StoreUnderTest) -> JobSink:
    return store_under_test.jobs


@dataclass(frozen=True)
class SentJob:
    """One message the Worker sent to its queue: the job body and its delivery delay."""

    body: Any
    delay_seconds: int


class JobLog:
    """Every message posted to the recording queue endpoint, in arrival order."""

    def __init__(self) -> None:
        self._jobs: list[SentJob] = []
        self._lock = threading.Lock()

    def add(self, jobs: list[SentJob]) -> None:
        with self._lock:
            self._jobs.extend(jobs)

    def since(self, index: int) -> list[SentJob]:
        """The jobs recorded after the first ``index`` ones."""
        with self._lock:
            return self._jobs[index:]

    def __len__(self) -> int:
        with self._lock:
            return len(self._jobs)


@dataclass(frozen=True)
class WorkerWithJobLog:
    base_url: str
    secret: str
    jobs: JobLog


def _job_log_endpoint(log: JobLog) -> Starlette:
    """Cloudflare's batch-send route keeping each message's ``delay_seconds`` too."""

    async def batch(request: Request) -> JSONResponse:
        messages = orjson.loads(await request.body())["messages"]
        log.add([SentJob(m["body"], m.get("delay_seconds", 0)) for m in messages])
        return JSONResponse({"success": True, "errors": [], "messages": [], "result": {}})

    return Starlette(
        routes=[Route("/accounts/{account}/queues/{queue}/messages/batch", batch, methods=["POST"])]
    )


def require_worker_packages(worker_dir: Path) -> None:
    """Fail (never skip) when the Worker's npm packages are missing: CI installs them."""
    if not (worker_dir / "node_modules").is_dir():
        pytest.fail(
            f"the Worker's npm packages are missing ({worker_dir / 'node_modules'});"
            " run `npm ci --prefix worker` in the repository root (CI does)",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def worker_with_job_log() -> Iterator[WorkerWithJobLog]:
    """A Worker of its own under workerd whose queue sends are recorded with their delays."""
    require_worker_packages(WORKER_DIR)
    secret = secrets.token_urlsafe(24)
    log = JobLog()
    with (
        serve_in_thread(lambda: _job_log_endpoint(log)) as queue,
        _worker_in_thread(secret, f"{queue}/accounts/a/queues/q") as url,
    ):
        yield WorkerWithJobLog(f"{url}/v1", secret, log)
