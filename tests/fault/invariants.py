"""What must hold after every fault: each of them returns the ways the outcome breaks it."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Final

from tests.fault.campaign import Outcome
from tests.fault.scenarios import Reference, outputs_of

MAX_DAEMON_RSS_MB: Final = 150.0


def runs_end_as_clean_runs_do(outcome: Outcome, references: Mapping[str, Reference]) -> list[str]:
    """Every run reaches the status (and failure reason) a clean run of its workload reaches;
    a completed run committed exactly the clean run's outputs."""
    found = []
    for run_id, view in outcome.views.items():
        workload = outcome.workloads[run_id]
        clean = references[workload.name]
        if view.status != clean.status:
            found.append(
                f"{workload.name} run {run_id}: {view.status} ({view.reason}), "
                f"a clean run ends {clean.status}"
            )
        elif clean.status == "failed" and view.reason != clean.reason:
            found.append(
                f"{workload.name} run {run_id}: reason {view.reason!r}, not {clean.reason!r}"
            )
        elif clean.status == "completed" and outputs_of(view.context) != clean.outputs:
            found.append(
                f"{workload.name} run {run_id}: outputs {outputs_of(view.context)}, "
                f"a clean run has {clean.outputs}"
            )
    return found


def no_committed_output_differs(outcome: Outcome, references: Mapping[str, Reference]) -> list[str]:
    """Whatever a run committed (a failed run may have committed less) equals the clean value."""
    found = []
    for run_id, view in outcome.views.items():
        workload = outcome.workloads[run_id]
        clean = references[workload.name].outputs
        for node, output in outputs_of(view.context).items():
            if node in clean and output != clean[node]:
                found.append(f"{workload.name} run {run_id}: {node} committed {output!r}")
    return found


def no_message_left(outcome: Outcome) -> list[str]:
    """The job queue is empty — nothing leased, ready or delayed — and nothing dead-lettered."""
    queue = outcome.queue
    found = []
    if queue["depth"]:
        found.append(
            f"{queue['depth']} message(s) left ({queue['leased']} leased): {queue['messages']}"
        )
    if queue["dead_lettered"]:
        found.append(f"{queue['dead_lettered']} message(s) dead-lettered")
    return found


def no_traceback_escapes(outcome: Outcome) -> list[str]:
    """No traceback in the daemon's output, no logged exception, and a clean exit at the end."""
    found = []
    if "Traceback" in outcome.daemon_errors or "Traceback" in outcome.daemon_output:
        found.append("a traceback in the daemon's output")
    for line in outcome.daemon_output.splitlines():
        if '"exception"' in line:
            found.append(f"logged exception: {json.loads(line).get('event')}")
            break
    if outcome.daemon_exit_code != 0:
        found.append(f"the daemon exited with {outcome.daemon_exit_code} after SIGTERM")
    return found


def poison_rejected_and_counted(outcome: Outcome) -> list[str]:
    """Every malformed message was rejected (logged with its id and code) and counted in
    ``flowcraft_messages_rejected_total``; no real job was rejected."""
    found = []
    if len(outcome.rejected) != outcome.poison_sent:
        found.append(
            f"{len(outcome.rejected)} distinct message(s) rejected, {outcome.poison_sent} "
            "malformed message(s) sent"
        )
    if outcome.rejected_metric is not None and outcome.rejected_metric < outcome.poison_sent:
        found.append(
            f"flowcraft_messages_rejected_total is {outcome.rejected_metric}, "
            f"{outcome.poison_sent} malformed message(s) sent"
        )
    return found


def memory_stays_bounded(outcome: Outcome) -> list[str]:
    """Every daemon process's peak RSS stayed under the bound."""
    if not outcome.peak_rss_mb:
        return ["the daemon's memory was never sampled"]
    peak = max(outcome.peak_rss_mb)
    return (
        [f"daemon peak RSS {peak:.0f} MB over {MAX_DAEMON_RSS_MB:.0f} MB"]
        if (peak > MAX_DAEMON_RSS_MB)
        else []
    )


def violations(outcome: Outcome, references: Mapping[str, Reference]) -> dict[str, list[str]]:
    """Every invariant that does not hold, with up to five examples each."""
    checks = {
        "runs end as clean runs do": runs_end_as_clean_runs_do(outcome, references),
        "no committed output differs": no_committed_output_differs(outcome, references),
        "no message left in the queue": no_message_left(outcome),
        "no traceback escapes": no_traceback_escapes(outcome),
        "malformed messages rejected and counted": poison_rejected_and_counted(outcome),
        "memory stays bounded": memory_stays_bounded(outcome),
    }
    return {name: problems[:5] for name, problems in checks.items() if problems}
