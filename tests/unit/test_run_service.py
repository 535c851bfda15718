"""The emulator's RunService beyond the contract: its state file, its sweepers, and what it
answers when something breaks inside."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from flowcraft_puller.emulator.runs import RunService
from flowcraft_puller.queue.protocol import OutgoingMessage
from tests.serving import run_service_app, serve

SECRET = "service-secret"
START = {"blueprintId": "bp", "topology": {"A": {"succs": []}}, "startNodes": ["A"]}


class FlakySender:
    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.bodies: list[Any] = []

    async def send_batch(self, messages: list[OutgoingMessage]) -> None:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("the job queue is down")
        self.bodies.extend(message.body for message in messages)


def client(url: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=f"{url}/v1", headers={"Authorization": f"Bearer {SECRET}"})


@pytest.mark.anyio
async def test_runs_survive_a_restart_of_the_service(tmp_path: Path) -> None:
    state = tmp_path / "runs.sqlite"
    first = RunService(state_path=state, sender=FlakySender(), secret=SECRET)
    async with serve(run_service_app(first)) as url, client(url) as http:
        assert (await http.post("/runs/r1/start", json=START)).status_code == 200
        claim = {"nodeId": "A", "token": "t", "leaseMs": 60_000}
        assert (await http.post("/runs/r1/claim", json=claim)).json()["state"] == "run"
        before = (await http.get("/runs/r1")).json()
    second = RunService(state_path=state, sender=FlakySender(), secret=SECRET)
    async with serve(run_service_app(second)) as url, client(url) as http:
        assert (await http.get("/runs/r1")).json() == before
        other = {"nodeId": "A", "token": "other", "leaseMs": 60_000}
        assert (await http.post("/runs/r1/claim", json=other)).json()["state"] == "busy"


@pytest.mark.anyio
async def test_the_sweepers_resend_jobs_the_queue_refused() -> None:
    sender = FlakySender(failures=1)
    service = RunService(state_path=None, sender=sender, secret=SECRET, sweep_interval_s=0.01)
    async with serve(run_service_app(service)) as url, client(url) as http:
        assert (await http.post("/runs/r1/start", json=START)).status_code == 200
        with anyio.fail_after(5):
            while not sender.bodies:
                await anyio.sleep(0.01)
    assert sender.bodies == [{"runId": "r1", "blueprintId": "bp", "nodeId": "A", "gen": 0}]


@pytest.mark.anyio
async def test_an_internal_failure_answers_500_internal_without_details() -> None:
    service = RunService(state_path=None, sender=FlakySender(), secret=SECRET)
    async with serve(run_service_app(service)) as url, client(url) as http:
        assert (await http.post("/runs/r1/start", json=START)).status_code == 200
        service.store.close()
        claim = {"nodeId": "A", "token": "t", "leaseMs": 1000}
        response = await http.post("/runs/r2/start", json=START)
        assert response.status_code == 500
        assert response.json()["error"]["code"] == "internal"
        assert "Traceback" not in response.text
        assert "sqlite" not in response.text.lower()
        batch = {"entries": [{"op": "claim", "runId": "r1", "body": claim}]}
        response = await http.post("/batch", json=batch)
        assert response.status_code == 200
        [entry] = response.json()["results"]
        assert entry["status"] == 500
        assert entry["body"]["error"]["code"] == "internal"
