"""kill -9 of the daemon process during 100 concurrent runs, then a restart: every run completes
with the right outputs, and no node's code ever ran twice at the same time.

The emulator is a process of its own and outlives the daemon; only the daemon dies.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from flowcraft_puller.testing.processes import EmulatorProcess
from flowcraft_puller.testing.runs import RunClient
from tests.e2e.conftest import DaemonFactory
from tests.e2e.executions import Execution, overlapping, read_executions
from tests.e2e.polling import until
from tests.e2e.workflows import diamond, diamond_outputs, outputs_of

pytestmark = pytest.mark.anyio

RUNS = 100
VISIBILITY_S = 3.0
"""Short, so that the messages the killed daemon held come back quickly."""


async def test_after_a_kill_9_every_run_completes_and_no_node_ever_ran_twice_at_once(
    emulator: EmulatorProcess, make_daemon: DaemonFactory, executions_path: Path
) -> None:
    blueprint = diamond(ms=150)
    daemon = make_daemon(blueprints=[blueprint], visibility_timeout=VISIBILITY_S)
    await daemon.start()

    def executions() -> list[Execution]:
        return read_executions(executions_path)

    def in_flight() -> int:
        return sum(1 for e in executions() if e.end_ns is None)

    async with RunClient(emulator.url, emulator.secret, [blueprint]) as runs:
        run_ids = await runs.start_many(blueprint["id"], RUNS)
        await until(lambda: len(executions()) >= RUNS and in_flight() >= 5, timeout=60)
        victim = daemon.pid
        daemon.kill()
        assert await daemon.wait() == -9
        killed_at = {victim: time.monotonic_ns()}
        cut_short = in_flight()
        await daemon.start()
        views = await runs.wait_terminal(run_ids, timeout=90)
        queue = await emulator.wait_empty()

    assert cut_short > 0, "the kill interrupted no node; the test proved nothing"
    assert {view.status for view in views.values()} == {"completed"}
    wrong = {r: outputs_of(v) for r, v in views.items() if outputs_of(v) != diamond_outputs(r)}
    assert wrong == {}
    assert overlapping(executions(), killed_at) == []
    assert queue["dead_lettered"] == 0
    finished = {(e.run, e.node) for e in executions() if e.outcome == "returned"}
    assert len(finished) == RUNS * 4
