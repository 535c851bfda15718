"""The adapter: ``handle_job`` (claim → execute → commit) and the run-level operations.

It speaks the run-store and queue *protocols* only; which store and which queue are wired in
by the supervisor, the CLI or a test stack.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import anyio
import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from flowcraft_puller.engine.blueprint import Blueprint, NodeDef
from flowcraft_puller.engine.builtins import ChildRun, DynamicNode
from flowcraft_puller.engine.executor import Deferred
from flowcraft_puller.engine.jsonvalues import check_json
from flowcraft_puller.engine.nodes import NodeResult
from flowcraft_puller.engine.step import Commit, Engine, Fail, NodeJob, dynamic_node
from flowcraft_puller.queue.protocol import QueueMessage
from flowcraft_puller.runstore.protocol import (
    RUN_ID_PATTERN,
    AttemptsRequest,
    AwaitingSpec,
    AwaitingView,
    BadRequest,
    CancelRequest,
    ClaimRequest,
    ClaimResponse,
    CommitRequest,
    DynamicSpec,
    FailRequest,
    ParentLink,
    ReconcileResponse,
    Resolution,
    ResumeRequest,
    ResumeResponse,
    RunNotFound,
    RunStore,
    RunStoreError,
    RunView,
    StartRequest,
    StatusResponse,
    TopologyNode,
    Unauthorized,
    field_path,
)

log = structlog.get_logger("flowcraft_puller.adapter")

Action = Literal["ack", "retry", "leave"]
RejectCode = Literal["undecodable", "malformed", "unknown_blueprint", "run_not_found"]


@dataclass(frozen=True, slots=True)
class JobOutcome:
    """What to do with a message: ``ack`` it, ``retry`` it after a delay, or ``leave`` it leased
    so that it is redelivered. ``outcome`` is a bounded label for metrics and logs."""

    action: Action
    outcome: str
    delay_seconds: int = 0
    reason: str | None = None
    reject: RejectCode | None = None
    """Why a message was rejected (``outcome == "rejected"``), as a bounded code."""


class JobAbandoned(Exception):
    """Raised by a checkpoint hook to simulate a crash: the message is neither acked nor retried."""


class UnknownBlueprint(LookupError):
    """``start`` named a blueprint this daemon has not loaded."""


class _DynamicJob(BaseModel):
    model_config = ConfigDict(extra="ignore")
    uses: str = Field(min_length=1)
    inputs: str
    gather: str = Field(min_length=1)


class JobMessage(BaseModel):
    """A job message body (flowcraft's JobPayload plus our optional ``gen`` and ``dynamic``)."""

    model_config = ConfigDict(
        alias_generator=to_camel, validate_by_name=True, validate_by_alias=True, extra="ignore"
    )
    run_id: str = Field(pattern=RUN_ID_PATTERN)
    blueprint_id: str = Field(min_length=1)
    node_id: str = Field(min_length=1, max_length=512)
    gen: int | None = Field(default=None, ge=0)
    attempt: int | None = None
    is_last_attempt: bool | None = None
    dynamic: _DynamicJob | None = None


@dataclass(slots=True)
class AdapterSettings:
    lease_ms: int = 30_000
    """Execution lease when the caller gives no deadline (the visibility timeout)."""
    max_deliveries: int = 3
    """Deliveries after which a job that keeps hitting version skew fails its run (Cloudflare's
    consumer ``max_retries`` default)."""
    skew_retry_seconds: int = 10
    error_retry_seconds: int = 5


Checkpoint = Callable[[str], Awaitable[None]]


class AdapterObserver(Protocol):
    """What the adapter reports beyond job outcomes (node timings, finished runs, commits)."""

    def node_finished(self, blueprint: str, outcome: str, seconds: float) -> None: ...

    def run_finished(self, blueprint: str, status: str) -> None: ...

    def committed(self) -> None: ...


class _Unobserved:
    def node_finished(self, blueprint: str, outcome: str, seconds: float) -> None:
        return None

    def run_finished(self, blueprint: str, status: str) -> None:
        return None

    def committed(self) -> None:
        return None


_PATH_PART_CHARS = 40
"""Longer names in an error's field path are cut (a refused key may be thousands long)."""


def _shortened(part: int | str) -> int | str:
    if isinstance(part, str) and len(part) > _PATH_PART_CHARS:
        return part[:_PATH_PART_CHARS] + "…"
    return part


def _describe_validation(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors()[:5]:
        where = field_path(tuple(_shortened(p) for p in error["loc"])) or "body"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)


class Adapter:
    """Runs jobs against a run store with an engine; starts, resumes, cancels and repairs runs."""

    def __init__(
        self,
        engine: Engine,
        store: RunStore,
        settings: AdapterSettings | None = None,
        *,
        checkpoint: Checkpoint | None = None,
        observer: AdapterObserver | None = None,
    ) -> None:
        self.engine = engine
        self.store = store
        self.settings = settings or AdapterSettings()
        self._checkpoint = checkpoint
        self.observer = observer or _Unobserved()
        self._topologies: dict[tuple[str, int], dict[str, TopologyNode]] = {}

    async def _step(self, name: str) -> None:
        if self._checkpoint is not None:
            await self._checkpoint(name)

    # ---- handle_job ----------------------------------------------------------------------

    async def handle_job(
        self, message: QueueMessage, *, deadline: float | None = None
    ) -> JobOutcome:
        """Process one job message. Never raises, except :class:`JobAbandoned` from a checkpoint."""
        try:
            return await self._handle(message, deadline)
        except JobAbandoned:
            raise
        except RunStoreError as exc:
            log.warning(
                "run store refused a call", error=exc.message, code=exc.code, message_id=message.id
            )
            if exc.http_status >= 500 or isinstance(exc, Unauthorized):
                return JobOutcome(
                    "retry", "store_unavailable", self.settings.error_retry_seconds, exc.message
                )
            return JobOutcome("ack", "conflict", reason=exc.message)
        except Exception as exc:
            log.exception("job failed unexpectedly", message_id=message.id)
            return JobOutcome(
                "retry", "error", self.settings.error_retry_seconds, f"{type(exc).__name__}: {exc}"
            )

    def _reject(self, message: QueueMessage, reason: str, code: RejectCode) -> JobOutcome:
        log.error("rejected job message", message_id=message.id, reason=reason, code=code)
        return JobOutcome("ack", "rejected", reason=reason, reject=code)

    def _last_delivery(self, message: QueueMessage) -> bool:
        return message.attempts >= self.settings.max_deliveries

    async def _handle(self, message: QueueMessage, deadline: float | None) -> JobOutcome:
        if message.decode_error is not None:
            return self._reject(message, message.decode_error, "undecodable")
        try:
            job = JobMessage.model_validate(message.body)
        except ValidationError as exc:
            return self._reject(
                message, f"malformed job body: {_describe_validation(exc)}", "malformed"
            )
        structlog.contextvars.bind_contextvars(
            run_id=job.run_id, blueprint_id=job.blueprint_id, node_id=job.node_id
        )
        try:
            return await self._run_job(message, job, deadline)
        finally:
            structlog.contextvars.unbind_contextvars("run_id", "blueprint_id", "node_id")

    async def _run_job(
        self, message: QueueMessage, job: JobMessage, deadline: float | None
    ) -> JobOutcome:
        blueprint = self.engine.blueprints.get(job.blueprint_id)
        node = self._node(blueprint, job)
        if blueprint is None or node is None:
            what = (
                f"blueprint {job.blueprint_id!r} is not loaded"
                if blueprint is None
                else f"node {job.node_id!r} is not in blueprint {job.blueprint_id!r}"
            )
            if self._last_delivery(message):
                reason = f"{what} (after {message.attempts} deliveries)"
                return self._reject(message, reason, "unknown_blueprint")
            log.warning("job for unknown blueprint or node; retrying", reason=what)
            return JobOutcome("retry", "unknown_blueprint", self.settings.skew_retry_seconds, what)
        await self._step("decoded")
        token = uuid.uuid4().hex
        lease_ms = self.settings.lease_ms
        if deadline is not None:
            lease_ms = max(100, int((deadline - time.monotonic()) * 1000))
        try:
            claim = await self.store.claim(
                job.run_id,
                ClaimRequest(
                    node_id=node.id,
                    gen=job.gen,
                    token=token,
                    lease_ms=lease_ms,
                    blueprint_version=blueprint.version,
                ),
            )
        except RunNotFound:
            return self._reject(message, f"run {job.run_id!r} does not exist", "run_not_found")
        await self._step("claimed")
        state = claim.state
        if state in ("terminal", "completed", "not_ready"):
            outcome = {"terminal": "terminal", "completed": "duplicate", "not_ready": "stale"}[
                state
            ]
            return JobOutcome("ack", outcome, reason=claim.reason)
        if state == "busy":
            delay = max(1, math.ceil((claim.retry_after_ms or 1000) / 1000))
            return JobOutcome("retry", "busy", delay)
        if state == "version_mismatch":
            return await self._version_skew(message, job, blueprint, claim)
        node_job = NodeJob(
            blueprint=blueprint,
            node=node,
            run_id=job.run_id,
            gen=claim.gen,
            snapshot=claim.context or {},
            attempts_done=claim.attempts,
            last_error=claim.last_error,
            deadline=deadline,
            gather=job.dynamic.gather if job.dynamic is not None else None,
        )
        if state == "awaiting":
            assert claim.awaiting is not None
            return await self._awaiting(node_job, claim.awaiting, token, deadline)

        async def record(attempts: int, error: str) -> None:
            await self.store.attempts(
                job.run_id,
                AttemptsRequest(
                    node_id=node.id, gen=claim.gen, token=token, attempts=attempts, error=error
                ),
            )

        started = time.monotonic()
        try:
            step = await self.engine.run(node_job, record)
        except anyio.get_cancelled_exc_class():
            await self._release(job.run_id, node.id, claim, token)
            raise
        kind = {Commit: "completed", Fail: "failed", Deferred: "deferred"}[type(step)]
        if isinstance(step, Commit) and step.awaiting is not None:
            kind = "awaiting"
        self.observer.node_finished(blueprint.id, kind, time.monotonic() - started)
        await self._step("executed")
        if isinstance(step, Deferred):
            await self.store.attempts(
                job.run_id,
                AttemptsRequest(
                    node_id=node.id,
                    gen=claim.gen,
                    token=token,
                    attempts=step.attempts,
                    error=step.message,
                    release=True,
                    retry_after_ms=int(step.retry_after_ms),
                ),
            )
            return JobOutcome("ack", "deferred", reason=step.message)
        return await self._settle(node_job, step, token, deadline)

    async def _release(self, run_id: str, node_id: str, claim: ClaimResponse, token: str) -> None:
        """Drop our lease when a job is cancelled (shutdown), so a redelivery can run at once."""
        with anyio.move_on_after(2, shield=True):
            await self.store.attempts(
                run_id,
                AttemptsRequest(
                    node_id=node_id,
                    gen=claim.gen,
                    token=token,
                    attempts=claim.attempts,
                    release=True,
                ),
            )

    @staticmethod
    def _node(blueprint: Blueprint | None, job: JobMessage) -> NodeDef | None:
        if blueprint is None:
            return None
        if job.dynamic is not None:
            if job.dynamic.gather not in blueprint.node_map:
                return None
            return dynamic_node(
                DynamicNode(job.node_id, job.dynamic.uses, job.dynamic.inputs, job.dynamic.gather)
            )
        return blueprint.node_map.get(job.node_id)

    async def _version_skew(
        self, message: QueueMessage, job: JobMessage, blueprint: Blueprint, claim: ClaimResponse
    ) -> JobOutcome:
        reason = (
            f"Blueprint version mismatch for '{blueprint.id}': the run uses version "
            f"{claim.blueprint_version!r}, this daemon has {blueprint.version!r}"
        )
        if not self._last_delivery(message):
            log.warning("blueprint version skew; retrying", reason=reason)
            return JobOutcome("retry", "version_skew", self.settings.skew_retry_seconds, reason)
        await self.store.fail(job.run_id, FailRequest(reason=reason))
        log.error("failing run after repeated version skew", reason=reason)
        return JobOutcome("ack", "failed", reason=reason)

    async def _awaiting(
        self, job: NodeJob, awaiting: AwaitingView, token: str, deadline: float | None
    ) -> JobOutcome:
        if awaiting.resolution is not None:
            result = NodeResult(
                output=awaiting.resolution.output, action=awaiting.resolution.action
            )
            return await self._settle(job, self.engine.resume(job, result), token, deadline)
        if awaiting.reason == "subflow":
            child_id = str(awaiting.details.get("childRunId"))
            child = await self.store.get(child_id)
            if child.status == "awaiting" and awaiting.external:
                return JobOutcome("ack", "awaiting")
            outcome = await self.engine.resolve_subflow(
                job, awaiting.details, child.status, child.context, child.reason
            )
            if outcome is None:
                return JobOutcome("ack", "awaiting")
            return await self._settle(job, outcome, token, deadline)
        return JobOutcome("ack", "awaiting")

    async def _settle(
        self, job: NodeJob, outcome: Commit | Fail | Deferred, token: str, deadline: float | None
    ) -> JobOutcome:
        if isinstance(outcome, Fail):
            request = FailRequest(reason=outcome.reason, node_id=job.node.id, gen=job.gen)
            failed = await self.store.fail(job.run_id, request)
            if failed.reason == request.reason:
                self.observer.run_finished(job.blueprint.id, failed.status)
            log.info("node failed; run failed", reason=outcome.reason)
            return JobOutcome("ack", "failed", reason=outcome.reason)
        if isinstance(outcome, Deferred):
            return JobOutcome("retry", "deferred", max(1, math.ceil(outcome.retry_after_ms / 1000)))
        try:
            commit = self._commit_request(job, outcome, token)
            child = self._child_request(job, outcome.child) if outcome.child else None
        except ValidationError as exc:
            reason = (
                f"node {job.node.id!r} produced what the run store refuses: "
                f"{_describe_validation(exc)}"
            )
            return await self._settle(job, Fail(reason), token, deadline)
        if child is not None:
            await self.store.start(child[0], child[1])
        committed = await self.store.commit(job.run_id, commit)
        self.observer.committed()
        if committed.status == "completed" and not (committed.duplicate or committed.stale):
            self.observer.run_finished(job.blueprint.id, "completed")
        await self._step("committed")
        if deadline is not None and time.monotonic() > deadline:
            log.warning("lease expired before the ack; leaving the message to be redelivered")
            return JobOutcome("leave", "lease_expired")
        return JobOutcome("ack", "awaiting" if outcome.awaiting is not None else "completed")

    @staticmethod
    def _commit_request(job: NodeJob, commit: Commit, token: str) -> CommitRequest:
        awaiting = None
        if commit.awaiting is not None:
            spec = commit.awaiting
            awaiting = AwaitingSpec(
                reason=spec.reason,
                details=spec.details,
                external=spec.external,
                wake_at_ms=spec.wake_at_ms,
                hook_token=spec.hook_token,
                result=Resolution(output=spec.result.output, action=spec.result.action)
                if spec.result is not None
                else None,
            )
        result = None
        if commit.result is not None and commit.awaiting is None:
            result = Resolution(output=commit.result.output, action=commit.result.action)
        return CommitRequest(
            node_id=job.node.id,
            gen=job.gen,
            token=token,
            result=result,
            writes=commit.writes,
            deletes=list(commit.deletes),
            arrivals=list(commit.arrivals),
            skips=list(commit.skips),
            rearm=list(commit.rearm),
            dynamic=[
                DynamicSpec(node_id=d.node_id, uses=d.uses, inputs=d.inputs, gather=d.gather)
                for d in commit.dynamic
            ],
            awaiting=awaiting,
        )

    def _child_request(self, job: NodeJob, child: ChildRun) -> tuple[str, StartRequest]:
        """The child run's id and start request (``ValidationError`` when the store would
        refuse it, e.g. a context key over its limit)."""
        parent = ParentLink(
            run_id=job.run_id, blueprint_id=job.blueprint.id, node_id=job.node.id, gen=job.gen
        )
        return child.run_id, self._start_request(child.blueprint, child.context, parent)

    # ---- run operations -----------------------------------------------------------------

    def _topology(self, blueprint: Blueprint) -> dict[str, TopologyNode]:
        key = (blueprint.id, id(blueprint))
        cached = self._topologies.get(key)
        if cached is None:
            cached = {
                node: TopologyNode(succs=list(t.succs), join=t.join, back_preds=list(t.back_preds))
                for node, t in blueprint.analysis.topology.items()
            }
            self._topologies[key] = cached
        return cached

    def _start_request(
        self, blueprint: Blueprint, context: Mapping[str, Any], parent: ParentLink | None = None
    ) -> StartRequest:
        return StartRequest(
            blueprint_id=blueprint.id,
            blueprint_version=blueprint.version,
            context=dict(context),
            topology=self._topology(blueprint),
            start_nodes=list(blueprint.analysis.start_nodes),
            parent=parent,
        )

    async def start_run(
        self,
        blueprint_id: str,
        context: Mapping[str, Any] | None = None,
        *,
        run_id: str | None = None,
    ) -> str:
        """Start a run of a loaded blueprint; returns its run id. Starting twice is harmless."""
        blueprint = self.engine.blueprints.get(blueprint_id)
        if blueprint is None:
            known = ", ".join(sorted(self.engine.blueprints)) or "none"
            raise UnknownBlueprint(f"blueprint {blueprint_id!r} is not loaded (loaded: {known})")
        context = dict(context or {})
        check_json(context, "the initial context")
        try:
            request = self._start_request(blueprint, context)
        except ValidationError as exc:
            raise BadRequest(
                f"cannot start {blueprint_id!r}: {_describe_validation(exc)}"
            ) from None
        run_id = run_id or uuid.uuid4().hex
        await self.store.start(run_id, request)
        return run_id

    async def resume_with_action(
        self,
        run_id: str,
        action: str | None = None,
        output: Any = None,
        *,
        node_id: str | None = None,
    ) -> ResumeResponse:
        """Resume awaiting ``wait`` nodes with ``{output, action}``; routing uses the action.

        A subflow node that awaits because its child run awaits is resumed by resuming the child.
        """
        view = await self.store.get(run_id)
        for awaiting_id, awaiting in view.awaiting.items():
            if awaiting.reason != "subflow" or not awaiting.external:
                continue
            if node_id is not None and node_id != awaiting_id:
                continue
            child_id = str(awaiting.details.get("childRunId"))
            response = await self.resume_with_action(child_id, action, output)
            gen = view.nodes[awaiting_id].gen
            spec = AwaitingSpec(reason="subflow", details=awaiting.details, external=False)
            await self.store.commit(
                run_id,
                CommitRequest(node_id=awaiting_id, gen=gen, token=uuid.uuid4().hex, awaiting=spec),
            )
            return response
        try:
            request = ResumeRequest(action=action, node_id=node_id)
            if output is not None:
                request = ResumeRequest(action=action, output=output, node_id=node_id)
        except ValidationError as exc:
            raise BadRequest(f"cannot resume {run_id!r}: {_describe_validation(exc)}") from None
        return await self.store.resume(run_id, request)

    async def cancel(self, run_id: str, reason: str | None = None) -> StatusResponse:
        """Latch ``cancelled``; awaiting subflow children are cancelled too."""
        view = await self.store.get(run_id)
        response = await self.store.cancel(run_id, CancelRequest(reason=reason))
        for awaiting in view.awaiting.values():
            if awaiting.reason == "subflow":
                await self.cancel(str(awaiting.details.get("childRunId")), reason)
        return response

    async def reconcile(self, run_id: str) -> ReconcileResponse:
        """Re-queue the jobs of released nodes that lost their messages."""
        return await self.store.reconcile(run_id)

    async def status(self, run_id: str) -> RunView:
        return await self.store.get(run_id)
