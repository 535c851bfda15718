"""The supervisor: pull loops, a bounded dispatch pool, ack batching and graceful drain.

Per configured queue it runs N pull loops. A loop pulls only as many messages as the shared
pool has free slots, so nothing waits leased in a local buffer; each message runs
``adapter.handle_job`` at once; outcomes go to the queue's ack batcher, which flushes acks and
retries in requests of at most 100 entries (or after ``ack_linger``). A loop pulls again at
once only while pulls come back full; after a short or empty pull it waits for one of its jobs
to finish (whose commit may have released more jobs) or for its idle back-off.
"""

from __future__ import annotations

import math
import random
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import anyio
import anyio.abc
import structlog

from flowcraft_puller.adapter import JobOutcome
from flowcraft_puller.queue.errors import QueueConfigError, QueueRateLimited
from flowcraft_puller.queue.protocol import PullResult, Queue, QueueMessage, Retry

log = structlog.get_logger("flowcraft_puller.supervisor")


class JobHandler(Protocol):
    """Runs one job and says what to do with its message (``Adapter`` is one)."""

    async def handle_job(
        self, message: QueueMessage, *, deadline: float | None = None
    ) -> JobOutcome: ...


@runtime_checkable
class NotifyingQueue(Protocol):
    """A queue that can wake an idle consumer when messages arrive (in-process queues)."""

    async def wait_for_messages(self, timeout: float) -> None: ...


class SupervisorEvents(Protocol):
    """What the supervisor reports (metrics, health, systemd status)."""

    def pulled(self, queue: str, count: int, backlog: int | None) -> None: ...

    def pull_failed(self, queue: str, error: BaseException) -> None: ...

    def job_finished(
        self, queue: str, blueprint: str, outcome: JobOutcome, seconds: float
    ) -> None: ...

    def in_flight(self, count: int) -> None: ...

    def acked(self, queue: str, acks: int, retries: int) -> None: ...

    def ack_failed(self, queue: str, error: BaseException) -> None: ...

    def draining(self) -> None: ...

    def handed_back(self, queue: str, count: int) -> None: ...


class NoEvents:
    """Reports nothing."""

    def pulled(self, queue: str, count: int, backlog: int | None) -> None:
        return None

    def pull_failed(self, queue: str, error: BaseException) -> None:
        return None

    def job_finished(self, queue: str, blueprint: str, outcome: JobOutcome, seconds: float) -> None:
        return None

    def in_flight(self, count: int) -> None:
        return None

    def acked(self, queue: str, acks: int, retries: int) -> None:
        return None

    def ack_failed(self, queue: str, error: BaseException) -> None:
        return None

    def draining(self) -> None:
        return None

    def handed_back(self, queue: str, count: int) -> None:
        return None


@dataclass(frozen=True, slots=True)
class QueueBinding:
    """One queue to consume and how."""

    name: str
    queue: Queue
    pull_loops: int = 1
    batch_size: int = 100
    visibility_timeout_s: float = 60.0


@dataclass(slots=True)
class SupervisorSettings:
    concurrency: int = 256
    drain_timeout_s: float = 25.0
    idle_backoff_min_s: float = 0.05
    idle_backoff_max_s: float = 1.0
    ack_linger_s: float = 0.1
    """Flush acks this long after the first one waits (or at 100). At most the smallest lease
    margin (0.1 s for a 1 s visibility timeout), so an ack never outlives its lease."""
    fill_wait_s: float = 0.02
    """How long a loop waits for a quarter of the pool to free up before pulling fewer."""
    lease_margin_s: float = 2.0
    """Finish (or give up acking) this long before the visibility timeout ends."""
    pull_grace_s: float = 1.0
    """After a stop, a pull still under way (being retried) is abandoned after this long."""


