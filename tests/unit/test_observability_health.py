"""The probe and metrics server, over real HTTP on 127.0.0.1, through the daemon's lifecycle."""

from __future__ import annotations

import gzip
import signal
import socket
import time
from collections.abc import AsyncIterator

import anyio
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from flowcraft_puller.observability.health import (
    EventLoopMonitor,
    HealthServer,
    HealthServerError,
    HealthState,
    create_health_app,
)
from flowcraft_puller.observability.metrics import Metrics


@pytest.fixture
def state() -> HealthState:
    return HealthState(readiness_window=60.0, lag_threshold=0.25, lag_hold=30.0)


@pytest.fixture
def metrics() -> Metrics:
    return Metrics(queues=["jobs"], blueprints=["orders"])


@pytest.fixture
async def client(state: HealthState, metrics: Metrics) -> AsyncIterator[httpx.AsyncClient]:
    async with (
        HealthServer(create_health_app(state, metrics), host="127.0.0.1", port=0) as server,
        httpx.AsyncClient(base_url=server.url, timeout=5.0) as http,
    ):
        yield http


def block_event_loop(seconds: float) -> None:
    """Stall the running event loop, as a CPU-bound or blocking call in a node would."""
    time.sleep(seconds)


@pytest.mark.anyio
async def test_readyz_fails_before_start_up_has_finished(client: httpx.AsyncClient) -> None:
    response = await client.get("/readyz")
    assert response.status_code == 503
    assert response.json() == {"status": "fail"}

    verbose = (await client.get("/readyz", params={"verbose": ""})).json()
    assert verbose["checks"]["started"] == "start-up has not finished"
    assert verbose["checks"]["recent_success"] == "no pull or commit has succeeded yet"


@pytest.mark.anyio
async def test_readyz_passes_once_started_with_a_recent_pull(
    client: httpx.AsyncClient, state: HealthState
) -> None:
    state.mark_started()
    state.pull_succeeded()

    response = await client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert response.headers["cache-control"] == "no-store"


@pytest.mark.anyio
async def test_a_recent_commit_also_counts_for_readiness(
    client: httpx.AsyncClient, state: HealthState
) -> None:
    state.mark_started()
    state.commit_succeeded()
    assert (await client.get("/readyz")).status_code == 200


@pytest.mark.anyio
async def test_readyz_fails_as_soon_as_draining_starts(
    client: httpx.AsyncClient, state: HealthState
) -> None:
    state.mark_started()
    state.pull_succeeded()
    state.begin_draining()

    response = await client.get("/readyz?verbose")
    assert response.status_code == 503
    assert response.json()["checks"]["draining"] == "draining for shutdown"


@pytest.mark.anyio
async def test_readyz_fails_when_the_last_success_is_older_than_the_window(
    client: httpx.AsyncClient, state: HealthState
) -> None:
    state.mark_started()
    state.last_pull_success = time.monotonic() - 120

    response = await client.get("/readyz?verbose")
    assert response.status_code == 503
    assert "window 60s" in response.json()["checks"]["recent_success"]


@pytest.mark.anyio
async def test_livez_and_its_healthz_alias_pass_without_any_remote_success(
    client: httpx.AsyncClient,
) -> None:
    for path in ("/livez", "/healthz"):
        response = await client.get(path)
        assert response.status_code == 200
        assert response.json() == {"status": "ok"}


@pytest.mark.anyio
async def test_livez_fails_after_the_event_loop_was_blocked(
    client: httpx.AsyncClient, state: HealthState, metrics: Metrics
) -> None:
    monitor = EventLoopMonitor(state, metrics, interval=0.02)
    async with anyio.create_task_group() as group:
        group.start_soon(monitor.run)
        while state.loop_monitor_due is None:
            await anyio.sleep(0.01)
        assert (await client.get("/livez")).status_code == 200

        block_event_loop(0.6)
        response = await client.get("/livez?verbose")
        group.cancel_scope.cancel()

    assert response.status_code == 503
    assert response.json()["checks"]["heartbeat"] == "ok"
    assert "event loop" in response.json()["checks"]["event_loop"]
    lag_max = metrics.registry.get_sample_value("flowcraft_event_loop_lag_max_seconds")
    assert lag_max is not None
    assert lag_max > state.lag_threshold


