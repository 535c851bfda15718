"""The length limits of protocol §8 on names, keys, texts and the topology, as the schema
enforces them: at the limit a request is accepted, one over it is a 400 naming the field.

Requests go through the emulator's validation (the pydantic models, as every reference store
reads them); lengths are in characters (code points), so some texts use a character outside
the Basic Multilingual Plane, which JavaScript counts as two UTF-16 units.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import pytest

from flowcraft_puller.emulator.runs import validate
from flowcraft_puller.runstore.protocol import (
    MAX_KEY_CHARS,
    MAX_NAME_CHARS,
    MAX_NODE_ID_CHARS,
    MAX_TEXT_CHARS,
    MAX_TOPOLOGY_NODES,
    AttemptsRequest,
    BadRequest,
    CancelRequest,
    ClaimRequest,
    CommitRequest,
    FailRequest,
    OpsRequest,
    ResumeRequest,
    StartRequest,
    TopologyNode,
    Wire,
)
from flowcraft_puller.runstore.state import RunState

WIDE: Final = "\U0001d11e"
"""One character, two UTF-16 units: lengths count characters, not JavaScript's units."""
T0: Final = 1_700_000_000_000


def text(length: int) -> str:
    return WIDE * length


def start_body(**fields: Any) -> dict[str, Any]:
    return {"blueprintId": "bp", "topology": {"A": {}}, "startNodes": ["A"], **fields}


def commit_body(**fields: Any) -> dict[str, Any]:
    return {"nodeId": "A", "gen": 0, "token": "t", "result": {"output": None}, **fields}


def dynamic(**fields: str) -> dict[str, Any]:
    return {"dynamic": [{"nodeId": "w", "uses": "map", "inputs": "items", "gather": "A", **fields}]}


def nodes(count: int) -> dict[str, Any]:
    return {f"n{index}": {} for index in range(count)}


def ids(count: int) -> list[str]:
    return ["A"] * count


LengthCase = tuple[type[Wire], Callable[[int], dict[str, Any]], int, str]

LIMITED: Final[dict[str, LengthCase]] = {
    "blueprint id": (
        StartRequest,
        lambda n: start_body(blueprintId=text(n)),
        MAX_NAME_CHARS,
        "blueprintId",
    ),
    "blueprint version": (
        StartRequest,
        lambda n: start_body(blueprintVersion=text(n)),
        MAX_NAME_CHARS,
        "blueprintVersion",
    ),
    "start context key": (
        StartRequest,
        lambda n: start_body(context={"k": 1, "x" * n: 2}),
        MAX_KEY_CHARS,
        "context." + "x" * (MAX_KEY_CHARS + 1),
    ),
    "parent blueprint id": (
        StartRequest,
        lambda n: start_body(
            parent={"runId": "p", "blueprintId": text(n), "nodeId": "P", "gen": 0}
        ),
        MAX_NAME_CHARS,
        "parent.blueprintId",
    ),
    "topology nodes": (
        StartRequest,
        lambda n: start_body(topology=nodes(n), startNodes=[]),
        MAX_TOPOLOGY_NODES,
        "topology",
    ),
    "successors of a node": (
        StartRequest,
        lambda n: start_body(topology={"A": {"succs": ids(n)}}),
        MAX_TOPOLOGY_NODES,
        "topology.A.succs",
    ),
    "back predecessors of a node": (
        StartRequest,
        lambda n: start_body(topology={"A": {"succs": ["A"], "backPreds": ids(n)}}),
        MAX_TOPOLOGY_NODES,
        "topology.A.backPreds",
    ),
    "start nodes": (
        StartRequest,
        lambda n: start_body(startNodes=ids(n)),
        MAX_TOPOLOGY_NODES,
        "startNodes",
    ),
    "claim version": (
        ClaimRequest,
        lambda n: {"nodeId": "A", "token": "t", "leaseMs": 1, "blueprintVersion": text(n)},
        MAX_NAME_CHARS,
        "blueprintVersion",
    ),
    "write key": (
        CommitRequest,
        lambda n: commit_body(writes={"x" * n: 1}),
        MAX_KEY_CHARS,
        "writes." + "x" * (MAX_KEY_CHARS + 1),
    ),
    "delete key": (
        CommitRequest,
        lambda n: commit_body(deletes=["k", text(n)]),
        MAX_KEY_CHARS,
        "deletes[1]",
    ),
    "result action": (
        CommitRequest,
        lambda n: commit_body(result={"output": None, "action": text(n)}),
        MAX_TEXT_CHARS,
        "result.action",
    ),
    "awaiting result action": (
        CommitRequest,
        lambda n: commit_body(
            result=None,
            awaiting={"reason": "timer", "result": {"output": None, "action": text(n)}},
        ),
        MAX_TEXT_CHARS,
        "awaiting.result.action",
    ),
    "batch worker uses": (
        CommitRequest,
        lambda n: commit_body(**dynamic(uses=text(n))),
        MAX_NAME_CHARS,
        "dynamic[0].uses",
    ),
    "batch worker inputs": (
        CommitRequest,
        lambda n: commit_body(**dynamic(inputs=text(n))),
        MAX_KEY_CHARS,
        "dynamic[0].inputs",
    ),
    "resume action": (ResumeRequest, lambda n: {"action": text(n)}, MAX_TEXT_CHARS, "action"),
    "coordination key": (
        OpsRequest,
        lambda n: {"ops": [{"op": "get", "key": "k"}, {"op": "get", "key": text(n)}]},
        MAX_KEY_CHARS,
        "ops[1].key",
    ),
}


