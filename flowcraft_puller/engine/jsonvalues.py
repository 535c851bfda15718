"""Checking that node outputs and context writes are JSON, and saying where they are not."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from flowcraft_puller.engine.errors import OutputNotSerializableError


def check_json(value: Any, what: str) -> None:
    """Raise :class:`OutputNotSerializableError` naming where ``value`` is not JSON."""
    try:
        orjson.dumps(value)
    except TypeError as exc:
        path, culprit = _find_culprit(value, "$")
        raise OutputNotSerializableError(
            f"{what} is not JSON-serialisable: {type(culprit).__name__} at {path} ({exc})"
        ) from None


def _find_culprit(value: Any, path: str) -> tuple[str, Any]:
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                return f"{path} (key {key!r})", key
            try:
                orjson.dumps(item)
            except TypeError:
                return _find_culprit(item, f"{path}.{key}")
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            try:
                orjson.dumps(item)
            except TypeError:
                return _find_culprit(item, f"{path}[{index}]")
    return path, value
