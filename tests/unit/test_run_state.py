"""The per-run state machine (runstore/state.py), driven directly with protocol models."""

from __future__ import annotations

import json
from typing import Any

import pytest

from flowcraft_puller.runstore.protocol import (
    AttemptsRequest,
    AwaitingSpec,
    BadRequest,
    CancelRequest,
    ClaimRequest,
    ClaimResponse,
    CommitRequest,
    CommitResponse,
    Conflict,
    DynamicSpec,
    FailRequest,
    NodeRef,
    Op,
    ParentLink,
    Resolution,
    ResumeRequest,
    RunNotFound,
    RunStatus,
    StartRequest,
    TopologyNode,
)
from flowcraft_puller.runstore.state import MAX_DELAY_MS, RunState

T0 = 1_700_000_000_000
HOOK_TOKEN = "t" * 32


def topology(
    edges: dict[str, list[str]],
    joins: dict[str, str] | None = None,
    back: dict[str, list[str]] | None = None,
) -> dict[str, TopologyNode]:
    nodes = set(edges) | {t for targets in edges.values() for t in targets}
    return {
        n: TopologyNode(
            succs=edges.get(n, []),
            join=(joins or {}).get(n, "all"),
            back_preds=(back or {}).get(n, []),
        )
        for n in sorted(nodes)
    }


def start(
    edges: dict[str, list[str]],
    start_nodes: list[str],
    *,
    joins: dict[str, str] | None = None,
    back: dict[str, list[str]] | None = None,
    context: dict[str, Any] | None = None,
    version: str | None = None,
    parent: ParentLink | None = None,
    now: int = T0,
) -> RunState:
    request = StartRequest(
        blueprint_id="bp",
        blueprint_version=version,
        context=context or {},
        topology=topology(edges, joins, back),
        start_nodes=start_nodes,
        parent=parent,
    )
    return RunState.start("run-1", request, now)


def claim(
    run: RunState,
    node: str,
    *,
    gen: int | None = None,
    token: str = "tok",
    lease_ms: int = 10_000,
    version: str | None = None,
    now: int = T0,
) -> ClaimResponse:
    request = ClaimRequest(
        node_id=node, gen=gen, token=token, lease_ms=lease_ms, blueprint_version=version
    )
    return run.claim(request, now)


def commit(
    run: RunState,
    node: str,
    gen: int = 0,
    *,
    output: Any = None,
    action: str | None = None,
    now: int = T0,
    **fields: Any,
) -> CommitResponse:
    if "awaiting" not in fields:
        fields.setdefault("result", Resolution(output=output, action=action))
    return run.commit(CommitRequest(node_id=node, gen=gen, token="tok", **fields), now)


def jobs(run: RunState) -> list[tuple[str, int | None, int]]:
    """(node, gen, delay) of every job in the outbox, which is emptied."""
    return [(j.body["nodeId"], j.body.get("gen"), j.delay_ms) for j in run.take_outbox()]


def refs(*pairs: tuple[str, int]) -> list[NodeRef]:
    return [NodeRef(node_id=n, gen=g) for n, g in pairs]


def status(run: RunState) -> RunStatus:
    """The run status, read afresh (each call may see a different one)."""
    return run.status


def states(run: RunState) -> dict[str, str]:
    return {node: view.state for node, view in run.view().nodes.items()}


DIAMOND = {"A": ["B", "C"], "B": ["D"], "C": ["D"]}


# ---- start --------------------------------------------------------------------------------------


def test_start_seeds_blueprint_id_and_version_and_releases_start_nodes() -> None:
    run = start(DIAMOND, ["A"], context={"seed": 1, "blueprintId": "spoofed"})
    assert status(run) == "running"
    assert run.context == {"seed": 1, "blueprintId": "bp", "blueprintVersion": None}
    outbox = run.take_outbox()
    assert [j.body for j in outbox] == [
        {"runId": "run-1", "blueprintId": "bp", "nodeId": "A", "gen": 0}
    ]
    assert outbox[0].delay_ms == 0
    assert states(run) == {"A": "released", "B": "idle", "C": "idle", "D": "idle"}


def test_start_keeps_a_version_string() -> None:
    run = start({"A": []}, ["A"], version="1.2")
    assert run.context["blueprintVersion"] == "1.2"
    assert run.view().blueprint_version == "1.2"


def test_a_run_without_start_nodes_completes_at_once() -> None:
    run = start({"A": []}, [])
    assert status(run) == "completed"
    assert jobs(run) == []


@pytest.mark.parametrize(
    ("topology_nodes", "start_nodes", "field"),
    [
        ({"A": TopologyNode(succs=["Z"])}, ["A"], "topology.A.succs[0]"),
        ({"A": TopologyNode()}, ["A", "Q"], "startNodes[1]"),
        ({"A": TopologyNode(), "L": TopologyNode(back_preds=["A"])}, ["A"], "topology.L.backPreds"),
    ],
)
def test_start_rejects_an_inconsistent_topology(
    topology_nodes: dict[str, TopologyNode], start_nodes: list[str], field: str
) -> None:
    request = StartRequest(blueprint_id="bp", topology=topology_nodes, start_nodes=start_nodes)
    with pytest.raises(BadRequest) as caught:
        RunState.start("run-1", request, T0)
    assert caught.value.field == field


def test_same_start_compares_blueprint_id_and_version() -> None:
    run = start({"A": []}, ["A"], version="1")
    same = StartRequest(blueprint_id="bp", blueprint_version="1", topology={}, start_nodes=[])
    other = StartRequest(blueprint_id="bp", blueprint_version=None, topology={}, start_nodes=[])
    assert run.same_start(same)
    assert not run.same_start(other)


# ---- claim --------------------------------------------------------------------------------------


