"""One node step, from snapshot to commit plan: execute (or resume), fall back, route.

This is the pure core of ``handle_job``: the adapter claims, calls a function here, and
commits what it returns. Nothing here performs I/O.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from flowcraft_puller.engine.blueprint import BUILTIN_USES, Blueprint, NodeDef
from flowcraft_puller.engine.builtins import (
    BUILTINS,
    AwaitSpec,
    BuiltinAwait,
    BuiltinCall,
    BuiltinDone,
    ChildRun,
    DynamicNode,
    subflow_failure,
    subflow_output,
)
from flowcraft_puller.engine.context import Overlay
from flowcraft_puller.engine.evaluators import Evaluator, EvaluatorName, make_evaluator
from flowcraft_puller.engine.executor import (
    AttemptRecorder,
    Attempts,
    Deferred,
    ExecutionEnv,
    Failed,
    Succeeded,
    error_message,
    execute,
    implementation_missing,
)
from flowcraft_puller.engine.inputs import effective_inputs, resolve_input
from flowcraft_puller.engine.jsvalues import UNDEFINED
from flowcraft_puller.engine.nodes import NodeResult
from flowcraft_puller.engine.routing import route


@dataclass(frozen=True, slots=True)
class Commit:
    """What the run store must apply atomically for one node (see docs/protocol.md, commit)."""

    result: NodeResult | None
    writes: dict[str, Any] = field(default_factory=dict)
    deletes: tuple[str, ...] = ()
    arrivals: tuple[str, ...] = ()
    skips: tuple[str, ...] = ()
    rearm: tuple[str, ...] = ()
    dynamic: tuple[DynamicNode, ...] = ()
    awaiting: AwaitSpec | None = None
    child: ChildRun | None = None


@dataclass(frozen=True, slots=True)
class Fail:
    """The node failed for good: the run fails with ``reason``."""

    reason: str


StepOutcome = Commit | Fail | Deferred


@dataclass(frozen=True, slots=True)
class NodeJob:
    """One node of one run, as claimed: its definition, generation and context snapshot."""

    blueprint: Blueprint
    node: NodeDef
    run_id: str
    gen: int
    snapshot: Mapping[str, Any]
    attempts_done: int = 0
    last_error: str | None = None
    deadline: float | None = None
    gather: str | None = None
    """Set for a dynamic batch worker: the gather node it reports to."""


def failure_reason(node_id: str, message: str) -> str:
    """SEMANTICS rule 3: the reason keeps the original message."""
    return f"Node '{node_id}' execution failed: {message}"


def dynamic_node(worker: DynamicNode) -> NodeDef:
    """The node definition of a batch worker, rebuilt from its job message."""
    return NodeDef(id=worker.node_id, uses=worker.uses, inputs=worker.inputs)


async def _no_record(attempts: int, error: str) -> None:
    return None


@dataclass(slots=True)
class Engine:
    """Everything a daemon needs to run node steps: blueprints, code, evaluator, limits."""

    blueprints: Mapping[str, Blueprint]
    env: ExecutionEnv
    evaluator: EvaluatorName = "property"
    hooks_base_url: str | None = None
    max_loop_iterations: int = 10_000
    clock_ms: Callable[[], float] = field(default=lambda: time.time() * 1000)
    redact: Callable[[str], str] = field(default=lambda text: text)
    """Applied to every error text that leaves the daemon (failure reasons, recorded attempts,
    ``_catch_error``), so that a node error quoting a credential cannot store it."""
    _evaluators: dict[EvaluatorName, Evaluator] = field(default_factory=dict)

    def evaluator_for(self, blueprint: Blueprint) -> Evaluator:
        """The blueprint's own ``metadata.evaluator``, else the engine default."""
        name = blueprint.evaluator or self.evaluator
        if name not in self._evaluators:
            self._evaluators[name] = make_evaluator(name)
        return self._evaluators[name]

    async def run(self, job: NodeJob, record: AttemptRecorder) -> StepOutcome:
        """Execute the node (with retries and fallback) and plan its commit."""

        async def recorded(attempts: int, error: str) -> None:
            await record(attempts, self.redact(error))

        outcome = await self._execute(job, job.node, recorded, seed={})
        if isinstance(outcome, Commit):
            return outcome
        message = self.redact(outcome.message)
        if isinstance(outcome, Deferred):
            return dataclasses.replace(outcome, message=message)
        if outcome.fatal or job.node.config.fallback is None or job.gather is not None:
            return Fail(failure_reason(job.node.id, message))
        return await self._fall_back(job, message)

    def resume(self, job: NodeJob, result: NodeResult) -> Commit:
        """Complete an awaiting node (wait, webhook, timer) with ``result`` and route it."""
        return self._complete(job, result, {}, via_fallback=False)

    async def resolve_subflow(
        self,
        job: NodeJob,
        details: Mapping[str, Any],
        status: str,
        context: Mapping[str, Any],
        reason: str | None,
    ) -> StepOutcome | None:
        """The parent node's step once its child run changed status; None while it runs.

        A child that awaits makes the parent node await externally, so the parent run reports
        ``awaiting`` too (SEMANTICS rule 18).
        """
        child = self.blueprints.get(str(job.node.params.get("blueprintId")))
        if status == "completed" and child is not None:
            done = subflow_output(job.node, child, context)
            return self._complete(job, done.result, done.writes, via_fallback=False)
        if status in ("failed", "cancelled") or (status == "completed" and child is None):
            message = self.redact(error_message(subflow_failure(job.node, status, reason)))
            if job.node.config.fallback is None:
                return Fail(failure_reason(job.node.id, message))
            return await self._fall_back(job, message)
        if status == "awaiting":
            return Commit(result=None, awaiting=AwaitSpec("subflow", dict(details), external=True))
        return None

    async def _execute(
        self, job: NodeJob, node: NodeDef, record: AttemptRecorder, seed: dict[str, Any]
    ) -> Commit | Deferred | Failed:
        implementation = self.env.registry.get(node.uses)
        if implementation is None and node.uses in BUILTIN_USES:
            return self._builtin(job, node, seed)
        if implementation is None:
            return Failed(error_message(implementation_missing(node.uses)), fatal=True, attempts=0)
        attempts = Attempts(
            blueprint=job.blueprint,
            node=node,
            run_id=job.run_id,
            snapshot=job.snapshot,
            done=job.attempts_done if node is job.node else 0,
            last_error=job.last_error if node is job.node else None,
            deadline=job.deadline if node is job.node else None,
            seed_writes=seed,
        )
        env = (
            self.env
            if node is job.node
            else dataclasses.replace(self.env, inline_retry_limit_ms=math.inf)
        )
        outcome = await execute(env, attempts, implementation, record)
        if isinstance(outcome, Succeeded):
            return self._complete(
                job,
                outcome.result,
                outcome.buffer.writes,
                via_fallback=node is not job.node,
                deletes=tuple(outcome.buffer.deleted),
            )
        return outcome

    def _builtin(self, job: NodeJob, node: NodeDef, seed: dict[str, Any]) -> Commit | Failed:
        context = Overlay(job.snapshot, seed)
        raw_input = resolve_input(node.id, effective_inputs(job.blueprint, node), context)
        call = BuiltinCall(
            blueprint=job.blueprint,
            node=node,
            run_id=job.run_id,
            gen=job.gen,
            input=raw_input,
            context=context,
            now_ms=int(self.clock_ms()),
            evaluator=self.evaluator_for(job.blueprint),
            blueprints=self.blueprints,
            hooks_base_url=self.hooks_base_url,
            max_loop_iterations=self.max_loop_iterations,
        )
        if self.env.on_invoke is not None:
            self.env.on_invoke(job.run_id, node.id, 1)
        try:
            outcome = BUILTINS[node.uses](call)
        except Exception as exc:
            fatal = bool(getattr(exc, "fatal", False))
            return Failed(message=error_message(exc), fatal=fatal, attempts=1)
        if isinstance(outcome, BuiltinAwait):
            return Commit(
                result=None, writes=dict(seed), awaiting=outcome.spec, child=outcome.child
            )
        return self._done(job, outcome, seed, via_fallback=node is not job.node)

    def _done(
        self, job: NodeJob, done: BuiltinDone, seed: dict[str, Any], *, via_fallback: bool
    ) -> Commit:
        writes = {**seed, **done.writes}
        if not done.final:
            return Commit(result=done.result, writes=writes, rearm=done.rearm, dynamic=done.dynamic)
        commit = self._complete(
            job, done.result, writes, via_fallback=via_fallback, write_output=done.write_output
        )
        return dataclasses.replace(commit, rearm=done.rearm, dynamic=done.dynamic)

    async def _fall_back(self, job: NodeJob, message: str) -> StepOutcome:
        """Run the node's ``config.fallback`` in its place (SEMANTICS rule 4)."""
        fallback_id = job.node.config.fallback
        assert fallback_id is not None
        fallback = job.blueprint.node(fallback_id)
        seed = {
            "_catch_error": {
                "message": message,
                "nodeId": job.node.id,
                "blueprintId": job.blueprint.id,
            }
        }
        outcome = await self._execute(job, fallback, _no_record, seed)
        if isinstance(outcome, Failed):
            return Fail(failure_reason(fallback.id, self.redact(outcome.message)))
        if isinstance(outcome, Commit) and outcome.result is not None and outcome.awaiting is None:
            writes = {**outcome.writes, f"_outputs.{fallback.id}": outcome.result.output}
            return dataclasses.replace(outcome, writes=writes)
        return outcome

    def _complete(
        self,
        job: NodeJob,
        result: NodeResult,
        writes: Mapping[str, Any],
        *,
        via_fallback: bool,
        write_output: bool = True,
        deletes: tuple[str, ...] = (),
    ) -> Commit:
        """Plan a completion: the output, the node's writes, and the route's arrivals and skips."""
        all_writes = dict(writes)
        if write_output:
            all_writes[f"_outputs.{job.node.id}"] = result.output
        removed = set(deletes)
        if job.gather is not None:
            return Commit(
                result=result, writes=all_writes, deletes=tuple(removed), arrivals=(job.gather,)
            )
        context = Overlay(job.snapshot, all_writes, removed)
        decision = route(
            job.blueprint,
            job.node.id,
            result,
            context,
            self.evaluator_for(job.blueprint),
            via_fallback=via_fallback,
        )
        for key, value in decision.inputs.items():
            if value is UNDEFINED:
                all_writes.pop(key, None)
                removed.add(key)
            else:
                removed.discard(key)
                all_writes[key] = value
        return Commit(
            result=result,
            writes=all_writes,
            deletes=tuple(sorted(removed)),
            arrivals=decision.arrivals,
            skips=decision.skips,
        )
