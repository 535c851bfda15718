"""Fault injection in the emulator: route keys, each fault kind, runtime plans and counters."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from flowcraft_puller.emulator.app import EmulatorConfig
from flowcraft_puller.emulator.faults import FaultPlan, RouteFaults, route_keys
from flowcraft_puller.emulator.server import EmulatorServer

pytestmark = pytest.mark.anyio

ACCOUNT = "0123456789abcdef0123456789abcdef"
AUTH = {"Authorization": "Bearer token"}


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
async def emulator() -> AsyncIterator[EmulatorServer]:
    async with EmulatorServer(runs_factory=None) as server:
        yield server


@pytest.fixture(scope="module")
async def http(emulator: EmulatorServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=emulator.url) as client:
        yield client


@pytest.fixture
async def queue(emulator: EmulatorServer, http: httpx.AsyncClient) -> AsyncIterator[str]:
    await set_plan(http, {})
    await http.post("/_emulator/stats")
    yield emulator.broker.create_queue(f"f-{len(emulator.broker.queues())}").id
    await set_plan(http, {})


def path(queue: str, action: str = "") -> str:
    suffix = f"/{action}" if action else ""
    return f"/client/v4/accounts/{ACCOUNT}/queues/{queue}/messages{suffix}"


async def set_plan(http: httpx.AsyncClient, routes: dict[str, Any], seed: int = 0) -> None:
    response = await http.post("/_emulator/faults", json={"seed": seed, "routes": routes})
    assert response.status_code == 200, response.text


async def depth(http: httpx.AsyncClient, queue: str) -> int:
    response = await http.get(f"/_emulator/queues/{queue}")
    return int(response.json()["depth"])


@pytest.mark.parametrize(
    ("request_path", "keys"),
    [
        (f"/client/v4/accounts/{ACCOUNT}/queues/q1/messages/pull", ("pull", "*")),
        (f"/client/v4/accounts/{ACCOUNT}/queues/q1/messages/ack", ("ack", "*")),
        (f"/client/v4/accounts/{ACCOUNT}/queues/q1/messages", ("send", "*")),
        (f"/client/v4/accounts/{ACCOUNT}/queues/q1/messages/batch", ("batch", "*")),
        (f"/client/v4/accounts/{ACCOUNT}/queues", ("create", "*")),
        ("/v1/batch", ("v1.batch", "v1", "*")),
        ("/v1/runs/r1/claim", ("v1", "*")),
        ("/v1/hooks/r1/n1/token", ("hooks", "*")),
        ("/client/v4/user/tokens/verify", ("*",)),
        ("/_emulator/queues", None),
    ],
)
def test_routes_map_to_fault_keys_most_specific_first(
    request_path: str, keys: tuple[str, ...] | None
) -> None:
    assert route_keys(request_path) == keys


async def test_an_injected_503_on_the_queue_api_is_a_v4_envelope(
    http: httpx.AsyncClient, queue: str
) -> None:
    await set_plan(http, {"pull": {"error_503_rate": 1.0}})
    response = await http.post(path(queue, "pull"), json={}, headers=AUTH)
    assert response.status_code == 503
    assert response.json() == {
        "success": False,
        "errors": [{"code": 15000, "message": "Unknown error"}],
        "messages": [],
        "result": None,
    }


async def test_an_injected_429_carries_retry_after_and_the_configured_code(
    http: httpx.AsyncClient, queue: str
) -> None:
    await set_plan(
        http,
        {"ack": {"error_429_rate": 1.0, "retry_after_seconds": 9, "rate_limit_code": 971}},
    )
    response = await http.post(path(queue, "ack"), json={}, headers=AUTH)
    assert response.status_code == 429
    assert response.headers["retry-after"] == "9"
    [error] = response.json()["errors"]
    assert error["code"] == 971
    assert "More than 1200 requests per 300 seconds" in error["message"]


async def test_injected_errors_on_worker_routes_use_the_protocol_error_shape(
    http: httpx.AsyncClient, queue: str
) -> None:
    await set_plan(http, {"v1": {"error_500_rate": 1.0}, "hooks": {"error_429_rate": 1.0}})
    response = await http.post("/v1/batch", json={})
    assert response.status_code == 500
    assert response.json() == {"error": {"code": "internal", "message": "injected fault: HTTP 500"}}
    response = await http.post("/v1/hooks/r/n/t", json={})
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "rate_limited"


async def test_the_most_specific_route_key_wins(http: httpx.AsyncClient, queue: str) -> None:
    await set_plan(http, {"*": {"error_500_rate": 1.0}, "pull": {"error_503_rate": 1.0}})
    assert (await http.post(path(queue, "pull"), json={}, headers=AUTH)).status_code == 503
    assert (await http.post(path(queue, "ack"), json={}, headers=AUTH)).status_code == 500


async def test_admin_routes_are_never_faulted(http: httpx.AsyncClient, queue: str) -> None:
    await set_plan(http, {"*": {"error_500_rate": 1.0, "reset_rate": 1.0}})
    assert (await http.get("/_emulator/queues")).status_code == 200
    assert (await http.get("/_emulator/stats")).status_code == 200


async def test_a_reset_drops_the_connection_before_applying_the_request(
    http: httpx.AsyncClient, queue: str
) -> None:
    await set_plan(http, {"send": {"reset_rate": 1.0}})
    with pytest.raises(httpx.RemoteProtocolError):
        await http.post(path(queue), json={"body": 1}, headers=AUTH)
    assert await depth(http, queue) == 0


async def test_a_dropped_response_still_applies_the_request(
    http: httpx.AsyncClient, queue: str
) -> None:
    await set_plan(http, {"send": {"drop_response_rate": 1.0}})
    with pytest.raises(httpx.RemoteProtocolError):
        await http.post(path(queue), json={"body": 1}, headers=AUTH)
    assert await depth(http, queue) == 1


async def test_a_lease_expiry_storm_makes_leased_messages_deliverable_again(
    http: httpx.AsyncClient, queue: str
) -> None:
    await http.post(path(queue), json={"body": 1}, headers=AUTH)
    first = await http.post(path(queue, "pull"), json={}, headers=AUTH)
    assert len(first.json()["result"]["messages"]) == 1
    await set_plan(http, {"pull": {"lease_expiry_rate": 1.0}})
    second = await http.post(path(queue, "pull"), json={}, headers=AUTH)
    [message] = second.json()["result"]["messages"]
    assert message["attempts"] == 2


async def test_the_admin_route_storms_the_leases_of_one_queue(
    http: httpx.AsyncClient, queue: str, emulator: EmulatorServer
) -> None:
    other = emulator.broker.create_queue("storm-bystander").id
    for target in (queue, queue, other):
        await http.post(path(target), json={"body": 1}, headers=AUTH)
        await http.post(path(target, "pull"), json={}, headers=AUTH)
    response = await http.post(f"/_emulator/queues/{queue}/expire-leases")
    assert response.json() == {"expired": 2}
    views = {q["id"]: q for q in (await http.get("/_emulator/queues")).json()["queues"]}
    assert (views[queue]["leased"], views[queue]["ready"]) == (0, 2)
    assert views[other]["leased"] == 1


async def test_added_latency_is_counted(http: httpx.AsyncClient, queue: str) -> None:
    await set_plan(http, {"pull": {"latency_ms": 1}})
    response = await http.post(path(queue, "pull"), json={}, headers=AUTH)
    assert response.status_code == 200
    stats = (await http.get("/_emulator/stats")).json()
    assert stats["faults"] == {"pull.latency": 1}


async def test_stats_count_requests_per_route_and_reset(
    http: httpx.AsyncClient, queue: str
) -> None:
    await http.post(path(queue), json={"body": 1}, headers=AUTH)
    await http.post(path(queue, "pull"), json={}, headers=AUTH)
    await http.post(path(queue, "pull"), json={}, headers=AUTH)
    stats = (await http.get("/_emulator/stats")).json()
    assert stats["requests"] == {"send": 1, "pull": 2}
    assert stats["broker"]["sent"] == 1
    assert stats["broker"]["delivered"] == 1
    reset = (await http.post("/_emulator/stats")).json()
    assert reset == {"requests": {}, "faults": {}, "broker": {}}


async def test_seeded_plans_repeat_the_same_faults(http: httpx.AsyncClient, queue: str) -> None:
    async def statuses() -> list[int]:
        await set_plan(http, {"pull": {"error_500_rate": 0.5}}, seed=42)
        return [
            (await http.post(path(queue, "pull"), json={}, headers=AUTH)).status_code
            for _ in range(20)
        ]

    first = await statuses()
    assert set(first) == {200, 500}
    assert await statuses() == first


async def test_the_plan_in_force_can_be_read_back(http: httpx.AsyncClient, queue: str) -> None:
    await set_plan(http, {"batch": {"latency_ms": 5}}, seed=7)
    plan = (await http.get("/_emulator/faults")).json()
    assert plan["seed"] == 7
    assert plan["routes"]["batch"]["latency_ms"] == 5


@pytest.mark.parametrize(
    "plan",
    [
        {"routes": {"pull": {"error_500_rate": 1.5}}},
        {"routes": {"nowhere": {}}},
        {"routes": {"pull": {"unknown": 1}}},
        {"routes": {"pull": {"latency_ms": -1}}},
        {"surprise": True},
        [],
    ],
)
async def test_invalid_plans_are_refused(http: httpx.AsyncClient, queue: str, plan: Any) -> None:
    before = (await http.get("/_emulator/faults")).json()
    response = await http.post("/_emulator/faults", json=plan)
    assert response.status_code == 400
    assert response.json()["errors"][0]["code"] == 10207
    assert (await http.get("/_emulator/faults")).json() == before


async def test_faults_in_the_config_apply_from_start() -> None:
    plan = FaultPlan(routes={"pull": RouteFaults(error_503_rate=1.0)})
    async with (
        EmulatorServer(EmulatorConfig(port=0, faults=plan), runs_factory=None) as server,
        httpx.AsyncClient(base_url=server.url) as client,
    ):
        queue = server.queue_id("flowcraft-jobs")
        response = await client.post(path(queue, "pull"), json={}, headers=AUTH)
        assert response.status_code == 503
