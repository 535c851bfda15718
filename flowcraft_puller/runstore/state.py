"""The per-run state machine behind every run store (docs/protocol.md, "Semantics").

It holds one run's context, node generations, join arrivals, leases, awaiting nodes, terminal
latch, coordination keys and outbox. It evaluates no workflow logic: the daemon says what each
node wrote, which successors it reached and which it skipped; the state machine records that
atomically, resolves joins from the topology given at start, and queues released jobs.

Every method takes ``now_ms`` so that the machine itself is deterministic; the stores decide
what time it is and deliver the outbox.
"""

from __future__ import annotations

import hmac
import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from flowcraft_puller.runstore.protocol import (
    TERMINAL_STATUSES,
    AttemptsRequest,
    AwaitingSpec,
    AwaitingView,
    BadRequest,
    CancelRequest,
    ClaimRequest,
    ClaimResponse,
    CommitRequest,
    CommitResponse,
    Conflict,
    FailRequest,
    HookResponse,
    NodeRef,
    NodeState,
    NodeView,
    Op,
    OpsResponse,
    ParentLink,
    ReconcileResponse,
    Resolution,
    ResumeRequest,
    ResumeResponse,
    RunNotFound,
    RunStatus,
    RunView,
    StartRequest,
    StatusResponse,
    TopologyNode,
)

MAX_DELAY_MS: Final = 43_200_000
"""The longest queue delivery delay (12 h, Cloudflare's documented limit); longer waits chain."""
MAX_VALUE_BYTES: Final = 2_000_000
"""The largest serialized JSON value (a Durable Object SQLite row holds at most 2 MB)."""


def _check_size(value: Any, field: str, what: str = "value") -> None:
    """Refuse ``value`` if its compact JSON is over MAX_VALUE_BYTES (400 naming ``field``)."""
    size = len(orjson.dumps(value))
    if size > MAX_VALUE_BYTES:
        raise BadRequest(
            f"{what} of {size} bytes exceeds the {MAX_VALUE_BYTES}-byte limit of one stored value",
            field=field,
        )


_RESUMABLE: Final = frozenset({"external_event", "webhook"})


@dataclass(slots=True)
class OutboxJob:
    """A job message waiting to be sent to the queue, ``delay_ms`` after it was written."""

    body: dict[str, Any]
    delay_ms: int = 0


@dataclass(slots=True)
class Awaiting:
    spec: AwaitingSpec
    resolution: Resolution | None = None
    next_timer_ms: int | None = None


@dataclass(slots=True)
class GenRecord:
    """One generation of one node: its join arrivals, lease, attempts and outcome."""

    state: NodeState = "idle"
    arrivals: dict[str, bool] = field(default_factory=dict)
    """Source node → True for an arrival, False for a skip."""
    dynamic_preds: list[str] = field(default_factory=list)
    attempts: int = 0
    last_error: str | None = None
    lease_token: str | None = None
    lease_until_ms: int = 0
    not_before_ms: int = 0
    result: Resolution | None = None
    released: list[NodeRef] | None = None
    awaiting: Awaiting | None = None
    hook_token: str | None = None


@dataclass(slots=True)
class DynamicInfo:
    source: str
    spec: dict[str, Any]


@dataclass(slots=True)
class Coordination:
    value: Any
    expires_at_ms: int | None


