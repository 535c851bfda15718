"""The load driver: keeps a number of runs in flight through a coordinator's ``/v1`` API.

It runs in the benchmark's own process, never inside a daemon under test, so the daemons' CPU
figures are theirs alone. It starts runs (one ``start`` request each) and learns which finished
by listing the runs still ``running`` (one request per poll for all of them).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

import anyio

from flowcraft_puller.testing.runs import RunClient


class DriveTimeout(TimeoutError):
    """Runs were still in flight when the drive's time ran out."""


@dataclass(frozen=True, slots=True)
class Drive:
    """What a drive did: the runs it started, in order, and its wall time."""

    run_ids: list[str]
    seconds: float


async def _running(client: RunClient) -> set[str]:
    running: set[str] = set()
    cursor = None
    while True:
        page = await client.store.list_runs(status="running", limit=1000, cursor=cursor)
        running.update(run.run_id for run in page.runs)
        cursor = page.cursor
        if cursor is None:
            return running


async def drive(
    client: RunClient,
    blueprint_id: str,
    runs: int,
    in_flight: int,
    *,
    poll_s: float | None = None,
    start_concurrency: int = 16,
    timeout_s: float = 300.0,
) -> Drive:
    """Start ``runs`` runs, at most ``in_flight`` unfinished at once; return when all finished.

    The list of running runs is polled every ``poll_s`` (by default 20 ms, longer when many
    runs are in flight, so that listing them does not load the coordinator under test).
    """
    if poll_s is None:
        poll_s = min(0.25, max(0.02, in_flight / 4000))
    run_ids = [uuid.uuid4().hex for _ in range(runs)]
    outstanding: set[str] = set()
    next_index = 0
    limiter = anyio.Semaphore(start_concurrency)
    began = time.monotonic()

    async def start(run_id: str) -> None:
        async with limiter:
            await client.start(blueprint_id, run_id=run_id)

    try:
        with anyio.fail_after(timeout_s):
            while next_index < runs or outstanding:
                wanted = min(in_flight - len(outstanding), runs - next_index)
                if wanted > 0:
                    batch = run_ids[next_index : next_index + wanted]
                    next_index += wanted
                    outstanding.update(batch)
                    async with anyio.create_task_group() as group:
                        for run_id in batch:
                            group.start_soon(start, run_id)
                await anyio.sleep(poll_s)
                outstanding &= await _running(client)
    except TimeoutError:
        raise DriveTimeout(
            f"{len(outstanding)} run(s) still in flight after {timeout_s:g}s"
        ) from None
    return Drive(run_ids=run_ids, seconds=time.monotonic() - began)
