"""Built-in nodes: wait, sleep, webhook, subflow, batch scatter/gather, loop-controller."""

from __future__ import annotations

import base64
import re
from datetime import UTC, datetime
from typing import Any

import pytest

from flowcraft_puller.engine.blueprint import Blueprint, NodeDef, load_blueprint
from flowcraft_puller.engine.builtins import (
    BUILTINS,
    AwaitSpec,
    BuiltinAwait,
    BuiltinCall,
    BuiltinDone,
    DynamicNode,
    child_run_id,
    subflow_failure,
    subflow_output,
)
from flowcraft_puller.engine.durations import DurationError, parse_duration_ms
from flowcraft_puller.engine.errors import FatalNodeError, FlowcraftError
from flowcraft_puller.engine.evaluators import PropertyEvaluator
from flowcraft_puller.engine.jsvalues import UNDEFINED
from flowcraft_puller.engine.nodes import NodeResult
from flowcraft_puller.runstore.protocol import RUN_ID_PATTERN

NOW_MS = 1_800_000_000_000


def node(node_id: str, uses: str = "echo", **fields: Any) -> dict[str, Any]:
    return {"id": node_id, "uses": uses, **fields}


def edge(source: str, target: str, **fields: Any) -> dict[str, Any]:
    return {"source": source, "target": target, **fields}


def call(
    bp: Blueprint,
    node_id: str,
    *,
    input: Any = UNDEFINED,
    context: dict[str, Any] | None = None,
    gen: int = 0,
    blueprints: dict[str, Blueprint] | None = None,
    hooks_base_url: str | None = "https://hooks.example.test/base/",
    max_loop_iterations: int = 10_000,
    node_def: NodeDef | None = None,
) -> BuiltinCall:
    return BuiltinCall(
        blueprint=bp,
        node=node_def or bp.node(node_id),
        run_id="run-1",
        gen=gen,
        input=input,
        context=context or {},
        now_ms=NOW_MS,
        evaluator=PropertyEvaluator(),
        blueprints=blueprints or {bp.id: bp},
        hooks_base_url=hooks_base_url,
        max_loop_iterations=max_loop_iterations,
    )


def single(uses: str, node_id: str = "Z", **fields: Any) -> Blueprint:
    return load_blueprint({"id": "one", "nodes": [node(node_id, uses, **fields)]})


def run_builtin(bp: Blueprint, node_id: str, **options: Any) -> Any:
    target = options.get("node_def") or bp.node(node_id)
    return BUILTINS[target.uses](call(bp, node_id, **options))


# ---- wait ---------------------------------------------------------------------------------------


def test_wait_awaits_an_external_event() -> None:
    outcome = run_builtin(single("wait"), "Z")
    assert outcome == BuiltinAwait(
        AwaitSpec("external_event", {"reason": "external_event"}, external=True)
    )


# ---- sleep --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("duration", "ms"),
    [
        (0, 0),
        (250, 250),
        (1.5, 1.5),
        ("10s", 10_000),
        ("5m", 300_000),
        ("1h", 3_600_000),
        ("2d", 172_800_000),
        ("0s", 0),
    ],
)
def test_sleep_durations_are_milliseconds_or_unit_strings(duration: object, ms: float) -> None:
    assert parse_duration_ms("Z", duration) == ms


@pytest.mark.parametrize(
    ("duration", "message"),
    [
        (
            "10x",
            "SleepNode 'Z' received an invalid duration string: '10x'. "
            "Expected format: '5m', '10s', '1h', '2d'",
        ),
        (
            "1.5s",
            "SleepNode 'Z' received an invalid duration string: '1.5s'. "
            "Expected format: '5m', '10s', '1h', '2d'",
        ),
        (
            " 5m",
            "SleepNode 'Z' received an invalid duration string: ' 5m'. "
            "Expected format: '5m', '10s', '1h', '2d'",
        ),
        (True, "SleepNode 'Z' received an invalid duration type: boolean"),
        (None, "SleepNode 'Z' received an invalid duration type: object"),
        ([5], "SleepNode 'Z' received an invalid duration type: object"),
        (UNDEFINED, "SleepNode 'Z' received an invalid duration type: undefined"),
        (-1, "SleepNode 'Z' received a negative duration."),
    ],
)
def test_bad_sleep_durations_give_the_typescript_texts(duration: object, message: str) -> None:
    with pytest.raises(DurationError) as caught:
        parse_duration_ms("Z", duration)
    assert str(caught.value) == message


