"""Configuration errors stop ``flowcraft-puller run`` and ``check`` with exit code 2 and one
clear message naming the file and the key — the real CLI, as a subprocess."""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from flowcraft_puller.testing.processes import child_environment, cli_executable

SECRET = "hunter2-in-the-toml"
TOKEN = "token-from-the-environment"

VALID = """\
[cloudflare]
account_id = "0123456789abcdef0123456789abcdef"
api_base_url = "http://127.0.0.1:9/client/v4"

[coordinator]
url = "http://127.0.0.1:9"
{coordinator}
[[queues]]
name = "flowcraft-jobs"
id = "5cf0d39b7c675fd1a98c4f15d25d9237"

[daemon]
{daemon}
[workflows]
blueprints = ["blueprints/*.json"]
"""

ORDERS = {
    "id": "orders",
    "nodes": [{"id": "load", "uses": "load_order"}, {"id": "charge", "uses": "charge_card"}],
    "edges": [{"source": "load", "target": "charge"}],
}


@dataclass(frozen=True)
class Case:
    """A broken configuration and the one error line (a regular expression) it must produce."""

    text: str | None
    """The file's content; None: the file does not exist."""
    message: str


CASES = {
    "missing file": Case(None, r"{path}: config file not found"),
    "bad toml": Case(
        "[daemon\nconcurrency = 8\n",
        r"{path}: not valid TOML: Expected '\]' at the end of a table declaration \(at line 1, "
        r"column 8\)",
    ),
    "unknown key": Case(
        VALID.format(coordinator="", daemon="concurrancy = 8\n"),
        r"{path}: daemon\.concurrancy: unknown key",
    ),
    "bad duration": Case(
        VALID.format(coordinator="", daemon='drain_timeout = "soon"\n'),
        r"{path}: daemon\.drain_timeout: 'soon' is not a duration \(use e\.g\. .*\)",
    ),
    "secret in the toml": Case(
        VALID.format(coordinator=f'secret = "{SECRET}"\n', daemon=""),
        r"{path}: coordinator\.secret: secrets must not be written in the config file; set "
        r"FLOWCRAFT_COORDINATOR_SECRET, point coordinator\.secret_file at a file, or use systemd "
        r"LoadCredential=coordinator-secret:\.\.\.",
    ),
    "unresolvable uses": Case(
        VALID.format(coordinator="", daemon=""),
        r"{path}:\n  orders: nodes\[0\]\.uses: no implementation for 'load_order'\n"
        r"  orders: nodes\[1\]\.uses: no implementation for 'charge_card'",
    ),
}

COMMANDS = ("run", "check")


@dataclass(frozen=True)
class Outcome:
    path: Path
    code: int
    stdout: str
    stderr: str


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Outcome]:
    """Every case under every command, the processes running side by side."""
    environment = child_environment(
        {"FLOWCRAFT_API_TOKEN": TOKEN, "FLOWCRAFT_COORDINATOR_SECRET": "from-the-environment"}
    )
    running = {}
    for name, case in CASES.items():
        directory = tmp_path_factory.mktemp(name.replace(" ", "-"))
        path = directory / "config.toml"
        if case.text is not None:
            path.write_text(case.text)
            (directory / "blueprints").mkdir()
            (directory / "blueprints" / "orders.json").write_text(json.dumps(ORDERS))
        for command in COMMANDS:
            process = subprocess.Popen(
                [str(cli_executable()), command, "--config", str(path)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                stdin=subprocess.DEVNULL,
                env=environment,
                text=True,
            )
            running[(command, name)] = (path, process)
    finished = {}
    try:
        for key, (path, process) in running.items():
            stdout, stderr = process.communicate(timeout=60)
            finished[key] = Outcome(path, process.returncode, stdout, stderr)
    finally:
        for _, process in running.values():
            process.kill()
            process.wait()
    return finished


PARAMETERS = [
    pytest.param(command, name, id=f"{command}-{name.replace(' ', '-')}")
    for command in COMMANDS
    for name in CASES
]


@pytest.mark.parametrize(("command", "case"), PARAMETERS)
def test_config_error_exits_2_with_one_message_naming_file_and_key(
    outcomes: dict[tuple[str, str], Outcome], command: str, case: str
) -> None:
    outcome = outcomes[(command, case)]
    expected = "error: " + CASES[case].message.format(path=re.escape(str(outcome.path)))
    assert outcome.code == 2
    assert outcome.stdout == ""
    assert re.fullmatch(expected + r"\n", outcome.stderr), outcome.stderr


@pytest.mark.parametrize("command", COMMANDS)
def test_a_secret_in_the_toml_is_not_repeated_in_the_error(
    outcomes: dict[tuple[str, str], Outcome], command: str
) -> None:
    outcome = outcomes[(command, "secret in the toml")]
    assert outcome.code == 2
    assert SECRET not in outcome.stdout + outcome.stderr
