"""Fixtures of the end-to-end tests: an emulator process per test, and daemon processes running
the test nodes of ``tests/e2e/nodes`` against it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from flowcraft_puller.config import DaemonConfig, ObservabilityConfig
from flowcraft_puller.testing.processes import DaemonProcess, EmulatorProcess
from tests.e2e.nodes.recording import EXECUTIONS_VARIABLE
from tests.e2e.workflows import RECORDING_NODES, ROOT

DaemonFactory = Callable[..., DaemonProcess]


@pytest.fixture
async def emulator(tmp_path: Path) -> AsyncIterator[EmulatorProcess]:
    async with EmulatorProcess(tmp_path / "emulator") as process:
        yield process


@pytest.fixture
def executions_path(tmp_path: Path) -> Path:
    """Where the ``record`` nodes of this test's daemons log their executions."""
    return tmp_path / "executions.jsonl"


@pytest.fixture
async def make_daemon(
    tmp_path: Path, emulator: EmulatorProcess, executions_path: Path
) -> AsyncIterator[DaemonFactory]:
    """Builds (does not start) daemons consuming ``emulator`` with the test nodes loaded; every
    one still running at the end of the test is stopped."""
    made: list[DaemonProcess] = []

    def make(
        *,
        blueprints: Iterable[Mapping[str, Any]],
        nodes: Sequence[str] = (RECORDING_NODES,),
        daemon: DaemonConfig | None = None,
        observability: ObservabilityConfig | None = None,
        visibility_timeout: float = 30.0,
        environment: Mapping[str, str] | None = None,
        name: str = "daemon",
    ) -> DaemonProcess:
        settings = emulator.daemon_settings(
            nodes=nodes,
            daemon=daemon,
            observability=observability,
            visibility_timeout=visibility_timeout,
        )
        process = DaemonProcess(
            tmp_path / name,
            settings,
            emulator.secrets,
            blueprints=blueprints,
            environment={EXECUTIONS_VARIABLE: str(executions_path), **(environment or {})},
            pythonpath=[ROOT],
            name=name,
        )
        made.append(process)
        return process

    yield make
    for process in made:
        await process.aclose()
