"""Reading the node timings the workload's nodes record, and the scheduling delay they give."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from bench.workload import FAN_OUT


@dataclass(frozen=True, slots=True)
class Execution:
    start_ns: int
    end_ns: int


def read_timings(prefix: Path) -> dict[tuple[str, str], Execution]:
    """The first execution of each (run, node) in the files ``<prefix>.<pid>.tsv``."""
    first: dict[tuple[str, str], Execution] = {}
    for path in sorted(prefix.parent.glob(f"{prefix.name}.*.tsv")):
        for line in path.read_text().splitlines():
            run_id, node_id, start, end = line.split("\t")
            execution = Execution(int(start), int(end))
            known = first.get((run_id, node_id))
            if known is None or execution.start_ns < known.start_ns:
                first[(run_id, node_id)] = execution
    return first


def scheduling_delays_ms(
    executions: Mapping[tuple[str, str], Execution],
    created_ms: Mapping[str, int],
    run_ids: Iterable[str],
) -> list[float]:
    """For each node of each run, the time from being ready to starting, in ms.

    A node is ready when the run started (``A``), when ``A`` returned (each ``B``), or when the
    last ``B`` returned (``J``). The delay covers everything in between: the predecessor's
    commit, the enqueue, the wait in the queue, the pull and the claim.
    """
    branches = [f"B{i}" for i in range(1, FAN_OUT + 1)]
    delays: list[float] = []
    for run_id in run_ids:
        first = executions.get((run_id, "A"))
        if first is None:
            continue
        delays.append(first.start_ns / 1e6 - created_ms[run_id])
        ends = []
        for branch in branches:
            execution = executions.get((run_id, branch))
            if execution is None:
                continue
            delays.append((execution.start_ns - first.end_ns) / 1e6)
            ends.append(execution.end_ns)
        join = executions.get((run_id, "J"))
        if join is not None and len(ends) == FAN_OUT:
            delays.append((join.start_ns - max(ends)) / 1e6)
    return delays