@pytest.mark.parametrize("case", LIMITED.values(), ids=LIMITED.keys())
def test_a_limited_field_is_accepted_at_its_limit(case: LengthCase) -> None:
    model, body, limit, _ = case
    validate(model, body(limit))


@pytest.mark.parametrize("case", LIMITED.values(), ids=LIMITED.keys())
def test_a_limited_field_one_over_its_limit_is_refused_naming_its_path(case: LengthCase) -> None:
    model, body, limit, field = case
    with pytest.raises(BadRequest) as refused:
        validate(model, body(limit + 1))
    assert refused.value.field == field


def test_a_bad_node_id_is_named_before_the_topology_is_counted() -> None:
    long_id = "x" * (MAX_NODE_ID_CHARS + 1)
    topology = {**nodes(MAX_TOPOLOGY_NODES), long_id: {}}
    with pytest.raises(BadRequest) as refused:
        validate(StartRequest, start_body(topology=topology, startNodes=[]))
    assert refused.value.field == f"topology.{long_id}"
    topology = {**nodes(MAX_TOPOLOGY_NODES), "bad": {"succs": 1}}
    with pytest.raises(BadRequest) as refused:
        validate(StartRequest, start_body(topology=topology, startNodes=[]))
    assert refused.value.field == "topology.bad.succs"


def test_a_list_over_its_limit_is_refused_before_its_items_are_read() -> None:
    with pytest.raises(BadRequest) as refused:
        validate(StartRequest, start_body(startNodes=["", *ids(MAX_TOPOLOGY_NODES)]))
    assert refused.value.field == "startNodes"


TEXTS: Final[dict[str, tuple[type[Wire], str, dict[str, Any]]]] = {
    "fail reason": (FailRequest, "reason", {}),
    "cancel reason": (CancelRequest, "reason", {}),
    "attempts error": (
        AttemptsRequest,
        "error",
        {"nodeId": "A", "gen": 0, "token": "t", "attempts": 1},
    ),
}


@pytest.mark.parametrize("case", TEXTS.values(), ids=TEXTS.keys())
def test_a_failure_text_over_its_limit_is_truncated_not_refused(
    case: tuple[type[Wire], str, dict[str, Any]],
) -> None:
    model, name, rest = case
    at_limit = validate(model, {**rest, name: text(MAX_TEXT_CHARS)})
    assert getattr(at_limit, name) == text(MAX_TEXT_CHARS)
    over = validate(model, {**rest, name: "é" * 10 + text(MAX_TEXT_CHARS)})
    assert getattr(over, name) == "é" * 10 + text(MAX_TEXT_CHARS - 10)


def test_a_failure_reason_built_by_the_daemon_is_truncated_too() -> None:
    assert FailRequest(reason="x" * 100_000).reason == "x" * MAX_TEXT_CHARS


def test_an_empty_failure_reason_is_still_refused() -> None:
    with pytest.raises(BadRequest) as refused:
        validate(FailRequest, {"reason": ""})
    assert refused.value.field == "reason"


def test_a_run_at_every_limit_starts_and_its_jobs_carry_the_long_names() -> None:
    names = [f"{index:0{MAX_NAME_CHARS}d}" for index in range(3)]
    topology = {node: TopologyNode(succs=[names[1]]) for node in names[:1]}
    topology |= {node: TopologyNode() for node in names[1:]}
    topology |= {f"n{index}": TopologyNode() for index in range(MAX_TOPOLOGY_NODES - len(names))}
    request = StartRequest(
        blueprint_id=text(MAX_NAME_CHARS),
        blueprint_version=text(MAX_NAME_CHARS),
        context={"k" * MAX_KEY_CHARS: 1},
        topology=topology,
        start_nodes=[names[0]],
    )
    run = RunState.start("r1", request, T0)
    assert [job.body["blueprintId"] for job in run.outbox] == [text(MAX_NAME_CHARS)]
    assert run.context["k" * MAX_KEY_CHARS] == 1
