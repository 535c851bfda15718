"""The blueprint model: flowcraft's workflow JSON, validated and immutable after loading.

Loading collects every problem in a blueprint before raising, each located by the path of the
bad field (``nodes[2].config.fallback``), so authors fix them in one pass.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from functools import cached_property
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from flowcraft_puller.engine.errors import BlueprintError, BlueprintIssue
from flowcraft_puller.engine.evaluators import EvaluatorName
from flowcraft_puller.engine.jsvalues import to_string

if TYPE_CHECKING:
    from flowcraft_puller.engine.analysis import Analysis

JoinStrategy = Literal["all", "any"]
BUILTIN_USES = frozenset(
    {"wait", "sleep", "webhook", "subflow", "batch-scatter", "batch-gather", "loop-controller"}
)
MAX_ID_CHARS = 512
"""The longest blueprint id, version or node id a run store accepts (docs/protocol.md §8)."""
MAX_WORKER_USES_CHARS = MAX_ID_CHARS - 24
"""The longest batch-scatter ``workerUsesKey``: a worker's node id is ``<uses>_<12 hex>_<index>``
and must stay within :data:`MAX_ID_CHARS` for indexes of up to ten digits."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)


class NodeConfig(_Frozen):
    """``config`` of a node. ``max_retries`` is the total number of attempts (TS meaning)."""

    max_retries: int = Field(default=1, alias="maxRetries")
    retry_delay_ms: float | None = Field(default=None, alias="retryDelay", ge=0)
    timeout_ms: float | None = Field(default=None, alias="timeout", gt=0)
    fallback: str | None = None
    join: JoinStrategy = Field(default="all", alias="joinStrategy")

    @field_validator("max_retries", mode="before")
    @classmethod
    def _attempts(cls, value: object) -> int:
        """Floor numbers and numeric strings as JavaScript's ``attempt <= maxRetries`` does."""
        if value is None:
            return 1
        if isinstance(value, bool):
            raise ValueError("must be a number of attempts, not a boolean")
        if isinstance(value, str):
            try:
                value = float(value.strip())
            except ValueError:
                raise ValueError(f"must be a number of attempts, got {value!r}") from None
        if not isinstance(value, (int, float)) or math.isnan(value):
            raise ValueError(f"must be a number of attempts, got {value!r}")
        return max(0, math.floor(value)) if math.isfinite(value) else 10**9

    @field_validator("join", mode="before")
    @classmethod
    def _join_default(cls, value: object) -> object:
        return "all" if value is None else value


class NodeDef(_Frozen):
    """One node of a blueprint."""

    id: str = Field(min_length=1, max_length=MAX_ID_CHARS)
    uses: str = Field(min_length=1)
    params: Mapping[str, Any] = Field(default_factory=dict)
    inputs: str | Mapping[str, str] | None = None
    config: NodeConfig = Field(default_factory=NodeConfig)

    @field_validator("params", "config", mode="before")
    @classmethod
    def _null_is_empty(cls, value: object) -> object:
        return {} if value is None else value

    @field_validator("params", mode="after")
    @classmethod
    def _freeze_params(cls, value: Mapping[str, Any]) -> Mapping[str, Any]:
        return MappingProxyType(dict(value))

    @field_validator("inputs", mode="after")
    @classmethod
    def _freeze_inputs(
        cls, value: str | Mapping[str, str] | None
    ) -> str | Mapping[str, str] | None:
        return MappingProxyType(dict(value)) if isinstance(value, Mapping) else value


class EdgeDef(_Frozen):
    """A directed edge; ``action`` and ``condition`` gate it, ``transform`` shapes the input."""

    source: str
    target: str
    action: str | None = None
    condition: str | None = None
    transform: str | None = None


class Blueprint(_Frozen):
    """A validated, immutable workflow blueprint."""

    id: str
    nodes: tuple[NodeDef, ...]
    edges: tuple[EdgeDef, ...] = ()
    metadata: Mapping[str, Any] = Field(default_factory=dict)

    @field_validator("metadata", mode="after")
    @classmethod
    def _freeze_metadata(cls, value: Mapping[str, Any]) -> Mapping[str, Any]:
        return MappingProxyType(dict(value))

    @cached_property
    def version(self) -> str | None:
        """``metadata.version``, or None when absent or falsy (TS: ``version || null``)."""
        raw = self.metadata.get("version")
        if raw is None or raw is False or raw == "" or raw == 0:
            return None
        return raw if isinstance(raw, str) else to_string(raw)

    @cached_property
    def evaluator(self) -> EvaluatorName | None:
        """The evaluator this blueprint asks for in ``metadata.evaluator``, if any."""
        raw = self.metadata.get("evaluator")
        return raw if raw in ("property", "expression") else None

    @cached_property
    def node_map(self) -> Mapping[str, NodeDef]:
        return MappingProxyType({node.id: node for node in self.nodes})

    @cached_property
    def out_edges(self) -> Mapping[str, tuple[EdgeDef, ...]]:
        """Outgoing edges by source node, in blueprint order."""
        grouped: dict[str, list[EdgeDef]] = {}
        for edge in self.edges:
            grouped.setdefault(edge.source, []).append(edge)
        return MappingProxyType({k: tuple(v) for k, v in grouped.items()})

    @cached_property
    def in_edges(self) -> Mapping[str, tuple[EdgeDef, ...]]:
        """Incoming edges by target node, in blueprint order."""
        grouped: dict[str, list[EdgeDef]] = {}
        for edge in self.edges:
            grouped.setdefault(edge.target, []).append(edge)
        return MappingProxyType({k: tuple(v) for k, v in grouped.items()})

    @cached_property
    def protected_by(self) -> Mapping[str, tuple[str, ...]]:
        """For each fallback node, the nodes that name it in ``config.fallback``."""
        grouped: dict[str, list[str]] = {}
        for node in self.nodes:
            if node.config.fallback is not None:
                grouped.setdefault(node.config.fallback, []).append(node.id)
        return MappingProxyType({k: tuple(v) for k, v in grouped.items()})

    @cached_property
    def analysis(self) -> Analysis:
        """Roles, routing candidates, loops and topology (computed once)."""
        from flowcraft_puller.engine.analysis import Analysis

        return Analysis(self)

    def node(self, node_id: str) -> NodeDef:
        """The node called ``node_id``; KeyError if there is none."""
        return self.node_map[node_id]

    def to_json(self) -> dict[str, Any]:
        """The blueprint as flowcraft JSON (for `graph`, logs and the TS engine)."""
        return {
            "id": self.id,
            "nodes": [
                {
                    "id": n.id,
                    "uses": n.uses,
                    **({"params": dict(n.params)} if n.params else {}),
                    **({"inputs": _plain(n.inputs)} if n.inputs is not None else {}),
                    "config": n.config.model_dump(by_alias=True, exclude_defaults=True),
                }
                for n in self.nodes
            ],
            "edges": [e.model_dump(exclude_none=True) for e in self.edges],
            "metadata": dict(self.metadata),
        }


