"""The emulator and the daemon as real child processes on loopback, for end-to-end tests, fault
campaigns and benchmarks.

- :class:`EmulatorProcess` runs ``flowcraft-puller emulator`` on a free port (or a given one)
  and reads its queues through the admin routes (``/_emulator/...``).
- :class:`DaemonProcess` writes a TOML configuration from :class:`~flowcraft_puller.config.Settings`
  and runs ``flowcraft-puller run --config`` with the secrets in its environment, exactly as a
  systemd unit or a container would; it can be signalled, killed and started again.

Tests pair them with :class:`~flowcraft_puller.testing.notify.NotifySocket` (systemd's notify
socket) and :class:`~flowcraft_puller.testing.runs.RunClient` (starts and follows runs).

Each process appends its stdout and stderr to files in its directory (never pipes, so a chatty
process cannot block and a killed one loses nothing); :meth:`CliProcess.records` parses the JSON
log lines written since the last start. Children get a clean environment: inherited
``FLOWCRAFT*`` variables and systemd's ``NOTIFY_SOCKET``, ``WATCHDOG_*`` and
``CREDENTIALS_DIRECTORY`` are dropped, so a test run under systemd never notifies the real one.

    async with EmulatorProcess(tmp_path / "emulator") as emulator:
        daemon = DaemonProcess(
            tmp_path / "daemon",
            emulator.daemon_settings(nodes=["myapp.nodes:NODES"]),
            emulator.secrets,
            blueprints=[blueprint_json],
        )
        async with daemon, RunClient(emulator.url, emulator.secret, [blueprint_json]) as runs:
            run_ids = await runs.start_many("orders", 100)
            daemon.kill()
            await daemon.wait()
            await daemon.start()
            views = await runs.wait_terminal(run_ids)
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from secrets import token_hex, token_urlsafe
from types import TracebackType
from typing import Any, Final, Self

import anyio
import anyio.abc
import httpx

from flowcraft_puller.config import (
    CloudflareConfig,
    CoordinatorConfig,
    DaemonConfig,
    ObservabilityConfig,
    QueueConfig,
    Secrets,
    Settings,
    WorkflowsConfig,
)

LOOPBACK: Final = "127.0.0.1"
JOB_QUEUE: Final = "flowcraft-jobs"
"""The emulator's job queue (its run service sends released jobs there)."""
_DROPPED_VARIABLES: Final = (
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "CREDENTIALS_DIRECTORY",
)
_TAIL_LINES: Final = 40


class ProcessFailed(RuntimeError):
    """A child process did not start, answer or stop as expected; the message ends with the
    tail of its output."""


def cli_executable() -> Path:
    """The ``flowcraft-puller`` script of the running interpreter's environment."""
    beside = Path(sys.executable).with_name("flowcraft-puller")
    if beside.exists():
        return beside
    found = shutil.which("flowcraft-puller")
    if found is None:
        raise FileNotFoundError(
            "flowcraft-puller is not installed next to this Python; run `make deps` "
            "(pip install -e .) first"
        )
    return Path(found)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        port: int = probe.getsockname()[1]
        return port


def child_environment(
    extra: Mapping[str, str] | None = None, pythonpath: Sequence[Path] = ()
) -> dict[str, str]:
    """This process's environment without inherited daemon settings, plus ``extra``."""
    environment = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("FLOWCRAFT") and name not in _DROPPED_VARIABLES
    }
    if pythonpath:
        paths = [str(p) for p in pythonpath]
        inherited = environment.get("PYTHONPATH")
        environment["PYTHONPATH"] = os.pathsep.join([*paths, *([inherited] if inherited else [])])
    environment.update(extra or {})
    return environment


# ---- TOML ------------------------------------------------------------------------------------


def _toml_scalar(value: Any, where: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list) and not any(isinstance(item, dict) for item in value):
        return "[" + ", ".join(_toml_scalar(item, where) for item in value) + "]"
    raise TypeError(f"{where}: cannot write {type(value).__name__} values as TOML")


def _toml_table(path: str, table: Mapping[str, Any], lines: list[str]) -> None:
    scalars = {k: v for k, v in table.items() if not _is_table(v) and not _is_table_array(v)}
    if path and (scalars or not table):
        lines.append(f"[{path}]")
    lines.extend(
        f"{key} = {_toml_scalar(value, f'{path}.{key}')}" for key, value in scalars.items()
    )
    if scalars:
        lines.append("")
    for key, value in table.items():
        child = f"{path}.{key}" if path else key
        if _is_table(value):
            _toml_table(child, value, lines)
        elif _is_table_array(value):
            for item in value:
                lines.append(f"[[{child}]]")
                lines.extend(f"{k} = {_toml_scalar(v, f'{child}.{k}')}" for k, v in item.items())
                lines.append("")