def test_sleep_awaits_a_timer_that_passes_its_input_through() -> None:
    bp = single("sleep", params={"duration": "10s"})
    outcome = run_builtin(bp, "Z", input={"carried": 1})
    wake = NOW_MS + 10_000
    iso = datetime.fromtimestamp(wake / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    assert outcome == BuiltinAwait(
        AwaitSpec(
            "timer",
            {"reason": "timer", "wakeUpAt": iso},
            external=False,
            wake_at_ms=wake,
            result=NodeResult(output={"carried": 1}),
        )
    )


def test_sleep_without_input_completes_with_null() -> None:
    outcome = run_builtin(single("sleep", params={"duration": 0}), "Z")
    assert isinstance(outcome, BuiltinAwait)
    assert outcome.spec.wake_at_ms == NOW_MS
    assert outcome.spec.result == NodeResult(output=None)


def test_sleep_with_a_missing_duration_fails_with_the_undefined_text() -> None:
    with pytest.raises(FlowcraftError) as caught:
        run_builtin(single("sleep"), "Z")
    assert str(caught.value) == "SleepNode 'Z' received an invalid duration type: undefined"
    assert not caught.value.fatal


# ---- webhook ------------------------------------------------------------------------------------


def test_webhook_registers_a_url_with_an_unguessable_token() -> None:
    bp = load_blueprint({"id": "hook", "nodes": [node("a/b c", "webhook")]})
    first = run_builtin(bp, "a/b c")
    second = run_builtin(bp, "a/b c")
    assert isinstance(first, BuiltinAwait)
    assert isinstance(second, BuiltinAwait)
    spec = first.spec
    token = spec.hook_token
    assert token is not None
    assert token != second.spec.hook_token
    assert re.fullmatch(r"[A-Za-z0-9_-]+", token)
    assert 22 <= len(token) <= 200
    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    assert len(raw) * 8 >= 128
    assert spec.reason == "webhook"
    assert spec.external is True
    assert spec.details == {
        "reason": "webhook",
        "url": f"https://hooks.example.test/base/v1/hooks/run-1/a%2Fb%20c/{token}",
        "event": "webhook:a/b c",
    }


def test_webhook_without_a_public_url_is_a_fatal_error() -> None:
    with pytest.raises(FatalNodeError, match="public URL"):
        run_builtin(single("webhook"), "Z", hooks_base_url=None)


# ---- subflow ------------------------------------------------------------------------------------


CHILD = load_blueprint(
    {
        "id": "child",
        "nodes": [node("a", "inc"), node("b", "inc"), node("c", "inc")],
        "edges": [edge("a", "c"), edge("b", "c")],
    }
)
MULTI = load_blueprint(
    {"id": "multi", "nodes": [node("s", "inc"), node("t1"), node("t2")]}
    | {"edges": [edge("s", "t1"), edge("s", "t2")]}
)


def parent(params: dict[str, Any]) -> Blueprint:
    return load_blueprint({"id": "parent", "nodes": [node("P", "subflow", params=params)]})


def registry(bp: Blueprint) -> dict[str, Blueprint]:
    return {bp.id: bp, CHILD.id: CHILD, MULTI.id: MULTI}


def test_a_subflow_passes_its_input_to_every_child_start_node() -> None:
    bp = parent({"blueprintId": "child"})
    outcome = run_builtin(bp, "P", input=5, blueprints=registry(bp), gen=2)
    assert isinstance(outcome, BuiltinAwait)
    assert outcome.child is not None
    assert outcome.child.context == {"_inputs.a": 5, "_inputs.b": 5}
    assert outcome.child.blueprint is CHILD
    assert outcome.child.run_id == child_run_id("run-1", "P", 2)
    assert outcome.spec == AwaitSpec(
        "subflow",
        {"reason": "subflow", "childRunId": outcome.child.run_id, "blueprintId": "child"},
        external=False,
    )


def test_a_subflow_with_a_null_input_passes_null_and_without_input_passes_nothing() -> None:
    bp = parent({"blueprintId": "child"})
    with_null = run_builtin(bp, "P", input=None, blueprints=registry(bp))
    without = run_builtin(bp, "P", blueprints=registry(bp))
    assert with_null.child.context == {"_inputs.a": None, "_inputs.b": None}
    assert without.child.context == {}


def test_a_subflow_inputs_map_reads_context_keys_then_node_outputs() -> None:
    bp = parent({"blueprintId": "child", "inputs": {"x": "seed", "y": "A", "z": "gone"}})
    context = {"seed": "S", "_outputs.A": {"n": 1}, "_outputs.seed": "not used"}
    outcome = run_builtin(bp, "P", input=5, context=context, blueprints=registry(bp))
    assert outcome.child.context == {"x": "S", "y": {"n": 1}}


def test_child_run_ids_are_deterministic_valid_run_ids() -> None:
    first = child_run_id("run-1", "P", 0)
    assert first == child_run_id("run-1", "P", 0)
    assert first not in {child_run_id("run-1", "P", 1), child_run_id("run-2", "P", 0)}
    assert re.fullmatch(RUN_ID_PATTERN, first)


def test_a_subflow_without_blueprint_id_is_fatal_with_the_typescript_text() -> None:
    bp = parent({"blueprintId": "child"})
    bare = NodeDef(id="P", uses="subflow")
    with pytest.raises(FatalNodeError) as caught:
        run_builtin(bp, "P", node_def=bare)
    assert str(caught.value) == "Subflow node 'P' is missing 'blueprintId' parameter."


def test_a_subflow_of_an_unknown_blueprint_is_fatal_with_the_typescript_text() -> None:
    bp = parent({"blueprintId": "elsewhere"})
    with pytest.raises(FatalNodeError) as caught:
        run_builtin(bp, "P")
    assert str(caught.value) == "Sub-blueprint 'elsewhere' not found in runtime registry."


def test_subflow_output_with_a_single_terminal_is_that_terminal_output() -> None:
    done = subflow_output(parent({"blueprintId": "child"}).node("P"), CHILD, {"_outputs.c": 3})
    assert done == BuiltinDone(NodeResult(output=3))
    missing = subflow_output(parent({"blueprintId": "child"}).node("P"), CHILD, {})
    assert missing.result == NodeResult(output=None)


def test_subflow_output_with_several_terminals_maps_each_present_output() -> None:
    context = {"_outputs.s": 1, "_outputs.t1": "one", "_outputs.t2": None}
    done = subflow_output(parent({"blueprintId": "multi"}).node("P"), MULTI, context)
    assert done.result == NodeResult(output={"t1": "one", "t2": None})
    partial = subflow_output(parent({"blueprintId": "multi"}).node("P"), MULTI, {"_outputs.t2": 2})
    assert partial.result == NodeResult(output={"t2": 2})


def test_subflow_outputs_map_writes_parent_keys_and_outputs_the_whole_child_context() -> None:
    node_def = parent(
        {"blueprintId": "child", "outputs": {"p1": "c", "p2": "plain", "p3": "nul", "p4": "gone"}}
    ).node("P")
    context = {"_outputs.c": 3, "plain": "P", "_outputs.nul": None, "nul": "fallback"}
    done = subflow_output(node_def, CHILD, context)
    assert done.writes == {"p1": 3, "p2": "P", "p3": "fallback"}
    assert done.result == NodeResult(output=context)


def test_subflow_failure_uses_the_typescript_text() -> None:
    node_def = parent({"blueprintId": "child"}).node("P")
    assert str(subflow_failure(node_def, "failed", "Node 'a' execution failed: x")) == (
        "Sub-workflow 'child' did not complete successfully. Status: failed. "
        "Error: Node 'a' execution failed: x"
    )
    assert str(subflow_failure(node_def, "cancelled", None)).endswith("Error: Unknown error")


# ---- batch --------------------------------------------------------------------------------------


def batch(chunk: int | None = None) -> Blueprint:
    params: dict[str, Any] = {"workerUsesKey": "double", "gatherNodeId": "G"}
    if chunk is not None:
        params["chunkSize"] = chunk
    return load_blueprint(
        {
            "id": "batch",
            "nodes": [
                node("S", "batch-scatter", params=params),
                node("G", "batch-gather", params={"outputKey": "results"}),
            ],
            "edges": [edge("S", "G")],
        }
    )


def test_scatter_writes_every_item_and_releases_one_worker_per_item() -> None:
    outcome = run_builtin(batch(), "S", input=["a", "b", "c"])
    assert isinstance(outcome, BuiltinDone)
    batch_id = outcome.writes["G_batch"]["batchId"]
    workers = tuple(
        DynamicNode(f"double_{batch_id}_{i}", "double", f"_batch.S_{batch_id}_item_{i}", "G")
        for i in range(3)
    )
    assert outcome.dynamic == workers
    assert outcome.result == NodeResult(output={"gatherNodeId": "G", "hasMore": False})
    assert outcome.writes == {
        f"_batch.S_{batch_id}_item_0": "a",
        f"_batch.S_{batch_id}_item_1": "b",
        f"_batch.S_{batch_id}_item_2": "c",
        "S_currentIndex": 3,
        "G_hasMore": False,
        "G_allWorkerIds": [w.node_id for w in workers],
        "G_batch": {
            "scatterNodeId": "S",
            "batchId": batch_id,
            "workerUsesKey": "double",
            "chunkSize": 3,
            "total": 3,
        },
    }
    assert outcome.final
    assert outcome.write_output


def test_scatter_batch_ids_are_stable_per_run_node_and_generation() -> None:
    first = run_builtin(batch(), "S", input=[1]).writes["G_batch"]["batchId"]
    again = run_builtin(batch(), "S", input=[1]).writes["G_batch"]["batchId"]
    later = run_builtin(batch(), "S", input=[1], gen=1).writes["G_batch"]["batchId"]
    assert first == again
    assert first != later


def test_scatter_releases_only_the_first_chunk() -> None:
    outcome = run_builtin(batch(chunk=2), "S", input=[1, 2, 3])
    assert [w.node_id[-1] for w in outcome.dynamic] == ["0", "1"]
    assert outcome.writes["S_currentIndex"] == 2
    assert outcome.writes["G_hasMore"] is True
    assert outcome.result.output == {"gatherNodeId": "G", "hasMore": True}


@pytest.mark.parametrize("items", [UNDEFINED, None, []])
def test_scatter_of_nothing_releases_no_worker(items: object) -> None:
    outcome = run_builtin(batch(), "S", input=items)
    assert outcome.dynamic == ()
    assert outcome.writes["G_hasMore"] is False
    assert outcome.writes["G_allWorkerIds"] == []


def test_scatter_of_a_non_array_fails_with_the_typescript_text() -> None:
    with pytest.raises(FlowcraftError) as caught:
        run_builtin(batch(), "S", input={"a": 1})
    assert str(caught.value) == "Input for batch-scatter node 'S' must be an array."


def test_gather_releases_the_next_chunk_and_rearms_itself() -> None:
    scattered = run_builtin(batch(chunk=2), "S", input=[1, 2, 3])
    context = dict(scattered.writes)
    outcome = run_builtin(batch(chunk=2), "G", context=context)
    batch_id = context["G_batch"]["batchId"]
    worker = DynamicNode(f"double_{batch_id}_2", "double", f"_batch.S_{batch_id}_item_2", "G")
    assert outcome == BuiltinDone(
        NodeResult(),
        writes={
            "S_currentIndex": 3,
            "G_hasMore": False,
            "G_allWorkerIds": [*context["G_allWorkerIds"], worker.node_id],
        },
        rearm=("G",),
        dynamic=(worker,),
        final=False,
        write_output=False,
    )


def test_gather_collects_worker_outputs_in_item_order() -> None:
    context = {
        "G_allWorkerIds": ["w0", "w1", "w2", "w3"],
        "G_hasMore": False,
        "_outputs.w2": 6,
        "_outputs.w0": 2,
        "_outputs.w1": None,
    }
    outcome = run_builtin(batch(), "G", context=context)
    assert outcome == BuiltinDone(NodeResult(output=[2, None, 6]), writes={"results": [2, None, 6]})


def test_gather_writes_under_its_own_id_without_an_output_key() -> None:
    bp = load_blueprint(
        {
            "id": "b",
            "nodes": [
                node("S", "batch-scatter", params={"workerUsesKey": "w", "gatherNodeId": "G"}),
                node("G", "batch-gather"),
            ],
            "edges": [edge("S", "G")],
        }
    )
    outcome = run_builtin(bp, "G", context={"G_allWorkerIds": ["w0"], "_outputs.w0": 1})
    assert outcome.writes == {"G": [1]}


# ---- loop-controller ----------------------------------------------------------------------------


LOOP = load_blueprint(
    {
        "id": "loop",
        "nodes": [
            node("init"),
            node("L", "loop-controller", params={"condition": "keepGoing"}),
            node("body"),
            node("done"),
        ],
        "edges": [
            edge("init", "L"),
            edge("L", "body", action="continue"),
            edge("body", "L"),
            edge("L", "done", action="break"),
        ],
    }
)


@pytest.mark.parametrize("value", [True, 1, "0", [], {}])
def test_a_truthy_loop_condition_continues_and_rearms_the_loop(value: object) -> None:
    outcome = run_builtin(LOOP, "L", context={"keepGoing": value})
    assert outcome == BuiltinDone(
        NodeResult(action="continue"), rearm=("L", "body"), write_output=False
    )


@pytest.mark.parametrize("context", [{}, {"keepGoing": False}, {"keepGoing": 0}, {"result": 1}])
def test_a_falsy_loop_condition_breaks_with_a_null_output(context: dict[str, Any]) -> None:
    outcome = run_builtin(LOOP, "L", context=context)
    assert outcome == BuiltinDone(NodeResult(output=None, action="break"))


def test_the_loop_condition_is_evaluated_without_a_result_in_scope() -> None:
    bp = load_blueprint(
        {
            "id": "loop",
            "nodes": [
                node("init"),
                node("L", "loop-controller", params={"condition": "result.action"}),
                node("body"),
            ],
            "edges": [
                edge("init", "L"),
                edge("L", "body", action="continue"),
                edge("body", "L"),
            ],
        }
    )
    outcome = run_builtin(bp, "L", context={})
    assert outcome.result.action == "break"


def test_the_loop_guard_stops_a_loop_at_max_iterations() -> None:
    running = run_builtin(LOOP, "L", context={"keepGoing": True}, gen=2, max_loop_iterations=3)
    assert running.result.action == "continue"
    with pytest.raises(FatalNodeError) as caught:
        run_builtin(LOOP, "L", context={"keepGoing": True}, gen=3, max_loop_iterations=3)
    assert str(caught.value) == (
        "Loop 'L' exceeded max_loop_iterations (3); the run was stopped to prevent an infinite loop"
    )
