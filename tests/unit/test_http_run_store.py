"""The HTTP run-store client against the emulator's RunService on uvicorn, with injected
faults: retries, Retry-After, the retry budget, typed errors and the resume-after-retry rule."""

from __future__ import annotations

import socket
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import pytest
from starlette.types import Message, Receive, Scope, Send

from flowcraft_puller.emulator.runs import RunService
from flowcraft_puller.queue.memory import MemoryQueue
from flowcraft_puller.runstore.http import (
    BatchEntry,
    HttpRunStore,
    RetryPolicy,
    request_body,
)
from flowcraft_puller.runstore.protocol import (
    AttemptsRequest,
    AwaitingSpec,
    BadRequest,
    CancelRequest,
    ClaimRequest,
    CommitRequest,
    Conflict,
    FailRequest,
    NodeRef,
    Op,
    OpsRequest,
    Resolution,
    ResumeRequest,
    ResumeResponse,
    RunNotFound,
    StartRequest,
    StoreUnavailable,
    TopologyNode,
    Unauthorized,
)
from tests.serving import run_service_app, serve

SECRET = "unit-secret"
HOOK_TOKEN = "h" * 32


@dataclass(frozen=True)
class Fault:
    """What to do with one matching request instead of answering it normally."""

    status: int | None = None
    retry_after: str | None = None
    lose_answer: bool = False
    """Apply the request, then answer 500 as if the response was lost."""
    fail_entries: tuple[int, ...] = ()
    """For ``/batch``: answer these entries 503 without applying them."""


