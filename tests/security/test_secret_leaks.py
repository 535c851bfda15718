"""Secrets never appear in error bodies, logs or metrics: not the emulator's, not the Worker's,
not a daemon's — also when a credential is refused or a node fails with one in its message."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from flowcraft_puller.config import ObservabilityConfig, Secrets
from flowcraft_puller.emulator.server import EmulatorServer
from flowcraft_puller.testing.processes import DaemonProcess, EmulatorProcess
from flowcraft_puller.testing.runs import RunClient
from flowcraft_puller.testing.worker import WorkerProcess
from tests.e2e.workflows import RECORDING_NODES, ROOT, failing
from tests.security.routes import emulator_routes, is_admin, protocol_routes
from tests.security.test_constant_time import guesses

pytestmark = pytest.mark.anyio

JOB_QUEUE = "flowcraft-jobs"


async def _bodies_of_refusals(
    base_url: str, paths: list[tuple[str, str]], secret: str
) -> list[str]:
    bodies = []
    async with httpx.AsyncClient(base_url=base_url) as client:
        for method, path in paths:
            for guess in guesses(secret):
                response = await client.request(
                    method,
                    path,
                    content=b"{}" if method == "POST" else None,
                    headers={"Authorization": f"Bearer {guess}"},
                )
                assert response.status_code in (400, 401, 403, 404), (path, response.text)
                bodies.append(response.text)
    return bodies


def _leaked(texts: list[str], *secrets: str) -> list[str]:
    return [t for t in texts for s in secrets if s and (s in t or s[:-1] in t)]


async def test_refusals_never_echo_the_presented_or_the_real_credential(
    emulator: EmulatorServer, worker: WorkerProcess
) -> None:
    queue_id = emulator.queue_id(JOB_QUEUE)
    routes = [r for r in emulator_routes(emulator.app) if not is_admin(r)]
    token, secret = emulator.config.token or "", emulator.config.secret or ""
    queue_paths = [(r.method, r.path(queue_id)) for r in routes if r.template.startswith("/client")]
    v1_paths = [(r.method, r.path(queue_id)) for r in routes if r.template.startswith("/v1")]
    bodies = await _bodies_of_refusals(emulator.url, queue_paths, token)
    bodies += await _bodies_of_refusals(emulator.url, v1_paths, secret)
    worker_paths = [(r.method, r.path("unused")) for r in protocol_routes()]
    worker_bodies = await _bodies_of_refusals(worker.url, worker_paths, worker.secret)
    assert _leaked(bodies, token, secret) == []
    assert _leaked(worker_bodies, worker.secret) == []
    guessed = [g for s in (token, secret) for g in guesses(s)]
    assert [b for b in bodies if any(g in b for g in guessed)] == []


async def test_the_emulator_process_never_writes_its_token_or_secret(tmp_path: Path) -> None:
    async with EmulatorProcess(tmp_path / "emulator") as emulator:
        async with httpx.AsyncClient(base_url=emulator.url) as client:
            for guess in guesses(emulator.secret):
                await client.get("/v1/health", headers={"Authorization": f"Bearer {guess}"})
            pull = f"/client/v4/accounts/{emulator.account_id}/queues/{emulator.queue_id()}"
            for guess in guesses(emulator.token):
                await client.post(
                    pull + "/messages/pull", json={}, headers={"Authorization": f"Bearer {guess}"}
                )
        await emulator.stop()
    output = emulator.stdout() + emulator.stderr()
    assert "emulator listening" in output
    assert emulator.token not in output
    assert emulator.secret not in output


async def test_a_daemon_never_exposes_its_secrets_in_metrics_or_logs(tmp_path: Path) -> None:
    blueprint = failing("security-leak", "leak_credentials")
    async with EmulatorProcess(tmp_path / "emulator") as emulator:
        wrong_secret = "wrong-" + emulator.secret
        daemons = {
            "right": Secrets(api_token=emulator.token, coordinator_secret=emulator.secret),
            "wrong": Secrets(api_token=emulator.token, coordinator_secret=wrong_secret),
        }
        expositions = []
        outputs = []
        for name, secrets in daemons.items():
            daemon = DaemonProcess(
                tmp_path / name,
                emulator.daemon_settings(
                    nodes=[RECORDING_NODES],
                    observability=ObservabilityConfig(log_level="debug", log_format="json"),
                ),
                secrets,
                blueprints=[blueprint],
                environment={"FLOWCRAFT_E2E_EXECUTIONS": str(tmp_path / f"{name}.jsonl")},
                pythonpath=[ROOT],
                name=name,
            )
            async with daemon, RunClient(emulator.url, emulator.secret, [blueprint]) as runs:
                await runs.start(blueprint["id"])
                event = "node failed; run failed" if name == "right" else "run store refused a call"
                await daemon.wait_for_event(event)
                expositions.append(await daemon.metrics())
            outputs.append(daemon.stdout() + daemon.stderr())
    for text in [*expositions, *outputs]:
        for secret in (emulator.token, emulator.secret, wrong_secret):
            assert secret not in text
    assert "flowcraft_jobs_total" in expositions[0]
