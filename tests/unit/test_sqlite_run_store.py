"""The emulator's SQLite run store: persistence across restarts, the outbox, sweeping."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import pytest

from flowcraft_puller.queue.protocol import OutgoingMessage
from flowcraft_puller.runstore.protocol import (
    AttemptsRequest,
    BadRequest,
    ClaimRequest,
    CommitRequest,
    CommitResponse,
    DynamicSpec,
    Op,
    OpsRequest,
    OpsResponse,
    Resolution,
    RunNotFound,
    StartRequest,
    TopologyNode,
)
from flowcraft_puller.runstore.sqlite import SqliteRunStore

T0 = 1_700_000_000_000


class Clock:
    def __init__(self) -> None:
        self.ms = T0

    def __call__(self) -> float:
        return self.ms


class Sender:
    """A JobSender that records each batch, refusing the next ``failures`` calls."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.batches: list[list[OutgoingMessage]] = []

    async def send_batch(self, messages: list[OutgoingMessage]) -> None:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("the job queue is down")
        self.batches.append(list(messages))

    @property
    def bodies(self) -> list[object]:
        return [message.body for batch in self.batches for message in batch]


def start_request(edges: dict[str, list[str]], start_nodes: list[str]) -> StartRequest:
    nodes = set(edges) | {t for targets in edges.values() for t in targets}
    return StartRequest(
        blueprint_id="bp",
        topology={n: TopologyNode(succs=edges.get(n, [])) for n in nodes},
        start_nodes=start_nodes,
    )


def claim(node: str, token: str = "t") -> ClaimRequest:
    return ClaimRequest(node_id=node, token=token, lease_ms=60_000)


def done(node: str, **fields: object) -> CommitRequest:
    return CommitRequest(node_id=node, gen=0, token="t", result=Resolution(output=1), **fields)


def job(run_id: str, node: str) -> dict[str, object]:
    return {"runId": run_id, "blueprintId": "bp", "nodeId": node, "gen": 0}


@pytest.mark.anyio
async def test_a_restarted_store_keeps_its_runs(tmp_path: Path) -> None:
    path = tmp_path / "runs.sqlite"
    clock = Clock()
    store = SqliteRunStore(path, Sender(), clock_ms=clock)
    await store.start("r1", start_request({"A": ["B"], "B": []}, ["A"]))
    await store.claim("r1", claim("A"))
    await store.commit("r1", done("A", arrivals=["B"], writes={"x": 1}))
    await store.claim("r1", claim("B", token="holder"))
    ops = [Op(op="setIfNotExist", key="k", value="v", ttl_seconds=60)]
    await store.ops("r1", OpsRequest(ops=ops))
    before = await store.get("r1")
    store.close()

    reopened = SqliteRunStore(path, Sender(), clock_ms=clock)
    assert await reopened.get("r1") == before
    assert (await reopened.claim("r1", claim("B", token="other"))).state == "busy"
    get = OpsRequest(ops=[Op(op="get", key="k")])
    assert (await reopened.ops("r1", get)).results == ["v"]
    assert (await reopened.commit("r1", done("B"))).status == "completed"
    listing = await reopened.list_runs()
    assert [(r.run_id, r.status) for r in listing.runs] == [("r1", "completed")]
    reopened.close()


@pytest.mark.anyio
async def test_the_outbox_is_resent_after_a_failed_send() -> None:
    sender = Sender(failures=1)
    store = SqliteRunStore(None, sender)
    answer = await store.start("r1", start_request({"A": []}, ["A"]))
    assert answer.created
    assert sender.bodies == []
    assert await store.resend_outbox() == 1
    assert sender.bodies == [job("r1", "A")]
    assert await store.resend_outbox() == 0
    assert sender.bodies == [job("r1", "A")]


@pytest.mark.anyio
async def test_unsent_outbox_rows_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "runs.sqlite"
    store = SqliteRunStore(path, Sender(failures=10))
    await store.start("r1", start_request({"A": []}, ["A"]))
    store.close()
    sender = Sender()
    reopened = SqliteRunStore(path, sender)
    await reopened.sweep()
    assert sender.bodies == [job("r1", "A")]
    reopened.close()


