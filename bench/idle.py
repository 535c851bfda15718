"""Part 4: the cost of an idle daemon — pulls per minute and CPU — with the production defaults,
measured after its idle back-off has settled."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import anyio

from bench.cluster import Cluster
from bench.stats import ratio

SETTLE_S = 5.0
"""Long enough for the back-off to grow from its minimum to its maximum (50 ms → 1 s)."""


@dataclass(frozen=True, slots=True)
class IdleFigures:
    seconds: float
    pulls: int
    idle_pulls_per_min: float
    idle_cpu_percent: float
    idle_rss_mb: float

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


async def measure_idle(seconds: float, directory: Path) -> IdleFigures:
    """Watch one daemon with nothing to do for ``seconds``."""
    async with Cluster(directory) as cluster:
        await anyio.sleep(SETTLE_S)
        emulator = cluster.emulator
        pulls_before = (await emulator.stats())["requests"].get("pull", 0)
        (before,) = cluster.daemon_samples()
        began = anyio.current_time()
        await anyio.sleep(seconds)
        (after,) = cluster.daemon_samples()
        elapsed = anyio.current_time() - began
        pulls = (await emulator.stats())["requests"].get("pull", 0) - pulls_before
    return IdleFigures(
        seconds=elapsed,
        pulls=pulls,
        idle_pulls_per_min=ratio(pulls * 60, elapsed),
        idle_cpu_percent=ratio((after.cpu_s - before.cpu_s) * 100, elapsed),
        idle_rss_mb=after.rss_mb,
    )
