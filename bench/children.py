"""Running a benchmark child process (``python -m bench.<module> ... --out FILE``) and reading
the JSON figures it writes."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anyio

from bench.cluster import ROOT
from flowcraft_puller.testing.processes import child_environment


class ChildFailed(RuntimeError):
    """A benchmark child process exited with an error; the message carries its output."""


async def run_child(
    module: str,
    arguments: list[str],
    out: Path,
    *,
    environment: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Run ``python -m <module> <arguments> --out <out>`` to completion; its JSON figures."""
    command = [sys.executable, "-m", module, *arguments, "--out", str(out)]
    result = await anyio.run_process(
        command, check=False, cwd=ROOT, env=child_environment(environment, pythonpath=[ROOT])
    )
    written = anyio.Path(out)
    if result.returncode != 0 or not await written.exists():
        output = (result.stdout + result.stderr).decode("utf-8", "replace")[-4000:]
        raise ChildFailed(f"{module} exited with {result.returncode}:\n{output}")
    figures: dict[str, Any] = json.loads(await written.read_text())
    return figures