@pytest.mark.anyio
async def test_a_resent_job_keeps_only_the_rest_of_its_delay() -> None:
    clock = Clock()
    sender = Sender()
    store = SqliteRunStore(None, sender, clock_ms=clock)
    await store.start("r1", start_request({"A": []}, ["A"]))
    await store.claim("r1", claim("A"))
    sender.failures = 1
    retry = AttemptsRequest(node_id="A", gen=0, token="t", attempts=1, retry_after_ms=10_000)
    await store.attempts("r1", retry)
    clock.ms += 4_000
    assert await store.resend_outbox() == 1
    assert sender.batches[-1] == [OutgoingMessage(job("r1", "A"), 6_000)]


@pytest.mark.anyio
async def test_the_sweeper_resends_the_outbox_in_the_background() -> None:
    sender = Sender(failures=1)
    store = SqliteRunStore(None, sender)
    await store.start("r1", start_request({"A": []}, ["A"]))
    async with anyio.create_task_group() as group:
        group.start_soon(store.run_sweepers, 0.01)
        with anyio.fail_after(5):
            while not sender.bodies:
                await anyio.sleep(0.01)
        group.cancel_scope.cancel()
    assert sender.bodies == [job("r1", "A")]


@pytest.mark.anyio
async def test_a_large_outbox_is_sent_in_batches_of_at_most_100() -> None:
    sender = Sender()
    store = SqliteRunStore(None, sender)
    await store.start("r1", start_request({"A": ["G"], "G": []}, ["A"]))
    workers = [DynamicSpec(node_id=f"w{i}", uses="u", inputs="i", gather="G") for i in range(250)]
    await store.claim("r1", claim("A"))
    await store.commit("r1", done("A", dynamic=workers, arrivals=["G"]))
    assert [len(batch) for batch in sender.batches] == [1, 100, 100, 50]
    assert await store.resend_outbox() == 0


@pytest.mark.anyio
async def test_finished_runs_are_deleted_after_the_retention_period(tmp_path: Path) -> None:
    path = tmp_path / "runs.sqlite"
    clock = Clock()
    store = SqliteRunStore(path, Sender(), clock_ms=clock, retention_s=3600)
    await store.start("finished", start_request({"A": []}, []))
    await store.start("running", start_request({"A": []}, ["A"]))
    clock.ms += 3_599_000
    assert store.delete_finished() == 0
    clock.ms += 2_000
    assert store.delete_finished() == 1
    with pytest.raises(RunNotFound):
        await store.get("finished")
    assert (await store.get("running")).status == "running"
    assert store.status_record("finished") is not None
    store.close()
    reopened = SqliteRunStore(path, Sender(), clock_ms=clock)
    with pytest.raises(RunNotFound):
        await reopened.get("finished")
    reopened.close()


@pytest.mark.anyio
async def test_status_records_expire_after_their_ttl() -> None:
    clock = Clock()
    store = SqliteRunStore(None, Sender(), clock_ms=clock, status_ttl_s=100)
    await store.start("r1", start_request({"A": []}, ["A"]))
    record = store.status_record("r1")
    assert record is not None
    assert record["status"] == "running"
    assert record["lastUpdated"] == T0 // 1000
    clock.ms += 101_000
    assert store.expire_status_records() == 1
    assert store.status_record("r1") is None
    assert (await store.list_runs()).runs == []


@pytest.mark.anyio
async def test_runs_are_listed_by_status_and_staleness_page_by_page() -> None:
    clock = Clock()
    store = SqliteRunStore(None, Sender(), clock_ms=clock)
    for index in range(6):
        await store.start(f"r{index}", start_request({"A": []}, ["A"]))
    clock.ms += 30_000
    for run_id in ("r1", "r4"):
        await store.claim(run_id, claim("A"))
        await store.commit(run_id, done("A"))

    async def pages(**filters: Any) -> list[list[str]]:
        found, cursor = [], None
        while True:
            listing = await store.list_runs(limit=2, cursor=cursor, **filters)
            found.append([summary.run_id for summary in listing.runs])
            if (cursor := listing.cursor) is None:
                return found

    assert await pages(status="running") == [["r0", "r2"], ["r3", "r5"], []]
    assert await pages(status="completed") == [["r1", "r4"], []]
    assert await pages(status="running", stale_seconds=20) == [["r0", "r2"], ["r3", "r5"], []]
    assert await pages(stale_seconds=20) == [["r0", "r2"], ["r3", "r5"], []]
    assert await pages() == [["r0", "r1"], ["r2", "r3"], ["r4", "r5"], []]
    store.close()