class DispatchPool:
    """The global in-flight limit (``concurrency``) shared by every pull loop."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.in_use = 0
        self.closed = False
        self._freed = anyio.Event()

    def close(self) -> None:
        """Wake every waiter for good: the pool is shutting down."""
        self.closed = True
        self._freed.set()

    @property
    def free(self) -> int:
        return self.capacity - self.in_use

    def take(self, wanted: int) -> int:
        granted = max(0, min(wanted, self.free))
        self.in_use += granted
        return granted

    def give_back(self, count: int) -> None:
        if count <= 0:
            return
        self.in_use -= count
        self._freed.set()
        self._freed = anyio.Event()

    async def wait_for(self, minimum: int, patience_s: float) -> None:
        """Return once ``minimum`` slots are free, or once any is free after ``patience_s``."""
        deadline = time.monotonic() + patience_s
        while self.free < minimum and not self.closed:
            remaining = deadline - time.monotonic()
            if remaining <= 0 and self.free > 0:
                return
            freed = self._freed
            with anyio.move_on_after(remaining if remaining > 0 else math.inf):
                await freed.wait()


class AckBatcher:
    """Collects one queue's acks and retries and flushes them in batched requests."""

    def __init__(self, name: str, queue: Queue, linger_s: float, events: SupervisorEvents) -> None:
        self.name = name
        self.queue = queue
        self.linger_s = linger_s
        self.events = events
        self._acks: list[str] = []
        self._retries: list[Retry] = []
        self._pending = anyio.Event()
        self._full = anyio.Event()

    def _added(self) -> None:
        self._pending.set()
        if self.waiting >= 100:
            self._full.set()

    def ack(self, lease_id: str) -> None:
        self._acks.append(lease_id)
        self._added()

    def retry(self, lease_id: str, delay_seconds: int) -> None:
        self._retries.append(Retry(lease_id, max(0, delay_seconds)))
        self._added()

    @property
    def waiting(self) -> int:
        return len(self._acks) + len(self._retries)

    async def run(self) -> None:
        """Flush whenever there is something to send, at most every ``linger_s``."""
        while True:
            await self._pending.wait()
            with anyio.move_on_after(self.linger_s):
                await self._full.wait()
            await self.flush()

    async def flush(self) -> None:
        """Send everything collected so far (the client splits requests at 100 entries)."""
        self._pending = anyio.Event()
        self._full = anyio.Event()
        acks, self._acks = self._acks, []
        retries, self._retries = self._retries, []
        if not acks and not retries:
            return
        try:
            await self.queue.ack(acks, retries)
        except Exception as exc:
            log.warning(
                "ack request failed; the messages will be redelivered",
                queue=self.name,
                error=str(exc),
            )
            self.events.ack_failed(self.name, exc)
            return
        self.events.acked(self.name, len(acks), len(retries))


@dataclass(slots=True)
class _State:
    stopping: anyio.Event = field(default_factory=anyio.Event)
    hurry: anyio.Event = field(default_factory=anyio.Event)
    first_pull: anyio.Event = field(default_factory=anyio.Event)
    idle: anyio.Event = field(default_factory=anyio.Event)
    """Set when the last in-flight job finished after a stop was requested."""


def _jittered(backoff: float) -> float:
    """An idle wait of ``backoff`` to 1.25 × ``backoff``: loops drift apart, and a loop backed
    off to ``idle_backoff_max`` never pulls more often than once per ``idle_backoff_max``."""
    return backoff * random.uniform(1.0, 1.25)


def _blueprint_of(message: QueueMessage) -> str:
    body = message.body
    value = body.get("blueprintId") if isinstance(body, dict) else None
    return value if isinstance(value, str) else "unknown"


