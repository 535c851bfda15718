"""``flowcraft-puller dev --once``: the emulator, the daemon and one example run on this machine,
then exit with the run's status."""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import time
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


def _serving_hints(dev: subprocess.Popen[str], timeout_s: float) -> list[str]:
    """The commands ``dev`` suggests once it serves, read from its stderr."""
    assert dev.stderr is not None
    deadline = time.monotonic() + timeout_s
    with selectors.DefaultSelector() as selector:
        selector.register(dev.stderr, selectors.EVENT_READ)
        lines: list[str] = []
        while time.monotonic() < deadline:
            if not selector.select(deadline - time.monotonic()):
                continue
            line = dev.stderr.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("▶ serving"):
                return [dev.stderr.readline().strip() for _ in range(2)]
    raise AssertionError("dev never said it was serving:\n" + "".join(lines))


def test_dev_suggests_commands_that_work_from_a_shell_without_the_virtualenv(
    tmp_path: Path,
) -> None:
    environment = child_environment({"PATH": os.pathsep.join(["/usr/bin", "/bin"])})
    with subprocess.Popen(
        [str(cli_executable()), "dev", "--port", "0"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env=environment,
    ) as dev:
        try:
            start, status = _serving_hints(dev, timeout_s=120)
            for hint in (start, status):
                suggested = subprocess.run(
                    hint,
                    shell=True,
                    capture_output=True,
                    text=True,
                    timeout=60,
                    cwd=tmp_path,
                    env=environment,
                    check=False,
                )
                assert suggested.returncode == 0, (hint, suggested.stderr)
        finally:
            dev.send_signal(signal.SIGINT)
            dev.wait(timeout=60)
    assert dev.returncode == 0
