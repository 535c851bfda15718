"""The daemon started exactly as its systemd unit starts it — the unit's ExecStart (specifiers
expanded), its Environment=, its credentials and the variables systemd adds (NOTIFY_SOCKET,
WATCHDOG_USEC, WATCHDOG_PID) — speaks the notify protocol systemd expects from a Type=notify,
NotifyAccess=main service, and exits 0 within TimeoutStopSec of its KillSignal.

The notify socket is a real AF_UNIX datagram socket at a filesystem path, as systemd's is, with
SO_PASSCRED on so every message's sender PID is checked against the main PID.
"""

from __future__ import annotations

import shlex
import shutil
import signal
import socket
import struct
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import pytest

from flowcraft_puller.emulator.app import EmulatorConfig
from flowcraft_puller.emulator.server import EmulatorServer
from tests.deploy.unit_files import (
    REPO,
    SYSTEMD_DIR,
    UNITS,
    UnitFile,
    credentials,
    environment,
    expand_specifiers,
    parse_unit,
    seconds,
)

TOKEN = "notify-test-token"
SECRET = "notify-test-secret"
QUEUE = "flowcraft-jobs"
INSTANCE = "example"
SECRET_VALUES = {"api-token": TOKEN, "coordinator-secret": SECRET}
_CREDENTIALS = struct.Struct("3i")


@dataclass
class Notifications:
    """Datagrams received on the notify socket, each with the PID that sent it."""

    sock: socket.socket
    received: list[tuple[int, dict[str, str]]] = field(default_factory=list)

    async def until(self, key: str, value: str | None, timeout: float) -> None:
        """Receive until a message sets ``key=value`` (or ``key`` to anything, for None)."""
        with anyio.fail_after(timeout):
            while not any(self._sets(fields, key, value) for _, fields in self.received):
                await anyio.wait_readable(self.sock)
                data, ancillary, _, _ = self.sock.recvmsg(
                    4096, socket.CMSG_SPACE(_CREDENTIALS.size)
                )
                pid = next(
                    _CREDENTIALS.unpack(payload[: _CREDENTIALS.size])[0]
                    for level, kind, payload in ancillary
                    if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS
                )
                lines = data.decode().split("\n")
                self.received.append((pid, dict(line.partition("=")[::2] for line in lines)))

    def order_of(self, key: str, value: str) -> int:
        return next(i for i, (_, f) in enumerate(self.received) if self._sets(f, key, value))

    @staticmethod
    def _sets(fields: dict[str, str], key: str, value: str | None) -> bool:
        return key in fields and (value is None or fields[key] == value)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path: AF_UNIX socket paths are limited to 107 bytes."""
    with tempfile.TemporaryDirectory(prefix="fp-notify-") as name:
        yield Path(name)


def _write_service_files(
    unit: UnitFile, etc: Path, emulator: EmulatorServer
) -> tuple[Path, dict[str, str]]:
    """The configuration file ExecStart names and the credentials LoadCredential= loads."""
    specifiers = {"E": str(etc), "i": INSTANCE}
    argv = shlex.split(expand_specifiers(unit.service("ExecStart"), specifiers))
    config_path = Path(argv[argv.index("--config") + 1])
    config_path.parent.mkdir(parents=True, exist_ok=True)
    (config_path.parent / "nodes.py").symlink_to(REPO / "examples" / "nodes.py")
    config_path.write_text(
        f"""
[cloudflare]
account_id = "{emulator.account_id}"
api_base_url = "{emulator.api_url}"

[coordinator]
url = "{emulator.url}"

[[queues]]
name = "{QUEUE}"
id = "{emulator.queue_id(QUEUE)}"

[daemon]
idle_backoff_max = "200ms"

[workflows]
blueprints = ["{REPO / "examples" / "blueprints"}/*.json"]
nodes = ["nodes:NODES"]

