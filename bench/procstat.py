"""CPU time and memory of a running process, read from ``/proc`` (Linux), without psutil."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final

CLOCK_TICKS: Final = os.sysconf("SC_CLK_TCK")


class ProcessGone(RuntimeError):
    """The process exited before it could be measured."""


@dataclass(frozen=True, slots=True)
class ProcessSample:
    """One reading: CPU seconds used so far (user + system), resident and peak resident MB."""

    cpu_s: float
    rss_mb: float
    peak_rss_mb: float


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds of ``pid`` (all its threads), from ``/proc/<pid>/stat``."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        raise ProcessGone(f"process {pid} is gone") from None
    # The command name (field 2) may hold spaces and parentheses: split after its last ")".
    fields = stat[stat.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / CLOCK_TICKS


def memory_mb(pid: int) -> tuple[float, float]:
    """``(VmRSS, VmHWM)`` of ``pid`` in MB: resident now and the peak so far."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        raise ProcessGone(f"process {pid} is gone") from None
    values = {}
    for line in status.splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024
    return values["VmRSS"], values["VmHWM"]


def sample(pid: int) -> ProcessSample:
    rss, peak = memory_mb(pid)
    return ProcessSample(cpu_s=cpu_seconds(pid), rss_mb=rss, peak_rss_mb=peak)
