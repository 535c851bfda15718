"""Test nodes for daemon subprocesses: each execution of ``record`` appends a start and an end
line to the file named by ``$FLOWCRAFT_E2E_EXECUTIONS``, so a test can tell whether two
executions of the same node ever overlapped, even across a kill -9.

Lines are single ``os.write`` calls on an ``O_APPEND`` descriptor, so lines of concurrent
executions (and processes) never interleave. Times are ``time.monotonic_ns()``, which Linux
shares between processes.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from typing import Any

import anyio

from flowcraft_puller import NodeContext, Registry

EXECUTIONS_VARIABLE = "FLOWCRAFT_E2E_EXECUTIONS"

NODES = Registry()


def _append(line: dict[str, Any]) -> None:
    descriptor = os.open(
        os.environ[EXECUTIONS_VARIABLE], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644
    )
    try:
        os.write(descriptor, (json.dumps(line) + "\n").encode())
    finally:
        os.close(descriptor)


@NODES.node()
async def record(ctx: NodeContext) -> dict[str, Any]:
    """Sleep ``params.ms`` between a start and an end line; output names the node, the run and
    the input, so a wrong or mixed-up commit shows in the run's outputs."""
    execution = {
        "call": uuid.uuid4().hex,
        "run": ctx.run_id,
        "node": ctx.node_id,
        "attempt": ctx.attempt,
        "pid": os.getpid(),
    }
    _append({**execution, "phase": "start", "t": time.monotonic_ns()})
    outcome = "cancelled"
    try:
        await anyio.sleep(float(ctx.params.get("ms", 0)) / 1000)
        outcome = "returned"
        return {"node": ctx.node_id, "run": ctx.run_id, "input": ctx.input}
    finally:
        _append({**execution, "phase": "end", "outcome": outcome, "t": time.monotonic_ns()})


@NODES.node()
async def explode(ctx: NodeContext) -> None:
    """Fail with an ordinary exception."""
    raise RuntimeError(f"payment gateway refused order {ctx.run_id}")


@NODES.node()
async def leak_credentials(ctx: NodeContext) -> None:
    """Fail with an exception whose message carries the daemon's own credentials, as a careless
    HTTP client error echoing its request headers would."""
    token = os.environ.get("FLOWCRAFT_API_TOKEN", "")
    secret = os.environ.get("FLOWCRAFT_COORDINATOR_SECRET", "")
    raise PermissionError(
        f"403 from upstream; request headers: Authorization: Bearer {token}, X-Secret: {secret}"
    )
