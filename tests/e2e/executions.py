"""Reading the execution log the ``record`` test node writes, and checking it."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Execution:
    """One execution of a ``record`` node; ``end_ns`` is None if its process died during it."""

    call: str
    run: str
    node: str
    pid: int
    start_ns: int
    end_ns: int | None
    outcome: str | None


def read_executions(path: Path) -> list[Execution]:
    if not path.exists():
        return []
    starts: dict[str, dict[str, object]] = {}
    ends: dict[str, dict[str, object]] = {}
    for line in path.read_text().splitlines():
        entry = json.loads(line)
        (starts if entry["phase"] == "start" else ends)[entry["call"]] = entry
    return [
        Execution(
            call=call,
            run=str(start["run"]),
            node=str(start["node"]),
            pid=int(str(start["pid"])),
            start_ns=int(str(start["t"])),
            end_ns=int(str(ends[call]["t"])) if call in ends else None,
            outcome=str(ends[call]["outcome"]) if call in ends else None,
        )
        for call, start in starts.items()
    ]


def overlapping(executions: list[Execution], killed_at_ns: dict[int, int]) -> list[str]:
    """Pairs of executions of the same (run, node) whose intervals overlap. An execution without
    an end ended when its process was killed (``killed_at_ns`` by pid)."""
    by_node: dict[tuple[str, str], list[tuple[int, int, str]]] = defaultdict(list)
    for execution in executions:
        end = execution.end_ns
        if end is None:
            end = killed_at_ns[execution.pid]
        by_node[(execution.run, execution.node)].append((execution.start_ns, end, execution.call))
    found = []
    for (run, node), intervals in by_node.items():
        intervals.sort()
        _, latest_end, latest_call = intervals[0]
        for start, end, call in intervals[1:]:
            if start < latest_end:
                found.append(f"{run}/{node}: executions {latest_call} and {call} overlap")
            if end > latest_end:
                latest_end, latest_call = end, call
    return found