class Supervisor:
    """Consumes the configured queues until asked to stop, then drains."""

    def __init__(
        self,
        adapter: JobHandler,
        queues: Sequence[QueueBinding],
        settings: SupervisorSettings | None = None,
        *,
        events: SupervisorEvents | None = None,
        on_ready: Callable[[], None] | None = None,
        on_reload: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        if not queues:
            raise ValueError("the supervisor needs at least one queue to consume")
        self.adapter = adapter
        self.queues = list(queues)
        self.settings = settings or SupervisorSettings()
        self.events = events or NoEvents()
        self.pool = DispatchPool(self.settings.concurrency)
        self.batchers = {
            q.name: AckBatcher(q.name, q.queue, self.settings.ack_linger_s, self.events)
            for q in self.queues
        }
        self._on_ready = on_ready
        self._on_reload = on_reload
        self._state = _State()
        self._running: dict[str, tuple[QueueBinding, QueueMessage]] = {}
        self._pulls: set[anyio.CancelScope] = set()
        self._job_finished: anyio.Event | None = None
        """Set when a job finishes, for pull loops idling while jobs are in flight."""
        self.handed_back = 0
        """Messages given back to their queue unprocessed (pulled during or cut off by a drain)."""
        self.fatal: QueueConfigError | None = None
        """Set when a queue turned out to be misconfigured; the supervisor then stopped."""

    @property
    def in_flight(self) -> int:
        return len(self._running)

    @property
    def stopping(self) -> bool:
        return self._state.stopping.is_set()

    def stop(self, *, hurry: bool = False) -> None:
        """Begin a graceful drain; ``hurry`` skips waiting for in-flight jobs."""
        if not self._state.stopping.is_set():
            log.info("shutdown requested; draining", in_flight=self.in_flight)
            self._state.stopping.set()
            self.pool.close()
            self.events.draining()
        if hurry:
            self._state.hurry.set()

    async def wait_ready(self) -> None:
        """Return after the first successful pull."""
        await self._state.first_pull.wait()

    async def run(self, *, handle_signals: bool = False) -> None:
        """Consume until :meth:`stop` (or SIGTERM/SIGINT when ``handle_signals``), then drain."""
        async with anyio.create_task_group() as services:
            if handle_signals:
                services.start_soon(self._signals)
            for batcher in self.batchers.values():
                services.start_soon(batcher.run)
            services.start_soon(self._abandon_pulls_after_stop)
            async with anyio.create_task_group() as jobs:
                async with anyio.create_task_group() as loops:
                    for binding in self.queues:
                        for index in range(binding.pull_loops):
                            loops.start_soon(self._pull_loop, binding, index, jobs)
                await self._drain(jobs)
            for batcher in self.batchers.values():
                await batcher.flush()
            services.cancel_scope.cancel()
        log.info("stopped")

    async def _drain(self, jobs: anyio.abc.TaskGroup) -> None:
        with anyio.move_on_after(self.settings.drain_timeout_s) as waited:
            async with anyio.create_task_group() as watch:
                watch.start_soon(self._until_idle, watch)
                watch.start_soon(self._until_hurry, watch)
        left = self.in_flight
        if left:
            why = "drain timeout" if waited.cancelled_caught else "second signal"
            log.warning("handing unfinished jobs back to the queue", count=left, reason=why)
            jobs.cancel_scope.cancel()

    async def _abandon_pulls_after_stop(self) -> None:
        """Once stopping, cancel the pulls still under way after ``pull_grace_s`` (at once on a
        second signal): a pull the queue client keeps retrying must not hold the shutdown up."""
        await self._state.stopping.wait()
        with anyio.move_on_after(self.settings.pull_grace_s):
            await self._state.hurry.wait()
        for scope in list(self._pulls):
            scope.cancel()

    async def _pull_unless_abandoned(
        self, queue: Queue, count: int, visibility_ms: int
    ) -> PullResult | None:
        """``queue.pull``, or None when the shutdown abandoned it."""
        with anyio.CancelScope() as pulling:
            self._pulls.add(pulling)
            try:
                return await queue.pull(count, visibility_ms)
            finally:
                self._pulls.discard(pulling)
        return None

    async def _until_idle(self, group: anyio.abc.TaskGroup) -> None:
        if self.in_flight:
            await self._state.idle.wait()
        group.cancel_scope.cancel()

    async def _until_hurry(self, group: anyio.abc.TaskGroup) -> None:
        await self._state.hurry.wait()
        group.cancel_scope.cancel()

    async def _signals(self) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async for signum in signals:
                if signum == signal.SIGHUP:
                    if self._on_reload is not None:
                        await self._on_reload()
                    continue
                self.stop(hurry=self.stopping)

    async def _pause(self, seconds: float) -> None:
        """Sleep, waking early if a stop is requested."""
        with anyio.move_on_after(seconds):
            await self._state.stopping.wait()

    async def _idle(self, binding: QueueBinding, seconds: float) -> bool:
        """Wait before the next pull after one that came back empty or short. A stop request,
        an in-process queue's signal and — while jobs are in flight — a job finishing cut the
        wait short: a finished job's commit may have released the jobs that come next. True
        when a finished job ended the wait."""
        queue = binding.queue
        if not isinstance(queue, NotifyingQueue) and not self._running:
            await self._pause(seconds)
            return False
        woken_by_job = False
        async with anyio.create_task_group() as race:

            async def until(waiter: Awaitable[None]) -> None:
                await waiter
                race.cancel_scope.cancel()

            async def until_a_job_finished() -> None:
                nonlocal woken_by_job
                await self._next_finished_job()
                woken_by_job = True
                race.cancel_scope.cancel()

            if isinstance(queue, NotifyingQueue):
                race.start_soon(until, queue.wait_for_messages(seconds))
            else:
                race.start_soon(until, anyio.sleep(seconds))
            race.start_soon(until, self._state.stopping.wait())
            if self._running:
                race.start_soon(until_a_job_finished)
        return woken_by_job

    async def _next_finished_job(self) -> None:
        if self._job_finished is None:
            self._job_finished = anyio.Event()
        await self._job_finished.wait()

    def _announce_finished_job(self) -> None:
        if self._job_finished is not None:
            self._job_finished.set()
            self._job_finished = None

    async def _pull_loop(
        self, binding: QueueBinding, index: int, jobs: anyio.abc.TaskGroup
    ) -> None:
        settings = self.settings
        backoff = settings.idle_backoff_min_s
        visibility_ms = int(binding.visibility_timeout_s * 1000)
        wanted = min(binding.batch_size, self.pool.capacity)
        minimum = max(1, min(wanted, self.pool.capacity // 4))
        while not self.stopping:
            await self.pool.wait_for(minimum, settings.fill_wait_s)
            granted = self.pool.take(wanted)
            if granted == 0:
                continue
            try:
                result = await self._pull_unless_abandoned(binding.queue, granted, visibility_ms)
            except QueueConfigError as exc:
                self.pool.give_back(granted)
                log.error("queue is misconfigured; stopping", queue=binding.name, error=exc.message)
                self.events.pull_failed(binding.name, exc)
                self.fatal = exc
                self.stop()
                return
            except Exception as exc:
                self.pool.give_back(granted)
                wait = backoff
                if isinstance(exc, QueueRateLimited) and exc.retry_after is not None:
                    wait = max(wait, exc.retry_after)
                log.warning(
                    "pull failed", queue=binding.name, loop=index, error=str(exc), wait_seconds=wait
                )
                self.events.pull_failed(binding.name, exc)
                await self._pause(wait)
                backoff = min(backoff * 2, settings.idle_backoff_max_s)
                continue
            if result is None:
                self.pool.give_back(granted)
                return
            pulled_at = time.monotonic()
            messages = result.messages
            self.pool.give_back(granted - len(messages))
            self.events.pulled(binding.name, len(messages), result.backlog)
            if not self._state.first_pull.is_set():
                self._state.first_pull.set()
                if self._on_ready is not None:
                    self._on_ready()
            if self.stopping:
                self._hand_back(binding, messages)
                self.pool.give_back(len(messages))
                return
            if not messages:
                if not await self._idle(binding, _jittered(backoff)):
                    backoff = min(backoff * 2, settings.idle_backoff_max_s)
                continue
            backoff = settings.idle_backoff_min_s
            margin = min(settings.lease_margin_s, binding.visibility_timeout_s / 10)
            deadline = pulled_at + binding.visibility_timeout_s - margin
            for message in messages:
                self._running[message.lease_id] = (binding, message)
                jobs.start_soon(self._process, binding, message, deadline)
            self.events.in_flight(self.in_flight)
            if len(messages) < granted:
                # The queue ran dry: pull again once a job finished (its commit may have
                # released more) rather than at once, which would come back empty.
                await self._idle(binding, _jittered(backoff))

    def _hand_back(self, binding: QueueBinding, messages: Sequence[QueueMessage]) -> None:
        batcher = self.batchers[binding.name]
        for message in messages:
            batcher.retry(message.lease_id, 0)
        self.handed_back += len(messages)
        if messages:
            self.events.handed_back(binding.name, len(messages))

    async def _process(self, binding: QueueBinding, message: QueueMessage, deadline: float) -> None:
        batcher = self.batchers[binding.name]
        started = time.monotonic()
        finished = False
        try:
            outcome = await self.adapter.handle_job(message, deadline=deadline)
            finished = True
        finally:
            del self._running[message.lease_id]
            if not self._running and self.stopping:
                self._state.idle.set()
            self.pool.give_back(1)
            self._announce_finished_job()
            self.events.in_flight(self.in_flight)
            if not finished:
                self._hand_back(binding, [message])
        self.events.job_finished(
            binding.name, _blueprint_of(message), outcome, time.monotonic() - started
        )
        if outcome.action == "ack":
            batcher.ack(message.lease_id)
        elif outcome.action == "retry":
            batcher.retry(message.lease_id, outcome.delay_seconds)
