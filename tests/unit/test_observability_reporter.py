"""The supervisor's events, from a real Supervisor and a real Adapter, as metrics and health."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from flowcraft_puller.adapter import Adapter, AdapterSettings, JobOutcome
from flowcraft_puller.engine.blueprint import load_blueprint
from flowcraft_puller.engine.executor import ExecutionEnv
from flowcraft_puller.engine.step import Engine
from flowcraft_puller.observability.health import HealthState
from flowcraft_puller.observability.metrics import Metrics
from flowcraft_puller.observability.reporter import Reporter
from flowcraft_puller.queue.memory import MemoryQueue
from flowcraft_puller.queue.protocol import OutgoingMessage, QueueMessage
from flowcraft_puller.runstore.memory import MemoryRunStore
from flowcraft_puller.supervisor import QueueBinding, Supervisor, SupervisorSettings
from flowcraft_puller.testing import STANDARD_NODES

pytestmark = pytest.mark.anyio

SETTINGS = SupervisorSettings(
    concurrency=8, idle_backoff_min_s=0.005, idle_backoff_max_s=0.02, ack_linger_s=0.005
)


class ScriptedHandler:
    """Returns the outcome named in each message body; holds every job while ``hold`` is set."""

    def __init__(self, hold: anyio.Event | None = None) -> None:
        self.hold = hold
        self.handled = 0

    async def handle_job(
        self, message: QueueMessage, *, deadline: float | None = None
    ) -> JobOutcome:
        if self.hold is not None:
            await self.hold.wait()
        self.handled += 1
        action, outcome, reject = message.body["script"]
        return JobOutcome(action, outcome, 5 if action == "retry" else 0, reject=reject)


def job(action: str, outcome: str, reject: str | None = None) -> OutgoingMessage:
    return OutgoingMessage({"blueprintId": "orders", "script": [action, outcome, reject]})


def value(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


async def test_a_supervised_run_is_counted_by_outcome_and_marks_pulls_and_draining() -> None:
    queue = MemoryQueue()
    await queue.send_batch(
        [job("ack", "completed")] * 5
        + [job("retry", "busy"), job("ack", "rejected", "malformed")]
        + [job("leave", "lease_expired")]
    )
    metrics = Metrics(queues=["jobs"], blueprints=["orders"])
    health = HealthState()
    handler = ScriptedHandler()
    supervisor = Supervisor(
        handler, [QueueBinding("jobs", queue)], SETTINGS, events=Reporter(metrics, health)
    )
    async with anyio.create_task_group() as group:
        group.start_soon(supervisor.run)
        with anyio.fail_after(5):
            while value(metrics, "flowcraft_messages_acked_total", queue="jobs") != 6:
                await anyio.sleep(0.005)
        supervisor.stop()

    def jobs(outcome: str) -> float | None:
        labels = {"queue": "jobs", "blueprint": "orders", "outcome": outcome}
        return value(metrics, "flowcraft_jobs_total", **labels)

    assert value(metrics, "flowcraft_messages_pulled_total", queue="jobs") == 8
    assert (jobs("completed"), jobs("busy"), jobs("rejected"), jobs("lease_expired")) == (
        5,
        1,
        1,
        1,
    )
    assert value(metrics, "flowcraft_messages_retried_total", queue="jobs", reason="busy") == 1
    rejected = {"queue": "jobs", "reason": "malformed"}
    assert value(metrics, "flowcraft_messages_rejected_total", **rejected) == 1
    assert value(metrics, "flowcraft_lease_expired_total", queue="jobs") == 1
    assert value(metrics, "flowcraft_jobs_in_flight") == 0
    assert value(metrics, "flowcraft_draining") == 1
    assert health.last_pull_success is not None
    assert health.draining
    assert not health.readiness().ok


async def test_jobs_handed_back_at_the_drain_deadline_count_as_drain_retries() -> None:
    queue = MemoryQueue()
    await queue.send_batch([job("ack", "completed")] * 2)
    metrics = Metrics(queues=["jobs"])
    handler = ScriptedHandler(hold=anyio.Event())
    settings = SupervisorSettings(
        concurrency=8, idle_backoff_min_s=0.005, ack_linger_s=0.005, drain_timeout_s=0.05
    )
    supervisor = Supervisor(
        handler, [QueueBinding("jobs", queue)], settings, events=Reporter(metrics, HealthState())
    )
    async with anyio.create_task_group() as group:
        group.start_soon(supervisor.run)
        with anyio.fail_after(5):
            while supervisor.in_flight < 2:
                await anyio.sleep(0.005)
        supervisor.stop()

    assert value(metrics, "flowcraft_drain_handed_back_total") == 2
    assert value(metrics, "flowcraft_messages_retried_total", queue="jobs", reason="drain") == 2


def _adapter() -> Adapter:
    blueprint = load_blueprint(
        {"id": "flow", "nodes": [{"id": "A", "uses": "const", "params": {"value": 1}}], "edges": []}
    )
    engine = Engine(blueprints={"flow": blueprint}, env=ExecutionEnv(registry=STANDARD_NODES))
    return Adapter(engine, MemoryRunStore(), AdapterSettings(max_deliveries=3))


def _message(
    body: Any = None, *, attempts: int = 1, decode_error: str | None = None
) -> QueueMessage:
    return QueueMessage("m-1", "l-1", attempts, 0, body=body, decode_error=decode_error)


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (_message(decode_error="v8 bodies cannot be decoded outside Workers"), "undecodable"),
        (_message({"nodeId": "A"}), "malformed"),
        (
            _message({"runId": "r1", "blueprintId": "gone", "nodeId": "A"}, attempts=3),
            "unknown_blueprint",
        ),
        (_message({"runId": "r1", "blueprintId": "flow", "nodeId": "A"}), "run_not_found"),
    ],
)
async def test_every_adapter_rejection_carries_its_reason_code(
    message: QueueMessage, reason: str
) -> None:
    outcome = await _adapter().handle_job(message)
    assert outcome.outcome == "rejected"
    assert outcome.reject == reason