def test_claiming_a_released_node_takes_the_lease_and_returns_the_context() -> None:
    run = start(DIAMOND, ["A"], context={"seed": 1})
    answer = claim(run, "A")
    assert answer.state == "run"
    assert answer.gen == 0
    assert answer.status == "running"
    assert answer.context == {"seed": 1, "blueprintId": "bp", "blueprintVersion": None}
    assert (answer.attempts, answer.last_error) == (0, None)


def test_a_completed_node_claims_as_completed_with_its_result() -> None:
    run = start(DIAMOND, ["A"])
    claim(run, "A")
    commit(run, "A", output={"n": 1}, action="go", arrivals=["B", "C"])
    answer = claim(run, "A")
    assert answer.state == "completed"
    assert answer.result == Resolution(output={"n": 1}, action="go")


def test_another_token_is_busy_until_the_lease_expires() -> None:
    run = start(DIAMOND, ["A"])
    assert claim(run, "A", token="one", lease_ms=5_000).state == "run"
    busy = claim(run, "A", token="two", now=T0 + 1_000)
    assert busy.state == "busy"
    assert busy.retry_after_ms == 4_000
    assert claim(run, "A", token="two", now=T0 + 5_000).state == "run"
    assert claim(run, "A", token="one", now=T0 + 5_001).state == "busy"


def test_the_same_token_renews_its_lease() -> None:
    run = start(DIAMOND, ["A"])
    claim(run, "A", token="one", lease_ms=5_000)
    assert claim(run, "A", token="one", lease_ms=5_000, now=T0 + 4_000).state == "run"
    busy = claim(run, "A", token="two", now=T0 + 6_000)
    assert busy.state == "busy"
    assert busy.retry_after_ms == 3_000


def test_a_terminal_run_claims_as_terminal_with_the_reason() -> None:
    run = start(DIAMOND, ["A"])
    run.fail(FailRequest(reason="Node 'A' execution failed: x"), T0)
    answer = claim(run, "B")
    assert answer.state == "terminal"
    assert answer.status == "failed"
    assert answer.reason == "Node 'A' execution failed: x"


@pytest.mark.parametrize(("run_version", "job_version"), [(None, "1"), ("1", None), ("1", "2")])
def test_a_different_blueprint_version_is_a_mismatch_without_lease(
    run_version: str | None, job_version: str | None
) -> None:
    run = start(DIAMOND, ["A"], version=run_version)
    answer = claim(run, "A", version=job_version, token="other")
    assert answer.state == "version_mismatch"
    assert answer.blueprint_version == run_version
    assert claim(run, "A", version=run_version).state == "run"


def test_nodes_that_cannot_run_now_are_not_ready_with_a_reason() -> None:
    run = start(DIAMOND, ["A"])
    assert claim(run, "ghost").reason == "unknown node 'ghost'"
    assert claim(run, "ghost").state == "not_ready"
    never = claim(run, "B")
    assert (never.state, never.reason) == ("not_ready", "not released")
    future = claim(run, "A", gen=3)
    assert (future.state, future.gen) == ("not_ready", 3)
    claim(run, "A")
    commit(run, "A", arrivals=["B"], skips=["C"])
    skipped = claim(run, "C")
    assert (skipped.state, skipped.reason) == ("not_ready", "skipped")


def test_a_claim_without_gen_means_the_current_generation() -> None:
    run = start({"A": []}, ["A"])
    assert claim(run, "A", gen=None).gen == 0


# ---- attempts -----------------------------------------------------------------------------------


def test_recorded_attempts_survive_a_redelivery() -> None:
    run = start({"A": []}, ["A"])
    claim(run, "A", token="one")
    attempts = AttemptsRequest(node_id="A", gen=0, token="one", attempts=2, error="boom")
    assert run.attempts(attempts, T0).status == "running"
    lower = AttemptsRequest(node_id="A", gen=0, token="one", attempts=1, error="later")
    run.attempts(lower, T0)
    answer = claim(run, "A", token="one")
    assert (answer.attempts, answer.last_error) == (2, "later")


def test_releasing_the_lease_with_a_delay_makes_the_node_busy_and_schedules_it() -> None:
    run = start({"A": []}, ["A"])
    jobs(run)
    claim(run, "A", token="one")
    request = AttemptsRequest(
        node_id="A", gen=0, token="one", attempts=1, error="e", release=True, retry_after_ms=3_000
    )
    run.attempts(request, T0)
    assert jobs(run) == [("A", 0, 3_000)]
    busy = claim(run, "A", token="two", now=T0 + 1_000)
    assert (busy.state, busy.retry_after_ms) == ("busy", 2_000)
    assert claim(run, "A", token="two", now=T0 + 3_000).state == "run"


def test_attempts_for_a_pair_that_is_not_running_change_nothing() -> None:
    run = start(DIAMOND, ["A"])
    run.attempts(AttemptsRequest(node_id="B", gen=0, token="x", attempts=3), T0)
    assert run.view().nodes["B"].attempts == 0


# ---- commit -------------------------------------------------------------------------------------


def test_a_commit_applies_deletes_then_writes_and_releases_successors() -> None:
    run = start({"A": ["B"]}, ["A"], context={"old": 1, "keep": 2})
    jobs(run)
    claim(run, "A")
    answer = commit(
        run,
        "A",
        output=5,
        writes={"_outputs.A": 5, "old": "new"},
        deletes=["old", "keep"],
        arrivals=["B"],
    )
    assert answer == CommitResponse(status="running", released=refs(("B", 0)))
    assert run.context == {
        "blueprintId": "bp",
        "blueprintVersion": None,
        "_outputs.A": 5,
        "old": "new",
    }
    assert jobs(run) == [("B", 0, 0)]


