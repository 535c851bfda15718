"""The production Worker (``worker/``) under workerd, for tests: ``node worker/scripts/serve.mjs``.

:class:`WorkerProcess` starts the Worker in Miniflare on 127.0.0.1, waits for the JSON line
``{"url": ..., "pid": ...}`` that ``serve.mjs`` prints when it is ready, and stops the whole
process group on exit. The Worker's own logs go to a temporary file whose tail is quoted when
the Worker fails to start.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Final

import anyio
import anyio.abc
import orjson
import structlog
from anyio.streams.buffered import BufferedByteReceiveStream

log = structlog.get_logger(__name__)

WORKER_DIR: Final = Path(__file__).resolve().parents[2] / "worker"
"""The Worker's npm project in a source checkout of flowcraft-puller."""

WORKER_VARS: Final = frozenset(
    {
        "QUEUE_REST_URL",
        "QUEUE_REST_TOKEN",
        "STATUS_INTERVAL_SECONDS",
        "STATUS_KEY_PREFIX",
        "RUN_RETENTION_SECONDS",
        "OUTBOX_RETRY_SECONDS",
    }
)
"""The Worker's variables besides ``SECRET`` (worker/README.md, "Configuration")."""

_LOG_TAIL_BYTES: Final = 4000
_STOP_TIMEOUT_S: Final = 10.0


class WorkerUnavailable(RuntimeError):
    """The Worker cannot be run here: node or the Worker's npm packages are missing."""


class WorkerStartError(RuntimeError):
    """The Worker process exited or stayed silent instead of reporting its URL."""


def _check_runnable(worker_dir: Path) -> str:
    """The path of ``node``, once node and the Worker's packages are known to be there."""
    node = shutil.which("node")
    if node is None:
        raise WorkerUnavailable(
            "node is not on PATH; install Node.js 20 or later to run the Worker under workerd"
        )
    if not (worker_dir / "scripts" / "serve.mjs").is_file():
        raise WorkerUnavailable(f"{worker_dir} holds no scripts/serve.mjs; is this a checkout?")
    if not (worker_dir / "node_modules" / "miniflare").is_dir():
        raise WorkerUnavailable(
            f"the Worker's npm packages are not installed; run `npm ci --prefix {worker_dir}`"
        )
    return node


class WorkerProcess:
    """The Worker served by Miniflare on 127.0.0.1; ``url`` is its origin (no ``/v1``).

    ``variables`` sets the Worker's other variables (names in :data:`WORKER_VARS`); ``port`` 0
    picks a free port; ``persist_dir`` keeps state on disk instead of in memory.
    """

    def __init__(
        self,
        *,
        secret: str,
        variables: Mapping[str, str] | None = None,
        port: int = 0,
        persist_dir: Path | None = None,
        startup_timeout_s: float = 60.0,
        worker_dir: Path = WORKER_DIR,
    ) -> None:
        unknown = sorted(set(variables or {}) - WORKER_VARS)
        if unknown:
            raise ValueError(f"unknown Worker variables {unknown}; known: {sorted(WORKER_VARS)}")
        self.secret = secret
        self.variables = dict(variables or {})
        self.port = port
        self.persist_dir = persist_dir
        self.startup_timeout_s = startup_timeout_s
        self.worker_dir = worker_dir
        self._url: str | None = None
        self._process: anyio.abc.Process | None = None
        self._log_file: IO[bytes] | None = None

    @property
    def url(self) -> str:
        """The Worker's origin, e.g. ``http://127.0.0.1:41234``."""
        if self._url is None:
            raise RuntimeError("the Worker is not running; use `async with WorkerProcess(...)`")
        return self._url

    @property
    def base_url(self) -> str:
        """The protocol's base URL: :attr:`url` + ``/v1``."""
        return f"{self.url}/v1"

    async def __aenter__(self) -> WorkerProcess:
        node = _check_runnable(self.worker_dir)
        command = [node, str(self.worker_dir / "scripts" / "serve.mjs"), "--port", str(self.port)]
        if self.persist_dir is not None:
            command += ["--persist", str(self.persist_dir)]
        env = {**os.environ, **self.variables, "SECRET": self.secret}
        self._log_file = tempfile.TemporaryFile(prefix="flowcraft-worker-")  # noqa: SIM115 (closed by _stop)
        self._process = await anyio.open_process(
            command,
            stdin=subprocess.DEVNULL,
            stderr=self._log_file,
            cwd=self.worker_dir,
            env=env,
            start_new_session=True,
        )
        try:
            self._url = await self._read_url(self._process)
        except BaseException:
            await self._stop()
            raise
        log.info("worker started", url=self._url, pid=self._process.pid)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self._stop()

    async def _read_url(self, process: anyio.abc.Process) -> str:
        assert process.stdout is not None
        stream = BufferedByteReceiveStream(process.stdout)
        try:
            with anyio.fail_after(self.startup_timeout_s):
                line = await stream.receive_until(b"\n", 65536)
        except TimeoutError as exc:
            raise WorkerStartError(
                f"the Worker did not report its URL within {self.startup_timeout_s} s;"
                f" its log ends with:\n{self._log_tail()}"
            ) from exc
        except (anyio.EndOfStream, anyio.IncompleteRead) as exc:
            raise WorkerStartError(
                "the Worker exited before reporting its URL; its log ends with:\n"
                + self._log_tail()
            ) from exc
        ready = orjson.loads(line)
        url = ready.get("url") if isinstance(ready, dict) else None
        if not isinstance(url, str):
            raise WorkerStartError(f"serve.mjs printed {line!r} instead of its URL line")
        return url

    def _log_tail(self) -> str:
        if self._log_file is None:
            return ""
        self._log_file.seek(0, os.SEEK_END)
        size = self._log_file.tell()
        self._log_file.seek(max(0, size - _LOG_TAIL_BYTES))
        return self._log_file.read().decode("utf-8", "replace")

    async def _stop(self) -> None:
        """SIGTERM the process group, then SIGKILL it if it is still there after a while."""
        process, self._process = self._process, None
        self._url = None
        if process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            with anyio.move_on_after(_STOP_TIMEOUT_S, shield=True) as waited:
                await process.wait()
            if waited.cancelled_caught:
                log.warning("worker ignored SIGTERM; killing it", pid=process.pid)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                with anyio.CancelScope(shield=True):
                    await process.wait()
            await process.aclose()
            log.info("worker stopped", pid=process.pid)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
