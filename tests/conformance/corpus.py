"""The shared conformance corpus: loading scenarios, playing them on a stack, checking results.

Scenarios are read from ``../shared/conformance`` (relative to the project root), never copied.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import anyio

from flowcraft_puller.testing.stack import RunResult

ROOT = Path(__file__).resolve().parents[2]
CORPUS_DIR = (ROOT.parent / "shared" / "conformance").resolve()


@dataclass(frozen=True)
class Scenario:
    name: str
    data: dict[str, Any]

    @property
    def blueprints(self) -> dict[str, Any]:
        return self.data["blueprints"]

    @property
    def evaluator(self) -> str:
        return self.data.get("evaluator", "property")

    @property
    def expect(self) -> dict[str, Any]:
        return self.data["expect"]


def load_scenarios() -> list[Scenario]:
    files = sorted(CORPUS_DIR.glob("*.json"))
    if not files:
        raise FileNotFoundError(f"no conformance scenarios in {CORPUS_DIR}")
    return [Scenario(f.stem, json.loads(f.read_text())) for f in files]


class Stack(Protocol):
    async def start(self, blueprint_id: str, context: Mapping[str, Any] | None = None) -> str: ...

    async def wait(self, run_id: str, timeout: float = ...) -> RunResult: ...

    async def resume(self, run_id: str, action: str | None = ..., output: Any = ...) -> None: ...

    async def cancel(self, run_id: str) -> None: ...


@dataclass(frozen=True)
class Played:
    result: RunResult
    duration_ms: float
    step_statuses: list[str]


async def play(stack: Stack, scenario: Scenario, *, timeout: float = 20.0) -> Played:
    start = scenario.data["start"]
    began = time.monotonic()
    run_id = await stack.start(start["blueprintId"], start.get("context") or {})
    statuses = []
    for step in scenario.data.get("steps", []):
        settled = await stack.wait(run_id, timeout=timeout)
        statuses.append(settled.status)
        if "resume" in step:
            resume = step["resume"]
            await stack.resume(run_id, resume.get("action"), resume.get("output"))
        elif step.get("cancel"):
            await stack.cancel(run_id)
    result = await stack.wait(run_id, timeout=timeout)
    if result.status == "awaiting" and not scenario.data.get("steps"):
        result = await stack.wait(run_id, timeout=timeout)
    return Played(result, (time.monotonic() - began) * 1000, statuses)


def _subset(expected: Any, actual: Any) -> bool:
    if isinstance(expected, dict):
        return isinstance(actual, dict) and all(
            k in actual and _subset(v, actual[k]) for k, v in expected.items()
        )
    return bool(expected == actual and type(expected) is type(actual)) or (
        isinstance(expected, (int, float))
        and not isinstance(expected, bool)
        and isinstance(actual, (int, float))
        and not isinstance(actual, bool)
        and expected == actual
    )


def problems(
    scenario: Scenario,
    played: Played,
    *,
    extra_runs: Counter[str] | None = None,
    check_timing: bool = True,
) -> list[str]:
    """Every way the played run differs from the scenario's expectations (empty when it passes).

    ``extra_runs`` allows each node that many more invocations (one per simulated crash that
    interrupted it).
    """
    result, expect = played.result, scenario.expect
    found = []
    for index, step in enumerate(scenario.data.get("steps", [])):
        wanted = step.get("expect_status")
        if wanted and played.step_statuses[index] != wanted:
            found.append(
                f"step {index}: status {played.step_statuses[index]!r}, expected {wanted!r}"
            )
    if result.status != expect["status"]:
        found.append(
            f"status {result.status!r} (reason {result.reason!r}), expected {expect['status']!r}"
        )
    for node, value in expect.get("outputs", {}).items():
        if node not in result.outputs:
            found.append(f"output of {node!r} missing")
        elif not _subset(value, result.outputs[node]):
            found.append(f"output of {node!r} is {result.outputs[node]!r}, expected {value!r}")
    for key, value in expect.get("context", {}).items():
        if key not in result.context or not _subset(value, result.context[key]):
            found.append(
                f"context {key!r} is {result.context.get(key, '<absent>')!r}, expected {value!r}"
            )
    for node in expect.get("not_run", []):
        if result.invocations.get(node, 0):
            found.append(f"{node!r} ran {result.invocations[node]} time(s), expected never")
    extra = extra_runs or Counter()
    for node, count in expect.get("runs", {}).items():
        actual = result.invocations.get(node, 0)
        if not count <= actual <= count + extra[node]:
            allowance = f" (+{extra[node]} for crashes)" if extra[node] else ""
            found.append(f"{node!r} ran {actual} time(s), expected {count}{allowance}")
    needle = expect.get("reason_contains")
    if needle and needle not in (result.reason or ""):
        found.append(f"reason {result.reason!r} does not contain {needle!r}")
    if check_timing:
        if "min_duration_ms" in expect and played.duration_ms < expect["min_duration_ms"]:
            found.append(
                f"took {played.duration_ms:.0f} ms, expected at least {expect['min_duration_ms']}"
            )
        if "max_duration_ms" in expect and played.duration_ms > expect["max_duration_ms"]:
            found.append(
                f"took {played.duration_ms:.0f} ms, expected at most {expect['max_duration_ms']}"
            )
    return found


def run_sync(coro_fn: Any, *args: Any) -> Any:
    return anyio.run(coro_fn, *args)