@pytest.mark.anyio
async def test_livez_recovers_once_the_lag_is_past_the_hold_time(
    client: httpx.AsyncClient, state: HealthState
) -> None:
    state.lag_hold = 0.2
    monitor = EventLoopMonitor(state, interval=0.02)
    async with anyio.create_task_group() as group:
        group.start_soon(monitor.run)
        while state.loop_monitor_due is None:
            await anyio.sleep(0.01)
        block_event_loop(0.6)
        assert (await client.get("/livez")).status_code == 503
        with anyio.fail_after(5):
            while (await client.get("/livez")).status_code != 200:
                await anyio.sleep(0.05)
        group.cancel_scope.cancel()


@pytest.mark.anyio
async def test_livez_fails_when_the_loop_monitor_has_stopped_reporting(
    client: httpx.AsyncClient, state: HealthState
) -> None:
    async with anyio.create_task_group() as group:
        group.start_soon(EventLoopMonitor(state, interval=0.02).run)
        while state.loop_monitor_due is None:
            await anyio.sleep(0.01)
        group.cancel_scope.cancel()
    await anyio.sleep(0.4)

    response = await client.get("/livez?verbose")
    assert response.status_code == 503
    assert "overdue" in response.json()["checks"]["event_loop"]


@pytest.mark.anyio
async def test_livez_fails_on_a_stale_supervisor_heartbeat_except_while_draining(
    client: httpx.AsyncClient, state: HealthState
) -> None:
    state.last_heartbeat = time.monotonic() - 3600

    response = await client.get("/healthz?verbose")
    assert response.status_code == 503
    assert "heartbeat" in response.json()["checks"]["heartbeat"]

    state.begin_draining()
    assert (await client.get("/livez")).status_code == 200


@pytest.mark.anyio
async def test_metrics_serves_the_registry_as_text(
    client: httpx.AsyncClient, metrics: Metrics
) -> None:
    metrics.job_finished("jobs", "orders", "completed", 0.01)

    response = await client.get("/metrics", headers={"Accept-Encoding": "identity"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert "content-encoding" not in response.headers
    names = {family.name for family in text_string_to_metric_families(response.text)}
    assert {"flowcraft_jobs", "flowcraft_build_info", "process_cpu_seconds"} <= names


@pytest.mark.anyio
async def test_metrics_are_gzipped_when_the_scraper_accepts_it(client: httpx.AsyncClient) -> None:
    async with client.stream("GET", "/metrics", headers={"Accept-Encoding": "gzip"}) as response:
        raw = b"".join([chunk async for chunk in response.aiter_raw()])
    assert response.headers["content-encoding"] == "gzip"
    assert b"flowcraft_build_info" in gzip.decompress(raw)


@pytest.mark.anyio
async def test_metrics_speak_openmetrics_when_asked(client: httpx.AsyncClient) -> None:
    accept = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
    response = await client.get("/metrics", headers={"Accept": accept})
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.text.endswith("# EOF\n")


@pytest.mark.anyio
async def test_server_picks_a_free_port_and_stops_listening_on_exit(
    state: HealthState, metrics: Metrics
) -> None:
    server = HealthServer(create_health_app(state, metrics), port=0)
    async with server:
        url = server.url
        assert not url.endswith(":0")
        async with httpx.AsyncClient() as http:
            assert (await http.get(url + "/livez")).status_code == 200

    with pytest.raises(RuntimeError, match="not running"):
        _ = server.url
    async with httpx.AsyncClient() as http:
        with pytest.raises(httpx.ConnectError):
            await http.get(url + "/livez")


@pytest.mark.anyio
async def test_server_runs_as_a_task_started_in_a_task_group(
    state: HealthState, metrics: Metrics
) -> None:
    server = HealthServer(create_health_app(state, metrics))
    async with anyio.create_task_group() as group:
        url = await group.start(server.run)
        async with httpx.AsyncClient() as http:
            assert (await http.get(f"{url}/livez")).status_code == 200
        group.cancel_scope.cancel()


@pytest.mark.anyio
async def test_server_leaves_sigterm_and_sigint_to_the_supervisor(
    state: HealthState, metrics: Metrics
) -> None:
    before = (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT))
    async with HealthServer(create_health_app(state, metrics)) as server:
        async with httpx.AsyncClient() as http:
            assert (await http.get(server.url + "/livez")).status_code == 200
        during = (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT))
    assert during == before


@pytest.mark.anyio
async def test_a_busy_port_raises_an_actionable_error(state: HealthState, metrics: Metrics) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = HealthServer(create_health_app(state, metrics), port=port)
        with pytest.raises(HealthServerError, match=f"127.0.0.1:{port}.*another address or port"):
            async with server:
                pass
