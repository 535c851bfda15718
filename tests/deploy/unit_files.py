"""Reading systemd unit files the way systemd does, for tests that hold the daemon to its unit.

Only what the units in ``deploy/systemd/`` use: sections, repeated keys (an empty assignment
resets a list), comments, line continuations, and the ``%`` specifiers of service units.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Final

REPO: Final = Path(__file__).resolve().parents[2]
SYSTEMD_DIR: Final = REPO / "deploy" / "systemd"
UNITS: Final = ("flowcraft-puller.service", "flowcraft-puller@.service")

_SPECIFIER: Final = re.compile(r"%(.)")
_SECONDS: Final = {"": 1.0, "s": 1.0, "sec": 1.0, "ms": 0.001, "m": 60.0, "min": 60.0, "h": 3600.0}


class UnitFileError(ValueError):
    """The unit file uses something these helpers do not understand."""


@dataclass(frozen=True)
class UnitFile:
    """A parsed unit: ``sections[section][key]`` is the list of values in order."""

    path: Path
    sections: dict[str, dict[str, list[str]]]

    def values(self, section: str, key: str) -> list[str]:
        return self.sections.get(section, {}).get(key, [])

    def value(self, section: str, key: str) -> str:
        """The effective (last) value of a single-valued key; raises if it is not set."""
        values = self.values(section, key)
        if not values:
            raise UnitFileError(f"{self.path.name}: [{section}] {key}= is not set")
        return values[-1]

    def service(self, key: str) -> str:
        return self.value("Service", key)

    @property
    def is_template(self) -> bool:
        return self.path.name.endswith("@.service")


def parse_unit(path: Path) -> UnitFile:
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    pending = ""
    for raw in path.read_text().splitlines():
        line = pending + raw.strip()
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        if current is None or "=" not in line:
            raise UnitFileError(f"{path.name}: cannot parse {line!r}")
        key, _, value = line.partition("=")
        values = current.setdefault(key.strip(), [])
        if value.strip():
            values.append(value.strip())
        else:
            values.clear()
    return UnitFile(path, sections)


def expand_specifiers(text: str, specifiers: dict[str, str]) -> str:
    """Replace ``%X`` specifiers; an unknown one is an error, so new ones are noticed."""

    def replace(match: re.Match[str]) -> str:
        letter = match.group(1)
        if letter == "%":
            return "%"
        if letter not in specifiers:
            raise UnitFileError(f"specifier %{letter} in {text!r} is not emulated by the tests")
        return specifiers[letter]

    return _SPECIFIER.sub(replace, text)


def environment(unit: UnitFile) -> dict[str, str]:
    """The variables of every ``Environment=`` line (quoted words allowed, as in systemd)."""
    variables = {}
    for line in unit.values("Service", "Environment"):
        for word in shlex.split(line):
            name, sep, value = word.partition("=")
            if not sep:
                raise UnitFileError(f"{unit.path.name}: Environment={line!r}: {word!r} has no =")
            variables[name] = value
    return variables


def credentials(unit: UnitFile) -> dict[str, str]:
    """``LoadCredential=name:path`` as ``{name: path}``."""
    loaded = {}
    for line in unit.values("Service", "LoadCredential"):
        name, sep, path = line.partition(":")
        if not sep:
            raise UnitFileError(f"{unit.path.name}: LoadCredential={line!r} has no source path")
        loaded[name] = path
    return loaded


def seconds(value: str) -> float:
    """A systemd time span such as ``30``, ``30s``, ``1min 30s`` or ``500ms``."""
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value):
        if unit not in _SECONDS:
            raise UnitFileError(f"time span {value!r}: unit {unit!r} is not emulated")
        total += float(number) * _SECONDS[unit]
    return total
