"""A stand-in for systemd's notify socket that records what a daemon sends (``sd_notify``)."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from dataclasses import dataclass
from types import TracebackType
from typing import Self

import anyio


@dataclass(frozen=True, slots=True)
class Notification:
    """One ``sd_notify`` datagram: ``KEY=VALUE`` fields, and when it arrived (monotonic)."""

    at: float
    fields: dict[str, str]


class NotifySocket:
    """An abstract ``AF_UNIX`` datagram socket in place of systemd's ``$NOTIFY_SOCKET``;
    a thread records every datagram. ``with NotifySocket() as notify:``."""

    def __init__(self) -> None:
        self.name = f"flowcraft-test-{uuid.uuid4().hex}"
        self._socket: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._closing = threading.Event()
        self._received: list[Notification] = []

    @property
    def address(self) -> str:
        """The ``NOTIFY_SOCKET`` value (``@name``: an abstract socket)."""
        return "@" + self.name

    def environment(self, watchdog_usec: int | None = None) -> dict[str, str]:
        """The variables systemd would set for a ``Type=notify`` unit (with ``WatchdogSec=``)."""
        variables = {"NOTIFY_SOCKET": self.address}
        if watchdog_usec is not None:
            variables["WATCHDOG_USEC"] = str(watchdog_usec)
        return variables

    def __enter__(self) -> Self:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind("\0" + self.name)
        sock.settimeout(0.05)
        self._socket = sock
        self._thread = threading.Thread(target=self._receive, name=self.name, daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._closing.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._socket is not None:
            self._socket.close()

    def _receive(self) -> None:
        assert self._socket is not None
        while not self._closing.is_set():
            try:
                data = self._socket.recv(65536)
            except TimeoutError:
                continue
            fields = {}
            for line in data.decode("utf-8", "replace").splitlines():
                key, _, value = line.partition("=")
                fields[key] = value
            self._received.append(Notification(time.monotonic(), fields))

    @property
    def received(self) -> list[Notification]:
        """Every datagram so far, oldest first."""
        return list(self._received)

    def having(self, key: str, value: str | None = None) -> list[Notification]:
        """The datagrams carrying ``key`` (with ``value``, if given)."""
        return [
            n
            for n in self.received
            if key in n.fields and (value is None or n.fields[key] == value)
        ]

    async def wait_for(
        self, key: str, value: str | None = None, *, timeout: float = 10.0
    ) -> Notification:
        """The first datagram carrying ``key`` (= ``value``), waiting for it if need be."""
        with anyio.fail_after(timeout):
            while True:
                found = self.having(key, value)
                if found:
                    return found[0]
                await anyio.sleep(0.02)