class RunState:
    """One run. Create with :meth:`start`; mutate only through the protocol methods."""

    def __init__(self, run_id: str, request: StartRequest, now_ms: int) -> None:
        self.run_id = run_id
        self.blueprint_id = request.blueprint_id
        self.blueprint_version = request.blueprint_version
        self.parent: ParentLink | None = request.parent
        self.status: RunStatus = "running"
        self.reason: str | None = None
        self.context: dict[str, Any] = dict(request.context)
        self.topology: dict[str, TopologyNode] = dict(request.topology)
        self.preds: dict[str, list[str]] = {node: [] for node in self.topology}
        self.gens: dict[str, int] = dict.fromkeys(self.topology, 0)
        self.records: dict[tuple[str, int], GenRecord] = {}
        self.dynamic: dict[str, DynamicInfo] = {}
        self.pending: set[tuple[str, int]] = set()
        self.awaiting: set[tuple[str, int]] = set()
        self.coordination: dict[str, Coordination] = {}
        self.outbox: list[OutboxJob] = []
        self.created_at_ms = now_ms
        self.updated_at_ms = now_ms
        self.finished_at_ms: int | None = None
        self.start_request = request
        self._check_topology(request)
        for key, value in request.context.items():
            _check_size(value, f"context.{key}")
        for node, spec in self.topology.items():
            for succ in spec.succs:
                self.preds[succ].append(node)
        self.context["blueprintId"] = request.blueprint_id
        self.context["blueprintVersion"] = request.blueprint_version

    # ---- construction -------------------------------------------------------------------

    @classmethod
    def start(cls, run_id: str, request: StartRequest, now_ms: int) -> RunState:
        """A new run with its start nodes released."""
        run = cls(run_id, request, now_ms)
        for node in request.start_nodes:
            run._release(node, 0)
        run._settle(now_ms)
        return run

    def _check_topology(self, request: StartRequest) -> None:
        nodes = request.topology
        for node, spec in nodes.items():
            for index, succ in enumerate(spec.succs):
                if succ not in nodes:
                    raise BadRequest(
                        f"topology node {node!r} names unknown successor {succ!r}",
                        field=f"topology.{node}.succs[{index}]",
                    )
        for index, node in enumerate(request.start_nodes):
            if node not in nodes:
                raise BadRequest(
                    f"start node {node!r} is not in the topology", field=f"startNodes[{index}]"
                )
        for node, spec in nodes.items():
            for back in spec.back_preds:
                if node not in nodes.get(back, TopologyNode()).succs:
                    raise BadRequest(
                        f"back predecessor {back!r} of {node!r} has no edge to it",
                        field=f"topology.{node}.backPreds",
                    )

    def same_start(self, request: StartRequest) -> bool:
        return (
            request.blueprint_id == self.blueprint_id
            and request.blueprint_version == self.blueprint_version
        )

    # ---- helpers ---------------------------------------------------------------------------

    def _known(self, node: str) -> bool:
        return node in self.topology or node in self.dynamic

    def _record(self, node: str, gen: int) -> GenRecord:
        key = (node, gen)
        record = self.records.get(key)
        if record is None:
            record = self.records[key] = GenRecord()
        return record

    def _succs(self, node: str) -> list[str]:
        if node in self.dynamic:
            return [self.dynamic[node].spec["gather"]]
        return self.topology[node].succs

    def _expected(self, node: str, gen: int, record: GenRecord) -> list[str]:
        back = self.topology[node].back_preds if node in self.topology else []
        static = self.preds.get(node, [])
        if back:
            static = list(back) if gen > 0 else [p for p in static if p not in back]
        return [*static, *record.dynamic_preds]

    def _job(self, node: str, gen: int, delay_ms: int = 0) -> None:
        body: dict[str, Any] = {
            "runId": self.run_id,
            "blueprintId": self.blueprint_id,
            "nodeId": node,
            "gen": gen,
        }
        if node in self.dynamic:
            spec = self.dynamic[node].spec
            body["dynamic"] = {
                "uses": spec["uses"],
                "inputs": spec["inputs"],
                "gather": spec["gather"],
            }
        self.outbox.append(OutboxJob(body, max(0, min(delay_ms, MAX_DELAY_MS))))

    def _release(self, node: str, gen: int) -> None:
        record = self._record(node, gen)
        record.state = "released"
        self.pending.add((node, gen))
        self._job(node, gen)

    def _resolve(self, target: str, source: str, arrived: bool, released: list[NodeRef]) -> None:
        """Record an arrival or skip at ``target``'s current generation and propagate."""
        work = deque([(target, source, arrived)])
        while work:
            node, src, came = work.popleft()
            gen = self.gens[node]
            record = self._record(node, gen)
            record.arrivals.setdefault(src, came)
            if came:
                record.arrivals[src] = True
            if record.state != "idle":
                continue
            expected = self._expected(node, gen, record)
            resolved = all(p in record.arrivals for p in expected)
            any_arrived = any(record.arrivals.get(p) for p in expected)
            join = self.topology[node].join if node in self.topology else "all"
            if any_arrived and (join == "any" or resolved):
                self._release(node, gen)
                released.append(NodeRef(node_id=node, gen=gen))
            elif resolved and not any_arrived:
                record.state = "skipped"
                work.extend((succ, node, False) for succ in self._succs(node))

    def _rearm(self, nodes: Iterable[str]) -> None:
        """Give each node a new generation; keep arrivals from outside the re-armed set.

        Generations two behind are forgotten unless still pending or awaiting (a slow branch
        of an 'any' loop), whose stale commit must still find its record.
        """
        members = set(nodes)
        for node in members:
            old_gen = self.gens[node]
            old = self._record(node, old_gen)
            new_gen = old_gen + 1
            self.gens[node] = new_gen
            fresh = self._record(node, new_gen)
            fresh.arrivals = {s: v for s, v in old.arrivals.items() if s not in members}
            older = (node, old_gen - 1)
            if older not in self.pending and older not in self.awaiting:
                self.records.pop(older, None)

    def _set_awaiting_keys(self) -> None:
        ids = [node for node, gen in sorted(self.awaiting)]
        if not ids:
            self.context.pop("_awaitingNodeIds", None)
            self.context.pop("_awaitingDetails", None)
            return
        self.context["_awaitingNodeIds"] = ids
        self.context["_awaitingDetails"] = self._awaiting_details()

    def _awaiting_details(
        self, entering: dict[tuple[str, int], dict[str, Any]] | None = None
    ) -> dict[str, Any]:
        """``_awaitingDetails``: each awaiting node's details (a later generation wins).

        ``entering`` maps pairs about to await to their new details: the value as it would be.
        """
        entering = entering or {}
        details: dict[str, Any] = {}
        for node, gen in sorted(self.awaiting | entering.keys()):
            if (node, gen) in entering:
                details[node] = entering[(node, gen)]
                continue
            awaiting = self.records[(node, gen)].awaiting
            assert awaiting is not None
            details[node] = awaiting.spec.details
        return details

    def _notify_parent(self) -> None:
        if self.parent is None:
            return
        self.outbox.append(
            OutboxJob(
                {
                    "runId": self.parent.run_id,
                    "blueprintId": self.parent.blueprint_id,
                    "nodeId": self.parent.node_id,
                    "gen": self.parent.gen,
                }
            )
        )

    def _settle(self, now_ms: int) -> None:
        """Recompute the run status after a change; latch ``completed`` when nothing is left."""
        self.updated_at_ms = now_ms
        if self.status in TERMINAL_STATUSES:
            return
        before = self.status
        if self.pending or any(self._awaiting_resolved(k) for k in self.awaiting):
            self.status = "running"
        elif any(self.records[k].awaiting.spec.external for k in self.awaiting):  # type: ignore[union-attr]
            self.status = "awaiting"
        elif self.awaiting:
            self.status = "running"
        else:
            self.status = "completed"
            self.finished_at_ms = now_ms
        if self.status != before and self.status in ("awaiting", "completed"):
            self._notify_parent()

    def _awaiting_resolved(self, key: tuple[str, int]) -> bool:
        awaiting = self.records[key].awaiting
        return awaiting is not None and awaiting.resolution is not None

    def _terminate(self, status: RunStatus, reason: str | None, now_ms: int) -> None:
        self.status = status
        self.reason = reason
        self.finished_at_ms = now_ms
        self.updated_at_ms = now_ms
        self._notify_parent()

    def _apply_writes(self, writes: dict[str, Any], deletes: list[str]) -> None:
        for key in deletes:
            self.context.pop(key, None)
        self.context.update(writes)

    # ---- protocol ----------------------------------------------------------------------------

    def claim(self, request: ClaimRequest, now_ms: int) -> ClaimResponse:
        """Take an execution lease for one node, or say why it must not run now."""
        node = request.node_id
        base = {"status": self.status, "blueprint_version": self.blueprint_version}
        if self.status in TERMINAL_STATUSES:
            return ClaimResponse(state="terminal", reason=self.reason, **base)
        if request.blueprint_version != self.blueprint_version:
            return ClaimResponse(state="version_mismatch", **base)
        if not self._known(node):
            return ClaimResponse(state="not_ready", reason=f"unknown node {node!r}", **base)
        current = self.gens.get(node, 0)
        gen = current if request.gen is None else request.gen
        record = self.records.get((node, gen))
        if record is None or gen > current:
            return ClaimResponse(state="not_ready", gen=gen, reason="not released", **base)
        if record.result is not None:
            return ClaimResponse(state="completed", gen=gen, result=record.result, **base)
        if record.state == "awaiting" and record.awaiting is not None:
            return self._claim_awaiting(node, gen, record.awaiting, now_ms, base)
        if record.state != "released":
            return ClaimResponse(state="not_ready", gen=gen, reason=record.state, **base)
        if now_ms < record.not_before_ms:
            return ClaimResponse(
                state="busy", gen=gen, retry_after_ms=record.not_before_ms - now_ms, **base
            )
        if record.lease_token not in (None, request.token) and record.lease_until_ms > now_ms:
            return ClaimResponse(
                state="busy", gen=gen, retry_after_ms=record.lease_until_ms - now_ms, **base
            )
        record.lease_token = request.token
        record.lease_until_ms = now_ms + request.lease_ms
        return ClaimResponse(
            state="run",
            gen=gen,
            attempts=record.attempts,
            last_error=record.last_error,
            context=dict(self.context),
            **base,
        )

    def _claim_awaiting(
        self, node: str, gen: int, awaiting: Awaiting, now_ms: int, base: dict[str, Any]
    ) -> ClaimResponse:
        spec = awaiting.spec
        resolution = awaiting.resolution
        if resolution is None and spec.wake_at_ms is not None:
            if now_ms >= spec.wake_at_ms:
                resolution = spec.result or Resolution()
            elif awaiting.next_timer_ms is None or now_ms >= awaiting.next_timer_ms - 1000:
                self._schedule_timer(node, gen, awaiting, now_ms)
        view = AwaitingView(
            reason=spec.reason,
            details=spec.details,
            external=spec.external,
            wake_at_ms=spec.wake_at_ms,
            resolution=resolution,
        )
        return ClaimResponse(
            state="awaiting", gen=gen, awaiting=view, context=dict(self.context), **base
        )

    def _schedule_timer(self, node: str, gen: int, awaiting: Awaiting, now_ms: int) -> None:
        wake = awaiting.spec.wake_at_ms
        assert wake is not None
        delay = min(max(0, wake - now_ms), MAX_DELAY_MS)
        awaiting.next_timer_ms = now_ms + delay
        self._job(node, gen, delay)

    def commit(self, request: CommitRequest, now_ms: int) -> CommitResponse:
        """Record a node's completion (or its entering the awaiting state) atomically."""
        node, gen = request.node_id, request.gen
        if not self._known(node):
            raise BadRequest(f"unknown node {node!r}", field="nodeId")
        record = self.records.get((node, gen))
        if record is not None and record.result is not None:
            return CommitResponse(
                status=self.status, released=record.released or [], duplicate=True
            )
        if record is None or record.state not in ("released", "awaiting"):
            state = "never released" if record is None else record.state
            raise Conflict(f"node {node!r} generation {gen} is {state}; it cannot be committed")
        self._validate_commit(node, request)
        self._apply_writes(request.writes, request.deletes)
        record.lease_token = None
        self.pending.discard((node, gen))
        if request.awaiting is not None:
            self._enter_awaiting(node, gen, record, request.awaiting, now_ms)
            self._settle(now_ms)
            return CommitResponse(status=self.status)
        record.state = "completed"
        record.result = request.result or Resolution()
        record.released = []
        if record.awaiting is not None:
            self.awaiting.discard((node, gen))
            self._set_awaiting_keys()
        stale = gen < self.gens.get(node, 0)
        if self.status in TERMINAL_STATUSES or stale:
            self.updated_at_ms = now_ms
            return CommitResponse(status=self.status, stale=stale)
        released: list[NodeRef] = []
        self._rearm(request.rearm)
        for spec in request.dynamic:
            self.dynamic[spec.node_id] = DynamicInfo(node, spec.model_dump())
            gather = self._record(spec.gather, self.gens[spec.gather])
            if spec.node_id not in gather.dynamic_preds:
                gather.dynamic_preds.append(spec.node_id)
            self._release(spec.node_id, 0)
            released.append(NodeRef(node_id=spec.node_id, gen=0))
        for target in request.arrivals:
            self._resolve(target, node, True, released)
        for target in request.skips:
            self._resolve(target, node, False, released)
        record.released = released
        self._settle(now_ms)
        return CommitResponse(status=self.status, released=released)

    def _validate_commit(self, node: str, request: CommitRequest) -> None:
        succs = set(self._succs(node))
        for name in ("arrivals", "skips"):
            for index, target in enumerate(getattr(request, name)):
                if target not in succs:
                    raise BadRequest(
                        f"{target!r} is not a successor of {node!r}", field=f"{name}[{index}]"
                    )
        for index, target in enumerate(request.rearm):
            if target not in self.topology:
                raise BadRequest(f"cannot re-arm unknown node {target!r}", field=f"rearm[{index}]")
        for index, spec in enumerate(request.dynamic):
            if spec.gather not in self.topology:
                raise BadRequest(
                    f"unknown gather node {spec.gather!r}", field=f"dynamic[{index}].gather"
                )
            if spec.node_id in self.topology:
                raise BadRequest(
                    f"dynamic node id {spec.node_id!r} clashes with a blueprint node",
                    field=f"dynamic[{index}].nodeId",
                )
        if request.awaiting is None and request.result is None:
            raise BadRequest("a commit needs a result or an awaiting state", field="result")
        for key, value in request.writes.items():
            _check_size(value, f"writes.{key}")
        if request.result is not None:
            _check_size(request.result.output, "result.output")
        if request.awaiting is not None and request.awaiting.result is not None:
            _check_size(request.awaiting.result.output, "awaiting.result.output")
        if request.awaiting is not None:
            _check_size(
                self._awaiting_details({(node, request.gen): request.awaiting.details}),
                "awaiting.details",
                "_awaitingDetails (the details of every awaiting node together)",
            )

    def _enter_awaiting(
        self, node: str, gen: int, record: GenRecord, spec: AwaitingSpec, now_ms: int
    ) -> None:
        previous = record.awaiting
        record.state = "awaiting"
        record.awaiting = Awaiting(spec=spec, resolution=previous.resolution if previous else None)
        if spec.hook_token is not None:
            record.hook_token = spec.hook_token
        self.awaiting.add((node, gen))
        self._set_awaiting_keys()
        if spec.wake_at_ms is not None and (
            previous is None or previous.spec.wake_at_ms != spec.wake_at_ms
        ):
            self._schedule_timer(node, gen, record.awaiting, now_ms)

    def attempts(self, request: AttemptsRequest, now_ms: int) -> StatusResponse:
        """Record used attempts; optionally drop the lease and schedule a delayed retry."""
        record = self.records.get((request.node_id, request.gen))
        if record is None or record.state != "released":
            return StatusResponse(status=self.status, reason=self.reason)
        record.attempts = max(record.attempts, request.attempts)
        record.last_error = request.error
        if request.release and record.lease_token == request.token:
            record.lease_token = None
            record.lease_until_ms = 0
        if request.retry_after_ms is not None:
            record.not_before_ms = now_ms + request.retry_after_ms
            self._job(request.node_id, request.gen, request.retry_after_ms)
        self.updated_at_ms = now_ms
        return StatusResponse(status=self.status, reason=self.reason)

    def fail(self, request: FailRequest, now_ms: int) -> StatusResponse:
        """Latch ``failed`` (the first terminal state wins)."""
        if request.node_id is not None and request.gen is not None:
            record = self.records.get((request.node_id, request.gen))
            if record is not None and record.result is None:
                record.state = "failed"
                record.last_error = request.reason
                self.pending.discard((request.node_id, request.gen))
                if (request.node_id, request.gen) in self.awaiting:
                    self.awaiting.discard((request.node_id, request.gen))
                    self._set_awaiting_keys()
        if self.status not in TERMINAL_STATUSES:
            self._terminate("failed", request.reason, now_ms)
        return StatusResponse(status=self.status, reason=self.reason)

    def cancel(self, request: CancelRequest, now_ms: int) -> StatusResponse:
        """Latch ``cancelled`` unless the run already ended."""
        if self.status not in TERMINAL_STATUSES:
            self._terminate("cancelled", request.reason or "cancelled", now_ms)
        return StatusResponse(status=self.status, reason=self.reason)

    def resume(self, request: ResumeRequest, now_ms: int) -> ResumeResponse:
        """Give awaiting ``wait`` nodes (or the named node) a result and queue their jobs."""
        if self.status in TERMINAL_STATUSES:
            raise Conflict(f"run {self.run_id!r} is {self.status}; it cannot be resumed")
        targets = []
        for node, gen in sorted(self.awaiting):
            awaiting = self.records[(node, gen)].awaiting
            assert awaiting is not None
            if awaiting.resolution is not None:
                continue
            if request.node_id is None:
                wanted = awaiting.spec.reason == "external_event"
            else:
                wanted = request.node_id == node and awaiting.spec.reason in _RESUMABLE
            if wanted:
                targets.append((node, gen, awaiting))
        if not targets:
            which = f"node {request.node_id!r}" if request.node_id else "a wait node"
            raise Conflict(f"run {self.run_id!r} has no {which} awaiting a resume")
        _check_size(request.output, "output")
        self.context["_resume.action"] = request.action
        if "output" in request.model_fields_set:
            self.context["_resume.output"] = request.output
        for node, gen, awaiting in targets:
            awaiting.resolution = Resolution(output=request.output, action=request.action)
            self._job(node, gen)
        self._settle(now_ms)
        return ResumeResponse(
            status=self.status, resumed=[NodeRef(node_id=n, gen=g) for n, g, _ in targets]
        )

    def hook(self, node: str, token: str, body: Any, now_ms: int) -> HookResponse:
        """Complete an awaiting webhook node with the delivered body; replays are conflicts."""
        gen = self.gens.get(node)
        record = self.records.get((node, gen)) if gen is not None else None
        known = record.hook_token if record is not None else None
        if (
            record is None
            or known is None
            or not hmac.compare_digest(known.encode(), token.encode())
        ):
            raise RunNotFound("no such webhook")
        awaiting = record.awaiting
        if record.result is not None or awaiting is None or awaiting.resolution is not None:
            raise Conflict("this webhook was already delivered")
        if self.status in TERMINAL_STATUSES:
            raise Conflict(f"run is {self.status}")
        _check_size(body, "body", "webhook body")
        awaiting.resolution = Resolution(output=body)
        self._job(node, gen or 0)
        self._settle(now_ms)
        return HookResponse(status=self.status, node_id=node)

    def reconcile(self, now_ms: int) -> ReconcileResponse:
        """Re-queue every released node without a live lease and every resolvable awaiting node.

        Duplicate jobs are harmless (claims are idempotent); this repairs runs whose messages
        were lost (dead-lettered, purged, or dropped before the outbox existed).
        """
        requeued: list[NodeRef] = []
        if self.status not in TERMINAL_STATUSES:
            for node, gen in sorted(self.pending):
                record = self.records[(node, gen)]
                if record.lease_token is None or record.lease_until_ms <= now_ms:
                    self._job(node, gen, max(0, record.not_before_ms - now_ms))
                    requeued.append(NodeRef(node_id=node, gen=gen))
            for node, gen in sorted(self.awaiting):
                awaiting = self.records[(node, gen)].awaiting
                assert awaiting is not None
                due = awaiting.spec.wake_at_ms is not None
                if awaiting.resolution is not None or due or awaiting.spec.reason == "subflow":
                    self._job(node, gen, 0)
                    requeued.append(NodeRef(node_id=node, gen=gen))
        self._settle(now_ms)
        return ReconcileResponse(status=self.status, requeued=requeued)

    def view(self) -> RunView:
        nodes: dict[str, NodeView] = {}
        for node in [*self.topology, *self.dynamic]:
            gen = self.gens.get(node, 0)
            record = self.records.get((node, gen))
            state: NodeState = record.state if record is not None else "idle"
            nodes[node] = NodeView(gen=gen, state=state, attempts=record.attempts if record else 0)
        awaiting: dict[str, AwaitingView] = {}
        for node, gen in sorted(self.awaiting):
            item = self.records[(node, gen)].awaiting
            assert item is not None
            awaiting[node] = AwaitingView(
                reason=item.spec.reason,
                details=item.spec.details,
                external=item.spec.external,
                wake_at_ms=item.spec.wake_at_ms,
                resolution=item.resolution,
            )
        return RunView(
            run_id=self.run_id,
            blueprint_id=self.blueprint_id,
            blueprint_version=self.blueprint_version,
            status=self.status,
            reason=self.reason,
            context=dict(self.context),
            nodes=nodes,
            awaiting=awaiting,
            parent=self.parent,
            created_at_ms=self.created_at_ms,
            updated_at_ms=self.updated_at_ms,
        )

    # ---- coordination store ------------------------------------------------------------

    def ops(self, ops: list[Op], now_ms: int) -> OpsResponse:
        """The generic coordination store (TS ``ICoordinationStore``) and context access.

        All ops apply, or none: a failing op restores what the earlier ones changed.
        """
        self.sweep_coordination(now_ms)
        coordination = {
            k: Coordination(v.value, v.expires_at_ms) for k, v in self.coordination.items()
        }
        context = dict(self.context)
        try:
            results = []
            for index, op in enumerate(ops):
                if op.value is not None:
                    _check_size(op.value, f"ops[{index}].value")
                results.append(self._op(op, now_ms))
        except BadRequest:
            self.coordination, self.context = coordination, context
            raise
        self.updated_at_ms = now_ms
        return OpsResponse(results=results)

    def _op(self, op: Op, now_ms: int) -> Any:
        name, key = op.op, op.key
        if name == "context.toJSON":
            return dict(self.context)
        if key is None:
            raise BadRequest(f"operation {name!r} needs a key", field="key")
        expires = now_ms + op.ttl_seconds * 1000 if op.ttl_seconds is not None else None
        entry = self.coordination.get(key)
        if name == "get":
            return entry.value if entry else None
        if name == "setIfNotExist":
            if entry is not None:
                return False
            self.coordination[key] = Coordination(op.value, expires)
            return True
        if name == "increment":
            current = entry.value if entry else 0
            if not isinstance(current, int) or isinstance(current, bool):
                raise BadRequest(f"key {key!r} does not hold an integer", field="key")
            self.coordination[key] = Coordination(current + 1, expires)
            return current + 1
        if name == "extendTTL":
            if entry is None:
                return False
            entry.expires_at_ms = expires
            return True
        if name == "delete":
            return self.coordination.pop(key, None) is not None
        if name == "context.get":
            return self.context.get(key)
        if name == "context.has":
            return key in self.context
        if name == "context.set":
            self.context[key] = op.value
            return True
        self.context.pop(key, None)
        return True

    def sweep_coordination(self, now_ms: int) -> None:
        """Drop coordination keys whose TTL has passed."""
        expired = [
            k
            for k, v in self.coordination.items()
            if v.expires_at_ms is not None and v.expires_at_ms <= now_ms
        ]
        for key in expired:
            del self.coordination[key]

    def next_expiry_ms(self) -> int | None:
        times = [v.expires_at_ms for v in self.coordination.values() if v.expires_at_ms is not None]
        return min(times) if times else None

    # ---- status record --------------------------------------------------------------

    def status_record(self, now_ms: int) -> dict[str, Any]:
        """The KV status record (SEMANTICS "Wire formats"), ``lastUpdated`` in seconds."""
        record: dict[str, Any] = {
            "status": self.status,
            "lastUpdated": math.floor(now_ms / 1000),
            "blueprintId": self.blueprint_id,
        }
        if self.status == "completed":
            context = dict(self.context)
            record["finalStatus"] = {
                "status": "completed",
                "payload": {
                    "context": context,
                    "serializedContext": orjson.dumps(context).decode(),
                    "status": "completed",
                },
            }
        elif self.status in ("failed", "cancelled"):
            record["finalStatus"] = {"status": self.status, "reason": self.reason}
        if self.reason and self.status != "completed":
            record["error"] = self.reason
        return record

    def take_outbox(self) -> list[OutboxJob]:
        jobs, self.outbox = self.outbox, []
        return jobs


def require(run: RunState | None, run_id: str) -> RunState:
    if run is None:
        raise RunNotFound(f"no run {run_id!r}")
    return run
