"""Built-in nodes: wait, sleep, webhook, subflow, batch-scatter, batch-gather, loop-controller.

Built-ins return *effects* the run store applies atomically with their completion (awaiting,
timers, dynamic jobs, loop re-arming) instead of plain outputs. A registry entry with the same
``uses`` key overrides a built-in, as in the TypeScript engine.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import quote

from flowcraft_puller.engine.blueprint import MAX_WORKER_USES_CHARS, Blueprint, NodeDef
from flowcraft_puller.engine.durations import DurationError, parse_duration_ms
from flowcraft_puller.engine.errors import FatalNodeError, FlowcraftError
from flowcraft_puller.engine.evaluators import Evaluator
from flowcraft_puller.engine.jsvalues import UNDEFINED, truthy
from flowcraft_puller.engine.nodes import NodeResult

AwaitReason = Literal["external_event", "timer", "webhook", "subflow"]
_BATCH_NAMESPACE = uuid.UUID("6f1c2b1e-58a4-4a8e-9d1e-7c0c5a4f2b10")


@dataclass(frozen=True, slots=True)
class DynamicNode:
    """A node created at run time (a batch worker), carried in its job message."""

    node_id: str
    uses: str
    inputs: str
    gather: str


@dataclass(frozen=True, slots=True)
class AwaitSpec:
    """How an awaiting node resumes. ``external`` ones make a quiet run ``awaiting``."""

    reason: AwaitReason
    details: dict[str, Any]
    external: bool
    wake_at_ms: int | None = None
    hook_token: str | None = None
    result: NodeResult | None = None
    """For timers: the result the node completes with when the timer fires."""


@dataclass(frozen=True, slots=True)
class ChildRun:
    """A subflow's child run, started (idempotently) before the parent node awaits it."""

    run_id: str
    blueprint: Blueprint
    context: dict[str, Any]


@dataclass(frozen=True, slots=True)
class BuiltinDone:
    """A built-in finished. ``final=False`` means it re-armed itself and routes nothing yet."""

    result: NodeResult
    writes: dict[str, Any] = field(default_factory=dict)
    rearm: tuple[str, ...] = ()
    dynamic: tuple[DynamicNode, ...] = ()
    final: bool = True
    write_output: bool = True


@dataclass(frozen=True, slots=True)
class BuiltinAwait:
    spec: AwaitSpec
    child: ChildRun | None = None


BuiltinOutcome = BuiltinDone | BuiltinAwait


@dataclass(frozen=True, slots=True)
class BuiltinCall:
    """Everything a built-in may look at."""

    blueprint: Blueprint
    node: NodeDef
    run_id: str
    gen: int
    input: Any
    context: Mapping[str, Any]
    now_ms: int
    evaluator: Evaluator
    blueprints: Mapping[str, Blueprint]
    hooks_base_url: str | None
    max_loop_iterations: int


def child_run_id(run_id: str, node_id: str, gen: int) -> str:
    """The deterministic id of a subflow's child run, so a redelivery finds the same child."""
    digest = hashlib.sha256(f"{run_id}\0{node_id}\0{gen}".encode()).hexdigest()[:32]
    return f"sub-{digest}"


def _wait(call: BuiltinCall) -> BuiltinOutcome:
    return BuiltinAwait(AwaitSpec("external_event", {"reason": "external_event"}, external=True))


def _sleep(call: BuiltinCall) -> BuiltinOutcome:
    try:
        duration = parse_duration_ms(call.node.id, call.node.params.get("duration", UNDEFINED))
    except DurationError as exc:
        raise FlowcraftError(str(exc)) from None
    wake_at = call.now_ms + int(duration)
    wake_iso = datetime.fromtimestamp(wake_at / 1000, UTC).isoformat(timespec="milliseconds")
    output = None if call.input is UNDEFINED else call.input
    spec = AwaitSpec(
        "timer",
        {"reason": "timer", "wakeUpAt": wake_iso.replace("+00:00", "Z")},
        external=False,
        wake_at_ms=wake_at,
        result=NodeResult(output=output),
    )
    return BuiltinAwait(spec)


