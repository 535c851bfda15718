"""Graph-level blueprint checks: errors that make a blueprint unusable, and lint warnings."""

from __future__ import annotations

from collections.abc import Collection, Sequence

from flowcraft_puller.engine.blueprint import BUILTIN_USES, MAX_WORKER_USES_CHARS, Blueprint
from flowcraft_puller.engine.durations import DurationError, parse_duration_ms
from flowcraft_puller.engine.errors import BlueprintIssue
from flowcraft_puller.engine.evaluators import Evaluator
from flowcraft_puller.engine.jsvalues import UNDEFINED


def check_graph(
    blueprint: Blueprint,
    *,
    declared_ids: Collection[str],
    node_positions: Sequence[int] | None = None,
    edge_positions: Sequence[int] | None = None,
    check_start: bool = True,
) -> list[BlueprintIssue]:
    """Structural errors: duplicate ids, dangling edges and fallbacks, mis-wired built-ins.

    ``declared_ids`` holds every node id present in the source, including nodes that failed
    field validation, so that their edges are not reported a second time.
    """
    bp = blueprint
    issues: list[BlueprintIssue] = []
    node_at = node_positions or range(len(bp.nodes))
    edge_at = edge_positions or range(len(bp.edges))

    def error(path: str, message: str) -> None:
        issues.append(BlueprintIssue(bp.id, path, message))

    seen: dict[str, int] = {}
    for index, node in enumerate(bp.nodes):
        if node.id in seen:
            error(
                f"nodes[{node_at[index]}].id",
                f"duplicate node id {node.id!r} (first at nodes[{node_at[seen[node.id]]}])",
            )
        else:
            seen[node.id] = index
    for index, edge in enumerate(bp.edges):
        for end in ("source", "target"):
            node_id = getattr(edge, end)
            if node_id not in declared_ids:
                error(f"edges[{edge_at[index]}].{end}", f"unknown node {node_id!r}")
    for index, node in enumerate(bp.nodes):
        path = f"nodes[{node_at[index]}]"
        fallback = node.config.fallback
        if fallback is not None:
            if fallback == node.id:
                error(f"{path}.config.fallback", "a node cannot be its own fallback")
            elif fallback not in declared_ids:
                error(f"{path}.config.fallback", f"names no node of this blueprint: {fallback!r}")
        issues.extend(_check_builtin(bp, index, path))
    if check_start and bp.nodes and not issues and not bp.analysis.start_nodes:
        error(
            "nodes",
            "no start node: every node has an incoming edge or is another node's fallback",
        )
    return issues


def _check_builtin(bp: Blueprint, index: int, path: str) -> list[BlueprintIssue]:
    node = bp.nodes[index]
    issues: list[BlueprintIssue] = []

    def error(field: str, message: str) -> None:
        issues.append(BlueprintIssue(bp.id, f"{path}.{field}", message))

    params = node.params
    if node.uses == "loop-controller":
        if not isinstance(params.get("condition"), str):
            error("params.condition", "a loop-controller needs a string condition")
        if not any(e.action == "continue" for e in bp.out_edges.get(node.id, ())):
            error(
                "uses",
                f"Loop '{node.id}' has no continue edge to start node. Ensure edges are wired "
                "inside the loop and incoming/breaking edges point to the loop controller.",
            )
    elif node.uses == "batch-scatter":
        for key in ("workerUsesKey", "gatherNodeId"):
            if not isinstance(params.get(key), str) or not params.get(key):
                error(f"params.{key}", "batch-scatter requires 'workerUsesKey' and 'gatherNodeId'")
        uses = params.get("workerUsesKey")
        if isinstance(uses, str) and len(uses) > MAX_WORKER_USES_CHARS:
            error(
                "params.workerUsesKey",
                f"must have at most {MAX_WORKER_USES_CHARS} characters (its workers' node ids "
                f"add 24 and the run store allows 512), not {len(uses)}",
            )
        gather = params.get("gatherNodeId")
        if isinstance(gather, str) and gather:
            target = bp.node_map.get(gather)
            if target is None or target.uses != "batch-gather":
                error(
                    "params.gatherNodeId",
                    f"{gather!r} is not a batch-gather node of this blueprint",
                )
        chunk = params.get("chunkSize")
        if chunk is not None and (
            not isinstance(chunk, int) or isinstance(chunk, bool) or chunk < 1
        ):
            error("params.chunkSize", "must be a positive integer")
    elif node.uses == "subflow":
        if not isinstance(params.get("blueprintId"), str) or not params.get("blueprintId"):
            error(
                "params.blueprintId",
                f"Subflow node '{node.id}' is missing 'blueprintId' parameter.",
            )
        for key in ("inputs", "outputs"):
            mapping = params.get(key)
            if mapping is not None and not (
                isinstance(mapping, dict) and all(isinstance(v, str) for v in mapping.values())
            ):
                error(f"params.{key}", "must map names to context keys (strings)")
    return issues


def lint_blueprint(
    blueprint: Blueprint, *, evaluator: Evaluator, known_uses: Collection[str] | None = None
) -> list[BlueprintIssue]:
    """Warnings about a valid blueprint: things that will fail or misbehave when the run gets there.

    An unknown ``uses`` is a warning, not an error: another daemon's registry may have it.
    """
    bp = blueprint
    issues: list[BlueprintIssue] = []

    def warn(path: str, message: str) -> None:
        issues.append(BlueprintIssue(bp.id, path, message, severity="warning"))

    for index, node in enumerate(bp.nodes):
        path = f"nodes[{index}]"
        if known_uses is not None and node.uses not in known_uses and node.uses not in BUILTIN_USES:
            warn(f"{path}.uses", f"no implementation registered for {node.uses!r}")
        if node.config.max_retries < 1:
            warn(
                f"{path}.config.maxRetries",
                "fewer than one attempt: the node fails without running",
            )
        if node.uses == "sleep":
            try:
                parse_duration_ms(node.id, node.params.get("duration", UNDEFINED))
            except DurationError as exc:
                warn(f"{path}.params.duration", str(exc))
        if node.uses == "loop-controller" and isinstance(node.params.get("condition"), str):
            reason = evaluator.check(node.params["condition"])
            if reason:
                warn(f"{path}.params.condition", reason)
    for index, edge in enumerate(bp.edges):
        for field in ("condition", "transform"):
            expression = getattr(edge, field)
            if expression is not None:
                reason = evaluator.check(expression)
                if reason:
                    warn(f"edges[{index}].{field}", reason)
    analysis = bp.analysis
    for group in analysis.cycles:
        if not any(bp.node_map[n].uses == "loop-controller" for n in group):
            warn(
                "edges",
                f"cycle {' -> '.join(group)} does not pass through a loop-controller: it will "
                "not iterate, and an 'all' join inside it waits for a predecessor that cannot "
                "arrive first",
            )
    return issues