def _is_table(value: Any) -> bool:
    return isinstance(value, Mapping)


def _is_table_array(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, Mapping) for v in value)


def settings_toml(settings: Settings) -> str:
    """``settings`` as a configuration file (keys left at their defaults are omitted)."""
    data = settings.model_dump(mode="json", exclude_none=True, exclude_defaults=True)
    lines: list[str] = []
    _toml_table("", data, lines)
    return "\n".join(lines)


# ---- log files ---------------------------------------------------------------------------------


class LogReader:
    """Reads the lines a process appends to a file, from an offset on, as they arrive."""

    def __init__(self, path: Path, offset: int = 0) -> None:
        self.path = path
        self._position = offset
        self._partial = b""
        self.records: list[dict[str, Any]] = []
        """The lines that are JSON objects (structlog's JSON lines), parsed."""

    def poll(self) -> None:
        """Take in what was appended since the last poll (complete lines only)."""
        if not self.path.exists():
            return
        with self.path.open("rb") as stream:
            stream.seek(self._position)
            chunk = stream.read()
        self._position += len(chunk)
        *complete, self._partial = (self._partial + chunk).split(b"\n")
        for raw in complete:
            try:
                record = json.loads(raw)
            except ValueError:
                continue
            if isinstance(record, dict):
                self.records.append(record)


def _matches(record: Mapping[str, Any], event: str, fields: Mapping[str, Any]) -> bool:
    return record.get("event") == event and all(record.get(k) == v for k, v in fields.items())


# ---- processes ---------------------------------------------------------------------------------


