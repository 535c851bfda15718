"""The ``flowcraft-puller`` command line.

Exit codes: 0 success, 1 the run failed (or a command failed), 2 usage or configuration error.
"""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import anyio
import orjson
import typer
from pydantic import ValidationError

from flowcraft_puller import __version__
from flowcraft_puller.adapter import Adapter, UnknownBlueprint
from flowcraft_puller.config import Config, ConfigError, load_config, parse_duration
from flowcraft_puller.daemon import (
    EXIT_CONFIG,
    Daemon,
    check_limits,
    require_production_settings,
    workflows_from,
)
from flowcraft_puller.engine.blueprint import Blueprint, parse_blueprint
from flowcraft_puller.engine.errors import BlueprintError
from flowcraft_puller.engine.executor import ExecutionEnv
from flowcraft_puller.engine.step import Engine
from flowcraft_puller.graph import GraphFormat, render
from flowcraft_puller.observability.logging import configure_logging
from flowcraft_puller.progress import follow_run, progress_line
from flowcraft_puller.runstore.http import HttpRunStore
from flowcraft_puller.runstore.protocol import RunStoreError, RunView
from flowcraft_puller.workflows import WorkflowLoadError, Workflows

EXIT_RUN_FAILED = 1

app = typer.Typer(
    name="flowcraft-puller",
    help="Run flowcraft workflows from Cloudflare Queues with Python node code.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        envvar="FLOWCRAFT_CONFIG",
        help="TOML configuration file (see config.example.toml).",
        dir_okay=False,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]

T = TypeVar("T")


def _fail(message: str, code: int = EXIT_CONFIG) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _config(path: Path | None) -> Config:
    try:
        return load_config(path)
    except ConfigError as exc:
        _fail(str(exc))


def _workflows(config: Config) -> Workflows:
    try:
        return workflows_from(config)
    except (WorkflowLoadError, BlueprintError) as exc:
        _fail(str(exc))


def _quiet_logs(config: Config) -> None:
    configure_logging("warning", "console", sys.stderr, secrets=config.secrets.values())


def _store(config: Config) -> HttpRunStore:
    url = config.settings.coordinator.url.rstrip("/") + "/v1"
    return HttpRunStore(url, config.secrets.coordinator_secret)


def _with_store(config: Config, action: Callable[[HttpRunStore], Awaitable[T]]) -> T:
    async def main() -> T:
        async with _store(config) as store:
            return await action(store)

    try:
        return anyio.run(main)
    except RunStoreError as exc:
        _fail(f"{exc.message} (coordinator {config.settings.coordinator.url})", EXIT_RUN_FAILED)


def _adapter(store: HttpRunStore, blueprints: dict[str, Blueprint] | None = None) -> Adapter:
    """An adapter for run-level commands; it never executes node code."""
    engine = Engine(blueprints=blueprints or {}, env=ExecutionEnv(registry={}))
    return Adapter(engine, store)


def _json_argument(value: str, what: str) -> Any:
    """A JSON value given inline or as ``@path``."""
    text = value
    if value.startswith("@"):
        try:
            text = Path(value[1:]).read_text()
        except OSError as exc:
            _fail(f"{what}: cannot read {value[1:]}: {exc.strerror}")
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        _fail(f"{what} is not valid JSON: {exc}")


def _print_json(value: Any) -> None:
    typer.echo(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode())


def _summary(view: RunView) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "runId": view.run_id,
        "blueprintId": view.blueprint_id,
        "status": view.status,
    }
    if view.reason:
        summary["reason"] = view.reason
    if view.awaiting:
        summary["awaiting"] = {node: a.details for node, a in view.awaiting.items()}
    summary["outputs"] = view.outputs
    return summary


def _exit_for(view: RunView) -> int:
    return EXIT_RUN_FAILED if view.status in ("failed", "cancelled") else 0


