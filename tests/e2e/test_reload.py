"""SIGHUP makes a daemon process load new blueprint files and its new log level, while the work
in flight carries on."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from flowcraft_puller.config import ObservabilityConfig
from flowcraft_puller.testing.notify import NotifySocket
from flowcraft_puller.testing.processes import EmulatorProcess
from flowcraft_puller.testing.runs import RunClient
from tests.e2e.conftest import DaemonFactory
from tests.e2e.executions import read_executions
from tests.e2e.polling import until
from tests.e2e.workflows import (
    RECORDING_NODES,
    chain,
    chain_outputs,
    diamond,
    diamond_outputs,
    outputs_of,
)

pytestmark = pytest.mark.anyio


async def test_sighup_loads_new_blueprints_and_log_level_without_dropping_work(
    emulator: EmulatorProcess, make_daemon: DaemonFactory, executions_path: Path
) -> None:
    in_flight, added = chain("e2e-in-flight", first_ms=2000), diamond("e2e-added", ms=10)
    with NotifySocket() as notify:
        daemon = make_daemon(
            blueprints=[in_flight],
            observability=ObservabilityConfig(log_level="warning", log_format="json"),
            environment=notify.environment(),
        )
        await daemon.start()
        async with RunClient(emulator.url, emulator.secret, [in_flight, added]) as runs:
            first_run = await runs.start(in_flight["id"])
            await until(lambda: len(read_executions(executions_path)) == 1, 30)
            quiet_before = [r for r in daemon.records() if r["level"] == "info"]

            daemon.add_blueprint(added)
            louder = ObservabilityConfig(log_level="info", log_format="json")
            daemon.write_config(daemon.settings.model_copy(update={"observability": louder}))
            daemon.send_signal(signal.SIGHUP)
            reloaded = await daemon.wait_for_event("reloaded", timeout=15)
            second_run = await runs.start(added["id"])
            views = await runs.wait_terminal([first_run, second_run], timeout=30)
        assert await daemon.stop() == 0

    assert quiet_before == []
    assert reloaded["blueprints"] == ["e2e-added", "e2e-in-flight"]
    assert views[first_run].status == views[second_run].status == "completed"
    assert outputs_of(views[first_run]) == chain_outputs(first_run)
    assert outputs_of(views[second_run]) == diamond_outputs(second_run)
    first = [e for e in read_executions(executions_path) if e.run == first_run]
    assert [(e.node, e.outcome) for e in first] == [("first", "returned"), ("then", "returned")]
    reload_notices = [n.fields for n in notify.received if "RELOADING" in n.fields]
    assert len(reload_notices) == 1
    assert reload_notices[0]["MONOTONIC_USEC"].isdigit()
    assert [n.fields for n in notify.received if "READY" in n.fields] == [{"READY": "1"}] * 2


async def test_a_reload_with_a_broken_config_keeps_the_running_configuration(
    emulator: EmulatorProcess, make_daemon: DaemonFactory
) -> None:
    blueprint = diamond(ms=10)
    daemon = make_daemon(blueprints=[blueprint])
    await daemon.start()
    daemon.config_path.write_text("[daemon\n")
    daemon.send_signal(signal.SIGHUP)
    failed = await daemon.wait_for_event("reload failed; keeping the running configuration")
    async with RunClient(emulator.url, emulator.secret, [blueprint]) as runs:
        run_id = await runs.start(blueprint["id"])
        views = await runs.wait_terminal([run_id], timeout=30)
    metrics = await daemon.metrics()
    assert await daemon.stop() == 0

    assert "not valid TOML" in failed["error"]
    assert outputs_of(views[run_id]) == diamond_outputs(run_id)
    assert 'flowcraft_reloads_total{result="error"} 1.0' in metrics


async def test_a_sighup_during_start_up_does_not_stop_the_daemon(
    emulator: EmulatorProcess, make_daemon: DaemonFactory, tmp_path: Path
) -> None:
    importing = tmp_path / "importing"
    daemon = make_daemon(
        blueprints=[diamond(ms=10)],
        nodes=[RECORDING_NODES, "tests.e2e.nodes.slow_start:NODES"],
        environment={
            "FLOWCRAFT_E2E_IMPORTING": str(importing),
            "FLOWCRAFT_E2E_IMPORT_SECONDS": "1",
        },
    )
    await daemon.spawn()
    await until(importing.exists, 30)
    daemon.send_signal(signal.SIGHUP)
    await daemon.wait_ready()
    assert daemon.running