def _plain(inputs: str | Mapping[str, str]) -> str | dict[str, str]:
    return inputs if isinstance(inputs, str) else dict(inputs)


def _path(prefix: str, loc: Sequence[int | str]) -> str:
    path = prefix
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


def _items(raw: object, field: str, blueprint_id: str, issues: list[BlueprintIssue]) -> list[Any]:
    """Nodes and edges may be a list or an object whose values are taken (as TS does)."""
    if raw is None:
        return []
    if isinstance(raw, Mapping):
        return list(raw.values())
    if isinstance(raw, list):
        return raw
    issues.append(BlueprintIssue(blueprint_id, field, "must be a list or an object"))
    return []


def _validate_items(
    model: type[NodeDef] | type[EdgeDef],
    items: list[Any],
    field: str,
    blueprint_id: str,
    issues: list[BlueprintIssue],
) -> list[tuple[int, Any]]:
    """The items that validate, each with its index in the source."""
    valid = []
    for index, item in enumerate(items):
        try:
            valid.append((index, model.model_validate(item)))
        except ValidationError as exc:
            for error in exc.errors():
                issues.append(
                    BlueprintIssue(
                        blueprint_id, _path(f"{field}[{index}]", error["loc"]), error["msg"]
                    )
                )
    return valid


def _too_long(text: str) -> str:
    return f"must have at most {MAX_ID_CHARS} characters (the run store's limit), not {len(text)}"


def load_blueprint(data: object) -> Blueprint:
    """Validate flowcraft blueprint JSON (already decoded) into a :class:`Blueprint`.

    Raises :class:`BlueprintError` listing every structural and graph problem found.
    """
    from flowcraft_puller.engine.validation import check_graph

    if not isinstance(data, Mapping):
        raise BlueprintError("<unknown>", [BlueprintIssue("<unknown>", "$", "must be an object")])
    raw_id = data.get("id")
    blueprint_id = raw_id if isinstance(raw_id, str) and raw_id else "<unknown>"
    issues: list[BlueprintIssue] = []
    if not (isinstance(raw_id, str) and raw_id):
        issues.append(BlueprintIssue(blueprint_id, "id", "must be a non-empty string"))
    elif len(raw_id) > MAX_ID_CHARS:
        issues.append(BlueprintIssue(blueprint_id, "id", _too_long(raw_id)))
    raw_nodes = _items(data.get("nodes"), "nodes", blueprint_id, issues)
    if not raw_nodes and isinstance(data.get("nodes"), (list, Mapping, type(None))):
        issues.append(BlueprintIssue(blueprint_id, "nodes", "must contain at least one node"))
    raw_edges = _items(data.get("edges"), "edges", blueprint_id, issues)
    valid_nodes = _validate_items(NodeDef, raw_nodes, "nodes", blueprint_id, issues)
    valid_edges = _validate_items(EdgeDef, raw_edges, "edges", blueprint_id, issues)
    nodes = [node for _, node in valid_nodes]
    edges = [edge for _, edge in valid_edges]
    metadata = data.get("metadata")
    if metadata is not None and not isinstance(metadata, Mapping):
        issues.append(BlueprintIssue(blueprint_id, "metadata", "must be an object"))
        metadata = None
    blueprint = Blueprint(
        id=blueprint_id, nodes=tuple(nodes), edges=tuple(edges), metadata=metadata or {}
    )
    if blueprint.version is not None and len(blueprint.version) > MAX_ID_CHARS:
        issues.append(
            BlueprintIssue(blueprint_id, "metadata.version", _too_long(blueprint.version))
        )
    declared = {
        n["id"] for n in raw_nodes if isinstance(n, Mapping) and isinstance(n.get("id"), str)
    }
    issues.extend(
        check_graph(
            blueprint,
            declared_ids=declared,
            node_positions=[index for index, _ in valid_nodes],
            edge_positions=[index for index, _ in valid_edges],
            check_start=not issues,
        )
    )
    errors = [issue for issue in issues if issue.severity == "error"]
    if errors:
        raise BlueprintError(blueprint_id, errors)
    return blueprint


def parse_blueprint(text: str | bytes, *, source: str = "<string>") -> Blueprint:
    """Decode blueprint JSON text and validate it; ``source`` names the text in errors."""
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise BlueprintError(
            source, [BlueprintIssue(source, "$", f"not valid JSON: {exc}")]
        ) from None
    return load_blueprint(data)
