"""The fault campaign's harness: the emulator in this process (with its fault plan and, for
duplicated deliveries, an outbox that duplicates and reorders), the real daemon as a child
process, mixed corpus runs started through the Worker protocol, and what came out of it."""

from __future__ import annotations

import json
import os
import random
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from secrets import token_hex, token_urlsafe
from typing import Any, Final

import anyio
import httpx
from prometheus_client.parser import text_string_to_metric_families

from flowcraft_puller.config import (
    CloudflareConfig,
    CoordinatorConfig,
    DaemonConfig,
    ObservabilityConfig,
    QueueConfig,
    Secrets,
    Settings,
    WorkflowsConfig,
)
from flowcraft_puller.emulator.app import EmulatorConfig
from flowcraft_puller.emulator.faults import FaultPlan
from flowcraft_puller.emulator.server import EmulatorServer, run_service
from flowcraft_puller.runstore.protocol import TERMINAL_STATUSES, RunStoreError, RunView
from flowcraft_puller.testing.processes import DaemonProcess
from flowcraft_puller.testing.runs import RunClient
from tests.fault.injectors import (
    JOB_QUEUE,
    coordinator_outage,
    duplicating_runs,
    fault_plan,
    inject_poison,
    kill_repeatedly,
    poison_messages,
    watch_memory,
)
from tests.fault.scenarios import Workload, all_blueprints

STANDARD_NODES_ENTRY: Final = "flowcraft_puller.testing.nodes:STANDARD_NODES"
SOAK_VARIABLE: Final = "FLOWCRAFT_SOAK"
ROUNDS_VARIABLE: Final = "FLOWCRAFT_SOAK_ROUNDS"


@dataclass(frozen=True, slots=True)
class CampaignSize:
    """How big each fault's campaign is: reduced inside ``make test``, full under ``make soak``
    (``FLOWCRAFT_SOAK=1``, repeated ``FLOWCRAFT_SOAK_ROUNDS`` times)."""

    runs: int
    poison: int
    outage_s: float
    kill_every_s: float
    rounds: int
    settle_timeout_s: float

    @classmethod
    def from_environment(cls) -> CampaignSize:
        if os.environ.get(SOAK_VARIABLE) == "1":
            return cls(
                runs=200,
                poison=10_000,
                outage_s=10.0,
                kill_every_s=3.0,
                rounds=int(os.environ.get(ROUNDS_VARIABLE, "1")),
                settle_timeout_s=300.0,
            )
        return cls(
            runs=40, poison=1_000, outage_s=5.0, kill_every_s=2.0, rounds=1, settle_timeout_s=120.0
        )


@dataclass(frozen=True, slots=True)
class Fault:
    """One fault of the campaign, or several at once."""

    name: str
    errors: bool = False
    drops: bool = False
    storms: bool = False
    kills: bool = False
    outage: bool = False
    duplicates: bool = False
    poison: bool = False

    @property
    def visibility_timeout_s(self) -> float:
        """1 s for lease-expiry storms (shorter than the slow node), else short enough that
        messages held by a killed daemon or a dropped pull answer come back quickly."""
        if self.storms:
            return 1.0
        return 2.0 if self.kills or self.drops else 5.0


@dataclass(slots=True)
class Outcome:
    """What a campaign left behind, for the invariants to judge."""

    workloads: dict[str, Workload]
    """The workload of each started run, by run id."""
    views: dict[str, RunView]
    queue: dict[str, Any]
    daemon_output: str
    daemon_errors: str
    daemon_starts: int
    daemon_exit_code: int | None
    peak_rss_mb: list[float]
    rejected: dict[str, str] = field(default_factory=dict)
    """Rejected message id → reject code, from the daemon's logs (every start)."""
    rejected_metric: int | None = None
    """``flowcraft_messages_rejected_total`` of the last daemon process (None after kills)."""
    poison_sent: int = 0
    duplicates_sent: int = 0
    injected: dict[str, int] = field(default_factory=dict)
    """Faults the emulator injected, by ``<route>.<kind>`` (``*.503``, ``pull.lease_storm``)."""
    expired_leases: int = 0


def daemon_settings(emulator: EmulatorServer, fault: Fault) -> Settings:
    return Settings(
        cloudflare=CloudflareConfig(account_id=emulator.account_id, api_base_url=emulator.api_url),
        coordinator=CoordinatorConfig(url=emulator.url),
        queues=[
            QueueConfig(
                name=JOB_QUEUE,
                id=emulator.queue_id(JOB_QUEUE),
                visibility_timeout=fault.visibility_timeout_s,
                # Unknown-blueprint poison is rejected on its first delivery instead of after
                # two 10 s skew retries; real jobs never take that path.
                max_deliveries=1,
            )
        ],
        daemon=DaemonConfig(idle_backoff_min=0.01, idle_backoff_max=0.1, ack_linger=0.02),
        workflows=WorkflowsConfig(blueprints=["blueprints/*.json"], nodes=[STANDARD_NODES_ENTRY]),
        observability=ObservabilityConfig(log_format="json"),
    )


async def _statuses(client: RunClient) -> dict[str, str] | None:
    """Every run's status, or None while the coordinator cannot answer."""
    try:
        return await client.statuses()
    except (RunStoreError, httpx.HTTPError):
        return None


