"""An in-memory queue with Cloudflare's pull semantics: leases, visibility timeouts, delays,
delivery attempts and a dead-letter list. Used by ``MemoryStack`` and unit tests."""

from __future__ import annotations

import itertools
import random
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import anyio
import orjson

from flowcraft_puller.queue.protocol import (
    AckResult,
    OutgoingMessage,
    PullResult,
    QueueMessage,
    Retry,
)


@dataclass(slots=True)
class _Stored:
    id: str
    body: bytes
    timestamp_ms: int
    visible_at: float
    attempts: int = 0
    lease_id: str | None = None
    lease_until: float = 0.0


@dataclass(slots=True)
class MemoryQueueFaults:
    """Delivery faults for tests: every message twice, random pull order."""

    duplicate: bool = False
    reorder: bool = False
    rng: random.Random = field(default_factory=lambda: random.Random(0))


class MemoryQueue:
    """A single queue held in memory, safe for concurrent use from one event loop."""

    def __init__(
        self, *, max_deliveries: int = 100, faults: MemoryQueueFaults | None = None
    ) -> None:
        self.max_deliveries = max_deliveries
        self.faults = faults or MemoryQueueFaults()
        self.dead_letters: list[dict[str, Any]] = []
        self.sent = 0
        self._messages: dict[str, _Stored] = {}
        self._leases: dict[str, str] = {}
        self._ids = itertools.count(1)
        self._changed = anyio.Event()

    @staticmethod
    def _now() -> float:
        return time.monotonic()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def send_batch(self, messages: list[OutgoingMessage]) -> None:
        now = self._now()
        copies = 2 if self.faults.duplicate else 1
        for message in messages:
            body = orjson.dumps(message.body)
            for _ in range(copies):
                message_id = f"m{next(self._ids)}"
                self._messages[message_id] = _Stored(
                    id=message_id,
                    body=body,
                    timestamp_ms=int(time.time() * 1000),
                    visible_at=now + message.delay_ms / 1000,
                )
                self.sent += 1
        self._notify()

    def _ready(self, now: float) -> list[_Stored]:
        ready = []
        for stored in list(self._messages.values()):
            if stored.lease_id is not None and stored.lease_until <= now:
                self._leases.pop(stored.lease_id, None)
                stored.lease_id = None
                if stored.attempts >= self.max_deliveries:
                    self._dead_letter(stored)
                    continue
            if stored.lease_id is None and stored.visible_at <= now:
                ready.append(stored)
        return ready

    def _dead_letter(self, stored: _Stored) -> None:
        del self._messages[stored.id]
        self.dead_letters.append(orjson.loads(stored.body))

    async def pull(self, batch_size: int, visibility_timeout_ms: int) -> PullResult:
        now = self._now()
        ready = self._ready(now)
        if self.faults.reorder:
            self.faults.rng.shuffle(ready)
        else:
            ready.sort(key=lambda s: (s.visible_at, s.id))
        delivered = []
        for stored in ready[:batch_size]:
            stored.attempts += 1
            stored.lease_id = uuid.uuid4().hex
            stored.lease_until = now + visibility_timeout_ms / 1000
            self._leases[stored.lease_id] = stored.id
            delivered.append(
                QueueMessage(
                    id=stored.id,
                    lease_id=stored.lease_id,
                    attempts=stored.attempts,
                    timestamp_ms=stored.timestamp_ms,
                    body=orjson.loads(stored.body),
                    size=len(stored.body),
                )
            )
        return PullResult(messages=delivered, backlog=len(self._messages))

    async def ack(self, acks: list[str], retries: list[Retry]) -> AckResult:
        now = self._now()
        acked = retried = 0
        for lease_id in acks:
            message_id = self._leases.pop(lease_id, None)
            if message_id is not None and self._messages.pop(message_id, None) is not None:
                acked += 1
        for retry in retries:
            message_id = self._leases.pop(retry.lease_id, None)
            stored = self._messages.get(message_id) if message_id else None
            if stored is None:
                continue
            stored.lease_id = None
            if stored.attempts >= self.max_deliveries:
                self._dead_letter(stored)
                continue
            stored.visible_at = now + retry.delay_seconds
            retried += 1
        self._notify()
        return AckResult(acked=acked, retried=retried)

    async def wait_for_messages(self, timeout: float) -> None:
        """Return when a message may have become ready, or after ``timeout`` seconds."""
        now = self._now()
        upcoming = [
            (s.lease_until if s.lease_id is not None else s.visible_at)
            for s in self._messages.values()
        ]
        if upcoming:
            timeout = min(timeout, max(0.0, min(upcoming) - now))
        changed = self._changed
        with anyio.move_on_after(timeout):
            await changed.wait()

    @property
    def depth(self) -> int:
        """Messages not yet acknowledged (ready, delayed or leased)."""
        return len(self._messages)

    def leased(self) -> int:
        now = self._now()
        return sum(
            1 for s in self._messages.values() if s.lease_id is not None and s.lease_until > now
        )