@app.command()
def run(config: ConfigOption = None) -> None:
    """Consume the configured queues until SIGTERM or SIGINT (the production daemon).

    SIGHUP reloads the blueprints and the log level; a second SIGTERM skips the drain.
    """
    if config is None:
        _fail("run needs --config (or FLOWCRAFT_CONFIG)")
    # Until the supervisor listens for SIGHUP, a reload request must not kill the daemon (the
    # configuration being loaded is the newest anyway).
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    loaded = _config(config)
    observability = loaded.settings.observability
    configure_logging(
        observability.log_level, observability.log_format, secrets=loaded.secrets.values()
    )
    problems = require_production_settings(loaded)
    workflows = _workflows(loaded)
    problems += workflows.unresolved_uses() + check_limits(loaded.settings, workflows)
    if problems:
        _fail(f"{config}:\n  " + "\n  ".join(problems))
    daemon = Daemon(
        loaded.settings, loaded.secrets, workflows, config_path=config, handle_signals=True
    )
    raise typer.Exit(anyio.run(daemon.run))


@app.command()
def dev(
    once: Annotated[
        bool, typer.Option(help="Exit after the run, with its status as exit code.")
    ] = False,
    port: Annotated[int, typer.Option(help="Emulator port; 0 picks a free one.")] = 8787,
    state: Annotated[
        Path | None, typer.Option(help="SQLite file keeping queues and runs across restarts.")
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="Workflows to run (default: the example).")
    ] = None,
    blueprint: Annotated[
        str | None, typer.Option(help="Blueprint to start (default: the first).")
    ] = None,
    context: Annotated[str, typer.Option(help="Initial context: JSON or @file.")] = "{}",
) -> None:
    """Run the whole system on this machine: the Cloudflare emulator, the daemon and one run."""
    from flowcraft_puller.devmode import DevOptions, run_dev

    options = DevOptions(
        once=once,
        port=port,
        state=state,
        config=config,
        blueprint=blueprint,
        context=_json_argument(context, "--context"),
    )
    try:
        code = run_dev(options)
    except (ConfigError, WorkflowLoadError, BlueprintError) as exc:
        _fail(str(exc))
    raise typer.Exit(code)


@app.command()
def emulator(
    host: Annotated[str, typer.Option(help="Address to bind (keep it on loopback).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to bind; 0 picks a free one.")] = 8787,
    state: Annotated[
        Path | None, typer.Option(help="SQLite file keeping queues and runs across restarts.")
    ] = None,
    token: Annotated[
        str | None, typer.Option(envvar="FLOWCRAFT_EMULATOR_TOKEN", help="Queue API token.")
    ] = None,
    secret: Annotated[
        str | None, typer.Option(envvar="FLOWCRAFT_EMULATOR_SECRET", help="Worker protocol secret.")
    ] = None,
    message_retries: Annotated[
        int,
        typer.Option(help="Consumers' max_retries, as `wrangler queues consumer http add`."),
    ] = 3,
    visibility_timeout_secs: Annotated[
        float, typer.Option(help="Consumers' default visibility timeout in seconds.")
    ] = 30.0,
    retry_delay_secs: Annotated[
        int, typer.Option(help="Consumers' default delay before a retried message returns.")
    ] = 0,
) -> None:
    """Serve the local Cloudflare emulator (Queues pull API and the Worker protocol)."""
    from flowcraft_puller.emulator.app import EmulatorConfig
    from flowcraft_puller.emulator.server import EmulatorStartError, serve

    configure_logging("info", "auto")
    try:
        config = EmulatorConfig(
            host=host,
            port=port,
            state_path=state,
            token=token,
            secret=secret,
            max_retries=message_retries,
            visibility_timeout_ms=round(visibility_timeout_secs * 1000),
            retry_delay_seconds=retry_delay_secs,
        )
    except ValidationError as exc:
        _fail(f"invalid emulator option: {_describe_options(exc)}")
    try:
        serve(config)
    except EmulatorStartError as exc:
        _fail(str(exc), EXIT_RUN_FAILED)


