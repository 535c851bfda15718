"""The fault campaign: mixed corpus runs through the real daemon while one fault — then all of
them together — happens; every invariant of ``invariants.py`` must hold afterwards.

Reduced inside ``make test``; ``make soak`` runs it at full size (200 runs, 10,000 malformed
messages, a 10 s outage), ``FLOWCRAFT_SOAK_ROUNDS`` times.
"""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from tests.fault.campaign import CampaignSize, Fault, Outcome, injected_kinds, run_campaign
from tests.fault.invariants import violations
from tests.fault.scenarios import Reference, Workload, clean_reference, corpus_workloads, slow_chain

pytestmark = pytest.mark.anyio

FAULTS = [
    Fault("429-and-5xx-on-every-route", errors=True),
    Fault("responses-dropped-after-applying", drops=True),
    Fault("lease-expiry-storms", storms=True),
    Fault("daemon-killed-and-restarted", kills=True),
    Fault("coordinator-unreachable", outage=True),
    Fault("duplicated-and-reordered-deliveries", duplicates=True),
    Fault("poison-stream", poison=True),
    Fault(
        "all-together",
        errors=True,
        drops=True,
        storms=True,
        kills=True,
        outage=True,
        duplicates=True,
        poison=True,
    ),
]


@pytest.fixture(scope="module")
def workloads() -> list[Workload]:
    return [*corpus_workloads(), slow_chain()]


@pytest.fixture(scope="module")
def references(workloads: list[Workload]) -> dict[str, Reference]:
    async def compute() -> dict[str, Reference]:
        return {w.name: await clean_reference(w) for w in workloads}

    return anyio.run(compute)


@pytest.mark.parametrize("fault", FAULTS, ids=lambda f: f.name)
async def test_runs_end_as_clean_runs_do_under(
    fault: Fault,
    workloads: list[Workload],
    references: dict[str, Reference],
    tmp_path: Path,
) -> None:
    size = CampaignSize.from_environment()
    for round_number in range(size.rounds):
        outcome = await run_campaign(
            fault, size, workloads, tmp_path / f"round-{round_number}", seed=round_number + 1
        )
        assert violations(outcome, references) == {}
        _assert_the_fault_happened(fault, outcome, size)


def _assert_the_fault_happened(fault: Fault, outcome: Outcome, size: CampaignSize) -> None:
    kinds = injected_kinds(outcome)
    if fault.errors:
        assert {"429", "500", "503"} <= kinds
    if fault.drops:
        assert "drop_response" in kinds
    if fault.storms:
        assert "lease_storm" in kinds
        assert outcome.expired_leases > 0
    if fault.outage:
        assert "reset" in kinds
    if fault.poison:
        assert outcome.poison_sent == size.poison
    if fault.kills:
        assert outcome.daemon_starts > 1, "the daemon was never killed; the test proved nothing"
    if fault.duplicates:
        assert outcome.duplicates_sent > 0
