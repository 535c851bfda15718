"""The systemd notify protocol, received on real AF_UNIX datagram sockets bound by the tests."""

from __future__ import annotations

import itertools
import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
import structlog

from flowcraft_puller.observability.health import HealthState
from flowcraft_puller.observability.systemd import SystemdNotifier


@pytest.fixture
def notify_socket(monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """An abstract datagram socket playing systemd, named in ``NOTIFY_SOCKET``."""
    name = f"flowcraft-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    try:
        yield sock
    finally:
        sock.close()


async def receive(sock: socket.socket, timeout: float = 5.0) -> str:
    with anyio.fail_after(timeout):
        await anyio.wait_readable(sock)
    return sock.recv(4096).decode()


def pending(sock: socket.socket) -> list[str]:
    """Datagrams already waiting on the socket."""
    messages = []
    while True:
        try:
            messages.append(sock.recv(4096).decode())
        except BlockingIOError:
            return messages


@pytest.mark.anyio
async def test_ready_status_and_stopping_arrive_as_datagrams(notify_socket: socket.socket) -> None:
    notifier = SystemdNotifier()
    assert notifier.enabled

    assert notifier.ready()
    assert notifier.status("consuming\n7 in flight")
    assert notifier.stopping()

    assert await receive(notify_socket) == "READY=1"
    assert await receive(notify_socket) == "STATUS=consuming 7 in flight"
    assert await receive(notify_socket) == "STOPPING=1"
    notifier.close()


@pytest.mark.anyio
async def test_reloading_sends_the_monotonic_clock_in_microseconds(
    notify_socket: socket.socket,
) -> None:
    notifier = SystemdNotifier()
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert notifier.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert notifier.ready_after_reload()

    lines = (await receive(notify_socket)).split("\n")
    assert lines[0] == "RELOADING=1"
    key, _, value = lines[1].partition("=")
    assert key == "MONOTONIC_USEC"
    assert before <= int(value) <= after
    assert await receive(notify_socket) == "READY=1"
    notifier.close()


@pytest.mark.anyio
async def test_extend_timeout_is_sent_in_microseconds(notify_socket: socket.socket) -> None:
    notifier = SystemdNotifier()
    assert notifier.extend_timeout(2.5)
    assert await receive(notify_socket) == "EXTEND_TIMEOUT_USEC=2500000"
    notifier.close()


@pytest.mark.anyio
async def test_a_filesystem_socket_path_is_supported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        notifier = SystemdNotifier()
        assert notifier.watchdog()
        assert await receive(sock) == "WATCHDOG=1"
        notifier.close()


@pytest.mark.anyio
async def test_outside_systemd_every_call_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    notifier = SystemdNotifier()

    assert not notifier.enabled
    assert not notifier.ready()
    assert not notifier.status("idle")
    assert not notifier.reloading()
    assert not notifier.watchdog()
    assert notifier.watchdog_interval() is None
    assert await notifier.run_watchdog() is False


def test_unsupported_socket_addresses_are_ignored() -> None:
    notifier = SystemdNotifier({"NOTIFY_SOCKET": "vsock:2:1234"})
    assert not notifier.enabled
    assert not notifier.ready()


def test_a_send_failure_returns_false_and_is_logged_once() -> None:
    notifier = SystemdNotifier({"NOTIFY_SOCKET": f"@flowcraft-nobody-{uuid.uuid4().hex}"})
    with structlog.testing.capture_logs() as logs:
        assert notifier.ready() is False
        assert notifier.watchdog() is False
    notifier.close()
    assert [entry["log_level"] for entry in logs] == ["warning"]
    assert "cannot notify systemd" in logs[0]["event"]


def test_watchdog_interval_honours_watchdog_pid() -> None:
    socket_env = {"NOTIFY_SOCKET": "@x"}
    assert SystemdNotifier({**socket_env, "WATCHDOG_USEC": "4000000"}).watchdog_interval() == 4.0
    mine = {**socket_env, "WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid())}
    assert SystemdNotifier(mine).watchdog_interval() == 4.0
    other = {**socket_env, "WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid() + 1)}
    assert SystemdNotifier(other).watchdog_interval() is None
    assert SystemdNotifier({**socket_env, "WATCHDOG_USEC": "0"}).watchdog_interval() is None
    assert SystemdNotifier({**socket_env, "WATCHDOG_USEC": "soon"}).watchdog_interval() is None


@pytest.mark.anyio
async def test_watchdog_pings_every_half_interval(
    notify_socket: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    interval = 0.3
    monkeypatch.setenv("WATCHDOG_USEC", str(int(interval * 1_000_000)))
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    notifier = SystemdNotifier()
    arrivals = []
    async with anyio.create_task_group() as group:
        group.start_soon(notifier.run_watchdog)
        for _ in range(4):
            assert await receive(notify_socket) == "WATCHDOG=1"
            arrivals.append(time.monotonic())
        group.cancel_scope.cancel()
    notifier.close()
    gaps = [later - earlier for earlier, later in itertools.pairwise(arrivals)]
    # Pings come at about half the interval: never in a burst, always before systemd's deadline.
    assert all(interval / 4 <= gap < interval for gap in gaps), gaps


@pytest.mark.anyio
async def test_watchdog_pid_of_another_process_means_no_pings(
    notify_socket: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "100000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    notifier = SystemdNotifier()

    assert await notifier.run_watchdog() is False
    await anyio.sleep(0.15)
    assert pending(notify_socket) == []


@pytest.mark.anyio
async def test_watchdog_is_withheld_while_the_supervisor_heartbeat_is_stale(
    notify_socket: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "100000")
    health = HealthState(heartbeat_timeout=1.0)
    health.last_heartbeat = time.monotonic() - 60
    notifier = SystemdNotifier()
    async with anyio.create_task_group() as group:
        group.start_soon(notifier.run_watchdog, health)
        await anyio.sleep(0.2)
        assert pending(notify_socket) == []

        health.beat()
        assert await receive(notify_socket) == "WATCHDOG=1"
        group.cancel_scope.cancel()
    notifier.close()
