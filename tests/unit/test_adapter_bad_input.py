"""Bad input through ``Adapter.handle_job``: it never raises and says what was wrong and where."""

from __future__ import annotations

from typing import Any

import pytest

from flowcraft_puller import FatalNodeError, NodeResult
from flowcraft_puller.adapter import Adapter, AdapterObserver, AdapterSettings, JobOutcome
from flowcraft_puller.engine.blueprint import Blueprint, load_blueprint
from flowcraft_puller.engine.executor import ExecutionEnv
from flowcraft_puller.engine.nodes import NodeContext, NodeImplementation
from flowcraft_puller.engine.step import Engine
from flowcraft_puller.queue.protocol import QueueMessage
from flowcraft_puller.runstore.memory import MemoryRunStore
from flowcraft_puller.runstore.protocol import (
    MAX_KEY_CHARS,
    MAX_TEXT_CHARS,
    BadRequest,
    ClaimRequest,
    ClaimResponse,
    StoreUnavailable,
)
from flowcraft_puller.testing import STANDARD_NODES

pytestmark = pytest.mark.anyio

MAX_DELIVERIES = 3


async def returns_set(ctx: NodeContext) -> Any:
    return {"tags": {"a", "b"}}


async def returns_a_long_action(ctx: NodeContext) -> NodeResult:
    return NodeResult(output=1, action="x" * (MAX_TEXT_CHARS + 1))


async def writes_a_long_key(ctx: NodeContext) -> int:
    await ctx.context.set("k" * (MAX_KEY_CHARS + 1), 1)
    return 1


async def raises_a_long_message(ctx: NodeContext) -> None:
    raise FatalNodeError("boom " * MAX_TEXT_CHARS)


REGISTRY: dict[str, NodeImplementation] = {
    **STANDARD_NODES,
    "returnsSet": returns_set,
    "returnsALongAction": returns_a_long_action,
    "writesALongKey": writes_a_long_key,
    "raisesALongMessage": raises_a_long_message,
}


class FinishedRuns:
    """An adapter observer keeping the runs it was told finished."""

    def __init__(self) -> None:
        self.finished: list[tuple[str, str]] = []

    def node_finished(self, blueprint: str, outcome: str, seconds: float) -> None:
        return None

    def run_finished(self, blueprint: str, status: str) -> None:
        self.finished.append((blueprint, status))

    def committed(self) -> None:
        return None


def flow(version: str | None = None, uses: str = "const") -> Blueprint:
    metadata = {"version": version} if version is not None else {}
    return load_blueprint(
        {
            "id": "flow",
            "nodes": [
                {"id": "A", "uses": uses, "params": {"value": 1}},
                {"id": "B", "uses": "inc"},
            ],
            "edges": [{"source": "A", "target": "B"}],
            "metadata": metadata,
        }
    )


def adapter_for(
    blueprint: Blueprint,
    store: MemoryRunStore | None = None,
    observer: AdapterObserver | None = None,
) -> Adapter:
    engine = Engine(blueprints={blueprint.id: blueprint}, env=ExecutionEnv(registry=REGISTRY))
    settings = AdapterSettings(max_deliveries=MAX_DELIVERIES, skew_retry_seconds=7)
    return Adapter(engine, store or MemoryRunStore(), settings, observer=observer)


def message(
    body: Any = None, *, attempts: int = 1, decode_error: str | None = None
) -> QueueMessage:
    return QueueMessage(
        id="msg-1",
        lease_id="lease-1",
        attempts=attempts,
        timestamp_ms=0,
        body=body,
        decode_error=decode_error,
    )


def job(node_id: str = "A", run_id: str = "run-1", **fields: Any) -> dict[str, Any]:
    return {"runId": run_id, "blueprintId": "flow", "nodeId": node_id, **fields}


async def handle(adapter: Adapter, msg: QueueMessage) -> JobOutcome:
    """``handle_job`` must return an outcome for anything; an exception fails the test."""
    return await adapter.handle_job(msg)


async def started(blueprint: Blueprint | None = None) -> tuple[Adapter, MemoryRunStore]:
    store = MemoryRunStore()
    adapter = adapter_for(blueprint or flow(), store)
    await adapter.start_run((blueprint or flow()).id, {}, run_id="run-1")
    return adapter, store


# ---- undecodable and malformed bodies -----------------------------------------------------------


async def test_an_undecodable_message_is_rejected_with_the_decode_error() -> None:
    outcome = await handle(
        adapter_for(flow()), message(decode_error="invalid JSON at line 1 column 2")
    )
    assert outcome == JobOutcome(
        "ack", "rejected", reason="invalid JSON at line 1 column 2", reject="undecodable"
    )


@pytest.mark.parametrize("body", [None, [1, 2], "text", 5, True])
async def test_a_body_that_is_not_an_object_is_rejected(body: object) -> None:
    outcome = await handle(adapter_for(flow()), message(body))
    assert (outcome.action, outcome.outcome) == ("ack", "rejected")
    assert outcome.reason is not None
    assert outcome.reason.startswith("malformed job body: body: ")
    assert "dictionary" in outcome.reason


