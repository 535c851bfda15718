"""Part 1's consumer process: the real supervisor and Cloudflare Queues client pulling from the
emulator, with a job handler that does nothing and acks, until N messages were acked.

``python -m bench.queue_consumer --api-url URL --account ID --queue-id ID --messages N
--out FILE`` (the API token in ``$BENCH_API_TOKEN``) writes its figures as JSON: wall time from
the first pull to the last ack, REST calls by endpoint, and its own CPU time and peak RSS.
"""

from __future__ import annotations

import json
import os
import resource
import time
from pathlib import Path
from typing import Annotated, Any, Final

import anyio
import httpx
import typer

from bench.procstat import memory_mb
from flowcraft_puller.adapter import JobOutcome
from flowcraft_puller.config import DaemonConfig
from flowcraft_puller.observability.logging import configure_logging
from flowcraft_puller.queue.cloudflare import CloudflareQueue
from flowcraft_puller.queue.protocol import QueueMessage
from flowcraft_puller.supervisor import NoEvents, QueueBinding, Supervisor, SupervisorSettings

TOKEN_VARIABLE: Final = "BENCH_API_TOKEN"
ACKED: Final = JobOutcome("ack", "completed")


class NoopHandler:
    """Handles every job by doing nothing; the message is acked."""

    async def handle_job(
        self, message: QueueMessage, *, deadline: float | None = None
    ) -> JobOutcome:
        return ACKED


class AckCounter(NoEvents):
    """Counts pulls and acked messages; calls ``done`` once ``target`` messages were acked."""

    def __init__(self, target: int, done: Any) -> None:
        self.target = target
        self.done = done
        self.acked_messages = 0
        self.pulled_messages = 0
        self.first_pull: float | None = None
        self.last_ack: float | None = None

    def pulled(self, queue: str, count: int, backlog: int | None) -> None:
        if count and self.first_pull is None:
            self.first_pull = time.monotonic()
        self.pulled_messages += count

    def acked(self, queue: str, acks: int, retries: int) -> None:
        self.acked_messages += acks
        if self.acked_messages >= self.target and self.last_ack is None:
            self.last_ack = time.monotonic()
            self.done()


def supervisor_settings(config: DaemonConfig) -> SupervisorSettings:
    """The supervisor settings ``flowcraft-puller run`` derives from ``[daemon]``."""
    return SupervisorSettings(
        concurrency=config.concurrency,
        drain_timeout_s=config.drain_timeout,
        idle_backoff_min_s=config.idle_backoff_min,
        idle_backoff_max_s=config.idle_backoff_max,
        ack_linger_s=config.ack_linger,
    )


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def consume(api_url: str, account: str, queue_id: str, messages: int) -> dict[str, Any]:
    config = DaemonConfig()
    async with httpx.AsyncClient(timeout=httpx.Timeout(10.0, connect=5.0)) as client:
        queue = CloudflareQueue(
            account_id=account,
            queue_id=queue_id,
            api_token=os.environ[TOKEN_VARIABLE],
            base_url=api_url,
            client=client,
        )
        supervisor: Supervisor | None = None

        def done() -> None:
            assert supervisor is not None
            supervisor.stop()

        events = AckCounter(messages, done)
        supervisor = Supervisor(
            NoopHandler(),
            [QueueBinding("bench", queue, visibility_timeout_s=60.0)],
            supervisor_settings(config),
            events=events,
        )
        cpu_before = _cpu_seconds()
        await supervisor.run()
        cpu = _cpu_seconds() - cpu_before
    if events.first_pull is None or events.last_ack is None:
        raise RuntimeError("the consumer stopped before acking every message")
    _, peak = memory_mb(os.getpid())
    return {
        "messages": events.acked_messages,
        "pulled": events.pulled_messages,
        "seconds": events.last_ack - events.first_pull,
        "calls": dict(queue.calls),
        "cpu_s": cpu,
        "peak_rss_mb": peak,
        "concurrency": config.concurrency,
    }


def main(
    api_url: Annotated[str, typer.Option()],
    account: Annotated[str, typer.Option()],
    queue_id: Annotated[str, typer.Option()],
    messages: Annotated[int, typer.Option()],
    out: Annotated[Path, typer.Option()],
) -> None:
    """Consume ``messages`` messages and write the figures to ``out``."""
    configure_logging("warning", "json")
    figures = anyio.run(consume, api_url, account, queue_id, messages)
    out.write_text(json.dumps(figures))


if __name__ == "__main__":
    typer.run(main)
