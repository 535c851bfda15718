"""Sleep durations: milliseconds, or strings such as ``"10s"``, ``"5m"``, ``"1h"``, ``"2d"``."""

from __future__ import annotations

import re
from typing import Final

from flowcraft_puller.engine.jsvalues import is_number, typeof

_DURATION: Final = re.compile(r"^(\d+)([smhd])$")
_UNIT_MS: Final = {"s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


class DurationError(ValueError):
    """A sleep duration that is not a non-negative number of ms or a ``<n><s|m|h|d>`` string."""


def parse_duration_ms(node_id: str, duration: object) -> float:
    """Milliseconds of a sleep node's ``params.duration``, with the TypeScript error texts."""
    if isinstance(duration, str):
        match = _DURATION.match(duration)
        if match is None:
            raise DurationError(
                f"SleepNode '{node_id}' received an invalid duration string: '{duration}'. "
                "Expected format: '5m', '10s', '1h', '2d'"
            )
        return int(match.group(1)) * _UNIT_MS[match.group(2)]
    if not is_number(duration):
        raise DurationError(
            f"SleepNode '{node_id}' received an invalid duration type: {typeof(duration)}"
        )
    assert isinstance(duration, (int, float))
    if duration < 0:
        raise DurationError(f"SleepNode '{node_id}' received a negative duration.")
    return float(duration)