def _describe_options(exc: ValidationError) -> str:
    """Pydantic's errors on :class:`EmulatorConfig` as command-line options."""
    options = {
        "state_path": "--state",
        "max_retries": "--message-retries",
        "visibility_timeout_ms": "--visibility-timeout-secs",
        "retry_delay_seconds": "--retry-delay-secs",
    }
    return "; ".join(
        f"{options.get(str(e['loc'][0]), '--' + str(e['loc'][0]).replace('_', '-'))}: {e['msg']}"
        for e in exc.errors()
    )


@app.command()
def start(
    blueprint_id: Annotated[str, typer.Argument(help="Id of a loaded blueprint.")],
    config: ConfigOption = None,
    context: Annotated[str, typer.Option(help="Initial context: JSON or @file.")] = "{}",
    run_id: Annotated[str | None, typer.Option(help="Run id (default: a random one).")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Follow the run until it settles.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Start a run of a blueprint."""
    loaded = _config(config)
    _quiet_logs(loaded)
    workflows = _workflows(loaded)
    initial = _json_argument(context, "--context")
    if not isinstance(initial, dict):
        _fail("--context must be a JSON object")

    async def action(store: HttpRunStore) -> RunView | str:
        adapter = _adapter(store, dict(workflows.blueprints))
        started = await adapter.start_run(blueprint_id, initial, run_id=run_id)
        if not wait:
            return started
        tty = sys.stdout.isatty() and not as_json
        return await follow_run(store, started, out=sys.stderr if tty else None)

    try:
        outcome = _with_store(loaded, action)
    except UnknownBlueprint as exc:
        _fail(str(exc))
    if isinstance(outcome, str):
        _print_json({"runId": outcome}) if as_json else typer.echo(outcome)
        return
    _print_json(_summary(outcome))
    raise typer.Exit(_exit_for(outcome))


@app.command()
def status(
    run_id: Annotated[str, typer.Argument(help="The run's id.")],
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show a run's status, progress and outputs."""
    loaded = _config(config)
    _quiet_logs(loaded)
    view = _with_store(loaded, lambda store: store.get(run_id))
    if as_json:
        _print_json(view.model_dump(mode="json", by_alias=True))
    else:
        typer.echo(progress_line(view))
        if view.reason:
            typer.echo(f"reason: {view.reason}")
        for node, awaiting in view.awaiting.items():
            typer.echo(f"awaiting {node}: {json.dumps(awaiting.details)}")
        for node, output in view.outputs.items():
            typer.echo(f"  {node}: {json.dumps(output)}")
    raise typer.Exit(_exit_for(view))


@app.command()
def resume(
    run_id: Annotated[str, typer.Argument(help="The run's id.")],
    action: Annotated[str | None, typer.Option(help="The action routing continues with.")] = None,
    output: Annotated[str | None, typer.Option(help="The node's output: JSON or @file.")] = None,
    node: Annotated[str | None, typer.Option(help="Resume only this awaiting node.")] = None,
    config: ConfigOption = None,
) -> None:
    """Resume a run awaiting a wait node (human in the loop)."""
    loaded = _config(config)
    _quiet_logs(loaded)
    value = None if output is None else _json_argument(output, "--output")

    response = _with_store(
        loaded,
        lambda store: _adapter(store).resume_with_action(run_id, action, value, node_id=node),
    )
    _print_json(response.model_dump(mode="json", by_alias=True))


@app.command()
def cancel(
    run_id: Annotated[str, typer.Argument(help="The run's id.")],
    reason: Annotated[str | None, typer.Option(help="Why (recorded as the run's reason).")] = None,
    config: ConfigOption = None,
) -> None:
    """Cancel a run (and its subflows); nodes stop being released."""
    loaded = _config(config)
    _quiet_logs(loaded)
    response = _with_store(loaded, lambda store: _adapter(store).cancel(run_id, reason))
    _print_json(response.model_dump(mode="json", by_alias=True))


@app.command()
def reconcile(
    run_id: Annotated[str | None, typer.Argument(help="The run to repair.")] = None,
    stalled: Annotated[
        bool, typer.Option(help="Repair every running run not updated lately.")
    ] = False,
    older_than: Annotated[
        str, typer.Option(help="With --stalled: idle for at least this long.")
    ] = "10m",
    config: ConfigOption = None,
) -> None:
    """Re-queue the jobs of released nodes whose messages were lost (dead-lettered, purged)."""
    if (run_id is None) == (not stalled):
        _fail("give either a RUN_ID or --stalled")
    loaded = _config(config)
    _quiet_logs(loaded)
    try:
        stale_seconds = int(parse_duration(older_than))
    except ValueError as exc:
        _fail(f"--older-than: {exc}")

    async def action(store: HttpRunStore) -> dict[str, Any]:
        ids = [run_id] if run_id is not None else []
        if stalled:
            cursor = None
            while True:
                page = await store.list_runs(
                    status="running", stale_seconds=stale_seconds, cursor=cursor
                )
                ids += [r.run_id for r in page.runs]
                cursor = page.cursor
                if cursor is None:
                    break
        report = {}
        for rid in ids:
            answer = await store.reconcile(rid)
            report[rid] = [f"{n.node_id}#{n.gen}" for n in answer.requeued]
        return report

    _print_json(_with_store(loaded, action))


@app.command()
def check(
    config: ConfigOption = None,
    online: Annotated[
        bool, typer.Option(help="Also reach Cloudflare (list queues) and the Worker (/v1/health).")
    ] = False,
) -> None:
    """Validate the configuration and blueprints, and that every node's ``uses`` resolves."""
    if config is None:
        _fail("check needs --config (or FLOWCRAFT_CONFIG)")
    loaded = _config(config)
    _quiet_logs(loaded)
    workflows = _workflows(loaded)
    errors = workflows.unresolved_uses() + check_limits(loaded.settings, workflows)
    for issue in workflows.warnings(loaded.settings.daemon.evaluator):
        if not issue.path.endswith(".uses"):  # unresolved uses are errors, reported below
            typer.echo(f"warning: {issue}", err=True)
    if errors:
        _fail(f"{config}:\n  " + "\n  ".join(errors))
    if online:
        from flowcraft_puller.checks import check_online

        problems = anyio.run(check_online, loaded)
        if problems:
            _fail("\n  ".join(["online checks failed:", *problems]), EXIT_RUN_FAILED)
    ids = ", ".join(sorted(workflows.blueprints)) or "none"
    implementations = len(workflows.registry)
    typer.echo(f"ok: blueprints {ids}; {implementations} node implementation(s)")


@app.command()
def graph(
    blueprint: Annotated[
        str, typer.Argument(help="A blueprint id (from --config) or a JSON file.")
    ],
    config: ConfigOption = None,
    fmt: Annotated[GraphFormat, typer.Option("--format", "-f", help="mermaid or dot.")] = "mermaid",
) -> None:
    """Print a blueprint as a Mermaid flowchart or a Graphviz digraph."""
    path = Path(blueprint)
    if path.suffix == ".json" or path.is_file():
        try:
            loaded = parse_blueprint(path.read_bytes(), source=str(path))
        except OSError as exc:
            _fail(f"{path}: {exc.strerror}")
        except BlueprintError as exc:
            _fail(str(exc))
    else:
        workflows = _workflows(_config(config))
        if blueprint not in workflows.blueprints:
            known = ", ".join(sorted(workflows.blueprints)) or "none"
            _fail(f"no blueprint {blueprint!r} (loaded: {known})")
        loaded = workflows.blueprints[blueprint]
    typer.echo(render(loaded, fmt), nl=False)


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(__version__)


def main() -> None:
    app()