@pytest.mark.anyio
async def test_expired_coordination_keys_are_swept_and_stay_gone(tmp_path: Path) -> None:
    path = tmp_path / "runs.sqlite"
    clock = Clock()
    store = SqliteRunStore(path, Sender(), clock_ms=clock)
    await store.start("r1", start_request({"A": []}, ["A"]))
    ops = [Op(op="setIfNotExist", key="short", value=1, ttl_seconds=1), Op(op="increment", key="n")]
    await store.ops("r1", OpsRequest(ops=ops))
    clock.ms += 2_000
    assert store.expire_keys() == 1
    assert set(store.runs["r1"].coordination) == {"n"}
    assert store.expire_keys() == 0
    store.close()
    reopened = SqliteRunStore(path, Sender(), clock_ms=clock)
    assert set(reopened.runs["r1"].coordination) == {"n"}
    reopened.close()


@pytest.mark.anyio
async def test_a_refused_call_leaves_no_trace(tmp_path: Path) -> None:
    path = tmp_path / "runs.sqlite"
    store = SqliteRunStore(path, Sender())
    await store.start("r1", start_request({"A": []}, ["A"]))
    await store.ops("r1", OpsRequest(ops=[Op(op="setIfNotExist", key="s", value="text")]))
    before = await store.get("r1")
    ops = [
        Op(op="context.set", key="half", value=1),
        Op(op="delete", key="s"),
        Op(op="increment", key="other"),
        Op(op="get"),
    ]
    with pytest.raises(BadRequest):
        await store.ops("r1", OpsRequest(ops=ops))
    assert await store.get("r1") == before
    assert set(store.runs["r1"].coordination) == {"s"}
    store.close()


@pytest.mark.anyio
async def test_grouped_calls_send_their_jobs_once_the_group_committed(tmp_path: Path) -> None:
    path = tmp_path / "runs.sqlite"
    sender = Sender()
    store = SqliteRunStore(path, sender)
    for run_id in ("r1", "r2"):
        await store.start(run_id, start_request({"A": ["B"], "B": []}, ["A"]))
    sender.batches.clear()

    async def claim_and_commit(run_id: str) -> None:
        await store.claim(run_id, claim("A"))
        await store.commit(run_id, done("A", arrivals=["B"]))
        assert sender.batches == []

    await store.run_grouped([partial(claim_and_commit, "r1"), partial(claim_and_commit, "r2")])
    assert sender.batches == [
        [OutgoingMessage(job("r1", "B"), 0), OutgoingMessage(job("r2", "B"), 0)]
    ]
    assert await store.resend_outbox() == 0
    store.close()
    reopened = SqliteRunStore(path, Sender())
    nodes = (await reopened.get("r2")).nodes
    assert {node: view.state for node, view in nodes.items()} == {"A": "completed", "B": "released"}
    reopened.close()


def increment(store: SqliteRunStore, key: str) -> Callable[[], Awaitable[OpsResponse]]:
    return partial(store.ops, "r1", OpsRequest(ops=[Op(op="increment", key=key)]))