@pytest.mark.parametrize(
    ("body", "names"),
    [
        ({}, ["runId: Field required", "blueprintId: Field required", "nodeId: Field required"]),
        ({"runId": "run-1", "nodeId": "A"}, ["blueprintId: Field required"]),
        (job(blueprintId=5), ["blueprintId: Input should be a valid string"]),
        (job(blueprintId=""), ["blueprintId: String should have at least 1 character"]),
        (job(nodeId=""), ["nodeId: String should have at least 1 character"]),
        (job(nodeId="n" * 513), ["nodeId: String should have at most 512 characters"]),
        (job(nodeId=["A"]), ["nodeId: Input should be a valid string"]),
        (job(gen=-1), ["gen: Input should be greater than or equal to 0"]),
        (job(gen="zero"), ["gen: Input should be a valid integer"]),
        (job(isLastAttempt="maybe"), ["isLastAttempt: Input should be a valid boolean"]),
        (job(dynamic={"uses": "", "gather": "B"}), ["dynamic.uses", "dynamic.inputs"]),
    ],
)
async def test_missing_or_ill_typed_fields_are_rejected_naming_each_field(
    body: dict[str, Any], names: list[str]
) -> None:
    outcome = await handle(adapter_for(flow()), message(body))
    assert (outcome.action, outcome.outcome) == ("ack", "rejected")
    assert outcome.reason is not None
    assert outcome.reason.startswith("malformed job body: ")
    for name in names:
        assert name in outcome.reason


@pytest.mark.parametrize("run_id", ["", "-leading-dash", "has space", "slash/inside", "r" * 129])
async def test_a_bad_run_id_is_rejected(run_id: str) -> None:
    outcome = await handle(adapter_for(flow()), message(job(run_id=run_id)))
    assert (outcome.action, outcome.outcome) == ("ack", "rejected")
    assert outcome.reason is not None
    assert "runId: String should match pattern" in outcome.reason


async def test_unknown_body_fields_are_ignored() -> None:
    adapter, _ = await started()
    outcome = await handle(adapter, message(job(gen=0, traceId="x", attempt=2)))
    assert outcome == JobOutcome("ack", "completed")


# ---- unknown blueprint, node or run -------------------------------------------------------------


async def test_an_unknown_blueprint_is_retried_until_the_last_delivery_then_rejected() -> None:
    adapter = adapter_for(flow())
    body = {**job(), "blueprintId": "elsewhere"}
    for attempt in range(1, MAX_DELIVERIES):
        outcome = await handle(adapter, message(body, attempts=attempt))
        assert outcome == JobOutcome(
            "retry", "unknown_blueprint", 7, "blueprint 'elsewhere' is not loaded"
        )
    last = await handle(adapter, message(body, attempts=MAX_DELIVERIES))
    assert last == JobOutcome(
        "ack",
        "rejected",
        reason=f"blueprint 'elsewhere' is not loaded (after {MAX_DELIVERIES} deliveries)",
        reject="unknown_blueprint",
    )


async def test_an_unknown_node_is_retried_then_rejected_naming_node_and_blueprint() -> None:
    adapter, store = await started()
    first = await handle(adapter, message(job("ghost")))
    assert first == JobOutcome(
        "retry", "unknown_blueprint", 7, "node 'ghost' is not in blueprint 'flow'"
    )
    last = await handle(adapter, message(job("ghost"), attempts=MAX_DELIVERIES))
    assert (last.action, last.outcome) == ("ack", "rejected")
    assert last.reason == (
        f"node 'ghost' is not in blueprint 'flow' (after {MAX_DELIVERIES} deliveries)"
    )
    assert store.runs["run-1"].status == "running"


async def test_a_dynamic_job_for_an_unknown_gather_is_an_unknown_node() -> None:
    adapter, _ = await started()
    body = job("w0", dynamic={"uses": "double", "inputs": "_batch.k", "gather": "nowhere"})
    outcome = await handle(adapter, message(body))
    assert (outcome.action, outcome.outcome) == ("retry", "unknown_blueprint")
    assert outcome.reason == "node 'w0' is not in blueprint 'flow'"


async def test_a_job_for_a_run_that_does_not_exist_is_rejected() -> None:
    outcome = await handle(adapter_for(flow()), message(job(run_id="no-such-run")))
    assert outcome == JobOutcome(
        "ack", "rejected", reason="run 'no-such-run' does not exist", reject="run_not_found"
    )


async def test_a_job_for_a_node_that_was_not_released_is_acked_as_stale() -> None:
    adapter, _ = await started()
    outcome = await handle(adapter, message(job("B")))
    assert outcome == JobOutcome("ack", "stale", reason="not released")


async def test_a_duplicate_job_is_acked_without_running_again() -> None:
    adapter, _ = await started()
    assert (await handle(adapter, message(job()))).outcome == "completed"
    assert await handle(adapter, message(job())) == JobOutcome("ack", "duplicate")


async def test_a_job_of_a_finished_run_is_acked_as_terminal() -> None:
    adapter, _ = await started()
    await adapter.cancel("run-1", "stopped by test")
    outcome = await handle(adapter, message(job()))
    assert outcome == JobOutcome("ack", "terminal", reason="stopped by test")


