"""Running node code: function and class nodes, attempts, delays, timeouts, fatal errors,
buffered context writes and JSON checks (engine/executor.py, engine/step.py)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any, ClassVar

import anyio
import pytest

from flowcraft_puller.engine.blueprint import Blueprint, load_blueprint
from flowcraft_puller.engine.errors import FatalNodeError, FlowcraftError
from flowcraft_puller.engine.executor import (
    Attempts,
    Deferred,
    ExecutionEnv,
    Failed,
    Outcome,
    Succeeded,
    execute,
)
from flowcraft_puller.engine.nodes import (
    BaseNode,
    NodeContext,
    NodeImplementation,
    NodeResult,
    to_node_result,
)
from flowcraft_puller.engine.step import Commit, Engine, Fail, NodeJob

pytestmark = pytest.mark.anyio


class Recorder:
    """An attempt recorder that keeps every call, in order, in a shared event log."""

    def __init__(self, log: list[Any] | None = None) -> None:
        self.log: list[Any] = log if log is not None else []
        self.calls: list[tuple[int, str]] = []

    async def __call__(self, attempts: int, error: str) -> None:
        self.calls.append((attempts, error))
        self.log.append(("recorded", attempts, error))


def one_node(config: dict[str, Any] | None = None, **fields: Any) -> Blueprint:
    return load_blueprint(
        {"id": "ex", "nodes": [{"id": "N", "uses": "impl", "config": config or {}, **fields}]}
    )


async def run_node(
    implementation: NodeImplementation,
    *,
    config: dict[str, Any] | None = None,
    snapshot: dict[str, Any] | None = None,
    done: int = 0,
    last_error: str | None = None,
    record: Recorder | None = None,
    inline_retry_limit_ms: float = 5_000.0,
    deadline: float | None = None,
    **fields: Any,
) -> Outcome:
    bp = one_node(config, **fields)
    env = ExecutionEnv(
        registry={"impl": implementation},
        dependencies={"service": "dep"},
        inline_retry_limit_ms=inline_retry_limit_ms,
    )
    request = Attempts(
        blueprint=bp,
        node=bp.node("N"),
        run_id="run-1",
        snapshot=snapshot or {},
        done=done,
        last_error=last_error,
        deadline=deadline,
    )
    return await execute(env, request, implementation, record or Recorder())


# ---- function nodes -----------------------------------------------------------------------------


async def test_a_sync_function_node_runs_in_a_worker_thread() -> None:
    seen: list[int] = []

    def sync_node(ctx: NodeContext) -> Any:
        seen.append(threading.get_ident())
        return ctx.input

    outcome = await run_node(sync_node, snapshot={"_inputs.N": 5})
    assert isinstance(outcome, Succeeded)
    assert outcome.result == NodeResult(output=5)
    assert len(seen) == 1
    assert seen[0] != threading.get_ident()


async def test_an_async_function_node_runs_on_the_event_loop() -> None:
    seen: list[int] = []

    async def async_node(ctx: NodeContext) -> Any:
        seen.append(threading.get_ident())
        return {"output": ctx.params["v"], "action": "go"}

    outcome = await run_node(async_node, params={"v": 3})
    assert isinstance(outcome, Succeeded)
    assert outcome.result == NodeResult(output=3, action="go")
    assert seen == [threading.get_ident()]


async def test_a_sync_node_may_use_the_sync_context_view() -> None:
    def sync_node(ctx: NodeContext) -> Any:
        ctx.context.sync.set("k", ctx.context.sync.get("seed", 0) + 1)
        return ctx.context.sync.get("k")

    outcome = await run_node(sync_node, snapshot={"seed": 1})
    assert isinstance(outcome, Succeeded)
    assert outcome.result.output == 2
    assert outcome.buffer.writes == {"k": 2}


@pytest.mark.parametrize(
    ("returned", "expected"),
    [
        (7, NodeResult(output=7)),
        (None, NodeResult(output=None)),
        ("text", NodeResult(output="text")),
        ([1, 2], NodeResult(output=[1, 2])),
        ({"output": 1}, NodeResult(output=1)),
        ({"action": "go"}, NodeResult(output=None, action="go")),
        ({"output": {"a": 1}, "action": "go"}, NodeResult(output={"a": 1}, action="go")),
        ({"output": 1, "action": 5}, NodeResult(output=1)),
        ({"output": 1, "extra": 2}, NodeResult(output={"output": 1, "extra": 2})),
        ({}, NodeResult(output={})),
        (NodeResult(output={"output": 1}), NodeResult(output={"output": 1})),
    ],
)
async def test_return_values_become_results(returned: object, expected: NodeResult) -> None:
    async def node_fn(ctx: NodeContext) -> Any:
        return returned

    outcome = await run_node(node_fn)
    assert isinstance(outcome, Succeeded)
    assert outcome.result == expected
    assert to_node_result(returned) == expected


async def test_the_node_context_carries_run_node_params_and_dependencies() -> None:
    seen: dict[str, Any] = {}

    async def node_fn(ctx: NodeContext) -> Any:
        seen.update(
            run_id=ctx.run_id,
            node_id=ctx.node_id,
            blueprint_id=ctx.blueprint_id,
            attempt=ctx.attempt,
            params=dict(ctx.params),
            dependencies=dict(ctx.dependencies),
            input=ctx.input,
        )
        ctx.params["list"].append("mutated")
        return None

    bp_params = {"list": [1]}
    outcome = await run_node(node_fn, params=bp_params, inputs="seed", snapshot={"seed": "S"})
    assert isinstance(outcome, Succeeded)
    assert seen == {
        "run_id": "run-1",
        "node_id": "N",
        "blueprint_id": "ex",
        "attempt": 1,
        "params": {"list": [1, "mutated"]},
        "dependencies": {"service": "dep"},
        "input": "S",
    }
    assert bp_params == {"list": [1]}


async def test_node_params_are_a_fresh_copy_for_every_execution() -> None:
    bp = one_node(params={"list": [1]})
    seen: list[Any] = []

    async def node_fn(ctx: NodeContext) -> Any:
        seen.append(list(ctx.params["list"]))
        ctx.params["list"].append(2)
        return None

    env = ExecutionEnv(registry={"impl": node_fn})
    for _ in range(2):
        request = Attempts(blueprint=bp, node=bp.node("N"), run_id="r", snapshot={})
        await execute(env, request, node_fn, Recorder())
    assert seen == [[1], [1]]
    assert bp.node("N").params == {"list": [1]}


# ---- attempts -----------------------------------------------------------------------------------


async def test_attempts_are_recorded_before_each_retry_and_delays_are_honoured() -> None:
    log: list[Any] = []

    async def flaky(ctx: NodeContext) -> Any:
        log.append(("attempt", ctx.attempt))
        if ctx.attempt < 3:
            raise RuntimeError(f"failure {ctx.attempt}")
        return "ok"

    record = Recorder(log)
    outcome = await run_node(flaky, config={"maxRetries": 3, "retryDelay": 2}, record=record)
    assert isinstance(outcome, Succeeded)
    assert outcome.result.output == "ok"
    assert log == [
        ("attempt", 1),
        ("recorded", 1, "failure 1"),
        ("attempt", 2),
        ("recorded", 2, "failure 2"),
        ("attempt", 3),
    ]


async def test_the_last_failed_attempt_is_not_recorded_and_keeps_its_message() -> None:
    async def always(ctx: NodeContext) -> Any:
        raise ValueError(f"bad {ctx.attempt}")

    record = Recorder()
    outcome = await run_node(always, config={"maxRetries": 2}, record=record)
    assert outcome == Failed(message="bad 2", fatal=False, attempts=2)
    assert record.calls == [(1, "bad 1")]


async def test_an_error_without_a_message_is_named_by_its_type() -> None:
    async def bare(ctx: NodeContext) -> Any:
        raise KeyError

    outcome = await run_node(bare)
    assert isinstance(outcome, Failed)
    assert outcome.message == "KeyError"


@pytest.mark.parametrize("max_retries", [0, -2])
async def test_zero_attempts_fails_without_calling_the_node(max_retries: int) -> None:
    calls: list[int] = []

    async def never(ctx: NodeContext) -> Any:
        calls.append(ctx.attempt)

    outcome = await run_node(never, config={"maxRetries": max_retries})
    assert isinstance(outcome, Failed)
    assert outcome.attempts == 0
    assert calls == []


async def test_a_redelivery_continues_the_attempt_count() -> None:
    attempts: list[int] = []

    async def flaky(ctx: NodeContext) -> Any:
        attempts.append(ctx.attempt)
        raise RuntimeError("again")

    outcome = await run_node(flaky, config={"maxRetries": 4}, done=2, last_error="earlier")
    assert attempts == [3, 4]
    assert outcome == Failed(message="again", fatal=False, attempts=4)


async def test_a_redelivery_after_the_last_attempt_fails_with_the_stored_error() -> None:
    async def never(ctx: NodeContext) -> Any:
        raise AssertionError("must not run")

    outcome = await run_node(never, config={"maxRetries": 2}, done=2, last_error="earlier")
    assert outcome == Failed(message="earlier", fatal=False, attempts=2)


async def test_a_retry_delay_beyond_the_inline_limit_is_deferred_to_the_queue() -> None:
    attempts: list[int] = []

    async def flaky(ctx: NodeContext) -> Any:
        attempts.append(ctx.attempt)
        raise RuntimeError("later")

    record = Recorder()
    outcome = await run_node(
        flaky,
        config={"maxRetries": 3, "retryDelay": 50},
        record=record,
        inline_retry_limit_ms=10,
    )
    assert outcome == Deferred(attempts=1, retry_after_ms=50, message="later")
    assert attempts == [1]
    assert record.calls == [(1, "later")]


async def test_a_retry_delay_past_the_lease_deadline_is_deferred() -> None:
    async def flaky(ctx: NodeContext) -> Any:
        raise RuntimeError("later")

    outcome = await run_node(
        flaky,
        config={"maxRetries": 3, "retryDelay": 1_000},
        deadline=time.monotonic() - 1,
    )
    assert isinstance(outcome, Deferred)
    assert outcome.attempts == 1


async def test_a_timed_out_attempt_fails_with_the_timeout_text_and_is_retried() -> None:
    attempts: list[int] = []
    cancelled: list[bool] = []

    async def hangs(ctx: NodeContext) -> Any:
        attempts.append(ctx.attempt)
        try:
            await anyio.sleep(30)
        finally:
            cancelled.append(ctx.cancel.is_set())

    outcome = await run_node(hangs, config={"maxRetries": 2, "timeout": 20})
    assert isinstance(outcome, Failed)
    assert "timed out after 20 ms" in outcome.message
    assert not outcome.fatal
    assert attempts == [1, 2]
    assert len(cancelled) == 2


async def test_a_timed_out_sync_node_sees_its_cancel_signal() -> None:
    signalled = threading.Event()

    def hangs(ctx: NodeContext) -> Any:
        if ctx.cancel.wait_sync(10):
            signalled.set()

    outcome = await run_node(hangs, config={"timeout": 15.5})
    assert isinstance(outcome, Failed)
    assert "timed out after 15.5 ms" in outcome.message
    with anyio.fail_after(5):
        while not signalled.is_set():
            await anyio.sleep(0.005)


async def test_a_node_that_finishes_in_time_is_not_timed_out() -> None:
    async def quick(ctx: NodeContext) -> Any:
        return "done"

    outcome = await run_node(quick, config={"timeout": 5_000})
    assert isinstance(outcome, Succeeded)


@pytest.mark.parametrize(
    "error",
    [FatalNodeError("stop now"), FlowcraftError("stop now", fatal=True)],
    ids=["FatalNodeError", "FlowcraftError-fatal"],
)
async def test_a_fatal_error_skips_the_remaining_attempts(error: Exception) -> None:
    attempts: list[int] = []

    async def fatal(ctx: NodeContext) -> Any:
        attempts.append(ctx.attempt)
        raise error

    record = Recorder()
    outcome = await run_node(fatal, config={"maxRetries": 3, "retryDelay": 1}, record=record)
    assert outcome == Failed(message="stop now", fatal=True, attempts=1)
    assert attempts == [1]
    assert record.calls == []


# ---- context writes -----------------------------------------------------------------------------


async def test_a_failed_attempts_writes_are_discarded_and_a_node_reads_its_own_writes() -> None:
    reads: list[Any] = []

    async def writer(ctx: NodeContext) -> Any:
        reads.append(await ctx.context.get("k"))
        await ctx.context.set("k", ctx.attempt)
        await ctx.context.delete("seed")
        reads.append((await ctx.context.get("k"), await ctx.context.has("seed")))
        if ctx.attempt == 1:
            raise RuntimeError("first attempt fails")
        return await ctx.context.to_dict()

    outcome = await run_node(writer, config={"maxRetries": 2}, snapshot={"seed": 1})
    assert isinstance(outcome, Succeeded)
    assert reads == [None, (1, False), None, (2, False)]
    assert outcome.buffer.writes == {"k": 2}
    assert outcome.buffer.deleted == {"seed"}
    assert outcome.result.output == {"k": 2}


async def test_values_read_from_the_context_are_copies() -> None:
    async def mutator(ctx: NodeContext) -> Any:
        value = await ctx.context.get("shared")
        value.append(2)
        return await ctx.context.get("shared")

    snapshot = {"shared": [1]}
    outcome = await run_node(mutator, snapshot=snapshot)
    assert isinstance(outcome, Succeeded)
    assert outcome.result.output == [1]
    assert snapshot == {"shared": [1]}


@pytest.mark.parametrize("key", ["_awaitingNodeIds", "_awaitingDetails"])
async def test_store_owned_keys_cannot_be_written(key: str) -> None:
    async def writer(ctx: NodeContext) -> Any:
        await ctx.context.set(key, [])

    outcome = await run_node(writer)
    assert isinstance(outcome, Failed)
    assert key in outcome.message


# ---- JSON checks --------------------------------------------------------------------------------


@pytest.fixture
def open_socket() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        yield sock
    finally:
        sock.close()


async def test_a_non_json_output_fails_naming_the_node_and_the_path(
    open_socket: socket.socket,
) -> None:
    async def returns_socket(ctx: NodeContext) -> Any:
        return {"a": [1, {"conn": open_socket}]}

    outcome = await run_node(returns_socket)
    assert isinstance(outcome, Failed)
    assert "the output of node 'N' is not JSON-serialisable" in outcome.message
    assert "socket at $.a[1].conn" in outcome.message


async def test_a_set_output_fails_and_is_retried_like_any_failure() -> None:
    attempts: list[int] = []

    async def returns_set(ctx: NodeContext) -> Any:
        attempts.append(ctx.attempt)
        return {1, 2}

    outcome = await run_node(returns_set, config={"maxRetries": 2})
    assert isinstance(outcome, Failed)
    assert "the output of node 'N' is not JSON-serialisable: set at $" in outcome.message
    assert attempts == [1, 2]


async def test_a_non_json_context_write_fails_naming_the_key() -> None:
    async def writes_set(ctx: NodeContext) -> Any:
        await ctx.context.set("bag", {"items": {3}})
        return 1

    outcome = await run_node(writes_set)
    assert isinstance(outcome, Failed)
    assert "context key 'bag' written by node 'N'" in outcome.message
    assert "set at $.items" in outcome.message


async def test_a_non_string_dict_key_is_reported() -> None:
    async def int_keys(ctx: NodeContext) -> Any:
        return {"ok": {1: "one"}}

    outcome = await run_node(int_keys)
    assert isinstance(outcome, Failed)
    assert "$.ok (key 1)" in outcome.message


# ---- class nodes --------------------------------------------------------------------------------


class Counted(BaseNode):
    """Counts its phases; ``exec`` fails ``params.failures`` times."""

    calls: ClassVar[list[str]] = []

    def prep(self, ctx: NodeContext) -> Any:
        Counted.calls.append("prep")
        return {"prepared": ctx.input}

    async def exec(self, prep_result: Any, ctx: NodeContext) -> Any:
        Counted.calls.append(f"exec{ctx.attempt}")
        if ctx.attempt <= self.params.get("failures", 0):
            raise RuntimeError(f"exec failed {ctx.attempt}")
        return prep_result

    def fallback(self, error: BaseException, ctx: NodeContext) -> Any:
        Counted.calls.append(f"fallback:{error}")
        return {"rescued": str(error)}

    def post(self, exec_result: Any, ctx: NodeContext) -> Any:
        Counted.calls.append("post")
        return NodeResult(output=exec_result, action="posted")

    def recover(self, error: BaseException, ctx: NodeContext) -> None:
        Counted.calls.append(f"recover:{error}")


@pytest.fixture
def counted() -> list[str]:
    Counted.calls = []
    return Counted.calls


async def test_class_node_phases_run_as_in_typescript(counted: list[str]) -> None:
    outcome = await run_node(Counted, config={"maxRetries": 3}, params={"failures": 5})
    assert isinstance(outcome, Succeeded)
    assert counted == [
        "prep",
        "exec1",
        "exec2",
        "exec3",
        "fallback:exec failed 3",
        "post",
        "recover:exec failed 3",
    ]
    assert outcome.result == NodeResult(output={"rescued": "exec failed 3"}, action="posted")


async def test_a_class_node_that_succeeds_on_a_retry_is_not_recovered(counted: list[str]) -> None:
    outcome = await run_node(
        Counted, config={"maxRetries": 3}, params={"failures": 1}, snapshot={"_inputs.N": 4}
    )
    assert isinstance(outcome, Succeeded)
    assert outcome.result == NodeResult(output={"prepared": 4}, action="posted")
    assert counted == ["prep", "exec1", "exec2", "post"]


async def test_a_class_node_without_errors_runs_each_phase_once(counted: list[str]) -> None:
    outcome = await run_node(Counted, config={"maxRetries": 3})
    assert isinstance(outcome, Succeeded)
    assert counted == ["prep", "exec1", "post"]


async def test_a_fatal_class_exec_error_skips_the_fallback_method() -> None:
    calls: list[str] = []

    class Fatal(BaseNode):
        def exec(self, prep_result: Any, ctx: NodeContext) -> Any:
            calls.append("exec")
            raise FatalNodeError("fatal in exec")

        def fallback(self, error: BaseException, ctx: NodeContext) -> Any:
            calls.append("fallback")

        def recover(self, error: BaseException, ctx: NodeContext) -> None:
            calls.append("recover")

    outcome = await run_node(Fatal, config={"maxRetries": 3})
    assert outcome == Failed(message="fatal in exec", fatal=True, attempts=1)
    assert calls == ["exec", "recover"]


async def test_a_class_node_whose_fallback_rethrows_fails() -> None:
    class Plain(BaseNode):
        def exec(self, prep_result: Any, ctx: NodeContext) -> Any:
            raise RuntimeError("no luck")

    outcome = await run_node(Plain, config={"maxRetries": 2})
    assert isinstance(outcome, Failed)
    assert outcome.message == "no luck"
    assert outcome.attempts == 2


async def test_a_class_node_gets_its_params_and_id() -> None:
    class Echo(BaseNode):
        def exec(self, prep_result: Any, ctx: NodeContext) -> Any:
            return {"params": dict(self.params), "id": self.node_id}

    outcome = await run_node(Echo, params={"p": 1})
    assert isinstance(outcome, Succeeded)
    assert outcome.result.output == {"params": {"p": 1}, "id": "N"}


# ---- the engine around the executor -------------------------------------------------------------


def engine_for(bp: Blueprint, registry: dict[str, NodeImplementation], **env: Any) -> Engine:
    return Engine(blueprints={bp.id: bp}, env=ExecutionEnv(registry=registry, **env))


def job(bp: Blueprint, node_id: str, snapshot: dict[str, Any] | None = None) -> NodeJob:
    return NodeJob(blueprint=bp, node=bp.node(node_id), run_id="r", gen=0, snapshot=snapshot or {})


async def test_a_node_failure_reason_keeps_the_original_message() -> None:
    async def boom(ctx: NodeContext) -> Any:
        raise RuntimeError("disk full")

    bp = one_node({"maxRetries": 2})
    outcome = await engine_for(bp, {"impl": boom}).run(job(bp, "N"), Recorder())
    assert outcome == Fail("Node 'N' execution failed: disk full")


async def test_an_unknown_implementation_is_a_fatal_failure_with_the_typescript_text() -> None:
    bp = load_blueprint(
        {
            "id": "x",
            "nodes": [
                {"id": "N", "uses": "nope", "config": {"fallback": "F"}},
                {"id": "F", "uses": "fb"},
            ],
        }
    )
    invoked: list[str] = []

    async def fb(ctx: NodeContext) -> Any:
        invoked.append("fb")

    outcome = await engine_for(bp, {"fb": fb}).run(job(bp, "N"), Recorder())
    assert outcome == Fail("Node 'N' execution failed: Implementation for 'nope' not found.")
    assert invoked == []


async def test_a_fallback_node_runs_in_place_with_the_caught_error() -> None:
    bp = load_blueprint(
        {
            "id": "fb",
            "nodes": [
                {"id": "N", "uses": "boom", "config": {"maxRetries": 2, "fallback": "F"}},
                {"id": "F", "uses": "rescue", "config": {"maxRetries": 2}},
                {"id": "E", "uses": "boom"},
            ],
            "edges": [{"source": "N", "target": "E"}],
        }
    )
    calls: list[str] = []

    async def boom(ctx: NodeContext) -> Any:
        calls.append(f"{ctx.node_id}{ctx.attempt}")
        raise RuntimeError("kaput")

    async def rescue(ctx: NodeContext) -> Any:
        calls.append(f"{ctx.node_id}{ctx.attempt}")
        if ctx.attempt == 1:
            raise RuntimeError("rescue hiccup")
        return {"caught": await ctx.context.get("_catch_error")}

    outcome = await engine_for(bp, {"boom": boom, "rescue": rescue}).run(job(bp, "N"), Recorder())
    assert isinstance(outcome, Commit)
    caught = {"message": "kaput", "nodeId": "N", "blueprintId": "fb"}
    assert calls == ["N1", "N2", "F1", "F2"]
    assert outcome.writes["_catch_error"] == caught
    assert outcome.writes["_outputs.N"] == {"caught": caught}
    assert outcome.writes["_outputs.F"] == {"caught": caught}
    assert outcome.arrivals == ("E",)


async def test_a_failing_fallback_fails_the_run_with_its_own_reason() -> None:
    bp = load_blueprint(
        {
            "id": "fb",
            "nodes": [
                {"id": "N", "uses": "boom", "config": {"fallback": "F"}},
                {"id": "F", "uses": "boom"},
            ],
        }
    )

    async def boom(ctx: NodeContext) -> Any:
        raise RuntimeError(f"{ctx.node_id} broke")

    outcome = await engine_for(bp, {"boom": boom}).run(job(bp, "N"), Recorder())
    assert outcome == Fail("Node 'F' execution failed: F broke")


async def test_a_fatal_error_skips_the_fallback_node() -> None:
    bp = load_blueprint(
        {
            "id": "fb",
            "nodes": [
                {"id": "N", "uses": "fatal", "config": {"maxRetries": 3, "fallback": "F"}},
                {"id": "F", "uses": "rescue"},
            ],
        }
    )
    calls: list[str] = []

    async def fatal(ctx: NodeContext) -> Any:
        calls.append("fatal")
        raise FatalNodeError("unrecoverable")

    async def rescue(ctx: NodeContext) -> Any:
        calls.append("rescue")

    outcome = await engine_for(bp, {"fatal": fatal, "rescue": rescue}).run(job(bp, "N"), Recorder())
    assert outcome == Fail("Node 'N' execution failed: unrecoverable")
    assert calls == ["fatal"]


async def test_a_non_json_output_fails_the_step_with_the_node_and_path() -> None:
    async def returns_set(ctx: NodeContext) -> Any:
        return {"tags": {"a"}}

    bp = one_node()
    outcome = await engine_for(bp, {"impl": returns_set}).run(job(bp, "N"), Recorder())
    assert isinstance(outcome, Fail)
    assert outcome.reason.startswith("Node 'N' execution failed: the output of node 'N'")
    assert "set at $.tags" in outcome.reason


async def test_every_invocation_is_reported_to_the_invoke_hook() -> None:
    seen: list[tuple[str, str, int]] = []

    async def flaky(ctx: NodeContext) -> Any:
        if ctx.attempt < 2:
            raise RuntimeError("again")
        return 1

    bp = one_node({"maxRetries": 3})
    engine = engine_for(bp, {"impl": flaky}, on_invoke=lambda r, n, a: seen.append((r, n, a)))
    outcome = await engine.run(job(bp, "N"), Recorder())
    assert isinstance(outcome, Commit)
    assert seen == [("r", "N", 1), ("r", "N", 2)]


async def test_a_fallback_node_with_a_retry_delay_reaches_its_later_attempts() -> None:
    bp = load_blueprint(
        {
            "id": "fb",
            "nodes": [
                {"id": "N", "uses": "boom", "config": {"fallback": "F"}},
                {"id": "F", "uses": "flaky", "config": {"maxRetries": 2, "retryDelay": 50}},
            ],
        }
    )
    attempts: list[int] = []

    async def boom(ctx: NodeContext) -> Any:
        raise RuntimeError("N broke")

    async def flaky(ctx: NodeContext) -> Any:
        attempts.append(ctx.attempt)
        if ctx.attempt == 1:
            raise RuntimeError("F hiccup")
        return "rescued"

    engine = engine_for(bp, {"boom": boom, "flaky": flaky})
    done, last_error = 0, None
    outcome: Any = None
    for _ in range(3):
        delivery = NodeJob(
            blueprint=bp,
            node=bp.node("N"),
            run_id="r",
            gen=0,
            snapshot={},
            attempts_done=done,
            last_error=last_error,
            deadline=time.monotonic() + 0.01,
        )
        outcome = await engine.run(delivery, Recorder())
        if not isinstance(outcome, Deferred):
            break
        done, last_error = max(done, outcome.attempts), outcome.message
    assert isinstance(outcome, Commit)
    assert outcome.writes["_outputs.N"] == "rescued"
    assert 2 in attempts


async def test_error_texts_that_leave_the_engine_are_redacted() -> None:
    blueprint = load_blueprint(
        {
            "id": "leaky",
            "nodes": [
                {"id": "A", "uses": "leak", "config": {"maxRetries": 2, "fallback": "F"}},
                {"id": "F", "uses": "catch"},
            ],
        }
    )
    seen: list[Any] = []

    async def leak(ctx: NodeContext) -> Any:
        raise RuntimeError("auth failed with token s3cr3t-value")

    async def catch(ctx: NodeContext) -> Any:
        seen.append(await ctx.context.get("_catch_error"))
        raise RuntimeError("fallback saw s3cr3t-value too")

    engine = Engine(
        blueprints={"leaky": blueprint},
        env=ExecutionEnv(registry={"leak": leak, "catch": catch}),
        redact=lambda text: text.replace("s3cr3t-value", "[redacted]"),
    )
    recorded: list[str] = []

    async def record(attempts: int, error: str) -> None:
        recorded.append(error)

    job = NodeJob(blueprint=blueprint, node=blueprint.node("A"), run_id="r", gen=0, snapshot={})
    outcome = await engine.run(job, record)
    assert outcome == Fail("Node 'F' execution failed: fallback saw [redacted] too")
    assert recorded == ["auth failed with token [redacted]"]
    assert seen[0]["message"] == "auth failed with token [redacted]"