def test_a_duplicate_commit_returns_the_same_released_list_and_changes_nothing() -> None:
    run = start(DIAMOND, ["A"])
    jobs(run)
    first = commit(run, "A", output=1, writes={"x": 1}, arrivals=["B", "C"])
    jobs(run)
    again = commit(run, "A", output=2, writes={"x": 2}, arrivals=["B"], skips=["C"])
    assert first.released == refs(("B", 0), ("C", 0))
    assert again.released == first.released
    assert again.duplicate
    assert run.context["x"] == 1
    assert claim(run, "A").result == Resolution(output=1)
    assert jobs(run) == []


def test_committing_a_pair_that_was_never_released_is_a_conflict() -> None:
    run = start(DIAMOND, ["A"])
    with pytest.raises(Conflict, match="never released"):
        commit(run, "B")


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"node_id": "ghost"}, "nodeId"),
        ({"arrivals": ["B", "D"]}, "arrivals[1]"),
        ({"skips": ["A"]}, "skips[0]"),
        ({"rearm": ["ghost"]}, "rearm[0]"),
        (
            {"dynamic": [DynamicSpec(node_id="w", uses="u", inputs="k", gather="Q")]},
            "dynamic[0].gather",
        ),
        (
            {"dynamic": [DynamicSpec(node_id="B", uses="u", inputs="k", gather="D")]},
            "dynamic[0].nodeId",
        ),
        ({"result": None}, "result"),
    ],
)
def test_an_invalid_commit_is_a_bad_request_naming_the_field(
    fields: dict[str, Any], field: str
) -> None:
    run = start(DIAMOND, ["A"])
    request = {"node_id": "A", "gen": 0, "token": "tok", "result": Resolution(), **fields}
    with pytest.raises(BadRequest) as caught:
        run.commit(CommitRequest(**request), T0)
    assert caught.value.field == field
    assert states(run)["A"] == "released"


def test_a_commit_without_a_lease_is_accepted_first_commit_wins() -> None:
    run = start({"A": []}, ["A"])
    claim(run, "A", token="holder")
    assert commit(run, "A", output="from elsewhere").status == "completed"


# ---- joins and skips ----------------------------------------------------------------------------


def test_an_all_join_waits_for_every_predecessor() -> None:
    run = start(DIAMOND, ["A"])
    commit(run, "A", arrivals=["B", "C"])
    jobs(run)
    assert commit(run, "B", arrivals=["D"]).released == []
    assert commit(run, "C", arrivals=["D"]).released == refs(("D", 0))
    assert jobs(run) == [("D", 0, 0)]


def test_an_any_join_releases_on_the_first_arrival_only() -> None:
    run = start({"A": ["J"], "B": ["J"], "C": ["J"]}, ["A", "B", "C"], joins={"J": "any"})
    assert commit(run, "B", arrivals=["J"]).released == refs(("J", 0))
    assert commit(run, "A", arrivals=["J"]).released == []
    assert commit(run, "C", arrivals=["J"]).released == []
    assert status(run) == "running"
    commit(run, "J")
    assert status(run) == "completed"


def test_a_source_arriving_twice_counts_once() -> None:
    run = start(DIAMOND, ["A"])
    commit(run, "A", arrivals=["B", "C"])
    assert commit(run, "B", arrivals=["D", "D"]).released == []
    assert commit(run, "B", arrivals=["D"]).duplicate
    assert states(run)["D"] == "idle"


def test_a_join_counts_distinct_predecessor_nodes_even_if_listed_twice() -> None:
    run = start({"A": ["C", "C"], "B": ["C"]}, ["A", "B"])
    assert commit(run, "A", arrivals=["C"]).released == []
    assert commit(run, "B", arrivals=["C"]).released == refs(("C", 0))


def test_an_all_join_fires_with_the_taken_branch_of_an_if_else() -> None:
    run = start(DIAMOND, ["A"])
    assert commit(run, "A", arrivals=["B"], skips=["C"]).released == refs(("B", 0))
    assert states(run)["C"] == "skipped"
    assert commit(run, "B", arrivals=["D"]).released == refs(("D", 0))


def test_skips_propagate_through_a_chain_and_the_run_completes() -> None:
    run = start({"A": ["B", "X"], "B": ["C"], "C": ["D"]}, ["A"])
    answer = commit(run, "A", arrivals=["X"], skips=["B"])
    assert answer.released == refs(("X", 0))
    assert states(run) == {
        "A": "completed",
        "B": "skipped",
        "C": "skipped",
        "D": "skipped",
        "X": "released",
    }
    commit(run, "X")
    assert status(run) == "completed"


def test_a_join_is_skipped_only_when_every_predecessor_skipped() -> None:
    run = start({"S": ["A", "B"], "A": ["J"], "B": ["J"]}, ["S"], joins={"J": "any"})
    commit(run, "S", arrivals=["A", "B"])
    commit(run, "A", skips=["J"])
    assert states(run)["J"] == "idle"
    commit(run, "B", skips=["J"])
    assert states(run)["J"] == "skipped"
    assert status(run) == "completed"


def test_a_run_is_completed_when_nothing_is_pending_whatever_terminals_were_reached() -> None:
    run = start({"A": ["B", "C"]}, ["A"])
    commit(run, "A", action="left", arrivals=["B"], skips=["C"])
    assert status(run) == "running"
    commit(run, "B", writes={"_outputs.B": 1})
    assert status(run) == "completed"
    assert run.finished_at_ms == T0


# ---- failure latch ------------------------------------------------------------------------------


