"""The machine the benchmark runs on, and how busy it is (other work skews throughput)."""

from __future__ import annotations

import os
import platform
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.procstat import CLOCK_TICKS


def busy_cpu_seconds() -> float:
    """CPU seconds all processes of the machine have used since boot (``/proc/stat``)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / CLOCK_TICKS


def load_average() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def describe() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "load_average_at_start": load_average(),
    }


@dataclass(slots=True)
class BusyMeter:
    """Measures how many CPU cores the whole machine kept busy between start and stop."""

    started_busy: float = 0.0
    started_at: float = 0.0

    def start(self, now: float) -> None:
        self.started_busy, self.started_at = busy_cpu_seconds(), now

    def cores(self, now: float) -> float:
        elapsed = now - self.started_at
        return (busy_cpu_seconds() - self.started_busy) / elapsed if elapsed > 0 else 0.0
