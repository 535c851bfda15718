"""The run stores the contract suite runs against, reached over HTTP only.

``run_store_url`` yields ``(base_url, secret)`` with ``base_url`` ending in ``/v1``;
``job_sink`` returns a callable giving the job bodies the store has delivered so far. Today
the only store is the emulator's RunService on uvicorn; the Worker under workerd is meant to
become a second ``store_under_test`` parameter.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from flowcraft_puller.emulator.runs import RunService
from flowcraft_puller.queue.protocol import OutgoingMessage
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


@pytest.fixture(scope="session", params=["emulator"])
def store_under_test(request: pytest.FixtureRequest) -> Iterator[StoreUnderTest]:
    secret = secrets.token_urlsafe(24)
    sender = RecordingSender()

    def app() -> Any:
        return run_service_app(RunService(state_path=None, sender=sender, secret=secret))

    with serve_in_thread(app) as url:
        yield StoreUnderTest(f"{url}/v1", secret, sender.delivered)


@pytest.fixture(scope="session")
def run_store_url(store_under_test: StoreUnderTest) -> tuple[str, str]:
    return store_under_test.base_url, store_under_test.secret


@pytest.fixture(scope="session")
def job_sink(store_under_test: StoreUnderTest) -> JobSink:
    return store_under_test.jobs