def test_the_first_terminal_state_wins_and_later_commits_release_nothing() -> None:
    run = start(DIAMOND, ["A"])
    commit(run, "A", arrivals=["B", "C"])
    jobs(run)
    failed = run.fail(FailRequest(reason="first", node_id="B", gen=0), T0 + 1)
    assert (failed.status, failed.reason) == ("failed", "first")
    assert states(run)["B"] == "failed"
    late = commit(run, "C", output=3, writes={"late": True}, arrivals=["D"])
    assert late.released == []
    assert late.status == "failed"
    assert run.context["late"] is True
    assert claim(run, "C").state == "terminal"
    again = run.fail(FailRequest(reason="second"), T0 + 2)
    assert (again.status, again.reason) == ("failed", "first")
    cancelled = run.cancel(CancelRequest(reason="too late"), T0 + 3)
    assert (cancelled.status, cancelled.reason) == ("failed", "first")
    assert jobs(run) == []


def test_failing_a_completed_run_answers_completed() -> None:
    run = start({"A": []}, ["A"])
    commit(run, "A")
    answer = run.fail(FailRequest(reason="too late"), T0)
    assert (answer.status, answer.reason) == ("completed", None)


def test_cancel_latches_and_claims_answer_terminal() -> None:
    run = start({"A": []}, ["A"])
    answer = run.cancel(CancelRequest(reason=None), T0)
    assert (answer.status, answer.reason) == ("cancelled", "cancelled")
    assert claim(run, "A").state == "terminal"


def test_a_failed_node_commit_is_a_conflict() -> None:
    run = start(DIAMOND, ["A"])
    run.fail(FailRequest(reason="x", node_id="A", gen=0), T0)
    with pytest.raises(Conflict):
        commit(run, "A")


# ---- loops: re-arming ---------------------------------------------------------------------------


LOOP = {"init": ["L"], "ext": ["body"], "L": ["body", "done"], "body": ["L"]}


def loop_run() -> RunState:
    return start(LOOP, ["init", "ext"], joins={"L": "any"}, back={"L": ["body"]})


def test_a_continue_rearms_the_loop_and_carries_over_outside_arrivals() -> None:
    run = loop_run()
    commit(run, "ext", arrivals=["body"])
    assert commit(run, "init", arrivals=["L"]).released == refs(("L", 0))
    jobs(run)
    answer = commit(run, "L", 0, action="continue", rearm=["L", "body"], arrivals=["body"])
    assert answer.released == refs(("body", 1))
    assert run.gens["L"] == 1
    assert run.gens["body"] == 1
    assert jobs(run) == [("body", 1, 0)]
    assert commit(run, "body", 1, arrivals=["L"]).released == refs(("L", 1))
    done = commit(run, "L", 1, action="break", arrivals=["done"], skips=["body"])
    assert done.released == refs(("done", 0))
    assert run.records[("body", 1)].state == "completed"
    commit(run, "done")
    assert status(run) == "completed"


def test_at_generation_zero_a_loop_controller_ignores_its_back_predecessors() -> None:
    run = loop_run()
    assert run.records.get(("L", 0)) is None
    released = commit(run, "init", arrivals=["L"]).released
    assert released == refs(("L", 0))


def test_each_continue_starts_a_new_iteration_of_the_body() -> None:
    run = loop_run()
    commit(run, "ext", arrivals=["body"])
    commit(run, "init", arrivals=["L"])
    commit(run, "L", 0, action="continue", rearm=["L", "body"], arrivals=["body"])
    commit(run, "body", 1, arrivals=["L"])
    commit(run, "L", 1, action="continue", rearm=["L", "body"], arrivals=["body"])
    assert run.gens == {"L": 2, "body": 2, "done": 0, "ext": 0, "init": 0}
    again = run.commit(
        CommitRequest(node_id="body", gen=2, token="t", result=Resolution(), arrivals=["L"]), T0
    )
    assert again.released == refs(("L", 2))


def test_rearming_a_node_that_is_still_running_makes_its_commit_stale() -> None:
    run = start({"A": ["B", "C"], "B": ["D"], "C": [], "D": []}, ["A"])
    commit(run, "A", arrivals=["B", "C"])
    commit(run, "C", rearm=["B"])
    answer = commit(run, "B", 0, output="late", arrivals=["D"])
    assert answer.stale
    assert answer.released == []
    assert states(run)["D"] == "idle"


# ---- dynamic nodes (batch workers) --------------------------------------------------------------


def test_dynamic_workers_are_released_and_feed_the_gather() -> None:
    run = start({"S": ["G"], "G": []}, ["S"])
    jobs(run)
    workers = [
        DynamicSpec(node_id=f"w{i}", uses="double", inputs=f"_batch.S_x_item_{i}", gather="G")
        for i in range(2)
    ]
    answer = commit(run, "S", dynamic=workers, arrivals=["G"])
    assert answer.released == refs(("w0", 0), ("w1", 0))
    bodies = [j.body for j in run.take_outbox()]
    assert bodies[0] == {
        "runId": "run-1",
        "blueprintId": "bp",
        "nodeId": "w0",
        "gen": 0,
        "dynamic": {"uses": "double", "inputs": "_batch.S_x_item_0", "gather": "G"},
    }
    assert claim(run, "w1").state == "run"
    assert commit(run, "w1", output=2, arrivals=["G"]).released == []
    with pytest.raises(BadRequest):
        commit(run, "w0", arrivals=["S"])
    assert commit(run, "w0", output=4, arrivals=["G"]).released == refs(("G", 0))
    assert set(run.view().nodes) == {"S", "G", "w0", "w1"}


def test_an_empty_batch_releases_the_gather_with_the_scatter() -> None:
    run = start({"S": ["G"], "G": []}, ["S"])
    assert commit(run, "S", dynamic=[], arrivals=["G"]).released == refs(("G", 0))


