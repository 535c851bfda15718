"""``flowcraft-puller dev``: the emulator, the daemon and one run of the example, on loopback."""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import anyio
import orjson

from flowcraft_puller.config import (
    CloudflareConfig,
    ConfigError,
    QueueConfig,
    Secrets,
    load_config,
)
from flowcraft_puller.daemon import Daemon, check_limits, workflows_from
from flowcraft_puller.emulator.app import EmulatorConfig
from flowcraft_puller.emulator.server import EmulatorServer, EmulatorStartError
from flowcraft_puller.observability.logging import configure_logging
from flowcraft_puller.progress import follow_run

EXAMPLES: Final = Path(__file__).resolve().parents[1] / "examples"
DEV_TOKEN: Final = "flowcraft-dev-token"
CLI_NAME: Final = "flowcraft-puller"
DEV_SECRET: Final = "flowcraft-dev"
JOB_QUEUE: Final = "flowcraft-jobs"


@dataclass(frozen=True)
class DevOptions:
    once: bool = False
    port: int = 8787
    state: Path | None = None
    config: Path | None = None
    blueprint: str | None = None
    context: Any = None


def _say(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def run_dev(options: DevOptions) -> int:
    """Run until Ctrl-C (or, with ``once``, until the run settles); the run's exit code."""
    configure_logging("warning", "auto", sys.stderr, secrets=[DEV_TOKEN, DEV_SECRET])
    return anyio.run(_dev, options)


async def _emulator(options: DevOptions) -> EmulatorServer:
    config = EmulatorConfig(
        port=options.port, state_path=options.state, token=DEV_TOKEN, secret=DEV_SECRET
    )
    server = EmulatorServer(config)
    try:
        return await server.__aenter__()
    except EmulatorStartError as exc:
        if options.port == 0:
            raise
        _say(f"· port {options.port} is taken ({exc}); using a free port instead")
        fallback = EmulatorServer(config.model_copy(update={"port": 0}))
        return await fallback.__aenter__()


async def _dev(options: DevOptions) -> int:
    config_path = options.config or EXAMPLES / "dev.toml"
    config = load_config(config_path)
    workflows = workflows_from(config)
    problems = workflows.unresolved_uses() + check_limits(config.settings, workflows)
    if problems:
        raise ConfigError(f"{config_path}:\n  " + "\n  ".join(problems))
    blueprint = options.blueprint or next(iter(workflows.blueprints), None)
    if blueprint not in workflows.blueprints:
        raise ConfigError(f"{config_path}: no blueprint {blueprint!r} to start")
    if options.state is not None:
        options.state.parent.mkdir(parents=True, exist_ok=True)
    emulator = await _emulator(options)
    try:
        settings = config.settings.model_copy(
            update={
                "cloudflare": CloudflareConfig(
                    account_id=emulator.account_id, api_base_url=emulator.api_url
                ),
                "coordinator": config.settings.coordinator.model_copy(update={"url": emulator.url}),
                "queues": [
                    QueueConfig(
                        name=JOB_QUEUE, id=emulator.queue_id(JOB_QUEUE), visibility_timeout=30
                    )
                ],
                "observability": config.settings.observability.model_copy(
                    update={"listen": "127.0.0.1:0"}
                ),
            }
        )
        daemon = Daemon(
            settings,
            Secrets(api_token=DEV_TOKEN, coordinator_secret=DEV_SECRET),
            workflows,
            config_path=config_path,
            handle_signals=True,
        )
        async with anyio.create_task_group() as group:
            running = await group.start(daemon.run)
            where = options.state or "in memory"
            _say(f"▶ emulator      {emulator.url}  (queue {JOB_QUEUE}, state {where})")
            _say(f"▶ daemon        consuming {JOB_QUEUE}; metrics {running.health_url}/metrics")
            run_id = await running.adapter.start_run(blueprint, options.context or {})
            _say(f"▶ started run   {run_id} of {blueprint}")
            tty = sys.stderr.isatty()
            view = await follow_run(running.store, run_id, out=sys.stderr if tty else None)
            summary = {
                "runId": run_id,
                "status": view.status,
                "reason": view.reason,
                "outputs": view.outputs,
            }
            sys.stdout.write(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode() + "\n")
            sys.stdout.flush()
            code = 1 if view.status in ("failed", "cancelled") else 0
            if options.once:
                daemon.stop()
            else:
                prefix = f"    FLOWCRAFT_COORDINATOR_SECRET={DEV_SECRET} "
                if str(config.settings.coordinator.url).rstrip("/") != emulator.url.rstrip("/"):
                    prefix += f"FLOWCRAFT__COORDINATOR__URL={emulator.url} "
                prefix += _cli_command()
                _say(
                    "▶ serving; Ctrl-C to stop. Try, in another terminal:\n"
                    f"{prefix} start {blueprint} --config {config_path} --wait\n"
                    f"{prefix} status {run_id} --config {config_path}"
                )
    finally:
        await emulator.__aexit__(None, None, None)
    return code


def _cli_command() -> str:
    """How to call this CLI from another terminal: its bare name when it is on PATH (an
    activated virtualenv or an installed tool), else its path next to this interpreter."""
    if shutil.which(CLI_NAME):
        return CLI_NAME
    return str(Path(sys.executable).parent / CLI_NAME)