def _webhook(call: BuiltinCall) -> BuiltinOutcome:
    if not call.hooks_base_url:
        raise FatalNodeError(
            f"webhook node '{call.node.id}' needs the coordinator's public URL "
            "(configure coordinator.public_url)"
        )
    token = secrets.token_urlsafe(24)
    base = call.hooks_base_url.rstrip("/")
    url = f"{base}/v1/hooks/{quote(call.run_id, safe='')}/{quote(call.node.id, safe='')}/{token}"
    details = {"reason": "webhook", "url": url, "event": f"webhook:{call.node.id}"}
    return BuiltinAwait(AwaitSpec("webhook", details, external=True, hook_token=token))


def _subflow(call: BuiltinCall) -> BuiltinOutcome:
    params = call.node.params
    blueprint_id = params.get("blueprintId")
    if not isinstance(blueprint_id, str) or not blueprint_id:
        raise FatalNodeError(f"Subflow node '{call.node.id}' is missing 'blueprintId' parameter.")
    child = call.blueprints.get(blueprint_id)
    if child is None:
        raise FatalNodeError(f"Sub-blueprint '{blueprint_id}' not found in runtime registry.")
    context: dict[str, Any] = {}
    mapping = params.get("inputs")
    if isinstance(mapping, Mapping):
        for child_key, parent_key in mapping.items():
            value = call.context.get(parent_key, UNDEFINED)
            if value is UNDEFINED:
                value = call.context.get(f"_outputs.{parent_key}", UNDEFINED)
            if value is not UNDEFINED:
                context[child_key] = value
    elif call.input is not UNDEFINED:
        for start in child.analysis.start_nodes:
            context[f"_inputs.{start}"] = call.input
    run_id = child_run_id(call.run_id, call.node.id, call.gen)
    details = {"reason": "subflow", "childRunId": run_id, "blueprintId": blueprint_id}
    return BuiltinAwait(
        AwaitSpec("subflow", details, external=False), ChildRun(run_id, child, context)
    )


def subflow_output(
    node: NodeDef, child: Blueprint, child_context: Mapping[str, Any]
) -> BuiltinDone:
    """The parent node's result once its child run completed (TS §7.4)."""
    mapping = node.params.get("outputs")
    if isinstance(mapping, Mapping):
        writes: dict[str, Any] = {}
        for parent_key, child_key in mapping.items():
            value = child_context.get(f"_outputs.{child_key}")
            if value is None:
                value = child_context.get(child_key, UNDEFINED)
            if value is not UNDEFINED:
                writes[parent_key] = value
        return BuiltinDone(NodeResult(output=dict(child_context)), writes=writes)
    terminals = child.analysis.terminal_nodes
    if len(terminals) == 1:
        return BuiltinDone(NodeResult(output=child_context.get(f"_outputs.{terminals[0]}")))
    outputs = {
        t: child_context[f"_outputs.{t}"] for t in terminals if f"_outputs.{t}" in child_context
    }
    return BuiltinDone(NodeResult(output=outputs))


def subflow_failure(node: NodeDef, status: str, reason: str | None) -> FlowcraftError:
    """The error of a subflow node whose child run failed or was cancelled (TS text)."""
    blueprint_id = node.params.get("blueprintId")
    return FlowcraftError(
        f"Sub-workflow '{blueprint_id}' did not complete successfully. "
        f"Status: {status}. Error: {reason or 'Unknown error'}"
    )


def _worker_nodes(
    batch: Mapping[str, Any], start: int, end: int, gather: str
) -> tuple[DynamicNode, ...]:
    scatter, batch_id, uses = batch["scatterNodeId"], batch["batchId"], batch["workerUsesKey"]
    return tuple(
        DynamicNode(f"{uses}_{batch_id}_{i}", uses, f"_batch.{scatter}_{batch_id}_item_{i}", gather)
        for i in range(start, end)
    )