class CliProcess:
    """One ``flowcraft-puller`` command as a child process that can be started again after it
    exited. Subclasses say which arguments and environment it gets."""

    def __init__(self, name: str, directory: Path) -> None:
        self.name = name
        self.directory = directory
        self.stdout_path = directory / f"{name}.stdout.log"
        self.stderr_path = directory / f"{name}.stderr.log"
        self.starts = 0
        """How many times the process was spawned."""
        self._process: anyio.abc.Process | None = None
        self._log = LogReader(self.stdout_path)
        self._http: httpx.AsyncClient | None = None

    async def start(self) -> None:
        """Spawn the command and wait until it is ready for use."""
        raise NotImplementedError

    def arguments(self) -> list[str]:
        """The command's arguments after ``flowcraft-puller``."""
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        return child_environment()

    # ---- lifecycle ----------------------------------------------------------------------

    async def spawn(self) -> None:
        """Start the command (output appended to its log files); does not wait for anything."""
        if self.running:
            raise ProcessFailed(f"{self.name} is already running (pid {self.pid})")
        self.directory.mkdir(parents=True, exist_ok=True)
        offset = self.stdout_path.stat().st_size if self.stdout_path.exists() else 0
        self._log = LogReader(self.stdout_path, offset)
        with self.stdout_path.open("ab") as out, self.stderr_path.open("ab") as err:
            self._process = await anyio.open_process(
                [str(cli_executable()), *self.arguments()],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                cwd=self.directory,
                env=self.environment(),
            )
        self.starts += 1

    async def _settle_start(
        self, until_usable: Callable[[], Awaitable[None]], timeout: float, what: str
    ) -> None:
        """Wait for ``until_usable`` after a spawn; a start that fails leaves nothing running."""
        try:
            with anyio.fail_after(timeout):
                await until_usable()
        except TimeoutError:
            error = self.failure(f"was not {what} within {timeout:g}s")
            await self.stop()
            raise error from None
        except BaseException:
            await self.stop()
            raise

    @property
    def process(self) -> anyio.abc.Process:
        if self._process is None:
            raise ProcessFailed(f"{self.name} was never started")
        return self._process

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        """The exit code once the process exited (negative: killed by that signal), else None."""
        return None if self._process is None else self._process.returncode

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.returncode is None

    def send_signal(self, signum: signal.Signals) -> None:
        self.process.send_signal(signum)

    def terminate(self) -> None:
        """SIGTERM: a daemon drains, then exits."""
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL (kill -9): the process dies at once, in-flight work and all."""
        self.send_signal(signal.SIGKILL)

    async def wait(self, timeout: float = 30.0) -> int:
        """The exit code, once the process has exited; :class:`ProcessFailed` after ``timeout``."""
        try:
            with anyio.fail_after(timeout):
                code = await self.process.wait()
        except TimeoutError:
            raise self.failure(f"did not exit within {timeout:g}s") from None
        await self.process.aclose()
        return code

    async def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM and wait; SIGKILL if it outlives ``timeout``. The exit code (None if the
        process was never started). Shielded: it also cleans up in a cancelled test."""
        if self._process is None:
            return None
        with anyio.CancelScope(shield=True):
            if self.running:
                self.terminate()
                with anyio.move_on_after(timeout):
                    await self.process.wait()
                if self.running:
                    self.kill()
            await self.wait()
        return self.returncode

    def http(self) -> httpx.AsyncClient:
        """The client for this process's HTTP routes (made on first use, closed by ``aclose``)."""
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=10.0)
        return self._http

    async def __aenter__(self) -> Self:
        try:
            await self.start()
        except BaseException:
            await self.aclose()
            raise
        return self

    async def aclose(self) -> None:
        """Stop the process (if running) and release the HTTP client of this object."""
        await self.stop()
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # ---- output -------------------------------------------------------------------------

    def stdout(self) -> str:
        """Everything written to stdout, over every start."""
        return self.stdout_path.read_text("utf-8", "replace") if self.stdout_path.exists() else ""

    def stderr(self) -> str:
        """Everything written to stderr, over every start."""
        return self.stderr_path.read_text("utf-8", "replace") if self.stderr_path.exists() else ""

    def records(self) -> list[dict[str, Any]]:
        """The JSON log records written to stdout since the last start."""
        self._log.poll()
        return list(self._log.records)

    def events(self, event: str, **fields: Any) -> list[dict[str, Any]]:
        """The log records of ``event`` (with these field values) since the last start."""
        return [r for r in self.records() if _matches(r, event, fields)]

    async def wait_for_event(
        self, event: str, timeout: float = 30.0, **fields: Any
    ) -> dict[str, Any]:
        """The first record of ``event`` since the last start, waiting for it if need be."""
        try:
            with anyio.fail_after(timeout):
                while True:
                    found = self.events(event, **fields)
                    if found:
                        return found[0]
                    if not self.running:
                        raise self.failure(f"exited before logging {event!r}")
                    await anyio.sleep(0.02)
        except TimeoutError:
            raise self.failure(f"logged no {event!r} within {timeout:g}s") from None

    def failure(self, what: str) -> ProcessFailed:
        """A :class:`ProcessFailed` saying ``what`` happened, with the output's tail."""
        tail = (self.stdout().splitlines() + self.stderr().splitlines())[-_TAIL_LINES:]
        code = self.returncode
        state = "running" if code is None else f"exit code {code}"
        return ProcessFailed(
            f"{self.name} ({state}) {what}; last output:\n  " + "\n  ".join(tail or ["(none)"])
        )


