"""A running daemon process speaks the systemd notify protocol, serves its probes and its
documented metrics — observed from outside, as systemd and Prometheus see it.

One scenario runs once for the module: the daemon starts under a notify socket with
``WATCHDOG_USEC=400000`` while every pull fails, its pulls then recover, it runs a workflow, and
SIGTERM stops it while a job is in flight. The tests check what was observed.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from itertools import pairwise

import anyio
import pytest
from prometheus_client.parser import text_string_to_metric_families

from flowcraft_puller.config import DaemonConfig
from flowcraft_puller.testing.notify import Notification, NotifySocket
from flowcraft_puller.testing.processes import DaemonProcess, EmulatorProcess
from flowcraft_puller.testing.runs import RunClient
from tests.e2e.executions import read_executions
from tests.e2e.nodes.recording import EXECUTIONS_VARIABLE
from tests.e2e.polling import until
from tests.e2e.workflows import RECORDING_NODES, ROOT, chain, diamond

pytestmark = pytest.mark.anyio

WATCHDOG_USEC = 400_000
CONCURRENCY = 8


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@dataclass(frozen=True)
class Observed:
    notifications: list[Notification]
    ready_while_pulls_failed: bool
    faulted_pulls: int
    """Pull requests the emulator failed before the faults were lifted."""
    readyz: dict[str, int | None]
    """``/readyz`` status by phase: ``pulls failing``, ``consuming``, ``draining``."""
    livez: dict[str, int | None]
    metrics: str
    exit_code: int


async def _probe(
    daemon: DaemonProcess, phase: str, observed: dict[str, dict[str, int | None]]
) -> None:
    observed["readyz"][phase] = await daemon.probe("/readyz")
    observed["livez"][phase] = await daemon.probe("/livez")


@pytest.fixture(scope="module")
async def observed(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Observed]:
    directory = tmp_path_factory.mktemp("systemd")
    executions = directory / "executions.jsonl"
    quick, slow = diamond(ms=10), chain("e2e-in-flight", first_ms=3000)
    probes: dict[str, dict[str, int | None]] = {"readyz": {}, "livez": {}}
    async with EmulatorProcess(directory / "emulator") as emulator:
        await emulator.set_faults({"routes": {"pull": {"error_503_rate": 1.0}}})
        with NotifySocket() as notify:
            daemon = DaemonProcess(
                directory / "daemon",
                emulator.daemon_settings(
                    nodes=[RECORDING_NODES],
                    daemon=DaemonConfig(
                        concurrency=CONCURRENCY, idle_backoff_min=0.01, idle_backoff_max=0.1
                    ),
                ),
                emulator.secrets,
                blueprints=[quick, slow],
                environment={
                    **notify.environment(WATCHDOG_USEC),
                    EXECUTIONS_VARIABLE: str(executions),
                },
                pythonpath=[ROOT],
            )
            try:
                await daemon.start(ready=False)
                await notify.wait_for("WATCHDOG", "1")
                await until(lambda: len(notify.having("WATCHDOG")) >= 3, 10)
                with anyio.fail_after(20):
                    while (await emulator.stats())["faults"].get("pull.503", 0) < 2:
                        await anyio.sleep(0.05)
                await _probe(daemon, "pulls failing", probes)
                ready_while_failing = bool(notify.having("READY"))
                faulted = (await emulator.stats())["faults"]["pull.503"]
                await emulator.set_faults({})

                await notify.wait_for("READY", "1", timeout=20)
                await _probe(daemon, "consuming", probes)
                async with RunClient(emulator.url, emulator.secret, [quick, slow]) as runs:
                    run_id = await runs.start(quick["id"])
                    await runs.wait_terminal([run_id], timeout=30)
                    await until(
                        lambda: any(
                            n.fields.get("STATUS", "").startswith("consuming:")
                            for n in notify.received
                        ),
                        10,
                    )
                    metrics = await daemon.metrics()

                    await runs.start(slow["id"])
                    await until(lambda: len(read_executions(executions)) == 5, 30)
                    daemon.terminate()
                    await notify.wait_for("STOPPING", "1")
                    await _probe(daemon, "draining", probes)
                    exit_code = await daemon.wait()
            finally:
                await daemon.aclose()
        yield Observed(
            notifications=notify.received,
            ready_while_pulls_failed=ready_while_failing,
            faulted_pulls=faulted,
            readyz=probes["readyz"],
            livez=probes["livez"],
            metrics=metrics,
            exit_code=exit_code,
        )


def _values(observed: Observed, key: str) -> list[str]:
    return [n.fields[key] for n in observed.notifications if key in n.fields]


async def test_ready_is_sent_once_and_only_after_a_pull_succeeded(observed: Observed) -> None:
    assert observed.faulted_pulls >= 2
    assert not observed.ready_while_pulls_failed
    assert _values(observed, "READY") == ["1"]


async def test_watchdog_is_pinged_more_often_than_its_interval(observed: Observed) -> None:
    pings = [n.at for n in observed.notifications if n.fields.get("WATCHDOG") == "1"]
    stopping = next(n.at for n in observed.notifications if "STOPPING" in n.fields)
    while_running = [t for t in pings if t < stopping]
    gaps = [later - earlier for earlier, later in pairwise(while_running)]
    assert len(while_running) >= 10
    assert max(gaps) < WATCHDOG_USEC / 1_000_000


async def test_status_lines_tell_consuming_and_draining_with_jobs_in_flight(
    observed: Observed,
) -> None:
    statuses = _values(observed, "STATUS")
    pattern = re.compile(r"^(consuming|draining): \d+ in flight, \d+ jobs/s$")
    assert [s for s in statuses if not pattern.match(s)] == []
    assert any(s.startswith("consuming:") for s in statuses)
    assert "draining: 1 in flight" in " | ".join(statuses)


async def test_sigterm_sends_stopping_then_the_daemon_exits_zero(observed: Observed) -> None:
    kinds = [next(iter(n.fields)) for n in observed.notifications]
    assert kinds.count("STOPPING") == 1
    assert "READY" not in kinds[kinds.index("STOPPING") :]
    assert observed.exit_code == 0


async def test_readyz_is_ok_only_while_consuming(observed: Observed) -> None:
    assert observed.readyz == {"pulls failing": 503, "consuming": 200, "draining": 503}


async def test_livez_is_ok_throughout(observed: Observed) -> None:
    assert observed.livez == {"pulls failing": 200, "consuming": 200, "draining": 200}


def _documented_metrics() -> dict[str, str]:
    table = (ROOT / "docs" / "metrics.md").read_text()
    return dict(re.findall(r"^\| `(flowcraft_\w+)` \| (counter|gauge|histogram) \|", table, re.M))


async def test_metrics_serves_every_documented_metric_with_its_type(observed: Observed) -> None:
    documented = _documented_metrics()
    served = {f.name: f.type for f in text_string_to_metric_families(observed.metrics)}
    expected = {
        name.removesuffix("_total") if kind == "counter" else name: kind
        for name, kind in documented.items()
    }
    assert len(documented) >= 20
    assert {name: served.get(name) for name in expected} == expected
    assert {"process_resident_memory_bytes", "python_info"} <= served.keys()


async def test_metrics_count_what_the_daemon_did(observed: Observed) -> None:
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(observed.metrics)
        for s in family.samples
    }

    def value(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted(labels.items())))]

    queue = "flowcraft-jobs"
    assert value("flowcraft_max_in_flight") == CONCURRENCY
    assert value("flowcraft_api_requests_total", endpoint="pull", status="503") >= 2
    assert value("flowcraft_pulls_total", queue=queue, result="messages") >= 1
    assert value("flowcraft_messages_pulled_total", queue=queue) >= 4
    completed = value(
        "flowcraft_jobs_total", queue=queue, blueprint="e2e-diamond", outcome="completed"
    )
    assert completed == 4
    finished = value("flowcraft_runs_finished_total", blueprint="e2e-diamond", status="completed")
    assert finished == 1
    assert value("flowcraft_build_info", version="0.1.0") == 1