def test_a_rearmed_gather_waits_for_the_next_chunk() -> None:
    run = start({"S": ["G"], "G": []}, ["S"])
    chunk = [DynamicSpec(node_id="w0", uses="u", inputs="k0", gather="G")]
    commit(run, "S", dynamic=chunk, arrivals=["G"])
    assert commit(run, "w0", arrivals=["G"]).released == refs(("G", 0))
    more = [DynamicSpec(node_id="w1", uses="u", inputs="k1", gather="G")]
    answer = commit(run, "G", 0, rearm=["G"], dynamic=more)
    assert answer.released == refs(("w1", 0))
    assert run.gens["G"] == 1
    assert commit(run, "w1", arrivals=["G"]).released == refs(("G", 1))


# ---- awaiting, resume, webhooks, timers ---------------------------------------------------------


WAIT = AwaitingSpec(reason="external_event", details={"reason": "external_event"}, external=True)


def wait_run() -> RunState:
    run = start({"W": ["ok", "no"]}, ["W"])
    claim(run, "W")
    commit(run, "W", awaiting=WAIT)
    jobs(run)
    return run


def test_an_awaiting_node_makes_a_quiet_run_awaiting() -> None:
    run = wait_run()
    assert status(run) == "awaiting"
    assert run.context["_awaitingNodeIds"] == ["W"]
    assert run.context["_awaitingDetails"] == {"W": {"reason": "external_event"}}
    answer = claim(run, "W")
    assert answer.state == "awaiting"
    assert answer.awaiting is not None
    assert (answer.awaiting.reason, answer.awaiting.resolution) == ("external_event", None)
    assert run.view().awaiting["W"].external


def test_resume_stores_the_resume_keys_and_resolves_the_wait_node() -> None:
    run = wait_run()
    answer = run.resume(ResumeRequest(action="approve", output={"ok": 1}), T0)
    assert answer.resumed == refs(("W", 0))
    assert answer.status == "running"
    assert run.context["_resume.action"] == "approve"
    assert run.context["_resume.output"] == {"ok": 1}
    assert jobs(run) == [("W", 0, 0)]
    resolution = claim(run, "W").awaiting
    assert resolution is not None
    assert resolution.resolution == Resolution(output={"ok": 1}, action="approve")
    done = commit(run, "W", output={"ok": 1}, action="approve", arrivals=["ok"], skips=["no"])
    assert done.released == refs(("ok", 0))
    assert "_awaitingNodeIds" not in run.context
    assert "_awaitingDetails" not in run.context


def test_resume_without_output_leaves_the_output_key_unset() -> None:
    run = wait_run()
    run.resume(ResumeRequest(action="go"), T0)
    assert run.context["_resume.action"] == "go"
    assert "_resume.output" not in run.context


def test_a_second_resume_or_a_resume_of_a_finished_run_is_a_conflict() -> None:
    run = wait_run()
    run.resume(ResumeRequest(action="go"), T0)
    with pytest.raises(Conflict):
        run.resume(ResumeRequest(action="again"), T0)
    run.cancel(CancelRequest(), T0)
    with pytest.raises(Conflict):
        run.resume(ResumeRequest(action="again"), T0)


SUBFLOW = AwaitingSpec(reason="subflow", details={"reason": "subflow", "childRunId": "c"})


def test_a_subflow_node_keeps_the_run_running_until_marked_external() -> None:
    run = start({"P": []}, ["P"])
    commit(run, "P", awaiting=SUBFLOW)
    assert status(run) == "running"
    external = SUBFLOW.model_copy(update={"external": True})
    assert commit(run, "P", awaiting=external).status == "awaiting"
    assert run.view().awaiting["P"].external
    internal = commit(run, "P", awaiting=SUBFLOW)
    assert internal.status == "running"


def test_failing_an_awaiting_node_removes_it_from_the_awaiting_keys() -> None:
    run = start({"P": []}, ["P"])
    commit(run, "P", awaiting=SUBFLOW)
    run.fail(FailRequest(reason="child failed", node_id="P", gen=0), T0)
    view = run.view()
    assert view.nodes["P"].state == "failed"
    assert view.awaiting == {}
    assert "_awaitingNodeIds" not in run.context


def hook_run() -> RunState:
    run = start({"H": ["next"]}, ["H"])
    spec = AwaitingSpec(
        reason="webhook", details={"reason": "webhook"}, external=True, hook_token=HOOK_TOKEN
    )
    commit(run, "H", awaiting=spec)
    jobs(run)
    return run


def test_a_webhook_delivery_resolves_the_node_once() -> None:
    run = hook_run()
    answer = run.hook("H", HOOK_TOKEN, {"paid": True}, T0)
    assert (answer.status, answer.node_id) == ("running", "H")
    assert jobs(run) == [("H", 0, 0)]
    view = claim(run, "H").awaiting
    assert view is not None
    assert view.resolution == Resolution(output={"paid": True})
    with pytest.raises(Conflict):
        run.hook("H", HOOK_TOKEN, {"paid": False}, T0)
    commit(run, "H", output={"paid": True}, arrivals=["next"])
    with pytest.raises(Conflict):
        run.hook("H", HOOK_TOKEN, {"paid": False}, T0)


@pytest.mark.parametrize(
    ("node", "token"), [("H", "x" * 32), ("next", HOOK_TOKEN), ("Q", HOOK_TOKEN)]
)
def test_a_webhook_with_a_wrong_node_or_token_is_not_found(node: str, token: str) -> None:
    run = hook_run()
    with pytest.raises(RunNotFound):
        run.hook(node, token, None, T0)


def test_a_webhook_node_can_also_be_resumed_by_node_id() -> None:
    run = hook_run()
    with pytest.raises(Conflict):
        run.resume(ResumeRequest(action="x"), T0)
    answer = run.resume(ResumeRequest(action="x", output=1, node_id="H"), T0)
    assert answer.resumed == refs(("H", 0))