def _batch_scatter(call: BuiltinCall) -> BuiltinOutcome:
    node, params = call.node, call.node.params
    items = [] if call.input is UNDEFINED or call.input is None else call.input
    if not isinstance(items, list):
        raise FlowcraftError(f"Input for batch-scatter node '{node.id}' must be an array.")
    uses, gather = params.get("workerUsesKey"), params.get("gatherNodeId")
    if not isinstance(uses, str) or not isinstance(gather, str):
        raise FatalNodeError(
            "BatchScatterNode requires 'workerUsesKey' and 'gatherNodeId' parameters."
        )
    if len(uses) > MAX_WORKER_USES_CHARS:
        raise FatalNodeError(
            f"batch-scatter node '{node.id}': workerUsesKey has {len(uses)} characters; "
            f"at most {MAX_WORKER_USES_CHARS} fit in its workers' node ids."
        )
    chunk = params.get("chunkSize") or len(items) or 1
    batch_id = uuid.uuid5(_BATCH_NAMESPACE, f"{call.run_id}\0{node.id}\0{call.gen}").hex[:12]
    batch = {
        "scatterNodeId": node.id,
        "batchId": batch_id,
        "workerUsesKey": uses,
        "chunkSize": chunk,
        "total": len(items),
    }
    end = min(chunk, len(items))
    workers = _worker_nodes(batch, 0, end, gather)
    writes: dict[str, Any] = {
        f"_batch.{node.id}_{batch_id}_item_{i}": item for i, item in enumerate(items)
    }
    writes[f"{node.id}_currentIndex"] = end
    writes[f"{gather}_hasMore"] = end < len(items)
    writes[f"{gather}_allWorkerIds"] = [w.node_id for w in workers]
    writes[f"{gather}_batch"] = batch
    output = {"gatherNodeId": gather, "hasMore": end < len(items)}
    return BuiltinDone(NodeResult(output=output), writes=writes, dynamic=workers)


def _batch_gather(call: BuiltinCall) -> BuiltinOutcome:
    node, context = call.node, call.context
    batch = context.get(f"{node.id}_batch")
    worker_ids = list(context.get(f"{node.id}_allWorkerIds") or [])
    if isinstance(batch, Mapping) and truthy(context.get(f"{node.id}_hasMore")):
        scatter = batch["scatterNodeId"]
        start = int(context.get(f"{scatter}_currentIndex", 0))
        end = min(start + int(batch["chunkSize"]), int(batch["total"]))
        workers = _worker_nodes(batch, start, end, node.id)
        writes = {
            f"{scatter}_currentIndex": end,
            f"{node.id}_hasMore": end < int(batch["total"]),
            f"{node.id}_allWorkerIds": worker_ids + [w.node_id for w in workers],
        }
        return BuiltinDone(
            NodeResult(),
            writes=writes,
            rearm=(node.id,),
            dynamic=workers,
            final=False,
            write_output=False,
        )
    results = [context[f"_outputs.{w}"] for w in worker_ids if f"_outputs.{w}" in context]
    output_key = node.params.get("outputKey") or node.id
    return BuiltinDone(NodeResult(output=results), writes={str(output_key): results})


def _loop_controller(call: BuiltinCall) -> BuiltinOutcome:
    node = call.node
    if call.gen >= call.max_loop_iterations:
        raise FatalNodeError(
            f"Loop '{node.id}' exceeded max_loop_iterations ({call.max_loop_iterations}); "
            "the run was stopped to prevent an infinite loop"
        )
    condition = node.params.get("condition")
    keep_going = isinstance(condition, str) and truthy(
        call.evaluator.evaluate(condition, call.context)
    )
    if keep_going:
        rearm = call.blueprint.analysis.rearm_set(node.id)
        return BuiltinDone(NodeResult(action="continue"), rearm=rearm, write_output=False)
    return BuiltinDone(NodeResult(output=None, action="break"))


BUILTINS: Mapping[str, Callable[[BuiltinCall], BuiltinOutcome]] = {
    "wait": _wait,
    "sleep": _sleep,
    "webhook": _webhook,
    "subflow": _subflow,
    "batch-scatter": _batch_scatter,
    "batch-gather": _batch_gather,
    "loop-controller": _loop_controller,
}
