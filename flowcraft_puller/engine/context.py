"""Context views: a run's context snapshot overlaid with one node's buffered writes."""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from typing import Any, Final

from flowcraft_puller.engine.jsvalues import UNDEFINED

STORE_OWNED_KEYS: Final = frozenset({"_awaitingNodeIds", "_awaitingDetails"})


class Overlay(Mapping[str, Any]):
    """A read-only mapping: ``writes`` over ``base`` with ``deleted`` keys hidden."""

    __slots__ = ("base", "deleted", "writes")

    def __init__(
        self,
        base: Mapping[str, Any],
        writes: Mapping[str, Any] | None = None,
        deleted: frozenset[str] | set[str] | None = None,
    ) -> None:
        self.base = base
        self.writes: Mapping[str, Any] = writes if writes is not None else {}
        self.deleted: frozenset[str] | set[str] = deleted if deleted is not None else frozenset()

    def __getitem__(self, key: str) -> Any:
        if key in self.writes:
            return self.writes[key]
        if key in self.deleted:
            raise KeyError(key)
        return self.base[key]

    def __contains__(self, key: object) -> bool:
        return key in self.writes or (key not in self.deleted and key in self.base)

    def __iter__(self) -> Iterator[str]:
        yield from self.writes
        for key in self.base:
            if key not in self.writes and key not in self.deleted:
                yield key

    def __len__(self) -> int:
        return sum(1 for _ in self)


class WithResult(Mapping[str, Any]):
    """The scope of an edge condition: the context with ``result`` shadowing any such key."""

    __slots__ = ("context", "result")

    def __init__(self, context: Mapping[str, Any], result: Mapping[str, Any]) -> None:
        self.context = context
        self.result = result

    def __getitem__(self, key: str) -> Any:
        return self.result if key == "result" else self.context[key]

    def __contains__(self, key: object) -> bool:
        return key == "result" or key in self.context

    def __iter__(self) -> Iterator[str]:
        yield "result"
        yield from (k for k in self.context if k != "result")

    def __len__(self) -> int:
        return len(self.context) + (0 if "result" in self.context else 1)


class ContextBuffer:
    """A node's view of the run context: reads see its own writes; writes are buffered.

    Nothing reaches the run store until the node's completion is committed, atomically with
    its output; a failed attempt's writes are discarded (SEMANTICS rule 6).
    """

    def __init__(self, snapshot: Mapping[str, Any]) -> None:
        self.writes: dict[str, Any] = {}
        self.deleted: set[str] = set()
        self.view = Overlay(snapshot, self.writes, self.deleted)

    def get(self, key: str, default: Any = None) -> Any:
        """A copy of the value at ``key`` (so that mutating it changes nothing), or ``default``."""
        if key not in self.view:
            return default
        value = self.view[key]
        return copy.deepcopy(value) if isinstance(value, (dict, list)) else value

    def set(self, key: str, value: Any) -> None:
        _check_key(key)
        self.deleted.discard(key)
        self.writes[key] = value

    def has(self, key: str) -> bool:
        return key in self.view

    def delete(self, key: str) -> None:
        _check_key(key)
        self.writes.pop(key, None)
        self.deleted.add(key)

    def to_dict(self) -> dict[str, Any]:
        return copy.deepcopy(dict(self.view))

    def lookup(self, key: str) -> Any:
        """The raw value at ``key`` or ``UNDEFINED`` (for the engine; no copy)."""
        return self.view.get(key, UNDEFINED)


def _check_key(key: object) -> None:
    if not isinstance(key, str):
        raise TypeError(f"context keys are strings, got {type(key).__name__}")
    if key in STORE_OWNED_KEYS:
        raise ValueError(f"context key {key!r} is maintained by the run store and cannot be set")


class SyncContext:
    """Synchronous context access for sync nodes running in a worker thread."""

    __slots__ = ("_buffer",)

    def __init__(self, buffer: ContextBuffer) -> None:
        self._buffer = buffer

    def get(self, key: str, default: Any = None) -> Any:
        return self._buffer.get(key, default)

    def set(self, key: str, value: Any) -> None:
        self._buffer.set(key, value)

    def has(self, key: str) -> bool:
        return self._buffer.has(key)

    def delete(self, key: str) -> None:
        self._buffer.delete(key)

    def to_dict(self) -> dict[str, Any]:
        return self._buffer.to_dict()


class AsyncContext:
    """The context as the TypeScript engine exposes it: ``await ctx.context.get(key)``."""

    __slots__ = ("_buffer", "sync")

    def __init__(self, buffer: ContextBuffer) -> None:
        self._buffer = buffer
        self.sync = SyncContext(buffer)

    async def get(self, key: str, default: Any = None) -> Any:
        return self._buffer.get(key, default)

    async def set(self, key: str, value: Any) -> None:
        self._buffer.set(key, value)

    async def has(self, key: str) -> bool:
        return self._buffer.has(key)

    async def delete(self, key: str) -> None:
        self._buffer.delete(key)

    async def to_dict(self) -> dict[str, Any]:
        return self._buffer.to_dict()
