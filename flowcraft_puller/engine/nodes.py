"""What node implementations see and return: NodeContext, NodeResult, BaseNode."""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import anyio

from flowcraft_puller.engine.context import AsyncContext


@dataclass(frozen=True, slots=True)
class NodeResult:
    """A node's result: ``output`` is stored as ``_outputs.<id>``; ``action`` drives routing."""

    output: Any = None
    action: str | None = None

    def as_js(self) -> dict[str, Any]:
        """The result as condition expressions see it (``result.output``, ``result.action``)."""
        return (
            {"output": self.output}
            if self.action is None
            else {
                "output": self.output,
                "action": self.action,
            }
        )


class CancelSignal:
    """Set when a node should stop: its attempt timed out or the daemon is shutting down.

    Async code can ``await cancel.wait()``; sync code in a worker thread can poll
    ``cancel.is_set()`` or ``cancel.wait_sync(timeout)``. The underlying events are created on
    first use, since most nodes never look.
    """

    __slots__ = ("_async", "_set", "_thread")

    def __init__(self) -> None:
        self._set = False
        self._async: anyio.Event | None = None
        self._thread: threading.Event | None = None

    def set(self) -> None:
        self._set = True
        if self._async is not None:
            self._async.set()
        if self._thread is not None:
            self._thread.set()

    def is_set(self) -> bool:
        return self._set

    async def wait(self) -> None:
        if self._set:
            return
        if self._async is None:
            self._async = anyio.Event()
        await self._async.wait()

    def wait_sync(self, timeout: float | None = None) -> bool:
        if self._thread is None:
            self._thread = threading.Event()
            if self._set:
                self._thread.set()
        return self._thread.wait(timeout)


@dataclass(slots=True)
class NodeContext:
    """Everything a node implementation receives (TS ``NodeContext``)."""

    input: Any
    params: dict[str, Any]
    context: AsyncContext
    run_id: str
    node_id: str
    blueprint_id: str
    attempt: int
    dependencies: Mapping[str, Any] = field(default_factory=dict)
    cancel: CancelSignal = field(default_factory=CancelSignal)


class BaseNode:
    """Base class of class nodes: ``prep`` → ``exec`` (retried) → ``post``; TS §3.1.

    Each method may be ``def`` (run in a worker thread) or ``async def``. ``fallback`` runs
    when every ``exec`` attempt failed with a non-fatal error; ``recover`` runs at the end
    whenever any error was seen, even if ``fallback`` recovered.
    """

    def __init__(self, params: dict[str, Any], node_id: str) -> None:
        self.params = params
        self.node_id = node_id

    def prep(self, ctx: NodeContext) -> Any:
        return ctx.input

    def exec(self, prep_result: Any, ctx: NodeContext) -> Any:
        raise NotImplementedError(f"{type(self).__name__}.exec is not implemented")

    def post(self, exec_result: Any, ctx: NodeContext) -> Any:
        return exec_result

    def fallback(self, error: BaseException, ctx: NodeContext) -> Any:
        raise error

    def recover(self, error: BaseException, ctx: NodeContext) -> None:
        return None


NodeFunction: TypeAlias = Callable[[NodeContext], Any] | Callable[[NodeContext], Awaitable[Any]]
NodeImplementation: TypeAlias = NodeFunction | type[BaseNode]
NodeRegistry: TypeAlias = Mapping[str, NodeImplementation]

_RESULT_KEYS = frozenset({"output", "action"})


def is_class_node(implementation: object) -> bool:
    """True for classes with an ``exec`` method (TS ``isNodeClass``)."""
    return isinstance(implementation, type) and callable(getattr(implementation, "exec", None))


def to_node_result(value: object) -> NodeResult:
    """Normalise what a node returned.

    A :class:`NodeResult` is kept; a dict whose keys are a non-empty subset of
    ``{"output", "action"}`` is a result; anything else is a bare output. To output a dict that
    has only those keys, return ``NodeResult(output=...)``.
    """
    if isinstance(value, NodeResult):
        return value
    if isinstance(value, Mapping) and value and _RESULT_KEYS.issuperset(value.keys()):
        action = value.get("action")
        return NodeResult(
            output=value.get("output"), action=action if isinstance(action, str) else None
        )
    return NodeResult(output=value)