def sleep_run(wake_in_ms: int) -> RunState:
    run = start({"S": ["next"]}, ["S"])
    jobs(run)
    spec = AwaitingSpec(
        reason="timer",
        details={"reason": "timer", "wakeUpAt": "later"},
        wake_at_ms=T0 + wake_in_ms,
        result=Resolution(output="carried"),
    )
    commit(run, "S", awaiting=spec)
    return run


def test_a_timer_schedules_its_job_and_resolves_when_due() -> None:
    run = sleep_run(5_000)
    assert status(run) == "running"
    assert jobs(run) == [("S", 0, 5_000)]
    early = claim(run, "S", now=T0 + 1_000)
    assert early.state == "awaiting"
    assert early.awaiting is not None
    assert early.awaiting.resolution is None
    assert jobs(run) == []
    due = claim(run, "S", now=T0 + 5_000)
    assert due.awaiting is not None
    assert due.awaiting.resolution == Resolution(output="carried")
    commit(run, "S", output="carried", arrivals=["next"], now=T0 + 5_000)
    assert "_awaitingNodeIds" not in run.context


def test_a_long_timer_chains_one_job_per_maximum_delay() -> None:
    wake_in = 2 * MAX_DELAY_MS + 60_000
    run = sleep_run(wake_in)
    assert jobs(run) == [("S", 0, MAX_DELAY_MS)]
    for _ in range(3):
        claim(run, "S", now=T0 + MAX_DELAY_MS)
    assert jobs(run) == [("S", 0, MAX_DELAY_MS)]
    for _ in range(3):
        claim(run, "S", now=T0 + 2 * MAX_DELAY_MS)
    assert jobs(run) == [("S", 0, 60_000)]
    for _ in range(3):
        due = claim(run, "S", now=T0 + wake_in)
        assert due.awaiting is not None
        assert due.awaiting.resolution == Resolution(output="carried")
    assert jobs(run) == []


def test_a_timer_job_that_arrives_early_is_rescheduled_for_the_rest() -> None:
    run = sleep_run(5_000)
    jobs(run)
    claim(run, "S", now=T0 + 4_500)
    assert jobs(run) == [("S", 0, 500)]


# ---- reconcile ----------------------------------------------------------------------------------


def test_reconcile_requeues_only_pending_pairs_without_a_live_lease() -> None:
    run = start({"A": [], "B": [], "C": []}, ["A", "B", "C"])
    jobs(run)
    claim(run, "A", token="live", lease_ms=60_000)
    claim(run, "B", token="gone", lease_ms=1_000)
    answer = run.reconcile(T0 + 5_000)
    assert answer.requeued == refs(("B", 0), ("C", 0))
    assert jobs(run) == [("B", 0, 0), ("C", 0, 0)]


def test_reconcile_respects_a_pending_retry_delay() -> None:
    run = start({"A": []}, ["A"])
    claim(run, "A")
    run.attempts(
        AttemptsRequest(
            node_id="A", gen=0, token="tok", attempts=1, release=True, retry_after_ms=9_000
        ),
        T0,
    )
    jobs(run)
    run.reconcile(T0 + 4_000)
    assert jobs(run) == [("A", 0, 5_000)]


def test_reconcile_requeues_resolvable_awaiting_nodes_but_not_plain_waits() -> None:
    waiting = wait_run()
    assert waiting.reconcile(T0).requeued == []
    waiting.resume(ResumeRequest(action="go"), T0)
    jobs(waiting)
    assert waiting.reconcile(T0).requeued == refs(("W", 0))
    timer = sleep_run(5_000)
    jobs(timer)
    assert timer.reconcile(T0).requeued == refs(("S", 0))


def test_reconcile_of_a_finished_run_requeues_nothing() -> None:
    run = start({"A": []}, ["A"])
    jobs(run)
    run.cancel(CancelRequest(), T0)
    assert run.reconcile(T0).requeued == []
    assert jobs(run) == []


# ---- parent notifications -----------------------------------------------------------------------


PARENT = ParentLink(run_id="parent-run", blueprint_id="pb", node_id="P", gen=2)
PARENT_JOB = ("P", 2, 0)


def test_a_child_run_notifies_its_parent_when_it_completes() -> None:
    run = start({"A": []}, ["A"], parent=PARENT)
    jobs(run)
    commit(run, "A")
    outbox = run.take_outbox()
    assert [j.body for j in outbox] == [
        {"runId": "parent-run", "blueprintId": "pb", "nodeId": "P", "gen": 2}
    ]


def test_a_child_run_notifies_its_parent_when_it_fails_or_awaits() -> None:
    failing = start({"A": []}, ["A"], parent=PARENT)
    jobs(failing)
    failing.fail(FailRequest(reason="x"), T0)
    assert jobs(failing) == [PARENT_JOB]
    waiting = start({"W": []}, ["W"], parent=PARENT)
    jobs(waiting)
    commit(waiting, "W", awaiting=WAIT)
    assert jobs(waiting) == [PARENT_JOB]


# ---- coordination store -------------------------------------------------------------------------


def ops(run: RunState, *items: dict[str, Any], now: int = T0) -> list[Any]:
    return run.ops([Op(**item) for item in items], now).results


def test_coordination_ops_follow_the_typescript_store_contract() -> None:
    run = start({"A": []}, ["A"])
    assert ops(
        run,
        {"op": "setIfNotExist", "key": "lock", "value": "locked", "ttl_seconds": 10},
        {"op": "setIfNotExist", "key": "lock", "value": "other"},
        {"op": "get", "key": "lock"},
        {"op": "increment", "key": "fanin"},
        {"op": "increment", "key": "fanin", "ttl_seconds": 5},
        {"op": "get", "key": "missing"},
        {"op": "extendTTL", "key": "missing", "ttl_seconds": 5},
        {"op": "delete", "key": "fanin"},
        {"op": "delete", "key": "fanin"},
    ) == [True, False, "locked", 1, 2, None, False, True, False]


