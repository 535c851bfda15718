"""``python -m flowcraft_puller.emulator``: ``flowcraft-puller emulator``, under another name."""

from __future__ import annotations

import typer

from flowcraft_puller.cli import emulator

if __name__ == "__main__":
    typer.run(emulator)
