"""The process helpers' own contract: the configuration they write is the one they were given."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from flowcraft_puller.config import (
    CloudflareConfig,
    CoordinatorConfig,
    DaemonConfig,
    ObservabilityConfig,
    QueueConfig,
    Settings,
    WorkflowsConfig,
    load_config,
)
from flowcraft_puller.emulator.queues import DEFAULT_PULL_BATCH
from flowcraft_puller.testing.processes import EmulatorProcess, settings_toml
from flowcraft_puller.testing.runs import RunClient
from tests.e2e.workflows import diamond


def test_settings_written_as_toml_load_back_unchanged(tmp_path: Path) -> None:
    settings = Settings(
        cloudflare=CloudflareConfig(
            account_id="0123456789abcdef0123456789abcdef", api_base_url="http://127.0.0.1:1/v4"
        ),
        coordinator=CoordinatorConfig(url="http://127.0.0.1:1", batch_linger=0.001),
        queues=[
            QueueConfig(name="jobs", id="5cf0d39b7c675fd1a98c4f15d25d9237", pull_loops=2),
            QueueConfig(name='more "jobs"', id="2b4ddefa4d4558399e8583852d6a6819"),
        ],
        daemon=DaemonConfig(concurrency=7, drain_timeout=1.5, idle_backoff_min=0.00001),
        workflows=WorkflowsConfig(blueprints=["a/*.json", "m:B"], nodes=["n:NODES"]),
        observability=ObservabilityConfig(log_level="debug", log_format="json"),
    )
    path = tmp_path / "config.toml"
    path.write_text(settings_toml(settings))

    assert load_config(path, environ={}).settings == settings


@pytest.mark.anyio
async def test_an_emulator_restarted_on_its_state_keeps_its_port_queue_and_runs(
    tmp_path: Path,
) -> None:
    blueprint = diamond()
    emulator = EmulatorProcess(tmp_path / "emulator", state=tmp_path / "state.sqlite")
    async with emulator:
        async with RunClient(emulator.url, emulator.secret, [blueprint]) as runs:
            run_id = await runs.start(blueprint["id"])
        url, queued = emulator.url, await emulator.queue()
        await emulator.restart()
        async with RunClient(emulator.url, emulator.secret, [blueprint]) as runs:
            view = await runs.get(run_id)
        requeued = await emulator.queue()

    assert emulator.starts == 2
    assert emulator.url == url
    assert queued["depth"] == requeued["depth"] == 1
    assert view.status == "running"


@pytest.mark.anyio
async def test_the_emulator_command_sets_its_consumers_like_wrangler_does(
    tmp_path: Path,
) -> None:
    options = ["--message-retries", "1", "--visibility-timeout-secs", "2.5"]
    options += ["--retry-delay-secs", "7"]
    async with EmulatorProcess(tmp_path / "emulator", options=options) as emulator:
        headers = {"Authorization": f"Bearer {emulator.token}"}
        async with httpx.AsyncClient(headers=headers) as client:
            listed = await client.get(f"{emulator.api_url}/accounts/{emulator.account_id}/queues")
    queues = {q["queue_name"]: q for q in listed.json()["result"]}
    assert queues["flowcraft-jobs"]["consumers"][0]["settings"] == {
        "batch_size": DEFAULT_PULL_BATCH,
        "max_retries": 1,
        "retry_delay": 7,
        "visibility_timeout_ms": 2500,
    }