# ---- bad node results ---------------------------------------------------------------------------


async def test_a_non_json_node_output_fails_the_run_naming_the_node_and_path() -> None:
    adapter, store = await started(flow(uses="returnsSet"))
    outcome = await handle(adapter, message(job()))
    assert (outcome.action, outcome.outcome) == ("ack", "failed")
    reason = outcome.reason or ""
    assert reason.startswith(
        "Node 'A' execution failed: the output of node 'A' is not JSON-serialisable"
    )
    assert "set at $.tags" in reason
    view = await store.get("run-1")
    assert (view.status, view.reason) == ("failed", reason)
    assert "_outputs.A" not in view.context
    assert view.nodes["A"].state == "failed"


@pytest.mark.parametrize(
    ("uses", "field"),
    [("returnsALongAction", "action: "), ("writesALongKey", "writes.kkkk")],
)
async def test_a_node_result_the_store_would_refuse_fails_the_run_naming_the_field(
    uses: str, field: str
) -> None:
    adapter, store = await started(flow(uses=uses))
    outcome = await handle(adapter, message(job()))
    assert (outcome.action, outcome.outcome) == ("ack", "failed")
    reason = outcome.reason or ""
    assert reason.startswith("node 'A' produced what the run store refuses: ")
    assert field in reason
    view = await store.get("run-1")
    assert (view.status, view.reason) == ("failed", reason)


async def test_a_run_failing_with_an_overlong_reason_is_counted_as_finished() -> None:
    observer = FinishedRuns()
    store = MemoryRunStore()
    adapter = adapter_for(flow(uses="raisesALongMessage"), store, observer)
    await adapter.start_run("flow", {}, run_id="run-1")
    outcome = await handle(adapter, message(job()))
    assert (outcome.action, outcome.outcome) == ("ack", "failed")
    assert len(outcome.reason or "") > MAX_TEXT_CHARS
    assert len((await store.get("run-1")).reason or "") == MAX_TEXT_CHARS
    assert observer.finished == [("flow", "failed")]


async def test_starting_a_run_with_a_context_key_over_the_limit_names_the_key() -> None:
    adapter = adapter_for(flow())
    with pytest.raises(
        BadRequest, match=r"cannot start 'flow': context\.k{40}…: String should have at most 1024 "
    ):
        await adapter.start_run("flow", {"k" * (MAX_KEY_CHARS + 1): 1})


async def test_resuming_with_an_action_over_the_limit_names_the_field() -> None:
    adapter, _ = await started()
    with pytest.raises(BadRequest, match=r"cannot resume 'run-1': action: String should have"):
        await adapter.resume_with_action("run-1", "x" * (MAX_TEXT_CHARS + 1))


# ---- version skew -------------------------------------------------------------------------------


async def test_a_version_mismatch_is_retried_then_fails_the_run_on_the_last_delivery() -> None:
    store = MemoryRunStore()
    await adapter_for(flow("1"), store).start_run("flow", {}, run_id="run-1")
    newer = adapter_for(flow("2"), store)
    expected = (
        "Blueprint version mismatch for 'flow': the run uses version '1', this daemon has '2'"
    )
    for attempt in range(1, MAX_DELIVERIES):
        outcome = await handle(newer, message(job(), attempts=attempt))
        assert outcome == JobOutcome("retry", "version_skew", 7, expected)
        assert (await store.get("run-1")).status == "running"
    last = await handle(newer, message(job(), attempts=MAX_DELIVERIES))
    assert last == JobOutcome("ack", "failed", reason=expected)
    view = await store.get("run-1")
    assert (view.status, view.reason) == ("failed", expected)


async def test_an_unversioned_daemon_does_not_run_a_versioned_run() -> None:
    store = MemoryRunStore()
    await adapter_for(flow("1"), store).start_run("flow", {}, run_id="run-1")
    outcome = await handle(adapter_for(flow(), store), message(job()))
    assert (outcome.action, outcome.outcome) == ("retry", "version_skew")
    assert "uses version '1', this daemon has None" in (outcome.reason or "")


# ---- a failing run store ------------------------------------------------------------------------


class UnavailableStore(MemoryRunStore):
    """A run store whose claim call cannot be reached."""

    async def claim(self, run_id: str, request: ClaimRequest) -> ClaimResponse:
        raise StoreUnavailable("run store unreachable: connection refused")


class BrokenStore(MemoryRunStore):
    """A run store whose claim call hits a bug."""

    async def claim(self, run_id: str, request: ClaimRequest) -> ClaimResponse:
        raise RuntimeError("unexpected state")


async def test_an_unreachable_store_makes_the_job_retry() -> None:
    outcome = await handle(adapter_for(flow(), UnavailableStore()), message(job()))
    assert outcome == JobOutcome(
        "retry", "store_unavailable", 5, "run store unreachable: connection refused"
    )


async def test_an_unexpected_error_makes_the_job_retry_with_its_type() -> None:
    outcome = await handle(adapter_for(flow(), BrokenStore()), message(job()))
    assert outcome == JobOutcome("retry", "error", 5, "RuntimeError: unexpected state")