[observability]
listen = "127.0.0.1:0"
"""
    )
    loaded = {
        name: Path(expand_specifiers(path, specifiers)) for name, path in credentials(unit).items()
    }
    for name, source in loaded.items():
        source.write_text(SECRET_VALUES[name] + "\n")
        source.chmod(0o600)
    return config_path, {name: str(path) for name, path in loaded.items()}


def _service_command(unit: UnitFile, etc: Path) -> list[str]:
    """ExecStart with the installed entry point in place of the unit's absolute path, started
    through a shell that sets WATCHDOG_PID to its own PID and execs (so the PID is the main's).
    """
    argv = shlex.split(expand_specifiers(unit.service("ExecStart"), {"E": str(etc), "i": INSTANCE}))
    assert argv[0].startswith("/"), "ExecStart must name the daemon by absolute path"
    installed = shutil.which(Path(argv[0]).name, path=str(Path(sys.executable).parent))
    assert installed is not None, f"{Path(argv[0]).name} is not installed next to {sys.executable}"
    return ["/bin/sh", "-c", 'export WATCHDOG_PID=$$; exec "$0" "$@"', installed, *argv[1:]]


def _service_environment(
    unit: UnitFile, etc: Path, runtime: Path, loaded: dict[str, str]
) -> dict[str, str]:
    """What systemd puts in the service's environment, and nothing from the test's."""
    env = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "INVOCATION_ID": "0" * 32,
        "NOTIFY_SOCKET": str(runtime / "notify"),
        "WATCHDOG_USEC": str(int(seconds(unit.service("WatchdogSec")) * 1_000_000)),
        **environment(unit),
    }
    configuration = unit.values("Service", "ConfigurationDirectory")
    if configuration:
        directory = expand_specifiers(configuration[-1], {"i": INSTANCE})
        env["CONFIGURATION_DIRECTORY"] = str(etc / directory)
    if loaded:
        credentials_dir = runtime / "credentials"
        credentials_dir.mkdir(mode=0o700)
        for name, source in loaded.items():
            shutil.copyfile(source, credentials_dir / name)
        env["CREDENTIALS_DIRECTORY"] = str(credentials_dir)
    return env


@pytest.mark.anyio
@pytest.mark.parametrize("unit_name", UNITS)
async def test_daemon_started_as_the_unit_notifies_ready_watchdog_and_stopping(
    unit_name: str, short_dir: Path
) -> None:
    unit = parse_unit(SYSTEMD_DIR / unit_name)
    assert unit.service("Type") == "notify"
    etc, runtime = short_dir / "etc", short_dir / "run"
    runtime.mkdir()
    log_path = short_dir / "daemon.log"
    kill_signal = signal.Signals[unit.service("KillSignal")]
    stop_timeout = seconds(unit.service("TimeoutStopSec"))

    emulator_config = EmulatorConfig(port=0, token=TOKEN, secret=SECRET)
    async with EmulatorServer(emulator_config) as emulator:
        _, loaded = _write_service_files(unit, etc, emulator)
        env = _service_environment(unit, etc, runtime, loaded)
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock, log_path.open("wb") as log:
            sock.bind(env["NOTIFY_SOCKET"])
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            notifications = Notifications(sock)
            process = await anyio.open_process(
                _service_command(unit, etc), env=env, stdout=log, stderr=log, cwd="/"
            )
            try:
                await notifications.until("READY", "1", timeout=30)
                await notifications.until("WATCHDOG", "1", timeout=30)
                await notifications.until("STATUS", None, timeout=30)
                process.send_signal(kill_signal)
                await notifications.until("STOPPING", "1", timeout=stop_timeout)
                with anyio.fail_after(stop_timeout):
                    code = await process.wait()
            finally:
                if process.returncode is None:
                    process.kill()
                    await process.wait()
    output = log_path.read_text(errors="replace")
    assert code == 0, output
    assert {pid for pid, _ in notifications.received} == {process.pid}, output
    assert notifications.order_of("READY", "1") < notifications.order_of("STOPPING", "1")
    assert all(value not in output for value in SECRET_VALUES.values())