class FaultyApp:
    """An ASGI wrapper that answers planned faults for requests whose path ends with a suffix."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.plans: dict[str, list[Fault]] = defaultdict(list)

    def inject(self, suffix: str, *faults: Fault) -> None:
        self.plans[suffix].extend(faults)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            for suffix, plan in self.plans.items():
                if scope["path"].endswith(suffix) and plan:
                    await self._fault(plan.pop(0), scope, receive, send)
                    return
        await self.app(scope, receive, send)

    async def _fault(self, fault: Fault, scope: Scope, receive: Receive, send: Send) -> None:
        if fault.status is not None:
            headers = {"retry-after": fault.retry_after} if fault.retry_after else {}
            await _answer(
                send, fault.status, {"error": {"code": "internal", "message": "x"}}, headers
            )
            return
        body = await _read(receive)
        if fault.lose_answer:
            await _call(self.app, scope, body)
            await _answer(send, 500, {"error": {"code": "internal", "message": "lost"}})
            return
        entries = orjson.loads(body)["entries"]
        kept = [e for i, e in enumerate(entries) if i not in fault.fail_entries]
        answers: list[Any] = []
        if kept:
            _, answer = await _call(self.app, scope, orjson.dumps({"entries": kept}))
            answers = orjson.loads(answer)["results"]
        results = iter(answers)
        unavailable = {"status": 503, "body": {"error": {"code": "unavailable", "message": "x"}}}
        merged = [
            unavailable if i in fault.fail_entries else next(results) for i in range(len(entries))
        ]
        await _answer(send, 200, {"results": merged})


async def _read(receive: Receive) -> bytes:
    body = b""
    while True:
        message = await receive()
        body += bytes(message.get("body", b""))
        if not message.get("more_body"):
            return body


async def _call(app: Any, scope: Scope, body: bytes) -> tuple[int, bytes]:
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    return status, b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


async def _answer(
    send: Send, status: int, body: Any, headers: dict[str, str] | None = None
) -> None:
    raw = [(b"content-type", b"application/json")]
    raw += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": orjson.dumps(body)})


@dataclass
class Harness:
    url: str
    faults: FaultyApp
    sleeps: list[float]

    def store(self, secret: str = SECRET, **options: Any) -> HttpRunStore:
        async def sleep(seconds: float) -> None:
            self.sleeps.append(seconds)

        retry = RetryPolicy(attempts=4, initial_backoff=0.001, max_backoff=0.004, sleep=sleep)
        return HttpRunStore(self.url, secret, retry=retry, **options)


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    service = RunService(state_path=None, sender=MemoryQueue(), secret=SECRET)
    faults = FaultyApp(run_service_app(service))
    async with serve(faults) as url:
        yield Harness(f"{url}/v1", faults, [])


def start_request(edges: dict[str, list[str]], start_nodes: list[str]) -> StartRequest:
    nodes = set(edges) | {t for targets in edges.values() for t in targets}
    topology = {n: TopologyNode(succs=edges.get(n, [])) for n in sorted(nodes)}
    return StartRequest(blueprint_id="bp", topology=topology, start_nodes=start_nodes)


def claim(node: str = "A", token: str = "t") -> ClaimRequest:
    return ClaimRequest(node_id=node, token=token, lease_ms=60_000)


async def awaiting_run(store: HttpRunStore, run_id: str, *, reason: str = "external_event") -> None:
    await store.start(run_id, start_request({"W": []}, ["W"]))
    await store.claim(run_id, claim("W"))
    hook = HOOK_TOKEN if reason == "webhook" else None
    spec = AwaitingSpec(reason=reason, external=True, hook_token=hook)
    await store.commit(run_id, CommitRequest(node_id="W", gen=0, token="t", awaiting=spec))


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ---- calls and answers ---------------------------------------------------------------------


@pytest.mark.anyio
async def test_calls_round_trip_as_typed_models(harness: Harness) -> None:
    async with harness.store() as store:
        started = await store.start("r1", start_request({"A": ["B"], "B": []}, ["A"]))
        assert (started.run_id, started.created, started.status) == ("r1", True, "running")
        assert (await store.claim("r1", claim())).state == "run"
        attempts = AttemptsRequest(node_id="A", gen=0, token="t", attempts=2, error="e")
        assert (await store.attempts("r1", attempts)).status == "running"
        done = CommitRequest(
            node_id="A", gen=0, token="t", result=Resolution(output=1), arrivals=["B"]
        )
        assert (await store.commit("r1", done)).released == [NodeRef(node_id="B", gen=0)]
        assert (await store.reconcile("r1")).requeued == [NodeRef(node_id="B", gen=0)]
        ops = OpsRequest(ops=[Op(op="increment", key="n"), Op(op="context.get", key="missing")])
        assert (await store.ops("r1", ops)).results == [1, None]
        view = await store.get("r1")
        assert view.nodes["A"].state == "completed"
        assert view.nodes["A"].attempts == 2
        assert (await store.list_runs(status="running")).runs[0].run_id == "r1"
        assert (await store.list_runs(status="completed")).runs == []
        assert (await store.fail("r1", FailRequest(reason="stop"))).status == "failed"
        assert (await store.cancel("r1", CancelRequest())).status == "failed"
        assert dict(store.counts.requests) == {
            "start": 1,
            "claim": 1,
            "attempts": 1,
            "commit": 1,
            "reconcile": 1,
            "ops": 1,
            "get": 1,
            "list": 2,
            "fail": 1,
            "cancel": 1,
        }
        assert store.counts.total == 11


@pytest.mark.anyio
async def test_refusals_raise_the_typed_error_named_by_their_code(harness: Harness) -> None:
    async with harness.store() as store:
        with pytest.raises(RunNotFound):
            await store.claim("missing", claim())
        await store.start("r1", start_request({"A": []}, ["A"]))
        wrong = CommitRequest(node_id="A", gen=0, token="t", result=Resolution(), arrivals=["Z"])
        with pytest.raises(BadRequest) as bad:
            await store.commit("r1", wrong)
        assert bad.value.field == "arrivals[0]"
        other = StartRequest(blueprint_id="other", topology={"A": TopologyNode()}, start_nodes=[])
        with pytest.raises(Conflict):
            await store.start("r1", other)
    async with harness.store(secret="wrong") as intruder:
        with pytest.raises(Unauthorized):
            await intruder.get("r1")


# ---- retries --------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_429_and_5xx_are_retried_honouring_retry_after(harness: Harness) -> None:
    async with harness.store() as store:
        await store.start("r1", start_request({"A": []}, ["A"]))
        harness.faults.inject(
            "/claim", Fault(status=503), Fault(status=429, retry_after="7"), Fault(status=500)
        )
        assert (await store.claim("r1", claim())).state == "run"
        assert store.counts.requests["claim"] == 4
        assert len(harness.sleeps) == 3
        assert harness.sleeps[1] == 7
        assert max(harness.sleeps[0], harness.sleeps[2]) <= 0.004


@pytest.mark.anyio
async def test_a_long_retry_after_is_capped(harness: Harness) -> None:
    async with harness.store() as store:
        harness.faults.inject("/health", Fault(status=429, retry_after="3600"))
        harness.faults.inject("/r1", Fault(status=429, retry_after="3600"))
        await store.start("r1", start_request({"A": []}, ["A"]))
        await store.get("r1")
        assert harness.sleeps == [store.retry.max_retry_after]


@pytest.mark.anyio
async def test_the_retry_budget_ends_in_store_unavailable(harness: Harness) -> None:
    async with harness.store() as store:
        await store.start("r1", start_request({"A": []}, ["A"]))
        harness.faults.inject("/claim", *[Fault(status=503)] * 4)
        with pytest.raises(StoreUnavailable, match="HTTP 503 after 4 attempts"):
            await store.claim("r1", claim())
        assert store.counts.requests["claim"] == 4


@pytest.mark.anyio
async def test_an_unreachable_store_is_unavailable_after_retries(harness: Harness) -> None:
    harness.url = f"http://127.0.0.1:{_closed_port()}/v1"
    async with harness.store() as store:
        with pytest.raises(StoreUnavailable, match="unreachable after 4 attempts"):
            await store.get("r1")
        assert store.counts.requests["get"] == 4


@pytest.mark.anyio
async def test_a_resume_whose_answer_was_lost_is_a_success(harness: Harness) -> None:
    async with harness.store() as store:
        await awaiting_run(store, "r1")
        harness.faults.inject("/resume", Fault(lose_answer=True))
        answer = await store.resume("r1", ResumeRequest(action="go", output={"ok": 1}))
        assert answer == ResumeResponse(status="running", resumed=[NodeRef(node_id="W", gen=0)])
        assert store.counts.requests["resume"] == 2
        assert store.counts.requests["get"] == 1


@pytest.mark.anyio
async def test_a_resume_by_node_whose_answer_was_lost_is_a_success(harness: Harness) -> None:
    async with harness.store() as store:
        await awaiting_run(store, "r1", reason="webhook")
        harness.faults.inject("/resume", Fault(lose_answer=True))
        answer = await store.resume("r1", ResumeRequest(action="go", node_id="W"))
        assert answer.resumed == [NodeRef(node_id="W", gen=0)]


@pytest.mark.anyio
async def test_a_resume_that_truly_conflicts_after_a_retry_still_conflicts(
    harness: Harness,
) -> None:
    async with harness.store() as store:
        await awaiting_run(store, "r1")
        await store.resume("r1", ResumeRequest(action="first"))
        harness.faults.inject("/resume", Fault(status=503))
        with pytest.raises(Conflict):
            await store.resume("r1", ResumeRequest(action="second"))
        assert store.counts.requests["get"] == 1


@pytest.mark.anyio
async def test_a_resume_conflict_at_the_first_attempt_is_not_second_guessed(
    harness: Harness,
) -> None:
    async with harness.store() as store:
        await awaiting_run(store, "r1")
        await store.resume("r1", ResumeRequest(action="go"))
        with pytest.raises(Conflict):
            await store.resume("r1", ResumeRequest(action="go"))
        assert store.counts.requests["get"] == 0


def test_resume_sends_output_only_when_given() -> None:
    assert request_body(ResumeRequest(action="a")) == {"action": "a", "nodeId": None}
    assert request_body(ResumeRequest(action="a", output=None))["output"] is None


# ---- batch ----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_batch_entries_answered_5xx_are_sent_again(harness: Harness) -> None:
    async with harness.store() as store:
        for run_id in ("r0", "r1", "r2"):
            await store.start(run_id, start_request({"A": []}, ["A"]))
        harness.faults.inject("/batch", Fault(fail_entries=(1,)))
        entries = [BatchEntry("claim", r, request_body(claim())) for r in ("r0", "r1", "r2")]
        results = await store.batch(entries)
        assert [r.status for r in results] == [200, 200, 200]
        assert all(r.body["state"] == "run" for r in results)
        assert store.counts.requests["batch"] == 2
        assert store.counts.batched["claim"] == 4


@pytest.mark.anyio
async def test_batch_entries_still_failing_after_retries_keep_their_answer(
    harness: Harness,
) -> None:
    async with harness.store() as store:
        await store.start("r0", start_request({"A": []}, ["A"]))
        harness.faults.inject("/batch", *[Fault(fail_entries=(0,))] * 4)
        entries = [BatchEntry("get", "r0", {}), BatchEntry("get", "missing", {})]
        results = await store.batch(entries)
        assert [r.status for r in results] == [503, 404]
        assert store.counts.requests["batch"] == 4


# ---- auth and clients -------------------------------------------------------------------------


@pytest.mark.anyio
async def test_webhooks_are_delivered_without_the_bearer(harness: Harness) -> None:
    async with harness.store() as store:
        await awaiting_run(store, "r1", reason="webhook")
    async with harness.store(secret="not-the-secret") as outsider:
        answer = await outsider.hook("r1", "W", HOOK_TOKEN, {"paid": True})
        assert (answer.status, answer.node_id) == ("running", "W")
        with pytest.raises(Conflict):
            await outsider.hook("r1", "W", HOOK_TOKEN, {"paid": True})
        with pytest.raises(RunNotFound):
            await outsider.hook("r1", "W", "x" * 32, None)


@pytest.mark.anyio
async def test_a_shared_client_is_used_and_left_open(harness: Harness) -> None:
    async with httpx.AsyncClient() as client:
        async with harness.store(client=client) as store:
            await store.start("r1", start_request({"A": []}, ["A"]))
        assert not client.is_closed
        assert (await client.get(f"{harness.url}/health")).status_code == 401
