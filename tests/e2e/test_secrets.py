"""A daemon process never writes its API token or its coordinator secret, not even at debug
level, not even when a node fails with an exception that carries them."""

from __future__ import annotations

import pytest

from flowcraft_puller.config import ObservabilityConfig
from flowcraft_puller.testing.processes import EmulatorProcess
from flowcraft_puller.testing.runs import RunClient
from tests.e2e.conftest import DaemonFactory
from tests.e2e.workflows import failing

pytestmark = pytest.mark.anyio


async def test_secrets_never_appear_in_the_daemons_output(
    emulator: EmulatorProcess, make_daemon: DaemonFactory
) -> None:
    blueprints = [failing("e2e-explode", "explode"), failing("e2e-leak", "leak_credentials")]
    daemon = make_daemon(
        blueprints=blueprints,
        observability=ObservabilityConfig(log_level="debug", log_format="json"),
    )
    await daemon.start()
    async with RunClient(emulator.url, emulator.secret, blueprints) as runs:
        run_ids = [await runs.start(b["id"]) for b in blueprints]
        views = await runs.wait_terminal(run_ids, timeout=30)
    assert await daemon.stop() == 0

    output = daemon.stdout() + daemon.stderr()
    assert {view.status for view in views.values()} == {"failed"}
    failures = [r["reason"] for r in daemon.records() if r["event"] == "node failed; run failed"]
    assert len(failures) == 2
    assert any("[redacted]" in reason for reason in failures)
    assert "Authorization" in output
    assert emulator.token not in output
    assert emulator.secret not in output