def test_coordination_keys_expire_after_their_ttl() -> None:
    run = start({"A": []}, ["A"])
    ops(run, {"op": "setIfNotExist", "key": "lock", "value": "v", "ttl_seconds": 10})
    assert ops(run, {"op": "get", "key": "lock"}, now=T0 + 9_999) == ["v"]
    assert ops(run, {"op": "extendTTL", "key": "lock", "ttl_seconds": 20}, now=T0 + 9_999) == [True]
    assert ops(run, {"op": "get", "key": "lock"}, now=T0 + 29_998) == ["v"]
    assert ops(run, {"op": "get", "key": "lock"}, now=T0 + 29_999) == [None]
    assert ops(run, {"op": "setIfNotExist", "key": "lock", "value": "w"}, now=T0 + 29_999) == [True]
    assert run.next_expiry_ms() is None


def test_incrementing_a_non_integer_is_a_bad_request() -> None:
    run = start({"A": []}, ["A"])
    ops(run, {"op": "setIfNotExist", "key": "k", "value": "text"})
    with pytest.raises(BadRequest):
        ops(run, {"op": "increment", "key": "k"})


def test_context_ops_read_and_write_the_run_context() -> None:
    run = start({"A": []}, ["A"], context={"seed": 1})
    assert ops(
        run,
        {"op": "context.set", "key": "x", "value": [1]},
        {"op": "context.get", "key": "x"},
        {"op": "context.has", "key": "seed"},
        {"op": "context.delete", "key": "seed"},
        {"op": "context.has", "key": "seed"},
        {"op": "context.toJSON"},
    ) == [True, [1], True, True, False, {"blueprintId": "bp", "blueprintVersion": None, "x": [1]}]


def test_an_op_without_a_key_is_a_bad_request_naming_the_field() -> None:
    run = start({"A": []}, ["A"])
    with pytest.raises(BadRequest) as caught:
        ops(run, {"op": "get"})
    assert caught.value.field == "key"


# ---- status record ------------------------------------------------------------------------------


def test_a_running_status_record_has_status_seconds_and_blueprint() -> None:
    run = start({"A": []}, ["A"])
    assert run.status_record(T0 + 1_999) == {
        "status": "running",
        "lastUpdated": (T0 + 1_999) // 1000,
        "blueprintId": "bp",
    }


def test_a_completed_status_record_carries_the_final_context() -> None:
    run = start({"A": []}, ["A"], context={"seed": 1})
    commit(run, "A", writes={"_outputs.A": 2})
    record = run.status_record(T0)
    context = {"seed": 1, "blueprintId": "bp", "blueprintVersion": None, "_outputs.A": 2}
    assert record == {
        "status": "completed",
        "lastUpdated": T0 // 1000,
        "blueprintId": "bp",
        "finalStatus": {
            "status": "completed",
            "payload": {
                "context": context,
                "serializedContext": record["finalStatus"]["payload"]["serializedContext"],
                "status": "completed",
            },
        },
    }
    assert json.loads(record["finalStatus"]["payload"]["serializedContext"]) == context


@pytest.mark.parametrize("ending", ["failed", "cancelled"])
def test_failed_and_cancelled_status_records_carry_the_reason(ending: str) -> None:
    run = start({"A": []}, ["A"])
    if ending == "failed":
        run.fail(FailRequest(reason="Node 'A' execution failed: x"), T0)
        reason = "Node 'A' execution failed: x"
    else:
        run.cancel(CancelRequest(reason="operator"), T0)
        reason = "operator"
    assert run.status_record(T0) == {
        "status": ending,
        "lastUpdated": T0 // 1000,
        "blueprintId": "bp",
        "finalStatus": {"status": ending, "reason": reason},
        "error": reason,
    }


def test_the_awaiting_status_record_has_no_final_status() -> None:
    assert wait_run().status_record(T0) == {
        "status": "awaiting",
        "lastUpdated": T0 // 1000,
        "blueprintId": "bp",
    }


# ---- view ---------------------------------------------------------------------------------------


def test_the_view_shows_each_node_at_its_current_generation() -> None:
    run = loop_run()
    claim(run, "ext")
    run.attempts(AttemptsRequest(node_id="ext", gen=0, token="tok", attempts=1), T0)
    commit(run, "init", arrivals=["L"])
    commit(run, "L", 0, action="continue", rearm=["L", "body"], arrivals=["body"], now=T0 + 10)
    view = run.view()
    assert {n: (v.gen, v.state, v.attempts) for n, v in view.nodes.items()} == {
        "init": (0, "completed", 0),
        "ext": (0, "released", 1),
        "L": (1, "idle", 0),
        "body": (1, "idle", 0),
        "done": (0, "idle", 0),
    }
    assert (view.created_at_ms, view.updated_at_ms) == (T0, T0 + 10)


def test_a_failing_op_undoes_the_ops_before_it() -> None:
    run = start({"A": []}, ["A"])
    with pytest.raises(BadRequest):
        run.ops(
            [
                Op(op="setIfNotExist", key="lock", value="locked"),
                Op(op="context.set", key="shared", value=1),
                Op(op="increment", key="lock"),
            ],
            T0,
        )
    assert run.ops([Op(op="get", key="lock"), Op(op="context.has", key="shared")], T0).results == [
        None,
        False,
    ]


def test_a_value_larger_than_a_durable_object_row_is_refused_naming_its_field() -> None:
    run = start({"A": []}, ["A"])
    claim(run, "A")
    huge = "x" * 2_000_001
    with pytest.raises(BadRequest) as caught:
        run.commit(
            CommitRequest(
                node_id="A", gen=0, token="t", result=Resolution(output=1), writes={"big": huge}
            ),
            T0,
        )
    assert caught.value.field == "writes.big"
    assert run.records[("A", 0)].state == "released"


