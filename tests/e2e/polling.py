"""Waiting for a condition that another process brings about."""

from __future__ import annotations

from collections.abc import Callable

import anyio


async def until(predicate: Callable[[], bool], timeout: float) -> None:
    """Return once ``predicate()`` holds; TimeoutError after ``timeout`` seconds."""
    with anyio.fail_after(timeout):
        while not predicate():
            await anyio.sleep(0.01)
