"""The workload's node implementations, loaded by the daemons under test (``bench.nodes:NODES``)
and by the in-memory comparison.

When ``$BENCH_NODE_TIMINGS`` names a file prefix, every execution is recorded as a line
``run_id node_id start_ns end_ns`` (wall clock, shared by all processes of the machine) in
``<prefix>.<pid>.tsv``. Lines are buffered and written 1,000 at a time and at exit, so recording
costs the node about a microsecond and no file I/O per call.
"""

from __future__ import annotations

import atexit
import os
import time
from typing import Any, Final

from flowcraft_puller import NodeContext, Registry

TIMINGS_VARIABLE: Final = "BENCH_NODE_TIMINGS"
_FLUSH_EVERY: Final = 1000


class TimingLog:
    """Buffers execution timings and appends them to a file in large writes."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self._lines: list[str] = []

    def record(self, run_id: str, node_id: str, start_ns: int, end_ns: int) -> None:
        if self.path is None:
            return
        self._lines.append(f"{run_id}\t{node_id}\t{start_ns}\t{end_ns}\n")
        if len(self._lines) >= _FLUSH_EVERY:
            self.flush()

    def flush(self) -> None:
        if self.path is None or not self._lines:
            return
        data = "".join(self._lines).encode()
        self._lines.clear()
        descriptor = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(descriptor, data)
        finally:
            os.close(descriptor)


def _timing_log() -> TimingLog:
    prefix = os.environ.get(TIMINGS_VARIABLE)
    log = TimingLog(f"{prefix}.{os.getpid()}.tsv" if prefix else None)
    atexit.register(log.flush)
    return log


TIMINGS = _timing_log()
NODES = Registry()


@NODES.node("noop")
async def noop(ctx: NodeContext) -> int:
    """Output 1."""
    start = time.time_ns()
    TIMINGS.record(ctx.run_id, ctx.node_id, start, time.time_ns())
    return 1


@NODES.node("sum")
async def total(ctx: NodeContext) -> Any:
    """Output the sum of the input's values (the join of the fan-out)."""
    start = time.time_ns()
    result = sum(ctx.input.values())
    TIMINGS.record(ctx.run_id, ctx.node_id, start, time.time_ns())
    return result
