"""Snapshots of the run state machine (runstore/snapshot.py): complete and exact."""

from __future__ import annotations

import orjson
import pytest

from flowcraft_puller.runstore.protocol import (
    AttemptsRequest,
    AwaitingSpec,
    ClaimRequest,
    CommitRequest,
    DynamicSpec,
    Op,
    ParentLink,
    Resolution,
    ResumeRequest,
    StartRequest,
    TopologyNode,
)
from flowcraft_puller.runstore.snapshot import (
    RUN_ATTRIBUTES,
    SnapshotEncoder,
    SnapshotError,
    restore,
    snapshot,
)
from flowcraft_puller.runstore.state import RunState

T0 = 1_700_000_000_000


def busy_run() -> RunState:
    """A run holding every kind of state: generations, joins, dynamic nodes, leases, attempts,
    awaiting timers, webhooks and waits, resolutions, coordination keys, a parent and an outbox."""
    topology = {
        "S": TopologyNode(succs=["L", "W", "H", "T", "X"]),
        "L": TopologyNode(succs=["B"], back_preds=["B"]),
        "B": TopologyNode(succs=["L"]),
        "W": TopologyNode(),
        "H": TopologyNode(),
        "T": TopologyNode(),
        "X": TopologyNode(succs=["G"], join="any"),
        "G": TopologyNode(),
    }
    request = StartRequest(
        blueprint_id="busy",
        blueprint_version="7",
        context={"seed": [1, {"a": None}]},
        topology=topology,
        start_nodes=["S"],
        parent=ParentLink(run_id="parent", blueprint_id="outer", node_id="sub", gen=3),
    )
    run = RunState.start("busy-run", request, T0)
    token = "lease-token"

    def claim(node: str, gen: int = 0) -> None:
        run.claim(ClaimRequest(node_id=node, gen=gen, token=token, lease_ms=60_000), T0)

    def commit(node: str, gen: int = 0, **fields: object) -> None:
        claim(node, gen)
        run.commit(CommitRequest(node_id=node, gen=gen, token=token, **fields), T0 + 1)

    commit("S", result=Resolution(output={"n": 1}, action="go"), arrivals=["L", "W", "H", "T", "X"])
    commit("L", result=Resolution(output=1), arrivals=["B"], writes={"loop": 1})
    commit("B", result=Resolution(output=2), arrivals=["L"], rearm=["L"])
    commit("W", awaiting=AwaitingSpec(reason="external_event", details={"e": 1}, external=True))
    commit("H", awaiting=AwaitingSpec(reason="webhook", hook_token="h" * 24, external=True))
    commit(
        "T",
        awaiting=AwaitingSpec(
            reason="timer", wake_at_ms=T0 + 90_000_000, result=Resolution(output="woke")
        ),
    )
    dynamic = [DynamicSpec(node_id=f"d{i}", uses="double", inputs="x", gather="G") for i in (0, 1)]
    commit("X", result=Resolution(output=[1, 2]), dynamic=dynamic, skips=["G"])
    claim("d0")
    run.attempts(
        AttemptsRequest(
            node_id="d0", gen=0, token=token, attempts=2, error="flaky", retry_after_ms=500
        ),
        T0 + 2,
    )
    run.resume(ResumeRequest(action="approve", output={"ok": True}), T0 + 3)
    run.ops(
        [
            Op(op="setIfNotExist", key="lock", value="me", ttl_seconds=30),
            Op(op="increment", key="count"),
        ],
        T0 + 4,
    )
    return run


def test_a_snapshot_carries_every_attribute_of_the_run() -> None:
    run = busy_run()
    assert set(vars(run)) == RUN_ATTRIBUTES
    assert run.outbox, "the fixture run should have unsent jobs"


def test_a_restored_snapshot_equals_the_run() -> None:
    run = busy_run()
    restored = restore(orjson.loads(orjson.dumps(snapshot(run))))
    assert vars(restored) == vars(run)


def test_a_restored_run_behaves_like_the_original() -> None:
    run = busy_run()
    restored = restore(orjson.loads(orjson.dumps(snapshot(run))))
    for state in (run, restored):
        state.take_outbox()
        state.commit(
            CommitRequest(
                node_id="d0", gen=0, token="t", result=Resolution(output=4), arrivals=["G"]
            ),
            T0 + 10,
        )
        state.hook("H", "h" * 24, {"paid": True}, T0 + 11)
    assert vars(restored) == vars(run)
    assert restored.view() == run.view()


def test_a_snapshot_of_another_version_is_refused() -> None:
    data = orjson.loads(orjson.dumps(snapshot(busy_run())))
    data["version"] = 99
    with pytest.raises(SnapshotError, match="version 99"):
        restore(data)


def test_the_encoder_writes_the_same_json_as_the_snapshot() -> None:
    run = busy_run()
    encoder = SnapshotEncoder()
    assert encoder.encode(run) == orjson.dumps(snapshot(run))
    assert orjson.loads(encoder.encode(run)) == orjson.loads(orjson.dumps(snapshot(run)))


def test_the_encoder_follows_the_run_as_it_changes() -> None:
    run = busy_run()
    encoder = SnapshotEncoder()
    encoder.encode(run)
    run.take_outbox()
    run.commit(
        CommitRequest(node_id="d0", gen=0, token="t", result=Resolution(output=4), arrivals=["G"]),
        T0 + 10,
    )
    assert encoder.encode(run) == orjson.dumps(snapshot(run))


def test_the_encoder_encodes_a_restored_run_afresh() -> None:
    encoder = SnapshotEncoder()
    run = busy_run()
    encoder.encode(run)
    other = restore(orjson.loads(orjson.dumps(snapshot(run))))
    other.start_request = other.start_request.model_copy(update={"blueprint_version": "8"})
    assert orjson.loads(encoder.encode(other))["startRequest"]["blueprintVersion"] == "8"
    encoder.forget(run.run_id)
    assert encoder.encode(run) == orjson.dumps(snapshot(run))
