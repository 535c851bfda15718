"""The queue interface the daemon consumes and the run stores produce to."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class QueueMessage:
    """A leased message. ``body`` is decoded JSON; ``decode_error`` says why it could not be."""

    id: str
    lease_id: str
    attempts: int
    timestamp_ms: int
    body: Any = None
    decode_error: str | None = None
    content_type: str = "json"
    size: int = 0


@dataclass(frozen=True, slots=True)
class PullResult:
    messages: list[QueueMessage]
    backlog: int | None = None


@dataclass(frozen=True, slots=True)
class Retry:
    lease_id: str
    delay_seconds: int = 0


@dataclass(frozen=True, slots=True)
class AckResult:
    acked: int
    retried: int
    warnings: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    """A message to send: a JSON body, delivered no earlier than ``delay_ms`` from now."""

    body: Any
    delay_ms: int = 0


class Queue(Protocol):
    """Pull and acknowledge leased messages (the Cloudflare Queues HTTP pull model)."""

    async def pull(self, batch_size: int, visibility_timeout_ms: int) -> PullResult: ...

    async def ack(self, acks: list[str], retries: list[Retry]) -> AckResult: ...


class JobSender(Protocol):
    """Send messages to the job queue (what the Worker's producer binding does)."""

    async def send_batch(self, messages: list[OutgoingMessage]) -> None: ...
