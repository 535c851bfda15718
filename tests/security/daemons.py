"""Daemon processes for the security checks, running the standard test nodes."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import anyio

from flowcraft_puller.config import (
    CloudflareConfig,
    CoordinatorConfig,
    DaemonConfig,
    QueueConfig,
    Settings,
)
from flowcraft_puller.emulator.server import EmulatorServer
from flowcraft_puller.runstore.protocol import RunView
from flowcraft_puller.testing.processes import DaemonProcess, EmulatorProcess
from flowcraft_puller.testing.runs import RunClient

STANDARD_NODES_ENTRY = "flowcraft_puller.testing.nodes:STANDARD_NODES"
JOB_QUEUE = "flowcraft-jobs"


def standard_daemon(
    emulator: EmulatorProcess, directory: Path, blueprints: Iterable[Mapping[str, Any]]
) -> DaemonProcess:
    """A daemon (not started) consuming ``emulator`` with the standard test nodes loaded."""
    return DaemonProcess(
        directory,
        emulator.daemon_settings(nodes=[STANDARD_NODES_ENTRY]),
        emulator.secrets,
        blueprints=blueprints,
    )


async def wait_for_status(
    runs: RunClient, run_ids: list[str], status: str, timeout: float = 30.0
) -> dict[str, RunView]:
    """The runs' views once every one of them has ``status``."""
    with anyio.fail_after(timeout):
        while True:
            views = await runs.views(run_ids)
            if all(view.status == status for view in views.values()):
                return views
            await anyio.sleep(0.1)


def emulator_settings(emulator: EmulatorServer) -> Settings:
    """Settings of a daemon (in this process) consuming an in-process emulator's job queue."""
    return Settings(
        cloudflare=CloudflareConfig(account_id=emulator.account_id, api_base_url=emulator.api_url),
        coordinator=CoordinatorConfig(url=emulator.url),
        queues=[QueueConfig(name=JOB_QUEUE, id=emulator.queue_id(JOB_QUEUE))],
        daemon=DaemonConfig(idle_backoff_min=0.01, idle_backoff_max=0.1, ack_linger=0.005),
    )
