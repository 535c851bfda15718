"""Snapshots of a :class:`RunState` as JSON-ready data, and the state rebuilt from one.

The SQLite run store persists one snapshot per run. A snapshot holds every attribute of the
state machine, so ``restore(snapshot(run))`` behaves exactly like ``run``. A
:class:`SnapshotEncoder` writes snapshots as JSON and encodes each run's topology and start
request once: they never change after ``start``, and they are most of a snapshot's cost.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import orjson

from flowcraft_puller.runstore.protocol import (
    AwaitingSpec,
    NodeRef,
    ParentLink,
    Resolution,
    StartRequest,
    TopologyNode,
)
from flowcraft_puller.runstore.state import (
    Awaiting,
    Coordination,
    DynamicInfo,
    GenRecord,
    OutboxJob,
    RunState,
)

SNAPSHOT_VERSION: Final = 1

RUN_ATTRIBUTES: Final = frozenset(
    {
        "run_id",
        "blueprint_id",
        "blueprint_version",
        "parent",
        "status",
        "reason",
        "context",
        "topology",
        "preds",
        "gens",
        "records",
        "dynamic",
        "pending",
        "awaiting",
        "coordination",
        "outbox",
        "created_at_ms",
        "updated_at_ms",
        "finished_at_ms",
        "start_request",
    }
)
"""Every attribute of :class:`RunState` a snapshot carries (a test keeps this complete)."""


class SnapshotError(ValueError):
    """A stored snapshot cannot be read by this version of the code."""


def _resolution(value: Resolution | None) -> dict[str, Any] | None:
    return None if value is None else {"output": value.output, "action": value.action}


def _read_resolution(data: dict[str, Any] | None) -> Resolution | None:
    return None if data is None else Resolution(output=data["output"], action=data["action"])


def _record(record: GenRecord) -> dict[str, Any]:
    awaiting = record.awaiting
    return {
        "state": record.state,
        "arrivals": record.arrivals,
        "dynamicPreds": record.dynamic_preds,
        "attempts": record.attempts,
        "lastError": record.last_error,
        "leaseToken": record.lease_token,
        "leaseUntilMs": record.lease_until_ms,
        "notBeforeMs": record.not_before_ms,
        "result": _resolution(record.result),
        "released": None
        if record.released is None
        else [[ref.node_id, ref.gen] for ref in record.released],
        "awaiting": None
        if awaiting is None
        else {
            "spec": awaiting.spec.model_dump(mode="json", by_alias=True),
            "resolution": _resolution(awaiting.resolution),
            "nextTimerMs": awaiting.next_timer_ms,
        },
        "hookToken": record.hook_token,
    }


def _read_record(data: dict[str, Any]) -> GenRecord:
    awaiting = data["awaiting"]
    released = data["released"]
    return GenRecord(
        state=data["state"],
        arrivals=dict(data["arrivals"]),
        dynamic_preds=list(data["dynamicPreds"]),
        attempts=data["attempts"],
        last_error=data["lastError"],
        lease_token=data["leaseToken"],
        lease_until_ms=data["leaseUntilMs"],
        not_before_ms=data["notBeforeMs"],
        result=_read_resolution(data["result"]),
        released=None
        if released is None
        else [NodeRef(node_id=node, gen=gen) for node, gen in released],
        awaiting=None
        if awaiting is None
        else Awaiting(
            spec=AwaitingSpec.model_validate(awaiting["spec"]),
            resolution=_read_resolution(awaiting["resolution"]),
            next_timer_ms=awaiting["nextTimerMs"],
        ),
        hook_token=data["hookToken"],
    )


def _topology(run: RunState) -> dict[str, Any]:
    return {
        node: spec.model_dump(mode="json", by_alias=True) for node, spec in run.topology.items()
    }


def _start_request(run: RunState) -> dict[str, Any]:
    return run.start_request.model_dump(mode="json", by_alias=True)


def _snapshot(run: RunState, topology: Any, start_request: Any) -> dict[str, Any]:
    return {
        "version": SNAPSHOT_VERSION,
        "runId": run.run_id,
        "blueprintId": run.blueprint_id,
        "blueprintVersion": run.blueprint_version,
        "parent": None if run.parent is None else run.parent.model_dump(mode="json", by_alias=True),
        "status": run.status,
        "reason": run.reason,
        "context": run.context,
        "topology": topology,
        "preds": run.preds,
        "gens": run.gens,
        "records": [[node, gen, _record(rec)] for (node, gen), rec in run.records.items()],
        "dynamic": {
            node: {"source": info.source, "spec": info.spec} for node, info in run.dynamic.items()
        },
        "pending": sorted(run.pending),
        "awaiting": sorted(run.awaiting),
        "coordination": {
            key: {"value": item.value, "expiresAtMs": item.expires_at_ms}
            for key, item in run.coordination.items()
        },
        "outbox": [{"body": job.body, "delayMs": job.delay_ms} for job in run.outbox],
        "createdAtMs": run.created_at_ms,
        "updatedAtMs": run.updated_at_ms,
        "finishedAtMs": run.finished_at_ms,
        "startRequest": start_request,
    }


def snapshot(run: RunState) -> dict[str, Any]:
    """Everything ``run`` holds, as JSON-ready data (it shares values with ``run``: encode it
    before the run changes again)."""
    return _snapshot(run, _topology(run), _start_request(run))


@dataclass(frozen=True, slots=True)
class _Fixed:
    """A run's encoded topology and start request, and the request they were encoded from."""

    request: StartRequest
    topology: orjson.Fragment
    start_request: orjson.Fragment


