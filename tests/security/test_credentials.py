"""Every route of the emulator and of the Worker refuses missing and wrong credentials; the only
routes that take none are the documented ones (webhooks, whose token is the credential, and the
emulator's ``/_emulator`` test routes)."""

from __future__ import annotations

import httpx
import orjson
import pytest

from flowcraft_puller.emulator.server import EmulatorServer
from flowcraft_puller.testing.worker import WorkerProcess
from tests.security.routes import (
    Endpoint,
    emulator_routes,
    is_admin,
    is_webhook,
    protocol_routes,
)

pytestmark = pytest.mark.anyio

JOB_QUEUE = "flowcraft-jobs"


def wrong_bearers(secret: str) -> dict[str, str | None]:
    """Authorization headers that must all be refused: none, wrong, almost right."""
    return {
        "missing": None,
        "wrong": "Bearer " + "x" * len(secret),
        "prefix": "Bearer " + secret[:-1],
        "longer": "Bearer " + secret + "x",
        "last character wrong": "Bearer " + secret[:-1] + ("A" if secret[-1] != "A" else "B"),
        "no scheme": secret,
        "basic scheme": "Basic " + secret,
    }


def _is_refusal(endpoint: Endpoint, response: httpx.Response) -> bool:
    if endpoint.template.startswith("/v1/"):
        return response.status_code == 401 and response.json()["error"]["code"] == "unauthorized"
    body = response.json()
    return response.status_code in (400, 403) and body["success"] is False


async def _refusals(
    client: httpx.AsyncClient, endpoints: list[Endpoint], secret: str, queue_id: str
) -> list[str]:
    """Every (endpoint, credential) that was not refused."""
    accepted = []
    for endpoint in endpoints:
        for label, header in wrong_bearers(secret).items():
            headers = {} if header is None else {"Authorization": header}
            response = await client.request(
                endpoint.method,
                endpoint.path(queue_id),
                content=orjson.dumps({}) if endpoint.method == "POST" else None,
                headers=headers,
            )
            if not _is_refusal(endpoint, response):
                accepted.append(
                    f"{endpoint.method} {endpoint.template} with {label}: {response.status_code}"
                )
    return accepted


async def test_every_emulator_route_refuses_missing_and_wrong_credentials(
    emulator: EmulatorServer,
) -> None:
    queue_id = emulator.queue_id(JOB_QUEUE)
    routes = emulator_routes(emulator.app)
    guarded = [r for r in routes if not is_webhook(r) and not is_admin(r)]
    queue_api = [r for r in guarded if r.template.startswith("/client/v4/")]
    worker_api = [r for r in guarded if r.template.startswith("/v1/")]
    assert len(queue_api) >= 6
    assert len(worker_api) == len(protocol_routes()) - 1
    async with httpx.AsyncClient(base_url=emulator.url) as client:
        assert await _refusals(client, queue_api, emulator.config.token or "", queue_id) == []
        assert await _refusals(client, worker_api, emulator.config.secret or "", queue_id) == []


async def test_the_only_routes_without_credentials_are_webhooks_and_the_emulator_admin(
    emulator: EmulatorServer,
) -> None:
    routes = emulator_routes(emulator.app)
    open_routes = {r.template for r in routes if is_webhook(r) or is_admin(r)}
    assert open_routes == {
        "/v1/hooks/{runId}/{nodeId}/{token}",
        "/_emulator/queues",
        "/_emulator/queues/{ref}",
        "/_emulator/queues/{ref}/expire-leases",
        "/_emulator/queues/{ref}/messages",
        "/_emulator/faults",
        "/_emulator/stats",
        "/_emulator/clock",
    }


async def test_every_worker_route_refuses_missing_and_wrong_credentials(
    worker: WorkerProcess,
) -> None:
    routes = [r for r in protocol_routes() if not is_webhook(r)]
    async with httpx.AsyncClient(base_url=worker.url) as client:
        assert await _refusals(client, routes, worker.secret, "unused") == []


async def test_a_wrong_webhook_token_is_not_found_at_the_worker_and_the_emulator(
    emulator: EmulatorServer, worker: WorkerProcess
) -> None:
    hook = next(r for r in protocol_routes() if is_webhook(r))
    for base in (emulator.url, worker.url):
        async with httpx.AsyncClient(base_url=base) as client:
            response = await client.post(hook.path("unused"), content=b"{}")
            assert response.status_code == 404
            assert response.json()["error"]["code"] == "not_found"