class EmulatorProcess(CliProcess):
    """``flowcraft-puller emulator`` on 127.0.0.1 with a token and a secret.

    Port 0 (the default) picks a free port at the first start; later starts reuse it, so
    clients keep working across a restart. With ``state`` (a SQLite file) queues and runs
    survive a restart; without it they live only as long as the process.
    """

    def __init__(
        self,
        directory: Path,
        *,
        token: str | None = None,
        secret: str | None = None,
        state: Path | None = None,
        port: int = 0,
        options: Sequence[str] = (),
    ) -> None:
        super().__init__("emulator", directory)
        self.token = token or token_hex(16)
        """The queue API token daemons must send (``FLOWCRAFT_API_TOKEN``)."""
        self.secret = secret or token_urlsafe(24)
        """The Worker protocol secret (``FLOWCRAFT_COORDINATOR_SECRET``)."""
        self.state = state
        self.port = port
        self.options = list(options)
        """More ``flowcraft-puller emulator`` options (``--message-retries 1`` …)."""
        self.account_id = ""
        self.queue_ids: dict[str, str] = {}

    def arguments(self) -> list[str]:
        arguments = ["emulator", "--host", LOOPBACK, "--port", str(self.port)]
        if self.state is not None:
            arguments += ["--state", str(self.state)]
        return arguments + self.options

    def environment(self) -> dict[str, str]:
        return child_environment(
            {"FLOWCRAFT_EMULATOR_TOKEN": self.token, "FLOWCRAFT_EMULATOR_SECRET": self.secret}
        )

    @property
    def url(self) -> str:
        """Base URL: the Worker protocol under ``/v1``, the admin routes under ``/_emulator``."""
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def api_url(self) -> str:
        """The Cloudflare API base (``cloudflare.api_base_url``)."""
        return f"{self.url}/client/v4"

    @property
    def secrets(self) -> Secrets:
        """The secrets a daemon needs to use this emulator."""
        return Secrets(api_token=self.token, coordinator_secret=self.secret)

    def queue_id(self, name: str = JOB_QUEUE) -> str:
        return self.queue_ids[name]

    async def start(self, timeout: float = 30.0) -> None:
        """Spawn the emulator and wait until its admin routes answer."""
        await self.spawn()
        await self._settle_start(self._until_answering, timeout, "answering")

    async def _until_answering(self) -> None:
        listening = await self.wait_for_event("emulator listening")
        self.port = int(str(listening["url"]).rsplit(":", 1)[1])
        self.account_id = str(listening["account_id"])
        self.queue_ids = {str(k): str(v) for k, v in dict(listening["queues"]).items()}
        while True:
            try:
                (await self.http().get(f"{self.url}/_emulator/queues")).raise_for_status()
                return
            except httpx.TransportError:
                if not self.running:
                    raise self.failure("exited during start-up") from None
                await anyio.sleep(0.02)

    async def restart(self, timeout: float = 30.0) -> None:
        """Stop (SIGTERM) and start again on the same port."""
        await self.stop(timeout)
        await self.start(timeout)

    # ---- admin routes -------------------------------------------------------------------

    async def _call(self, method: str, path: str, body: Any = None) -> Any:
        if not self.account_id:
            raise ProcessFailed("the emulator is not started")
        response = await self.http().request(method, f"{self.url}/_emulator/{path}", json=body)
        response.raise_for_status()
        return response.json()

    async def queue(self, name: str = JOB_QUEUE, *, messages: int = 100) -> dict[str, Any]:
        """A queue's counts (``depth``, ``ready``, ``leased``, ``delayed``, ``dead_lettered``)
        and its first ``messages`` messages (``attempts``, ``visible_at_ms``, ...)."""
        described: dict[str, Any] = await self._call("GET", f"queues/{name}?messages={messages}")
        return described

    async def wait_empty(self, name: str = JOB_QUEUE, timeout: float = 15.0) -> dict[str, Any]:
        """The queue's description once it holds no message (everything acked)."""
        described: dict[str, Any] = {"depth": "?", "messages": []}
        try:
            with anyio.fail_after(timeout):
                while True:
                    described = await self.queue(name, messages=3)
                    if described["depth"] == 0:
                        return described
                    await anyio.sleep(0.05)
        except TimeoutError:
            raise self.failure(
                f"queue {name} still holds {described['depth']} message(s) after {timeout:g}s: "
                f"{described['messages']}"
            ) from None

    async def now_ms(self) -> int:
        """The emulator's clock (the time base of ``visible_at_ms`` and ``lease_until_ms``)."""
        clock = await self._call("GET", "clock")
        return int(clock["now_ms"])

    async def stats(self) -> dict[str, Any]:
        """Requests per route key, injected faults, and broker counters."""
        stats: dict[str, Any] = await self._call("GET", "stats")
        return stats

    async def set_faults(self, plan: Mapping[str, Any]) -> None:
        """Put a fault plan in force (``{"routes": {"pull": {"error_503_rate": 1.0}}}``);
        ``{}`` clears it."""
        await self._call("POST", "faults", dict(plan))

    async def expire_leases(self, name: str = JOB_QUEUE) -> int:
        """End every lease of the queue now (each counts as a delivery)."""
        expired = await self._call("POST", f"queues/{name}/expire-leases")
        return int(expired["expired"])

    # ---- daemon configuration -----------------------------------------------------------

    def daemon_settings(
        self,
        *,
        nodes: Sequence[str] = (),
        blueprints: Sequence[str] = ("blueprints/*.json",),
        visibility_timeout: float = 30.0,
        max_deliveries: int = 3,
        daemon: DaemonConfig | None = None,
        observability: ObservabilityConfig | None = None,
    ) -> Settings:
        """Settings of a daemon consuming this emulator's job queue.

        Defaults suit tests: idle back-off 10–100 ms, short ack linger, JSON logs at info.
        """
        return Settings(
            cloudflare=CloudflareConfig(account_id=self.account_id, api_base_url=self.api_url),
            coordinator=CoordinatorConfig(url=self.url),
            queues=[
                QueueConfig(
                    name=JOB_QUEUE,
                    id=self.queue_id(JOB_QUEUE),
                    visibility_timeout=visibility_timeout,
                    max_deliveries=max_deliveries,
                )
            ],
            daemon=daemon
            or DaemonConfig(idle_backoff_min=0.01, idle_backoff_max=0.1, ack_linger=0.005),
            workflows=WorkflowsConfig(blueprints=list(blueprints), nodes=list(nodes)),
            observability=observability or ObservabilityConfig(log_format="json"),
        )