async def wait_terminal(client: RunClient, run_ids: list[str], timeout: float) -> None:
    """Return once every run is completed, failed or cancelled; TimeoutError naming stragglers."""
    pending = set(run_ids)
    with anyio.move_on_after(timeout):
        while pending:
            statuses = await _statuses(client)
            if statuses is not None:
                pending = {r for r in pending if statuses.get(r) not in TERMINAL_STATUSES}
            await anyio.sleep(0.2)
        return
    raise TimeoutError(
        f"{len(pending)} run(s) did not finish in {timeout:g}s: {sorted(pending)[:5]}"
    )


async def wait_drained(emulator: EmulatorServer, timeout: float) -> dict[str, Any]:
    """The job queue's description once it holds nothing (or as it is after ``timeout``)."""
    broker = emulator.broker
    queue = broker.find(JOB_QUEUE)
    with anyio.move_on_after(timeout):
        while True:
            broker.settle()
            if broker.describe(queue, limit=0)["depth"] == 0:
                break
            await anyio.sleep(0.1)
    broker.settle()
    return broker.describe(queue, limit=5)


def rejections(output: str) -> dict[str, str]:
    """Message id → reject code of every ``rejected job message`` line in a daemon's output."""
    found: dict[str, str] = {}
    for line in output.splitlines():
        if '"rejected job message"' not in line:
            continue
        record = json.loads(line)
        found[str(record["message_id"])] = str(record["code"])
    return found


def rejected_total(exposition: str) -> int:
    total = 0
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if sample.name == "flowcraft_messages_rejected_total":
                total += int(sample.value)
    return total


async def _start_runs(
    client: RunClient, workloads: list[Workload], count: int
) -> dict[str, Workload]:
    """Start ``count`` runs, cycling through ``workloads``; a start the faults defeated is sent
    again (starting is idempotent)."""
    started: dict[str, Workload] = {}
    limiter = anyio.Semaphore(16)

    async def start(workload: Workload) -> None:
        run_id = uuid.uuid4().hex
        async with limiter:
            while True:
                try:
                    await client.start(workload.start_id, workload.context, run_id=run_id)
                    break
                except (RunStoreError, httpx.HTTPError):
                    await anyio.sleep(0.1)
        started[run_id] = workload

    async with anyio.create_task_group() as group:
        for index in range(count):
            group.start_soon(start, workloads[index % len(workloads)])
    return started


async def run_campaign(
    fault: Fault,
    size: CampaignSize,
    workloads: list[Workload],
    directory: Path,
    seed: int,
) -> Outcome:
    """Run ``size.runs`` runs of ``workloads`` through the daemon while ``fault`` happens."""
    rng = random.Random(seed)
    runs_factory, duplicators = duplicating_runs(rng) if fault.duplicates else (run_service, [])
    config = EmulatorConfig(
        port=0,
        token=token_hex(16),
        secret=token_urlsafe(24),
        visibility_timeout_ms=int(fault.visibility_timeout_s * 1000),
        max_retries=100,
    )
    plan = fault_plan(seed, errors=fault.errors, drops=fault.drops, storms=fault.storms)
    async with EmulatorServer(config, runs_factory=runs_factory) as emulator:
        secrets = Secrets(api_token=config.token, coordinator_secret=config.secret)
        assert config.secret is not None
        daemon = DaemonProcess(
            directory / "daemon",
            daemon_settings(emulator, fault),
            secrets,
            blueprints=all_blueprints(workloads),
        )
        peaks: list[float] = []
        poison = poison_messages(size.poison, rng) if fault.poison else []
        async with (
            daemon,
            RunClient(emulator.url, config.secret, all_blueprints(workloads)) as client,
            anyio.create_task_group() as background,
        ):
            background.start_soon(watch_memory, daemon, peaks)
            emulator.faults.replace(plan)
            started = await _start_runs(client, workloads, size.runs)
            async with anyio.create_task_group() as faults:
                if poison:
                    faults.start_soon(inject_poison, emulator.broker, poison, 2_000)
                if fault.outage:
                    faults.start_soon(coordinator_outage, emulator, plan, size.outage_s)
                killing = anyio.CancelScope()
                if fault.kills:

                    async def kill_until_done() -> None:
                        with killing:
                            await kill_repeatedly(daemon, size.kill_every_s, rng)

                    faults.start_soon(kill_until_done)
                await wait_terminal(client, list(started), size.settle_timeout_s)
                killing.cancel()
            if not daemon.running:
                raise daemon.failure("exited during the campaign")
            injected = Counter(emulator.faults.injected)
            expired = emulator.broker.stats["expired"]
            emulator.faults.replace(FaultPlan())
            queue = await wait_drained(emulator, size.settle_timeout_s)
            views = await client.views(list(started))
            metric = None if fault.kills else rejected_total(await daemon.metrics())
            background.cancel_scope.cancel()
        return Outcome(
            workloads=started,
            views=views,
            queue=queue,
            daemon_output=daemon.stdout(),
            daemon_errors=daemon.stderr(),
            daemon_starts=daemon.starts,
            daemon_exit_code=daemon.returncode,
            peak_rss_mb=peaks,
            rejected=rejections(daemon.stdout()),
            rejected_metric=metric,
            poison_sent=len(poison),
            duplicates_sent=sum(d.duplicated for d in duplicators),
            injected=dict(injected),
            expired_leases=expired,
        )


def injected_kinds(outcome: Outcome) -> set[str]:
    """The kinds of fault the emulator injected (``503``, ``drop_response``, ``reset``, ...)."""
    return {key.rsplit(".", 1)[1] for key, count in outcome.injected.items() if count}
