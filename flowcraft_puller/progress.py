"""Following a run until it settles, with a live progress line on a terminal."""

from __future__ import annotations

from collections.abc import Callable
from typing import TextIO

import anyio

from flowcraft_puller.runstore.protocol import SETTLED_STATUSES, RunStore, RunView

_DONE_STATES = frozenset({"completed", "skipped", "failed"})


def progress_line(view: RunView) -> str:
    """``order-fulfilment 3f2a…: 5/9 nodes · running`` (skipped nodes count as done)."""
    nodes = view.nodes
    done = sum(1 for n in nodes.values() if n.state in _DONE_STATES)
    awaiting = [node for node, n in nodes.items() if n.state == "awaiting"]
    tail = f" · waiting on {', '.join(awaiting)}" if awaiting and view.status != "completed" else ""
    return f"{view.blueprint_id} {view.run_id}: {done}/{len(nodes)} nodes · {view.status}{tail}"


async def follow_run(
    store: RunStore,
    run_id: str,
    *,
    out: TextIO | None = None,
    interval_s: float = 0.1,
    until: Callable[[RunView], bool] = lambda view: view.status in SETTLED_STATUSES,
) -> RunView:
    """Poll the run until ``until(view)``; if ``out`` is given, keep one progress line updated."""
    last = ""
    while True:
        view = await store.get(run_id)
        if out is not None:
            line = progress_line(view)
            if line != last:
                out.write("\r\x1b[2K" + line)
                out.flush()
                last = line
        if until(view):
            if out is not None:
                out.write("\n")
                out.flush()
            return view
        await anyio.sleep(interval_s)
