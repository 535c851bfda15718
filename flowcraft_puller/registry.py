"""A registry of node implementations that user modules can fill with a decorator."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import TypeVar

from flowcraft_puller.engine.nodes import NodeImplementation

Impl = TypeVar("Impl", bound=NodeImplementation)


class Registry(Mapping[str, NodeImplementation]):
    """``uses`` key → node implementation (a function or a ``BaseNode`` subclass).

    >>> nodes = Registry()
    >>> @nodes.node("charge")
    ... async def charge(ctx): ...
    """

    def __init__(self, implementations: Mapping[str, NodeImplementation] | None = None) -> None:
        self._implementations: dict[str, NodeImplementation] = dict(implementations or {})

    def add(self, uses: str, implementation: NodeImplementation) -> None:
        """Register ``implementation`` under ``uses``; a key may be registered only once."""
        if uses in self._implementations:
            raise ValueError(f"node implementation {uses!r} is already registered")
        self._implementations[uses] = implementation

    def node(self, uses: str | None = None) -> Callable[[Impl], Impl]:
        """Decorator registering a function or class under ``uses`` (default: its name)."""

        def register(implementation: Impl) -> Impl:
            self.add(uses or str(getattr(implementation, "__name__", "")), implementation)
            return implementation

        return register

    def __getitem__(self, uses: str) -> NodeImplementation:
        return self._implementations[uses]

    def __iter__(self) -> Iterator[str]:
        return iter(self._implementations)

    def __len__(self) -> int:
        return len(self._implementations)
