"""The system under test as separate processes: one emulator and N daemons consuming it.

Every daemon is the real ``flowcraft-puller run`` with the production defaults of
:class:`~flowcraft_puller.config.DaemonConfig` (unless told otherwise), loading the workload's
blueprint and nodes.
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from pathlib import Path
from types import TracebackType
from typing import Final, Self

import anyio

from bench.nodes import TIMINGS_VARIABLE
from bench.procstat import ProcessSample, sample
from bench.scrape import DaemonCounters, daemon_counters
from bench.workload import NODE_MODULE, fan_blueprint
from flowcraft_puller.config import DaemonConfig, ObservabilityConfig
from flowcraft_puller.testing.processes import DaemonProcess, EmulatorProcess

ROOT: Final = Path(__file__).resolve().parents[1]
VISIBILITY_TIMEOUT_S: Final = 60.0
"""The production default of ``queues[].visibility_timeout``."""


class Cluster:
    """``async with Cluster(directory, daemons=2) as cluster:`` — the emulator and the daemons
    running and ready (each has pulled once)."""

    def __init__(
        self,
        directory: Path,
        *,
        daemons: int = 1,
        daemon_config: DaemonConfig | None = None,
    ) -> None:
        self.directory = directory
        self.timings_prefix = directory / "timings"
        self.emulator = EmulatorProcess(directory / "emulator")
        self.daemon_count = daemons
        self.daemon_config = daemon_config or DaemonConfig()
        self.daemons: list[DaemonProcess] = []
        self._stack = AsyncExitStack()

    async def __aenter__(self) -> Self:
        await self._stack.__aenter__()
        try:
            await self._stack.enter_async_context(self.emulator)
            settings = self.emulator.daemon_settings(
                nodes=[NODE_MODULE],
                visibility_timeout=VISIBILITY_TIMEOUT_S,
                daemon=self.daemon_config,
                observability=ObservabilityConfig(log_format="json"),
            )
            for index in range(self.daemon_count):
                daemon = DaemonProcess(
                    self.directory / f"daemon-{index}",
                    settings,
                    self.emulator.secrets,
                    blueprints=[fan_blueprint()],
                    environment={TIMINGS_VARIABLE: str(self.timings_prefix)},
                    pythonpath=[ROOT],
                    name=f"daemon-{index}",
                )
                self._stack.push_async_callback(daemon.aclose)
                self.daemons.append(daemon)
            async with anyio.create_task_group() as group:
                for daemon in self.daemons:
                    group.start_soon(daemon.start)
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stack.aclose()

    async def counters(self) -> DaemonCounters:
        """The daemons' counters, summed."""
        total = DaemonCounters()
        for daemon in self.daemons:
            total = total + daemon_counters(await daemon.metrics())
        return total

    def daemon_samples(self) -> list[ProcessSample]:
        return [sample(daemon.pid) for daemon in self.daemons]

    def emulator_sample(self) -> ProcessSample:
        return sample(self.emulator.pid)

    async def stop_daemons(self) -> None:
        """SIGTERM every daemon and wait: they drain, and their nodes write their timings."""
        async with anyio.create_task_group() as group:
            for daemon in self.daemons:
                group.start_soon(daemon.stop)
