"""Loading what a daemon runs: blueprints (files, globs, ``module:attribute``) and node code."""

from __future__ import annotations

import glob
import importlib
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flowcraft_puller.engine.blueprint import Blueprint, load_blueprint, parse_blueprint
from flowcraft_puller.engine.errors import BlueprintError, BlueprintIssue
from flowcraft_puller.engine.evaluators import EvaluatorName, make_evaluator
from flowcraft_puller.engine.nodes import NodeImplementation
from flowcraft_puller.engine.validation import lint_blueprint


class WorkflowLoadError(Exception):
    """Blueprints or node code could not be loaded; the message names the source."""


@dataclass(frozen=True)
class Workflows:
    """Everything a daemon executes: blueprints by id, node implementations, dependencies."""

    blueprints: Mapping[str, Blueprint]
    registry: Mapping[str, NodeImplementation]
    dependencies: Mapping[str, Any] = field(default_factory=dict)
    sources: Mapping[str, str] = field(default_factory=dict)
    """Where each blueprint came from (file path or ``module:attribute``)."""

    def warnings(self, evaluator: EvaluatorName) -> list[BlueprintIssue]:
        """Lint warnings for every blueprint (unknown ``uses``, dubious expressions, …)."""
        issues = []
        for blueprint in self.blueprints.values():
            chosen = make_evaluator(blueprint.evaluator or evaluator)
            issues.extend(lint_blueprint(blueprint, evaluator=chosen, known_uses=self.registry))
        return issues

    def unresolved_uses(self) -> list[str]:
        """``blueprint: nodes[i].uses`` for every ``uses`` with no implementation or built-in."""
        from flowcraft_puller.engine.blueprint import BUILTIN_USES

        missing = []
        for blueprint in self.blueprints.values():
            for index, node in enumerate(blueprint.nodes):
                if node.uses not in self.registry and node.uses not in BUILTIN_USES:
                    missing.append(
                        f"{blueprint.id}: nodes[{index}].uses: no implementation for {node.uses!r}"
                    )
        return missing


def import_attribute(reference: str, base_dir: Path) -> Any:
    """The object named by ``package.module:attribute`` (``base_dir`` is importable)."""
    module_name, sep, attribute = reference.partition(":")
    if not sep or not module_name or not attribute:
        raise WorkflowLoadError(f"{reference!r}: expected 'module:attribute'")
    if str(base_dir) not in sys.path:
        sys.path.insert(0, str(base_dir))
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise WorkflowLoadError(f"{reference}: cannot import {module_name!r}: {exc}") from exc
    target: Any = module
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise WorkflowLoadError(
                f"{reference}: module {module_name!r} has no {attribute!r}"
            ) from None
    return target


def _blueprints_from_object(value: Any, reference: str) -> list[Blueprint]:
    if isinstance(value, Blueprint):
        return [value]
    if isinstance(value, Mapping) and "nodes" in value and "id" in value:
        return [load_blueprint(value)]
    items: Iterable[Any] = value.values() if isinstance(value, Mapping) else value
    try:
        return [item if isinstance(item, Blueprint) else load_blueprint(item) for item in items]
    except TypeError:
        raise WorkflowLoadError(
            f"{reference}: expected a blueprint, a list of blueprints or a dict of them"
        ) from None


def _paths(pattern: str, base_dir: Path) -> list[Path]:
    full = pattern if Path(pattern).is_absolute() else str(base_dir / pattern)
    matches = sorted(Path(p) for p in glob.glob(full, recursive=True))
    if not matches:
        raise WorkflowLoadError(f"{pattern}: no blueprint file matches (relative to {base_dir})")
    return matches


def load_blueprint_sources(
    sources: Iterable[str], base_dir: Path
) -> tuple[dict[str, Blueprint], dict[str, str]]:
    """Blueprints from file globs and ``module:attribute`` references; ids must be unique."""
    blueprints: dict[str, Blueprint] = {}
    origin: dict[str, str] = {}
    problems: list[str] = []

    def add(blueprint: Blueprint, where: str) -> None:
        if blueprint.id in blueprints:
            problems.append(
                f"{where}: blueprint id {blueprint.id!r} is also defined in {origin[blueprint.id]}"
            )
            return
        blueprints[blueprint.id] = blueprint
        origin[blueprint.id] = where

    for source in sources:
        try:
            if ":" in source and Path(source).suffix != ".json":
                for blueprint in _blueprints_from_object(
                    import_attribute(source, base_dir), source
                ):
                    add(blueprint, source)
                continue
            for path in _paths(source, base_dir):
                try:
                    add(parse_blueprint(path.read_bytes(), source=str(path)), str(path))
                except OSError as exc:
                    problems.append(f"{path}: cannot read: {exc.strerror}")
        except BlueprintError as exc:
            problems.append(f"{source}: {exc}")
        except WorkflowLoadError as exc:
            problems.append(str(exc))
    if problems:
        raise WorkflowLoadError("\n".join(problems))
    return blueprints, origin


def load_registry(references: Iterable[str], base_dir: Path) -> dict[str, NodeImplementation]:
    """Merge node registries named by ``module:attribute`` (dicts or registry objects)."""
    registry: dict[str, NodeImplementation] = {}
    for reference in references:
        value = import_attribute(reference, base_dir)
        if not isinstance(value, Mapping):
            raise WorkflowLoadError(f"{reference}: expected a mapping of uses → implementation")
        for uses, implementation in value.items():
            if not callable(implementation):
                raise WorkflowLoadError(f"{reference}: implementation of {uses!r} is not callable")
            registry[str(uses)] = implementation
    return registry


def load_workflows(
    blueprint_sources: Iterable[str],
    node_sources: Iterable[str],
    base_dir: Path,
    dependencies: str | None = None,
) -> Workflows:
    """Load blueprints, node registries and dependencies as configured."""
    blueprints, origin = load_blueprint_sources(blueprint_sources, base_dir)
    registry = load_registry(node_sources, base_dir)
    deps: Mapping[str, Any] = {}
    if dependencies:
        deps = import_attribute(dependencies, base_dir)
        if not isinstance(deps, Mapping):
            raise WorkflowLoadError(f"{dependencies}: expected a mapping")
    return Workflows(blueprints=blueprints, registry=registry, dependencies=deps, sources=origin)
