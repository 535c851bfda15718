"""The supervisor: bounded dispatch, batched acks, idle back-off and graceful drain."""

from __future__ import annotations

from dataclasses import dataclass, field

import anyio
import pytest

from flowcraft_puller.adapter import JobOutcome
from flowcraft_puller.queue.errors import QueueConfigError, QueueRateLimited
from flowcraft_puller.queue.memory import MemoryQueue
from flowcraft_puller.queue.protocol import (
    AckResult,
    OutgoingMessage,
    PullResult,
    QueueMessage,
    Retry,
)
from flowcraft_puller.supervisor import QueueBinding, Supervisor, SupervisorSettings

pytestmark = pytest.mark.anyio


@dataclass
class Handler:
    """A job handler that records concurrency and finishes jobs when told to."""

    outcome: JobOutcome = field(default_factory=lambda: JobOutcome("ack", "completed"))
    hold: anyio.Event | None = None
    running: int = 0
    peak: int = 0
    handled: list[str] = field(default_factory=list)

    async def handle_job(
        self, message: QueueMessage, *, deadline: float | None = None
    ) -> JobOutcome:
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            if self.hold is not None:
                await self.hold.wait()
            else:
                await anyio.sleep(0.001)
            self.handled.append(message.id)
            return self.outcome
        finally:
            self.running -= 1


class CountingQueue:
    """A non-notifying wrapper that counts REST-like calls (like the Cloudflare client)."""

    def __init__(self, inner: MemoryQueue) -> None:
        self.inner = inner
        self.pulls = 0
        self.acks = 0

    async def pull(self, batch_size: int, visibility_timeout_ms: int) -> PullResult:
        self.pulls += 1
        return await self.inner.pull(batch_size, visibility_timeout_ms)

    async def ack(self, acks: list[str], retries: list[Retry]) -> AckResult:
        self.acks += 1
        return await self.inner.ack(acks, retries)


async def _fill(queue: MemoryQueue, count: int) -> None:
    await queue.send_batch([OutgoingMessage({"n": i}) for i in range(count)])


def _settings(**overrides: float) -> SupervisorSettings:
    values: dict[str, float] = {
        "concurrency": 8,
        "idle_backoff_min_s": 0.005,
        "idle_backoff_max_s": 0.02,
        "ack_linger_s": 0.005,
        "fill_wait_s": 0.0,
        "drain_timeout_s": 5.0,
    }
    values.update(overrides)
    return SupervisorSettings(**values)  # type: ignore[arg-type]


async def _run_until(supervisor: Supervisor, condition: object, timeout: float = 5.0) -> None:
    async with anyio.create_task_group() as group:
        group.start_soon(supervisor.run)
        with anyio.fail_after(timeout):
            while not condition():  # type: ignore[operator]
                await anyio.sleep(0.005)
        supervisor.stop()


async def test_every_message_is_handled_and_acknowledged_across_several_pull_loops() -> None:
    queue = MemoryQueue()
    await _fill(queue, 300)
    handler = Handler()
    supervisor = Supervisor(handler, [QueueBinding("q", queue, pull_loops=3)], _settings())
    await _run_until(supervisor, lambda: queue.depth == 0)
    assert sorted(handler.handled) == sorted(f"m{i}" for i in range(1, 301))


async def test_in_flight_jobs_never_exceed_the_concurrency_and_nothing_waits_leased() -> None:
    queue = MemoryQueue()
    await _fill(queue, 100)
    hold = anyio.Event()
    handler = Handler(hold=hold)
    supervisor = Supervisor(
        handler, [QueueBinding("q", queue, pull_loops=4)], _settings(concurrency=5)
    )
    async with anyio.create_task_group() as group:
        group.start_soon(supervisor.run)
        with anyio.fail_after(5):
            while handler.running < 5:
                await anyio.sleep(0.005)
        await anyio.sleep(0.05)
        assert handler.running == 5
        assert queue.leased() == 5
        hold.set()
        with anyio.fail_after(5):
            while queue.depth:
                await anyio.sleep(0.005)
        supervisor.stop()
    assert handler.peak == 5


async def test_acks_are_batched_into_few_requests() -> None:
    inner = MemoryQueue()
    await _fill(inner, 400)
    queue = CountingQueue(inner)
    supervisor = Supervisor(
        Handler(), [QueueBinding("q", queue)], _settings(concurrency=100, ack_linger_s=0.02)
    )
    await _run_until(supervisor, lambda: inner.depth == 0)
    assert queue.acks <= 40


async def test_empty_pulls_back_off_to_the_configured_ceiling() -> None:
    queue = CountingQueue(MemoryQueue())
    supervisor = Supervisor(
        Handler(),
        [QueueBinding("q", queue)],
        _settings(idle_backoff_min_s=0.01, idle_backoff_max_s=0.1),
    )
    async with anyio.create_task_group() as group:
        group.start_soon(supervisor.run)
        await anyio.sleep(0.6)
        supervisor.stop()
    assert 3 <= queue.pulls <= 14


