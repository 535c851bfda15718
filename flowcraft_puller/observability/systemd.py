"""The systemd notify protocol (``sd_notify``) without dependencies: readiness, status, stop and
reload notices, and a watchdog pinged from the event loop (a blocked loop stops the pings).

Outside systemd (no ``NOTIFY_SOCKET``) every method is a no-op that returns False.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping

import anyio
import structlog

from flowcraft_puller.observability.health import HealthState

log = structlog.get_logger(__name__)


def _socket_address(value: str | None) -> str | None:
    """``/path`` as is, ``@name`` as the abstract address ``\\0name``; other forms → None."""
    if not value:
        return None
    if value.startswith("@"):
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None


def _watchdog_seconds(environ: Mapping[str, str]) -> float | None:
    usec = environ.get("WATCHDOG_USEC", "")
    pid = environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and (not pid.isdigit() or int(pid) != os.getpid()):
        return None
    return int(usec) / 1_000_000


class SystemdNotifier:
    """Sends ``KEY=VALUE`` datagrams to ``$NOTIFY_SOCKET``.

    Sends never raise: the first failure is logged, later ones are not.
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        raw = env.get("NOTIFY_SOCKET")
        self._address = _socket_address(raw)
        if raw and self._address is None:
            log.warning(
                "NOTIFY_SOCKET is neither a path nor an @abstract name; not notifying systemd",
                notify_socket=raw,
            )
        self._watchdog = _watchdog_seconds(env) if self._address is not None else None
        self._socket: socket.socket | None = None
        self._failure_logged = False
        self._stall_logged = False

    @property
    def enabled(self) -> bool:
        """True when running under systemd with a usable notify socket."""
        return self._address is not None

    def notify(self, *fields: str) -> bool:
        """Send ``KEY=VALUE`` fields in one datagram; True if it was sent."""
        if self._address is None:
            return False
        try:
            if self._socket is None:
                self._socket = socket.socket(
                    socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                )
            self._socket.sendto("\n".join(fields).encode(), self._address)
        except OSError as exc:
            if not self._failure_logged:
                self._failure_logged = True
                log.warning(
                    "cannot notify systemd; further failures are not logged", error=str(exc)
                )
            return False
        return True

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def ready(self) -> bool:
        return self.notify("READY=1")

    def status(self, text: str) -> bool:
        """Set the one-line status shown by ``systemctl status``."""
        return self.notify("STATUS=" + " ".join(text.splitlines()))

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")

    def reloading(self) -> bool:
        """Announce a reload; ``MONOTONIC_USEC`` makes it valid for ``Type=notify-reload``."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def ready_after_reload(self) -> bool:
        return self.notify("READY=1")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for ``seconds`` more before systemd's start/stop timeout fires (long drains)."""
        return self.notify(f"EXTEND_TIMEOUT_USEC={max(0, round(seconds * 1_000_000))}")

    def watchdog_interval(self) -> float | None:
        """``WATCHDOG_USEC`` in seconds, if the watchdog is on and meant for this process."""
        return self._watchdog

    async def run_watchdog(self, health: HealthState | None = None) -> bool:
        """Ping ``WATCHDOG=1`` every half interval until cancelled; False at once without one.

        With ``health``, pings are withheld while the supervisor's heartbeat is stale, so
        systemd restarts a daemon whose supervisor hangs while the loop still turns.
        """
        interval = self._watchdog
        if interval is None:
            return False
        while True:
            if health is None or health.heartbeat_fresh():
                self._stall_logged = False
                self.watchdog()
            elif not self._stall_logged:
                self._stall_logged = True
                log.error("supervisor heartbeat is stale; withholding systemd watchdog pings")
            await anyio.sleep(interval / 2)
