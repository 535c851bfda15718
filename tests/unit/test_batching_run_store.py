"""The batching run store: coalescing into /v1/batch, per-entry answers and errors,
cancellation safety and request counts — against the emulator's RunService on uvicorn."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import anyio
import pytest

from flowcraft_puller.emulator.runs import RunService
from flowcraft_puller.queue.protocol import OutgoingMessage
from flowcraft_puller.runstore.batching import BatchingRunStore
from flowcraft_puller.runstore.http import HttpRunStore, RetryPolicy
from flowcraft_puller.runstore.protocol import (
    AttemptsRequest,
    AwaitingSpec,
    CancelRequest,
    ClaimRequest,
    ClaimResponse,
    CommitRequest,
    Conflict,
    FailRequest,
    Op,
    OpsRequest,
    Resolution,
    ResumeRequest,
    RunNotFound,
    RunView,
    StartRequest,
    StatusResponse,
    StoreUnavailable,
    TopologyNode,
)
from tests.serving import run_service_app, serve

SECRET = "batching-secret"
HOOK_TOKEN = "h" * 32


class GateSender:
    """A JobSender that holds every send while its gate is closed."""

    def __init__(self) -> None:
        self.bodies: list[Any] = []
        self.waiting = anyio.Event()
        self._open = anyio.Event()
        self._open.set()

    def close(self) -> None:
        self._open = anyio.Event()
        self.waiting = anyio.Event()

    def open(self) -> None:
        self._open.set()

    async def send_batch(self, messages: list[OutgoingMessage]) -> None:
        self.waiting.set()
        await self._open.wait()
        self.bodies.extend(message.body for message in messages)


@dataclass
class Service:
    url: str
    sender: GateSender

    def http(self, url: str | None = None) -> HttpRunStore:
        async def no_sleep(seconds: float) -> None:
            return None

        retry = RetryPolicy(attempts=2, sleep=no_sleep)
        return HttpRunStore(url or self.url, SECRET, retry=retry)


@pytest.fixture
async def service() -> AsyncIterator[Service]:
    sender = GateSender()
    run_service = RunService(state_path=None, sender=sender, secret=SECRET)
    async with serve(run_service_app(run_service)) as url:
        yield Service(f"{url}/v1", sender)


def start_request(edges: dict[str, list[str]], start_nodes: list[str]) -> StartRequest:
    nodes = set(edges) | {t for targets in edges.values() for t in targets}
    topology = {n: TopologyNode(succs=edges.get(n, [])) for n in sorted(nodes)}
    return StartRequest(blueprint_id="bp", topology=topology, start_nodes=start_nodes)


def claim(node: str = "A", token: str = "t") -> ClaimRequest:
    return ClaimRequest(node_id=node, token=token, lease_ms=60_000)


def done(node: str = "A", **fields: Any) -> CommitRequest:
    return CommitRequest(node_id=node, gen=0, token="t", result=Resolution(output=1), **fields)


async def start_runs(http: HttpRunStore, count: int, edges: dict[str, list[str]]) -> list[str]:
    run_ids = [f"r{i}" for i in range(count)]
    for run_id in run_ids:
        await http.start(run_id, start_request(edges, ["A"]))
    return run_ids


async def gather_claims(store: BatchingRunStore, run_ids: list[str]) -> list[ClaimResponse]:
    answers: dict[str, ClaimResponse] = {}

    async def one(run_id: str) -> None:
        answers[run_id] = await store.claim(run_id, claim())

    async with anyio.create_task_group() as group:
        for run_id in run_ids:
            group.start_soon(one, run_id)
    return [answers[run_id] for run_id in run_ids]


@pytest.mark.anyio
async def test_concurrent_calls_share_one_batch_request(service: Service) -> None:
    async with service.http() as http:
        run_ids = await start_runs(http, 10, {"A": []})
        async with BatchingRunStore(http, linger_ms=200, direct_when_idle=False) as store:
            answers = await gather_claims(store, run_ids)
        assert [a.state for a in answers] == ["run"] * 10
        assert dict(http.counts.requests) == {"start": 10, "batch": 1}
        assert dict(http.counts.batched) == {"claim": 10}


@pytest.mark.anyio
async def test_a_lone_call_goes_straight_to_its_endpoint(service: Service) -> None:
    async with service.http() as http:
        await start_runs(http, 1, {"A": []})
        async with BatchingRunStore(http) as store:
            assert (await store.claim("r0", claim())).state == "run"
            assert (await store.get("r0")).nodes["A"].state == "released"
        assert dict(http.counts.requests) == {"start": 1, "claim": 1, "get": 1}


@pytest.mark.anyio
async def test_a_full_batch_is_sent_without_waiting_for_the_linger(service: Service) -> None:
    async with service.http() as http:
        run_ids = await start_runs(http, 8, {"A": []})
        store = BatchingRunStore(http, linger_ms=600_000, max_entries=4, direct_when_idle=False)
        async with store:
            with anyio.fail_after(10):
                answers = await gather_claims(store, run_ids)
        assert [a.state for a in answers] == ["run"] * 8
        assert http.counts.requests["batch"] == 2


@pytest.mark.anyio
async def test_each_caller_gets_its_own_answer_or_error(service: Service) -> None:
    async with service.http() as http:
        await start_runs(http, 3, {"A": ["B"], "B": []})
        outcomes: dict[str, Any] = {}

        async def call(name: str, make: Any) -> None:
            try:
                outcomes[name] = await make()
            except Exception as exc:
                outcomes[name] = exc

        async with BatchingRunStore(http, linger_ms=200, direct_when_idle=False) as store:
            attempts = AttemptsRequest(node_id="A", gen=0, token="t", attempts=3)
            calls = {
                "claim": lambda: store.claim("r0", claim()),
                "unknown run": lambda: store.claim("nope", claim()),
                "not released": lambda: store.commit("r1", done("B")),
                "attempts": lambda: store.attempts("r1", attempts),
                "fail": lambda: store.fail("r2", FailRequest(reason="stop")),
                "get": lambda: store.get("r1"),
            }
            async with anyio.create_task_group() as group:
                for name, make in calls.items():
                    group.start_soon(call, name, make)
        assert isinstance(outcomes["claim"], ClaimResponse)
        assert outcomes["claim"].state == "run"
        assert isinstance(outcomes["unknown run"], RunNotFound)
        assert isinstance(outcomes["not released"], Conflict)
        assert outcomes["attempts"] == StatusResponse(status="running")
        assert outcomes["fail"] == StatusResponse(status="failed", reason="stop")
        assert isinstance(outcomes["get"], RunView)
        assert http.counts.requests["batch"] == 1


@pytest.mark.anyio
async def test_a_caller_cancelled_before_the_flush_is_left_out(service: Service) -> None:
    async with service.http() as http:
        await start_runs(http, 2, {"A": []})
        async with BatchingRunStore(http, linger_ms=500, direct_when_idle=False) as store:
            answers: list[ClaimResponse] = []
            gone = anyio.CancelScope()

            async def cancelled_caller() -> None:
                with gone:
                    await store.claim("r0", claim(token="gone"))

            async def kept_caller() -> None:
                answers.append(await store.claim("r1", claim()))

            async with anyio.create_task_group() as group:
                group.start_soon(cancelled_caller)
                group.start_soon(kept_caller)
                await anyio.sleep(0.05)
                gone.cancel()
            assert gone.cancelled_caught
            assert [a.state for a in answers] == ["run"]
            assert http.counts.batched["claim"] == 1
            assert (await store.claim("r0", claim(token="next"))).state == "run"


@pytest.mark.anyio
async def test_a_caller_cancelled_while_its_batch_is_in_flight_does_not_disturb_the_others(
    service: Service,
) -> None:
    async with service.http() as http:
        run_ids = await start_runs(http, 3, {"A": ["B"], "B": []})
        for run_id in run_ids:
            await http.claim(run_id, claim())
        service.sender.close()
        async with BatchingRunStore(http, linger_ms=20, direct_when_idle=False) as store:
            released: dict[str, list[str]] = {}
            scopes = {run_id: anyio.CancelScope() for run_id in run_ids}

            async def commit(run_id: str) -> None:
                with scopes[run_id]:
                    answer = await store.commit(run_id, done(arrivals=["B"]))
                    released[run_id] = [ref.node_id for ref in answer.released]

            async with anyio.create_task_group() as group:
                for run_id in run_ids:
                    group.start_soon(commit, run_id)
                with anyio.fail_after(10):
                    await service.sender.waiting.wait()
                scopes["r1"].cancel()
                service.sender.open()
            assert released == {"r0": ["B"], "r2": ["B"]}
            assert (await store.get("r1")).nodes["A"].state == "completed"


@pytest.mark.anyio
async def test_closing_the_store_answers_the_waiting_callers(service: Service) -> None:
    async with service.http() as http:
        await start_runs(http, 1, {"A": []})
        store = BatchingRunStore(http, linger_ms=600_000, direct_when_idle=False)
        errors: list[Exception] = []

        async def caller() -> None:
            try:
                await store.claim("r0", claim())
            except StoreUnavailable as exc:
                errors.append(exc)

        async with anyio.create_task_group() as group, store:
            group.start_soon(caller)
            await anyio.sleep(0.05)
        assert len(errors) == 1
        assert "closed" in str(errors[0])
        assert http.counts.batched["claim"] == 0
        with pytest.raises(StoreUnavailable, match="not open"):
            await store.claim("r0", claim())


@pytest.mark.anyio
async def test_a_failed_batch_request_reaches_every_caller(service: Service) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    async with service.http(closed) as http:
        errors: list[Exception] = []

        async def caller(run_id: str) -> None:
            try:
                await store.claim(run_id, claim())
            except StoreUnavailable as exc:
                errors.append(exc)

        store = BatchingRunStore(http, linger_ms=50, direct_when_idle=False)
        async with store, anyio.create_task_group() as group:
            for run_id in ("r0", "r1", "r2"):
                group.start_soon(caller, run_id)
        assert len(errors) == 3
        assert http.counts.requests == {"batch": 2}


@pytest.mark.anyio
async def test_other_calls_pass_through_to_their_endpoints(service: Service) -> None:
    async with service.http() as http, BatchingRunStore(http) as store:
        await store.start("r0", start_request({"A": []}, ["A"]))
        await store.ops("r0", OpsRequest(ops=[Op(op="increment", key="n")]))
        await store.claim("r0", claim())
        spec = AwaitingSpec(reason="webhook", external=True, hook_token=HOOK_TOKEN)
        await store.commit("r0", CommitRequest(node_id="A", gen=0, token="t", awaiting=spec))
        await store.hook("r0", "A", HOOK_TOKEN, {"paid": True})
        with pytest.raises(Conflict):
            await store.resume("r0", ResumeRequest(action="go"))
        await store.reconcile("r0")
        await store.cancel("r0", CancelRequest())
        assert [r.run_id for r in (await store.list_runs()).runs] == ["r0"]
    assert dict(http.counts.requests) == {
        "start": 1,
        "ops": 1,
        "claim": 1,
        "commit": 1,
        "hook": 1,
        "resume": 1,
        "reconcile": 1,
        "cancel": 1,
        "list": 1,
    }
