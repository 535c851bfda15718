"""The benchmark's results: the targets they are held to, the printed table and the JSON."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench.idle import IdleFigures
from bench.queue_path import QueueFigures
from bench.workflow_path import WorkflowFigures


@dataclass(frozen=True, slots=True)
class Target:
    """A performance target of issue 7: ``value`` must be ``bound`` (``at_most`` or not)."""

    key: str
    text: str
    bound: float
    at_most: bool

    def met(self, value: float) -> bool:
        if math.isnan(value):
            return False
        return value <= self.bound if self.at_most else value >= self.bound


TARGETS = {
    "coordinator_requests_per_node": Target(
        "coordinator_requests_per_node", "≤ 0.25", 0.25, at_most=True
    ),
    "queue_calls_per_message": Target("queue_calls_per_message", "≤ 0.05", 0.05, at_most=True),
    "workflow_queue_calls_per_message": Target(
        "workflow_queue_calls_per_message", "≤ 0.05", 0.05, at_most=True
    ),
    "nodes_per_s": Target("nodes_per_s", "≥ 1,000", 1000, at_most=False),
    "idle_pulls_per_min": Target("idle_pulls_per_min", "≤ 60", 60, at_most=True),
    "idle_cpu_percent": Target("idle_cpu_percent", "< 1", 1.0, at_most=True),
    "peak_rss_mb_1000_jobs": Target("peak_rss_mb_1000_jobs", "< 100", 100, at_most=True),
}


@dataclass(slots=True)
class Results:
    mode: str
    machine: dict[str, Any]
    queue: QueueFigures | None = None
    workflow: WorkflowFigures | None = None
    scaling: list[WorkflowFigures] = field(default_factory=list)
    idle: IdleFigures | None = None
    memory: dict[str, Any] | None = None
    seconds: float = 0.0

    def headline(self) -> dict[str, float]:
        """The flat keys the quick benchmark promises (and the targets' values)."""
        figures: dict[str, float] = {}
        if self.queue is not None:
            figures["messages_per_s"] = self.queue.messages_per_s
            figures["queue_calls_per_message"] = self.queue.queue_calls_per_message
        if self.workflow is not None:
            w = self.workflow
            figures |= {
                "nodes_per_s": w.nodes_per_s,
                "runs_per_s": w.runs_per_s,
                "run_latency_p50_ms": w.run_latency_p50_ms,
                "run_latency_p95_ms": w.run_latency_p95_ms,
                "run_latency_p99_ms": w.run_latency_p99_ms,
                "scheduling_delay_p50_ms": w.scheduling_delay_p50_ms,
                "scheduling_delay_p99_ms": w.scheduling_delay_p99_ms,
                "coordinator_requests_per_node": w.coordinator_requests_per_node,
                "workflow_queue_calls_per_message": w.queue_calls_per_message,
                "daemon_cpu_s_per_1000_nodes": w.daemon_cpu_s_per_1000_nodes,
                "emulator_cpu_s_per_1000_nodes": w.emulator_cpu_s_per_1000_nodes,
                "peak_rss_mb": w.peak_rss_mb,
            }
        if self.idle is not None:
            figures["idle_pulls_per_min"] = self.idle.idle_pulls_per_min
            figures["idle_cpu_percent"] = self.idle.idle_cpu_percent
        thousand = [s for s in self.scaling if s.setup.concurrency is not None]
        if thousand:
            figures["peak_rss_mb_1000_jobs"] = thousand[-1].peak_rss_mb
        if self.memory is not None:
            figures["memory_nodes_per_s"] = self.memory["nodes_per_s"]
            figures["memory_cpu_s_per_1000_nodes"] = self.memory["cpu_s_per_1000_nodes"]
        return figures

    def problems(self) -> list[str]:
        found = []
        for figures in [self.workflow, *self.scaling]:
            if figures is not None:
                found += figures.problems
        if self.memory is not None:
            found += self.memory["problems"]
        return found

    def as_json(self) -> dict[str, Any]:
        headline = self.headline()
        return {
            **headline,
            "mode": self.mode,
            "seconds": self.seconds,
            "machine": self.machine,
            "targets": {
                key: {
                    "value": headline[key],
                    "target": target.text,
                    "met": target.met(headline[key]),
                }
                for key, target in TARGETS.items()
                if key in headline
            },
            "queue": self.queue.as_json() if self.queue is not None else None,
            "workflow": self.workflow.as_json() if self.workflow is not None else None,
            "scaling": [s.as_json() for s in self.scaling],
            "idle": self.idle.as_json() if self.idle is not None else None,
            "memory": self.memory,
            "problems": self.problems(),
        }


def _number(value: float, digits: int) -> str:
    if math.isnan(value):
        return "-"
    return f"{value:,.{digits}f}"


def _row(name: str, value: float, digits: int, key: str | None = None) -> str:
    target = TARGETS.get(key or "")
    verdict = ""
    if target is not None:
        verdict = f"{target.text:>9}  {'met' if target.met(value) else 'MISSED'}"
    return f"  {name:<46}{_number(value, digits):>12}  {verdict}".rstrip()


def _scaling_table(rows: list[WorkflowFigures]) -> list[str]:
    header = (
        f"  {'setup':<54}{'nodes/s':>9}{'p50 ms':>8}{'p99 ms':>8}{'req/node':>9}"
        f"{'q/msg':>7}{'d cpu':>7}{'e cpu':>7}{'RSS':>6}"
    )
    lines = [header]
    for f in rows:
        lines.append(
            f"  {f.setup.label:<54}{_number(f.nodes_per_s, 0):>9}"
            f"{_number(f.run_latency_p50_ms, 0):>8}{_number(f.run_latency_p99_ms, 0):>8}"
            f"{_number(f.coordinator_requests_per_node, 3):>9}"
            f"{_number(f.queue_calls_per_message, 3):>7}"
            f"{_number(f.daemon_cpu_s_per_1000_nodes, 2):>7}"
            f"{_number(f.emulator_cpu_s_per_1000_nodes, 2):>7}{_number(f.peak_rss_mb, 0):>6}"
        )
    lines.append(
        "  (d cpu / e cpu: daemon / emulator CPU seconds per 1,000 nodes; RSS: daemon peak MB)"
    )
    return lines


def table(results: Results) -> str:
    """The results as the text table ``python -m bench`` prints."""
    m = results.machine
    lines = [
        f"flowcraft-puller benchmark ({results.mode}) — {m['cpus']} CPUs, Python {m['python']}, "
        f"load average {m['load_average_at_start']:.2f} at start, {results.seconds:.0f} s",
        f"  {'':<46}{'value':>12}  {'target':>9}",
    ]
    add: Callable[..., None] = lambda *args: lines.append(_row(*args))  # noqa: E731
    if results.queue is not None:
        q = results.queue
        lines.append(f"1. queue path: pull → no-op → ack, {q.messages:,} messages")
        add("messages/s", q.messages_per_s, 0)
        add("queue REST calls per message", q.queue_calls_per_message, 3, "queue_calls_per_message")
        add("messages per pull / per ack request", q.messages_per_pull, 1)
        add("consumer CPU s per 1,000 messages", q.consumer_cpu_s_per_1000_messages, 3)
        add("emulator CPU s per 1,000 messages", q.emulator_cpu_s_per_1000_messages, 3)
    if results.workflow is not None:
        w = results.workflow
        lines.append(f"2. workflow path: {w.setup.label}, 12-node fan-out/fan-in")
        add("nodes/s", w.nodes_per_s, 0, "nodes_per_s")
        add("runs/s", w.runs_per_s, 1)
        add("run latency p50 ms", w.run_latency_p50_ms, 0)
        add("run latency p95 ms", w.run_latency_p95_ms, 0)
        add("run latency p99 ms", w.run_latency_p99_ms, 0)
        add("node scheduling delay p50 ms (ready → start)", w.scheduling_delay_p50_ms, 1)
        add("node scheduling delay p99 ms", w.scheduling_delay_p99_ms, 1)
        add(
            "HTTP requests to the Worker per node",
            w.coordinator_requests_per_node,
            3,
            "coordinator_requests_per_node",
        )
        add(
            "queue REST calls per message",
            w.queue_calls_per_message,
            3,
            "workflow_queue_calls_per_message",
        )
        add("daemon CPU s per 1,000 nodes", w.daemon_cpu_s_per_1000_nodes, 3)
        add("emulator CPU s per 1,000 nodes (not the daemon's)", w.emulator_cpu_s_per_1000_nodes, 3)
        add("daemon peak RSS MB", w.peak_rss_mb, 1)
        add("CPU cores busy: daemon + emulator", w.tested_cores, 2)
        add("CPU cores busy: whole machine", w.machine_busy_cores, 2)
    if results.memory is not None:
        mem = results.memory
        lines.append(
            f"   in memory (MemoryStack, no I/O): {mem['runs']} runs, {mem['in_flight']} in flight"
        )
        add("nodes/s", mem["nodes_per_s"], 0)
        add("CPU s per 1,000 nodes", mem["cpu_s_per_1000_nodes"], 3)
        add("run latency p50 ms", mem["run_latency_p50_ms"], 1)
    if results.scaling:
        lines.append("3. scaling")
        lines += _scaling_table(results.scaling)
        headline = results.headline()
        if "peak_rss_mb_1000_jobs" in headline:
            add(
                "daemon peak RSS MB at 1,000 jobs in flight",
                headline["peak_rss_mb_1000_jobs"],
                1,
                "peak_rss_mb_1000_jobs",
            )
    if results.idle is not None:
        i = results.idle
        lines.append(f"4. idle daemon, {i.seconds:.0f} s after its back-off settled")
        add("pulls per minute (one pull loop)", i.idle_pulls_per_min, 1, "idle_pulls_per_min")
        add("CPU %", i.idle_cpu_percent, 2, "idle_cpu_percent")
        add("RSS MB", i.idle_rss_mb, 1)
    problems = results.problems()
    if problems:
        lines.append("PROBLEMS (runs that did not end as a clean run does):")
        lines += [f"  {p}" for p in problems]
    return "\n".join(lines)
