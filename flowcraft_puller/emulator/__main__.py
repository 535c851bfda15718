"""``python -m flowcraft_puller.emulator``: serve the emulator until interrupted."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import structlog
import typer
from pydantic import ValidationError

from flowcraft_puller.emulator.server import EmulatorStartError, run_emulator
from flowcraft_puller.observability.logging import configure_logging

log = structlog.get_logger(__name__)

app = typer.Typer(add_completion=False, help="Serve the local Cloudflare Queues + Worker emulator.")


@app.command()
def main(
    host: Annotated[str, typer.Option(help="Address to bind (keep it on loopback).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to bind; 0 picks a free one.")] = 8787,
    state: Annotated[
        Path | None, typer.Option(help="SQLite file that keeps queues and runs across restarts.")
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(
            envvar="FLOWCRAFT_EMULATOR_TOKEN",
            help="Queue API token clients must send; any well-formed token if unset.",
        ),
    ] = None,
    secret: Annotated[
        str | None,
        typer.Option(envvar="FLOWCRAFT_EMULATOR_SECRET", help="Worker protocol (/v1) secret."),
    ] = None,
) -> None:
    """Serve the emulator."""
    configure_logging("info", "auto")
    try:
        run_emulator(host, port, state, token, secret)
    except (EmulatorStartError, ValidationError) as exc:
        log.error("the emulator cannot start", error=str(exc))
        raise typer.Exit(code=1) from exc


if __name__ == "__main__":
    app()