class DaemonProcess(CliProcess):
    """``flowcraft-puller run --config DIRECTORY/config.toml`` with the secrets in its environment.

    ``blueprints`` (flowcraft JSON objects) are written to ``DIRECTORY/blueprints/<id>.json``,
    which the default ``workflows.blueprints = ["blueprints/*.json"]`` picks up. The metrics and
    probe server listens on a free port given through ``FLOWCRAFT__OBSERVABILITY__LISTEN`` (the
    same port on every start). ``pythonpath`` makes node modules importable; ``environment``
    adds variables (``NOTIFY_SOCKET``, ...).
    """

    def __init__(
        self,
        directory: Path,
        settings: Settings,
        secrets: Secrets,
        *,
        blueprints: Iterable[Mapping[str, Any]] = (),
        environment: Mapping[str, str] | None = None,
        pythonpath: Sequence[Path] = (),
        name: str = "daemon",
    ) -> None:
        super().__init__(name, directory)
        self.settings = settings
        """The settings last written to the configuration file."""
        self.secrets = secrets
        self.extra_environment = dict(environment or {})
        self.pythonpath = list(pythonpath)
        self.health_port = free_port()
        self.config_path = directory / "config.toml"
        self.write_config(settings)
        for blueprint in blueprints:
            self.add_blueprint(blueprint)

    @property
    def health_url(self) -> str:
        """Base URL of ``/metrics``, ``/livez`` and ``/readyz``."""
        return f"http://{LOOPBACK}:{self.health_port}"

    def write_config(self, settings: Settings) -> None:
        """(Re)write the configuration file; a running daemon reads it again on SIGHUP."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(settings_toml(settings))
        self.settings = settings

    def add_blueprint(self, blueprint: Mapping[str, Any]) -> Path:
        """Write a blueprint file next to the configuration; a running daemon loads it on
        SIGHUP."""
        folder = self.directory / "blueprints"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{blueprint['id']}.json"
        path.write_text(json.dumps(blueprint, indent=2))
        return path

    def arguments(self) -> list[str]:
        return ["run", "--config", str(self.config_path)]

    def environment(self) -> dict[str, str]:
        variables = {
            "FLOWCRAFT__OBSERVABILITY__LISTEN": f"{LOOPBACK}:{self.health_port}",
            **self.extra_environment,
        }
        if self.secrets.api_token is not None:
            variables["FLOWCRAFT_API_TOKEN"] = self.secrets.api_token
        if self.secrets.coordinator_secret is not None:
            variables["FLOWCRAFT_COORDINATOR_SECRET"] = self.secrets.coordinator_secret
        return child_environment(variables, self.pythonpath)

    async def start(self, *, ready: bool = True, timeout: float = 30.0) -> None:
        """Spawn the daemon; with ``ready``, wait until ``/readyz`` answers 200 (it has pulled).
        A start that fails leaves nothing running."""
        await self.spawn()
        if ready:
            await self._settle_start(self._until_ready, timeout, "ready")

    async def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait until ``/readyz`` answers 200; :class:`ProcessFailed` if the daemon exits first
        or ``timeout`` passes (the process is left as it is)."""
        try:
            with anyio.fail_after(timeout):
                await self._until_ready()
        except TimeoutError:
            raise self.failure(f"was not ready within {timeout:g}s") from None

    async def _until_ready(self) -> None:
        while await self.probe("/readyz") != 200:
            if not self.running:
                raise self.failure("exited before it was ready")
            await anyio.sleep(0.02)

    async def probe(self, path: str) -> int | None:
        """The HTTP status of ``GET path`` on the probe server; None when nothing answers."""
        try:
            return (await self.http().get(self.health_url + path)).status_code
        except httpx.TransportError:
            return None

    async def metrics(self) -> str:
        """The Prometheus text exposition of ``/metrics``."""
        response = await self.http().get(self.health_url + "/metrics")
        response.raise_for_status()
        return response.text
