"""A daemon holding a wrong coordinator secret must not lose work: the Worker refuses every call
(401), so the job has to stay in the queue for a daemon with the right secret."""

from __future__ import annotations

import anyio
import pytest

from flowcraft_puller.config import Secrets
from flowcraft_puller.daemon import Daemon
from flowcraft_puller.emulator.server import EmulatorServer
from flowcraft_puller.testing import STANDARD_NODES
from flowcraft_puller.testing.local_stack import JOB_QUEUE
from flowcraft_puller.testing.runs import RunClient
from flowcraft_puller.testing.stack import load_blueprints
from flowcraft_puller.workflows import Workflows
from tests.security.daemons import emulator_settings

pytestmark = pytest.mark.anyio

ONE_NODE = {"id": "security-one", "nodes": [{"id": "A", "uses": "const"}], "edges": []}


async def test_a_daemon_with_a_wrong_coordinator_secret_leaves_its_jobs_queued(
    emulator: EmulatorServer,
) -> None:
    secrets = Secrets(api_token=emulator.config.token, coordinator_secret="wrong-secret")
    daemon = Daemon(
        emulator_settings(emulator),
        secrets,
        Workflows(blueprints=load_blueprints([ONE_NODE]), registry=STANDARD_NODES),
        serve_health=False,
    )
    async with anyio.create_task_group() as group:
        await group.start(daemon.run)
        async with RunClient(emulator.url, emulator.config.secret or "", [ONE_NODE]) as runs:
            run_id = await runs.start("security-one")
            with anyio.fail_after(10):
                while not daemon.reporter.jobs:
                    await anyio.sleep(0.02)
            await anyio.sleep(0.2)
            status = (await runs.get(run_id)).status
        daemon.stop(hurry=True)
    queue = emulator.broker.describe(emulator.broker.find(JOB_QUEUE))
    assert status == "running"
    assert queue["depth"] == 1
