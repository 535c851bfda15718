"""Part 1: the queue path alone — pull → no-op handle → ack — against the emulator's queue.

The bench process fills the queue through the REST ``messages/batch`` route (100 per request),
then a consumer process of its own (:mod:`bench.queue_consumer`) drains it with the real
supervisor and queue client and the daemon's default settings.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import anyio

from bench.children import run_child
from bench.procstat import sample
from bench.queue_consumer import TOKEN_VARIABLE
from bench.stats import ratio
from flowcraft_puller.queue.cloudflare import CloudflareQueue
from flowcraft_puller.queue.protocol import OutgoingMessage
from flowcraft_puller.testing.processes import EmulatorProcess

FILL_RATE = 4_000
"""Messages per second sent while filling: under the queue's limit of 5,000."""


@dataclass(frozen=True, slots=True)
class QueueFigures:
    messages: int
    seconds: float
    messages_per_s: float
    queue_calls_per_message: float
    messages_per_pull: float
    messages_per_ack_call: float
    consumer_cpu_s_per_1000_messages: float
    emulator_cpu_s_per_1000_messages: float
    consumer_peak_rss_mb: float
    calls: dict[str, int]

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


async def _fill(emulator: EmulatorProcess, messages: int) -> None:
    """Send ``messages`` messages, 100 per request, below the queue's 5,000 messages/s."""
    async with CloudflareQueue(
        account_id=emulator.account_id,
        queue_id=emulator.queue_id(),
        api_token=emulator.token,
        base_url=emulator.api_url,
    ) as queue:
        for start in range(0, messages, 100):
            count = min(100, messages - start)
            await queue.send_batch([OutgoingMessage({"n": start + i}) for i in range(count)])
            await anyio.sleep(count / FILL_RATE)


async def measure_queue(messages: int, directory: Path) -> QueueFigures:
    """Fill the queue with ``messages`` messages and drain it with a consumer process."""
    async with EmulatorProcess(directory / "emulator") as emulator:
        await _fill(emulator, messages)
        before = sample(emulator.pid)
        figures = await run_child(
            "bench.queue_consumer",
            [
                "--api-url",
                emulator.api_url,
                "--account",
                emulator.account_id,
                "--queue-id",
                emulator.queue_id(),
                "--messages",
                str(messages),
            ],
            directory / "queue-consumer.json",
            environment={TOKEN_VARIABLE: emulator.token},
        )
        after = sample(emulator.pid)
        await emulator.wait_empty()
    calls: dict[str, int] = figures["calls"]
    done = int(figures["messages"])
    return QueueFigures(
        messages=done,
        seconds=figures["seconds"],
        messages_per_s=ratio(done, figures["seconds"]),
        queue_calls_per_message=ratio(sum(calls.values()), done),
        messages_per_pull=ratio(figures["pulled"], calls.get("pull", 0)),
        messages_per_ack_call=ratio(done, calls.get("ack", 0)),
        consumer_cpu_s_per_1000_messages=ratio(figures["cpu_s"] * 1000, done),
        emulator_cpu_s_per_1000_messages=ratio((after.cpu_s - before.cpu_s) * 1000, done)
        if done
        else math.nan,
        consumer_peak_rss_mb=figures["peak_rss_mb"],
        calls=calls,
    )
