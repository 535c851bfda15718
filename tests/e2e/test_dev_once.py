"""``flowcraft-puller dev --once``: the emulator, the daemon and one example run on this machine,
then exit with the run's status."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from flowcraft_puller.testing.processes import child_environment, cli_executable
from tests.e2e.workflows import example_problems


def test_dev_once_runs_the_example_to_completion_and_prints_its_summary(tmp_path: Path) -> None:
    finished = subprocess.run(
        [str(cli_executable()), "dev", "--once", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=child_environment(),
        check=False,
    )

    assert finished.returncode == 0, finished.stderr
    summary = json.loads(finished.stdout)
    assert (summary["status"], summary["reason"]) == ("completed", None)
    assert example_problems(summary["runId"], summary["outputs"]) == []