class SnapshotEncoder:
    """Encodes snapshots as JSON (the bytes of ``orjson.dumps(snapshot(run))``), encoding each
    run's topology and start request only once.

    Both are fixed at ``start`` (dynamic nodes live in ``RunState.dynamic``); the cache entry is
    renewed whenever the run's ``start_request`` is another object (a run rebuilt by
    :func:`restore`). Call :meth:`forget` when a run is deleted.
    """

    def __init__(self) -> None:
        self._fixed: dict[str, _Fixed] = {}

    def encode(self, run: RunState) -> bytes:
        fixed = self._fixed.get(run.run_id)
        if fixed is None or fixed.request is not run.start_request:
            fixed = _Fixed(
                request=run.start_request,
                topology=orjson.Fragment(orjson.dumps(_topology(run))),
                start_request=orjson.Fragment(orjson.dumps(_start_request(run))),
            )
            self._fixed[run.run_id] = fixed
        return orjson.dumps(_snapshot(run, fixed.topology, fixed.start_request))

    def forget(self, run_id: str) -> None:
        self._fixed.pop(run_id, None)


def restore(data: dict[str, Any]) -> RunState:
    """The run a :func:`snapshot` was taken of."""
    if data.get("version") != SNAPSHOT_VERSION:
        raise SnapshotError(
            f"run snapshot version {data.get('version')!r} is not {SNAPSHOT_VERSION}; "
            "the state file was written by another version of flowcraft-puller"
        )
    run = RunState.__new__(RunState)
    run.run_id = data["runId"]
    run.blueprint_id = data["blueprintId"]
    run.blueprint_version = data["blueprintVersion"]
    parent = data["parent"]
    run.parent = None if parent is None else ParentLink.model_validate(parent)
    run.status = data["status"]
    run.reason = data["reason"]
    run.context = data["context"]
    run.topology = {
        node: TopologyNode.model_validate(spec) for node, spec in data["topology"].items()
    }
    run.preds = {node: list(preds) for node, preds in data["preds"].items()}
    run.gens = dict(data["gens"])
    run.records = {(node, gen): _read_record(rec) for node, gen, rec in data["records"]}
    run.dynamic = {
        node: DynamicInfo(source=info["source"], spec=info["spec"])
        for node, info in data["dynamic"].items()
    }
    run.pending = {(node, gen) for node, gen in data["pending"]}
    run.awaiting = {(node, gen) for node, gen in data["awaiting"]}
    run.coordination = {
        key: Coordination(value=item["value"], expires_at_ms=item["expiresAtMs"])
        for key, item in data["coordination"].items()
    }
    run.outbox = [OutboxJob(body=job["body"], delay_ms=job["delayMs"]) for job in data["outbox"]]
    run.created_at_ms = data["createdAtMs"]
    run.updated_at_ms = data["updatedAtMs"]
    run.finished_at_ms = data["finishedAtMs"]
    run.start_request = StartRequest.model_validate(data["startRequest"])
    return run