# ---- the size limit of resume outputs, webhook bodies and awaiting details (§8) -----------------

LIMIT = 2_000_000


def serialized_as(size: int) -> str:
    """A string whose compact JSON text is ``size`` bytes (its two quotes included)."""
    return "x" * (size - 2)


def details_serialized_as(node: str, size: int) -> dict[str, Any]:
    """Details whose ``_awaitingDetails`` entry ``{node: details}`` alone is ``size`` bytes."""
    overhead = len(json.dumps({node: {"k": ""}}, separators=(",", ":")))
    return {"k": "x" * (size - overhead)}


def test_a_resume_output_of_exactly_the_limit_is_accepted() -> None:
    run = wait_run()
    output = serialized_as(LIMIT)
    run.resume(ResumeRequest(action="go", output=output), T0)
    assert run.context["_resume.output"] == output


def test_a_resume_output_one_byte_over_the_limit_is_refused_changing_nothing() -> None:
    run = wait_run()
    before, view = dict(run.context), run.view()
    with pytest.raises(BadRequest) as caught:
        run.resume(ResumeRequest(action="go", output=serialized_as(LIMIT + 1)), T0 + 5)
    assert caught.value.field == "output"
    assert (run.context, run.view(), jobs(run)) == (before, view, [])


def test_a_resume_without_a_target_is_a_conflict_before_its_output_is_measured() -> None:
    run = wait_run()
    run.cancel(CancelRequest(), T0)
    with pytest.raises(Conflict):
        run.resume(ResumeRequest(action="go", output=serialized_as(LIMIT + 1)), T0)


def test_a_webhook_body_of_exactly_the_limit_is_accepted() -> None:
    run = hook_run()
    body = serialized_as(LIMIT)
    run.hook("H", HOOK_TOKEN, body, T0)
    assert run.view().awaiting["H"].resolution == Resolution(output=body)


def test_a_webhook_body_one_byte_over_the_limit_is_refused_changing_nothing() -> None:
    run = hook_run()
    view = run.view()
    with pytest.raises(BadRequest) as caught:
        run.hook("H", HOOK_TOKEN, serialized_as(LIMIT + 1), T0 + 5)
    assert caught.value.field == "body"
    assert (run.view(), jobs(run)) == (view, [])
    run.hook("H", HOOK_TOKEN, {"paid": True}, T0)
    assert run.view().awaiting["H"].resolution == Resolution(output={"paid": True})


def test_a_wrong_token_or_a_replay_answers_before_the_webhook_body_is_measured() -> None:
    run = hook_run()
    with pytest.raises(RunNotFound):
        run.hook("H", "x" * 32, serialized_as(LIMIT + 1), T0)
    run.hook("H", HOOK_TOKEN, None, T0)
    with pytest.raises(Conflict):
        run.hook("H", HOOK_TOKEN, serialized_as(LIMIT + 1), T0)


def await_commit(run: RunState, node: str, details: dict[str, Any], gen: int = 0) -> None:
    spec = AwaitingSpec(reason="external_event", details=details, external=True)
    commit(run, node, gen, awaiting=spec, writes={"w": node})


def test_awaiting_details_of_exactly_the_limit_are_accepted() -> None:
    run = start({"W": []}, ["W"])
    details = details_serialized_as("W", LIMIT)
    await_commit(run, "W", details)
    stored = run.context["_awaitingDetails"]
    assert stored == {"W": details}
    assert len(json.dumps(stored, separators=(",", ":")).encode()) == LIMIT


def test_awaiting_details_one_byte_over_the_limit_are_refused_changing_nothing() -> None:
    run = start({"W": []}, ["W"])
    view = run.view()
    with pytest.raises(BadRequest) as caught:
        await_commit(run, "W", details_serialized_as("W", LIMIT + 1))
    assert caught.value.field == "awaiting.details"
    assert (run.view(), jobs(run)) == (view, [("W", 0, 0)])


def test_the_limit_applies_to_the_details_of_every_awaiting_node_together() -> None:
    run = start({"P": [], "Q": []}, ["P", "Q"])
    half = LIMIT // 2
    await_commit(run, "P", details_serialized_as("P", half))
    before, view = dict(run.context), run.view()
    # {P} and {Q} merge into {P,Q}: one byte less than the two apart (two braces, one comma).
    with pytest.raises(BadRequest) as caught:
        await_commit(run, "Q", details_serialized_as("Q", half + 2))
    assert caught.value.field == "awaiting.details"
    assert (run.context, run.view()) == (before, view)
    await_commit(run, "Q", details_serialized_as("Q", half + 1))
    aggregate = run.context["_awaitingDetails"]
    assert len(json.dumps(aggregate, separators=(",", ":")).encode()) == LIMIT


def test_an_awaiting_node_that_commits_again_counts_only_its_new_details() -> None:
    run = start({"P": [], "Q": []}, ["P", "Q"])
    await_commit(run, "P", details_serialized_as("P", LIMIT // 2))
    await_commit(run, "Q", details_serialized_as("Q", LIMIT // 2))
    await_commit(run, "Q", details_serialized_as("Q", LIMIT // 2 + 1))
    assert set(run.context["_awaitingDetails"]) == {"P", "Q"}
    with pytest.raises(BadRequest):
        await_commit(run, "Q", details_serialized_as("Q", LIMIT // 2 + 2))


def test_a_completed_awaiting_node_frees_its_share_of_the_limit() -> None:
    run = start({"P": [], "Q": []}, ["P", "Q"])
    await_commit(run, "P", details_serialized_as("P", LIMIT))
    commit(run, "P")
    await_commit(run, "Q", details_serialized_as("Q", LIMIT))
    assert set(run.context["_awaitingDetails"]) == {"Q"}