async def test_retry_outcomes_put_the_message_back_with_its_delay() -> None:
    queue = MemoryQueue()
    await _fill(queue, 1)
    handler = Handler(outcome=JobOutcome("retry", "busy", delay_seconds=30))
    supervisor = Supervisor(handler, [QueueBinding("q", queue)], _settings())
    await _run_until(supervisor, lambda: len(handler.handled) == 1)
    pulled = await queue.pull(10, 1000)
    assert pulled.messages == []
    assert queue.depth == 1


async def test_a_left_message_is_neither_acked_nor_retried() -> None:
    queue = MemoryQueue()
    await _fill(queue, 1)
    handler = Handler(outcome=JobOutcome("leave", "lease_expired"))
    supervisor = Supervisor(
        handler, [QueueBinding("q", queue, visibility_timeout_s=30)], _settings()
    )
    await _run_until(supervisor, lambda: len(handler.handled) == 1)
    assert queue.depth == 1
    assert queue.leased() == 1


async def test_drain_waits_for_in_flight_jobs_and_acks_them() -> None:
    queue = MemoryQueue()
    await _fill(queue, 3)
    hold = anyio.Event()
    handler = Handler(hold=hold)
    supervisor = Supervisor(handler, [QueueBinding("q", queue)], _settings())
    async with anyio.create_task_group() as group:
        group.start_soon(supervisor.run)
        with anyio.fail_after(5):
            while handler.running < 3:
                await anyio.sleep(0.005)
        supervisor.stop()
        await anyio.sleep(0.05)
        assert handler.running == 3
        hold.set()
    assert len(handler.handled) == 3
    assert queue.depth == 0


async def test_jobs_running_at_the_drain_timeout_are_handed_back_for_redelivery() -> None:
    queue = MemoryQueue()
    await _fill(queue, 2)
    handler = Handler(hold=anyio.Event())
    supervisor = Supervisor(
        handler, [QueueBinding("q", queue, visibility_timeout_s=60)], _settings(drain_timeout_s=0.1)
    )
    async with anyio.create_task_group() as group:
        group.start_soon(supervisor.run)
        with anyio.fail_after(5):
            while handler.running < 2:
                await anyio.sleep(0.005)
        supervisor.stop()
    assert handler.handled == []
    redelivered = await queue.pull(10, 1000)
    assert len(redelivered.messages) == 2
    assert all(m.attempts == 2 for m in redelivered.messages)


async def test_a_second_stop_skips_the_wait() -> None:
    queue = MemoryQueue()
    await _fill(queue, 1)
    handler = Handler(hold=anyio.Event())
    supervisor = Supervisor(handler, [QueueBinding("q", queue)], _settings(drain_timeout_s=30))
    with anyio.fail_after(3):
        async with anyio.create_task_group() as group:
            group.start_soon(supervisor.run)
            while handler.running < 1:
                await anyio.sleep(0.005)
            supervisor.stop()
            supervisor.stop(hurry=True)
    assert queue.depth == 1
    assert queue.leased() == 0


async def test_messages_pulled_after_stop_are_handed_back_unprocessed() -> None:
    inner = MemoryQueue()
    await _fill(inner, 5)
    supervisor: Supervisor

    class StopDuringPull(CountingQueue):
        async def pull(self, batch_size: int, visibility_timeout_ms: int) -> PullResult:
            supervisor.stop()
            return await super().pull(batch_size, visibility_timeout_ms)

    handler = Handler()
    supervisor = Supervisor(handler, [QueueBinding("q", StopDuringPull(inner))], _settings())
    with anyio.fail_after(3):
        await supervisor.run()
    assert handler.handled == []
    assert len((await inner.pull(10, 1000)).messages) == 5


async def test_readiness_callback_fires_after_the_first_successful_pull() -> None:
    queue = MemoryQueue()
    ready: list[bool] = []
    supervisor = Supervisor(
        Handler(), [QueueBinding("q", queue)], _settings(), on_ready=lambda: ready.append(True)
    )
    async with anyio.create_task_group() as group:
        group.start_soon(supervisor.run)
        with anyio.fail_after(2):
            await supervisor.wait_ready()
        supervisor.stop()
    assert ready == [True]


class FailingQueue(CountingQueue):
    def __init__(self, inner: MemoryQueue, error: Exception) -> None:
        super().__init__(inner)
        self.error = error

    async def pull(self, batch_size: int, visibility_timeout_ms: int) -> PullResult:
        self.pulls += 1
        raise self.error


async def test_a_misconfigured_queue_stops_the_supervisor_with_the_error() -> None:
    error = QueueConfigError("queue 'abc' does not exist in account 'acct'", code=10104)
    supervisor = Supervisor(
        Handler(), [QueueBinding("q", FailingQueue(MemoryQueue(), error))], _settings()
    )
    with anyio.fail_after(3):
        await supervisor.run()
    assert supervisor.fatal is error


async def test_a_rate_limited_pull_waits_as_long_as_the_api_asks() -> None:
    error = QueueRateLimited("gateway limit", retry_after=30.0, code=971)
    queue = FailingQueue(MemoryQueue(), error)
    supervisor = Supervisor(
        Handler(), [QueueBinding("q", queue)], _settings(idle_backoff_max_s=0.02)
    )
    async with anyio.create_task_group() as group:
        group.start_soon(supervisor.run)
        await anyio.sleep(0.3)
        supervisor.stop()
    assert queue.pulls == 1
