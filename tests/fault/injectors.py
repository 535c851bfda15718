"""The faults the campaign injects, besides the emulator's per-route fault plan: duplicated and
reordered deliveries, a daemon killed with SIGKILL and restarted, a coordinator outage, a poison
stream of malformed messages, and a watch on the daemon's memory."""

from __future__ import annotations

import base64
import contextlib
import random
import string
from pathlib import Path
from typing import Any, Final

import anyio
import orjson

from flowcraft_puller.emulator.app import EmulatorConfig
from flowcraft_puller.emulator.faults import FaultPlan, RouteFaults
from flowcraft_puller.emulator.queues import NewMessage, QueueBroker
from flowcraft_puller.emulator.runs import RunService
from flowcraft_puller.emulator.server import EmulatorServer, RunsFactory
from flowcraft_puller.queue.protocol import JobSender, OutgoingMessage
from flowcraft_puller.testing.processes import DaemonProcess

JOB_QUEUE: Final = "flowcraft-jobs"


class DuplicatingSender:
    """A job sender that delivers every job, half of them twice, each after a random delay, so
    jobs arrive duplicated and out of order."""

    def __init__(self, inner: JobSender, rng: random.Random, max_delay_ms: int = 300) -> None:
        self.inner = inner
        self.rng = rng
        self.max_delay_ms = max_delay_ms
        self.duplicated = 0

    def _delayed(self, message: OutgoingMessage) -> OutgoingMessage:
        return OutgoingMessage(
            message.body, message.delay_ms + self.rng.randint(0, self.max_delay_ms)
        )

    async def send_batch(self, messages: list[OutgoingMessage]) -> None:
        out = [self._delayed(m) for m in messages]
        copies = [self._delayed(m) for m in messages if self.rng.random() < 0.5]
        self.duplicated += len(copies)
        batch = out + copies
        self.rng.shuffle(batch)
        await self.inner.send_batch(batch)


def duplicating_runs(rng: random.Random) -> tuple[RunsFactory, list[DuplicatingSender]]:
    """A run-service factory whose outbox duplicates and reorders jobs (and the senders it made)."""
    made: list[DuplicatingSender] = []

    def factory(config: EmulatorConfig, broker: QueueBroker) -> RunService:
        sender = DuplicatingSender(broker.sender(config.job_queue), rng)
        made.append(sender)
        return RunService(
            state_path=config.state_path,
            sender=sender,
            secret=config.secret,
            clock_ms=lambda: float(broker.now_ms()),
        )

    return factory, made


def fault_plan(seed: int, *, errors: bool, drops: bool, storms: bool) -> FaultPlan:
    """The emulator's per-route faults: ``errors`` answers 20 % of the requests on every route
    429, 500 or 503 (nothing applied); ``drops`` applies 20 % and drops the connection instead
    of answering; ``storms`` ends every lease of the queue at once before 10 % of the pulls."""
    route: dict[str, Any] = {}
    if errors:
        route |= {
            "error_429_rate": 0.07,
            "retry_after_seconds": 0,
            "rate_limit_code": 10250,
            "error_500_rate": 0.07,
            "error_503_rate": 0.06,
        }
    if drops:
        route["drop_response_rate"] = 0.2
    routes: dict[str, dict[str, Any]] = {"*": route} if route else {}
    if storms:
        routes["pull"] = {**route, "lease_expiry_rate": 0.1}
    return FaultPlan.model_validate({"seed": seed, "routes": routes})


async def coordinator_outage(emulator: EmulatorServer, plan: FaultPlan, seconds: float) -> None:
    """Make the Worker routes (``/v1``) drop every connection for ``seconds``, then restore
    ``plan``; the queue routes keep their plan meanwhile."""
    routes = dict(plan.routes)
    unreachable = RouteFaults(reset_rate=1.0)
    emulator.faults.replace(
        FaultPlan(seed=plan.seed, routes={**routes, "v1": unreachable, "v1.batch": unreachable})
    )
    await anyio.sleep(seconds)
    emulator.faults.replace(plan)


async def kill_repeatedly(daemon: DaemonProcess, every_s: float, rng: random.Random) -> None:
    """SIGKILL the daemon soon, then every ``every_s`` seconds (±30 %) after it is back, until
    cancelled (``daemon.starts`` counts the restarts). A kill and its restart are shielded from
    cancellation, so the daemon is running whenever this returns."""
    await anyio.sleep(every_s * rng.uniform(0.3, 1.0))
    while True:
        with anyio.CancelScope(shield=True):
            daemon.kill()
            await daemon.wait()
            await daemon.start(timeout=60)
        await anyio.sleep(every_s * rng.uniform(0.7, 1.3))


def _base64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def poison_messages(count: int, rng: random.Random) -> list[NewMessage]:
    """``count`` malformed job messages: bad JSON, wrong types, huge bodies, unknown blueprints
    and ``v8`` bodies, in a shuffled mix. Each can never run and must be rejected."""
    made: list[NewMessage] = []
    for index in range(count):
        kind = index % 5
        if kind == 0:
            text = "{not json " + "".join(rng.choices(string.ascii_letters, k=12))
            made.append(NewMessage(body=_base64(text.encode()).encode(), wire=True))
        elif kind == 1:
            body = {"runId": rng.randint(0, 10**9), "blueprintId": ["x"], "nodeId": None}
            made.append(NewMessage(body=_base64(orjson.dumps(body)).encode(), wire=True))
        elif kind == 2 and index % 50 == 2:
            huge = {"runId": "not a run id", "pad": "x" * rng.randint(60_000, 90_000)}
            made.append(NewMessage(body=_base64(orjson.dumps(huge)).encode(), wire=True))
        elif kind == 2:
            made.append(NewMessage(body=b"[1, 2, 3]", content_type="text", wire=True))
        elif kind == 3:
            body = {
                "runId": f"{rng.getrandbits(128):032x}",
                "blueprintId": "no-such-blueprint",
                "nodeId": "A",
            }
            made.append(NewMessage(body=_base64(orjson.dumps(body)).encode(), wire=True))
        else:
            made.append(
                NewMessage(body=_base64(b"\xff\x0fv8-clone").encode(), content_type="v8", wire=True)
            )
    rng.shuffle(made)
    return made


async def inject_poison(broker: QueueBroker, messages: list[NewMessage], per_second: int) -> None:
    """Put the poison messages into the job queue in batches of 100, ``per_second`` at most, so
    that they mix with the real jobs (the queue's own throughput limit stays free for those)."""
    queue_id = broker.queue_id(JOB_QUEUE)
    pause = 100 / per_second
    for start in range(0, len(messages), 100):
        broker.send(queue_id, messages[start : start + 100], source="emulator")
        await anyio.sleep(pause)


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident set (VmHWM) in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise LookupError(f"no VmHWM for process {pid}")


async def watch_memory(daemon: DaemonProcess, peaks: list[float], interval: float = 0.25) -> None:
    """Record the peak RSS of every daemon process (one entry per start), until cancelled."""
    seen: dict[int, float] = {}
    while True:
        if daemon.running:
            with contextlib.suppress(FileNotFoundError, LookupError):
                seen[daemon.pid] = peak_rss_mb(daemon.pid)
            peaks[:] = list(seen.values())
        await anyio.sleep(interval)
