"""Fixtures of the security checks: an emulator served by uvicorn in this process (so that a
test can watch which functions it calls), and the production Worker under workerd."""

from __future__ import annotations

from collections.abc import AsyncIterator
from secrets import token_hex, token_urlsafe

import httpx
import pytest

from flowcraft_puller.emulator.app import EmulatorConfig
from flowcraft_puller.emulator.server import EmulatorServer
from flowcraft_puller.testing.worker import WORKER_DIR, WorkerProcess
from tests.contract.conftest import require_worker_packages

JOB_QUEUE = "flowcraft-jobs"


@pytest.fixture
async def emulator() -> AsyncIterator[EmulatorServer]:
    config = EmulatorConfig(port=0, token=token_hex(16), secret=token_urlsafe(24))
    async with EmulatorServer(config) as server:
        yield server


@pytest.fixture
async def worker(emulator: EmulatorServer) -> AsyncIterator[WorkerProcess]:
    """The Worker with its own secret, sending jobs to the emulator's queue."""
    require_worker_packages(WORKER_DIR)
    queue_id = emulator.queue_id(JOB_QUEUE)
    variables = {
        "QUEUE_REST_URL": f"{emulator.api_url}/accounts/{emulator.account_id}/queues/{queue_id}",
        "QUEUE_REST_TOKEN": emulator.config.token or "",
    }
    async with WorkerProcess(secret=token_urlsafe(24), variables=variables) as process:
        yield process


HOOK_TOKEN = "HookToken0123456789abcdefghijklmnop"


@pytest.fixture
async def emulator_with_hook(emulator: EmulatorServer) -> tuple[str, str]:
    """A run of the emulator awaiting a webhook: its delivery URL and its token."""
    run = "/v1/runs/" + "a" * 32
    auth = {"Authorization": f"Bearer {emulator.config.secret}"}
    async with httpx.AsyncClient(base_url=emulator.url, headers=auth) as client:
        start = {"blueprintId": "b", "topology": {"H": {}}, "startNodes": ["H"]}
        (await client.post(f"{run}/start", json=start)).raise_for_status()
        claim = {"nodeId": "H", "gen": 0, "token": "lease", "leaseMs": 60_000}
        (await client.post(f"{run}/claim", json=claim)).raise_for_status()
        awaiting = {"reason": "webhook", "details": {}, "external": True, "hookToken": HOOK_TOKEN}
        commit = {"nodeId": "H", "gen": 0, "token": "lease", "awaiting": awaiting}
        (await client.post(f"{run}/commit", json=commit)).raise_for_status()
    return f"{emulator.url}/v1/hooks/{'a' * 32}/H/{HOOK_TOKEN}", HOOK_TOKEN
