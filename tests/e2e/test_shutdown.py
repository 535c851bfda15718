"""Shutdown of a daemon process: SIGTERM drains, a second SIGTERM skips the drain, and
``drain_timeout`` hands unfinished jobs back to the queue for immediate redelivery."""

from __future__ import annotations

import signal
from collections import Counter
from pathlib import Path

import pytest

from flowcraft_puller.config import DaemonConfig
from flowcraft_puller.testing.processes import DaemonProcess, EmulatorProcess
from flowcraft_puller.testing.runs import RunClient
from tests.e2e.conftest import DaemonFactory
from tests.e2e.executions import read_executions
from tests.e2e.polling import until
from tests.e2e.workflows import chain, diamond, diamond_outputs, outputs_of

pytestmark = pytest.mark.anyio

FAST_BACKOFF = {"idle_backoff_min": 0.01, "idle_backoff_max": 0.1, "ack_linger": 0.005}


async def test_sigterm_during_load_finishes_in_flight_jobs_and_a_restart_completes_every_run(
    emulator: EmulatorProcess, make_daemon: DaemonFactory, executions_path: Path
) -> None:
    blueprint = diamond(ms=200)
    daemon = make_daemon(
        blueprints=[blueprint],
        daemon=DaemonConfig(concurrency=16, drain_timeout=20.0, **FAST_BACKOFF),
    )
    await daemon.start()

    def running() -> int:
        return sum(1 for e in read_executions(executions_path) if e.end_ns is None)

    async with RunClient(emulator.url, emulator.secret, [blueprint]) as runs:
        run_ids = await runs.start_many(blueprint["id"], 60)
        await until(lambda: len(read_executions(executions_path)) >= 40 and running() >= 5, 60)
        daemon.terminate()
        assert await daemon.wait() == 0
        left = await emulator.queue()
        drained = read_executions(executions_path)

        await daemon.start()
        views = await runs.wait_terminal(run_ids, timeout=60)
        await emulator.wait_empty()

    assert [e.outcome for e in drained if e.outcome != "returned"] == []
    assert (left["leased"], left["delayed"]) == (0, 0)
    assert left["ready"] == left["depth"] > 0
    assert {view.status for view in views.values()} == {"completed"}
    assert [r for r, v in views.items() if outputs_of(v) != diamond_outputs(r)] == []
    runs_per_node = Counter((e.run, e.node) for e in read_executions(executions_path))
    assert set(runs_per_node.values()) == {1}
    assert len(runs_per_node) == 60 * 4


async def _stop_with_jobs_stuck(
    emulator: EmulatorProcess,
    daemon: DaemonProcess,
    executions_path: Path,
    *,
    second_signal: bool,
) -> None:
    """Start four runs whose first node sleeps a minute, then stop the daemon (SIGTERM, and
    SIGTERM again once it drains if ``second_signal``) and wait for its exit code 0."""
    blueprint = chain("e2e-stuck", first_ms=60_000)
    daemon.add_blueprint(blueprint)
    await daemon.start()
    async with RunClient(emulator.url, emulator.secret, [blueprint]) as runs:
        await runs.start_many(blueprint["id"], 4)
    await until(lambda: len(read_executions(executions_path)) == 4, 30)
    daemon.terminate()
    if second_signal:
        await daemon.wait_for_event("shutdown requested; draining")
        daemon.send_signal(signal.SIGTERM)
    assert await daemon.wait(timeout=15) == 0


async def _assert_handed_back_for_immediate_redelivery(
    emulator: EmulatorProcess, executions_path: Path
) -> None:
    queue = await emulator.queue()
    now = await emulator.now_ms()
    assert (queue["depth"], queue["ready"], queue["leased"], queue["delayed"]) == (4, 4, 0, 0)
    assert [(m["attempts"], m["lease_until_ms"]) for m in queue["messages"]] == [(1, None)] * 4
    assert all(m["visible_at_ms"] <= now for m in queue["messages"])
    assert [e.outcome for e in read_executions(executions_path)] == ["cancelled"] * 4


async def test_a_second_sigterm_skips_the_drain_and_hands_jobs_back(
    emulator: EmulatorProcess, make_daemon: DaemonFactory, executions_path: Path
) -> None:
    daemon = make_daemon(blueprints=[], daemon=DaemonConfig(drain_timeout=120.0, **FAST_BACKOFF))
    await _stop_with_jobs_stuck(emulator, daemon, executions_path, second_signal=True)

    handed = daemon.events("handing unfinished jobs back to the queue")
    assert [(e["count"], e["reason"]) for e in handed] == [(4, "second signal")]
    await _assert_handed_back_for_immediate_redelivery(emulator, executions_path)


async def test_drain_timeout_hands_unfinished_jobs_back_for_immediate_redelivery(
    emulator: EmulatorProcess, make_daemon: DaemonFactory, executions_path: Path
) -> None:
    daemon = make_daemon(blueprints=[], daemon=DaemonConfig(drain_timeout=1.0, **FAST_BACKOFF))
    await _stop_with_jobs_stuck(emulator, daemon, executions_path, second_signal=False)

    handed = daemon.events("handing unfinished jobs back to the queue")
    assert [(e["count"], e["reason"]) for e in handed] == [(4, "drain timeout")]
    await _assert_handed_back_for_immediate_redelivery(emulator, executions_path)


async def test_sigterm_exits_within_the_drain_timeout_while_a_pull_is_being_retried(
    emulator: EmulatorProcess, make_daemon: DaemonFactory
) -> None:
    daemon = make_daemon(
        blueprints=[diamond(ms=10)], daemon=DaemonConfig(drain_timeout=1.0, **FAST_BACKOFF)
    )
    await daemon.start()
    overloaded = {"error_429_rate": 1.0, "rate_limit_code": 10250, "retry_after_seconds": 30}
    await emulator.set_faults({"routes": {"pull": overloaded}})
    await daemon.wait_for_event("queue API call failed; retrying")
    daemon.terminate()
    try:
        code = await daemon.wait(timeout=8)
    finally:
        if daemon.running:
            daemon.kill()
    assert code == 0