@pytest.mark.anyio
async def test_a_refused_call_in_a_group_leaves_the_others_in_place(tmp_path: Path) -> None:
    path = tmp_path / "runs.sqlite"
    store = SqliteRunStore(path, Sender())
    await store.start("r1", start_request({"A": []}, ["A"]))
    await store.ops("r1", OpsRequest(ops=[Op(op="setIfNotExist", key="s", value="text")]))
    refused = [Op(op="context.set", key="half", value=1), Op(op="increment", key="s")]
    outcomes = await store.run_grouped(
        [
            increment(store, "n"),
            partial(store.ops, "r1", OpsRequest(ops=refused)),
            increment(store, "n"),
        ]
    )
    assert [type(outcome) for outcome in outcomes] == [OpsResponse, BadRequest, OpsResponse]
    assert [outcome.results for outcome in outcomes if isinstance(outcome, OpsResponse)] == [
        [1],
        [2],
    ]
    expected = await store.get("r1")
    assert "half" not in expected.context
    store.close()
    reopened = SqliteRunStore(path, Sender())
    assert await reopened.get("r1") == expected
    assert (await reopened.ops("r1", OpsRequest(ops=[Op(op="get", key="n")]))).results == [2]
    reopened.close()


@pytest.mark.anyio
async def test_a_group_writes_each_changed_run_once_at_its_end(tmp_path: Path) -> None:
    path = tmp_path / "runs.sqlite"
    store = SqliteRunStore(path, Sender())
    await store.start("r1", start_request({"A": []}, ["A"]))
    writes: list[str] = []
    store._db.set_trace_callback(writes.append)
    await store.run_grouped([increment(store, "n") for _ in range(5)])
    store._db.set_trace_callback(None)
    assert sum("INSERT INTO runs" in statement for statement in writes) == 1
    store.close()
    reopened = SqliteRunStore(path, Sender())
    assert (await reopened.ops("r1", OpsRequest(ops=[Op(op="get", key="n")]))).results == [5]
    reopened.close()


class Interrupted(BaseException):
    """Stands in for a cancellation arriving in the middle of a group."""


@pytest.mark.anyio
async def test_a_group_cut_short_is_undone_and_its_outbox_rows_are_forgotten() -> None:
    sender = Sender()
    store = SqliteRunStore(None, sender)
    await store.start("r1", start_request({"A": ["B"], "B": []}, ["A"]))
    await store.claim("r1", claim("A"))
    sender.batches.clear()

    async def interrupt() -> None:
        raise Interrupted

    with pytest.raises(Interrupted):
        await store.run_grouped([partial(store.commit, "r1", done("A", arrivals=["B"])), interrupt])
    assert sender.batches == []
    assert (await store.get("r1")).nodes["B"].state == "idle"
    sender.failures = 1
    committed = await store.commit("r1", done("A", arrivals=["B"]))
    assert [ref.node_id for ref in committed.released] == ["B"]
    assert await store.resend_outbox() == 1
    assert sender.bodies == [job("r1", "B")]
    store.close()


@pytest.mark.anyio
async def test_a_rolled_back_group_writes_the_status_records_it_had_written_again(
    tmp_path: Path,
) -> None:
    path = tmp_path / "runs.sqlite"
    store = SqliteRunStore(path, Sender(), clock_ms=Clock())
    await store.start("r1", start_request({"A": []}, ["A"]))
    await store.claim("r1", claim("A"))
    outcomes = await store.run_grouped(
        [
            partial(store.commit, "r1", done("A")),
            partial(store.commit, "r1", done("B")),
        ]
    )
    assert [type(outcome) for outcome in outcomes] == [CommitResponse, BadRequest]
    record = store.status_record("r1")
    assert record is not None
    assert record["status"] == "completed"
    store.close()
    reopened = SqliteRunStore(path, Sender())
    assert (await reopened.get("r1")).status == "completed"
    reopened.close()


@pytest.mark.anyio
async def test_a_store_without_wire_copies_answers_like_one_with_them() -> None:
    answers = []
    for copies in (True, False):
        store = SqliteRunStore(None, Sender(), clock_ms=Clock(), wire_copies=copies)
        await store.start("r1", start_request({"A": ["B"], "B": []}, ["A"]))
        claimed = await store.claim("r1", claim("A"))
        committed = await store.commit("r1", done("A", arrivals=["B"], writes={"x": [1]}))
        answers.append((claimed, committed, await store.get("r1")))
        store.close()
    assert answers[0] == answers[1]
