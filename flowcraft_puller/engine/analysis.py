"""Graph analysis of a blueprint: node roles, routing candidates, loops and the run topology.

The run store resolves joins and skips from the *topology* computed here (each node's
successors, join strategy and loop back-edges), so that it never needs to read blueprints.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from types import MappingProxyType

from flowcraft_puller.engine.blueprint import Blueprint, EdgeDef, JoinStrategy

LOOP_CONTROLLER = "loop-controller"


@dataclass(frozen=True, slots=True)
class TopologyNode:
    """What the run store needs to know about one node to resolve its join."""

    succs: tuple[str, ...]
    join: JoinStrategy
    back_preds: tuple[str, ...] = ()


def _edge_key(edge: EdgeDef) -> str:
    return f"{edge.source}-{edge.target}-{edge.action or ''}-{edge.condition or ''}"


class Analysis:
    """Derived facts about a blueprint, computed once and cached."""

    def __init__(self, blueprint: Blueprint) -> None:
        self.blueprint = blueprint

    @cached_property
    def fallback_only(self) -> frozenset[str]:
        """Nodes that are some node's ``config.fallback`` and have no incoming edge.

        They never run as nodes of their own (TS W12): they run in place of the node they rescue.
        """
        bp = self.blueprint
        return frozenset(n for n in bp.protected_by if n in bp.node_map and n not in bp.in_edges)

    @cached_property
    def start_nodes(self) -> tuple[str, ...]:
        """Nodes with no incoming edge that are not another node's fallback (rule 1)."""
        bp = self.blueprint
        return tuple(
            n.id for n in bp.nodes if n.id not in bp.in_edges and n.id not in bp.protected_by
        )

    @cached_property
    def terminal_nodes(self) -> tuple[str, ...]:
        """Nodes with no outgoing edge, fallback-only nodes excluded."""
        bp = self.blueprint
        return tuple(
            n.id for n in bp.nodes if n.id not in bp.out_edges and n.id not in self.fallback_only
        )

    def candidate_edges(self, node_id: str, *, via_fallback: bool) -> tuple[EdgeDef, ...]:
        """The edges routing considers when ``node_id`` completes (TS §5.1 step 2).

        They are the node's own edges, then the edges of the nodes it is the fallback of, then
        (``via_fallback``) the edges of its own fallback node, deduplicated by
        ``source-target-action-condition``: the first position is kept, the last duplicate wins.
        """
        cache = self._candidates_via_fallback if via_fallback else self._candidates
        return cache[node_id]

    def _collect_candidates(self, node_id: str, *, via_fallback: bool) -> tuple[EdgeDef, ...]:
        bp = self.blueprint
        edges = list(bp.out_edges.get(node_id, ()))
        for protected in bp.protected_by.get(node_id, ()):
            edges.extend(bp.out_edges.get(protected, ()))
        fallback = bp.node_map[node_id].config.fallback if node_id in bp.node_map else None
        if via_fallback and fallback is not None:
            edges.extend(bp.out_edges.get(fallback, ()))
        positions: dict[str, int] = {}
        ordered: list[EdgeDef] = []
        for edge in edges:
            key = _edge_key(edge)
            if key in positions:
                ordered[positions[key]] = edge
            else:
                positions[key] = len(ordered)
                ordered.append(edge)
        return tuple(e for e in ordered if e.target in bp.node_map)

    @cached_property
    def _candidates(self) -> Mapping[str, tuple[EdgeDef, ...]]:
        return {
            n.id: self._collect_candidates(n.id, via_fallback=False) for n in self.blueprint.nodes
        }

    @cached_property
    def _candidates_via_fallback(self) -> Mapping[str, tuple[EdgeDef, ...]]:
        return {
            n.id: self._collect_candidates(n.id, via_fallback=True) for n in self.blueprint.nodes
        }

    @cached_property
    def succs(self) -> Mapping[str, tuple[str, ...]]:
        """Distinct successors of each node that runs as a node (fallback-only nodes excluded)."""
        result: dict[str, tuple[str, ...]] = {}
        for node in self.blueprint.nodes:
            if node.id in self.fallback_only:
                continue
            targets: dict[str, None] = {}
            for via_fallback in (False, True):
                for edge in self.candidate_edges(node.id, via_fallback=via_fallback):
                    if edge.target not in self.fallback_only:
                        targets[edge.target] = None
            result[node.id] = tuple(targets)
        return MappingProxyType(result)

    @cached_property
    def preds(self) -> Mapping[str, tuple[str, ...]]:
        """Distinct predecessor nodes of each node, as the run store counts them (rule 11)."""
        result: dict[str, list[str]] = {n: [] for n in self.succs}
        for source, targets in self.succs.items():
            for target in targets:
                result[target].append(source)
        return MappingProxyType({k: tuple(v) for k, v in result.items()})

    @cached_property
    def loop_controllers(self) -> tuple[str, ...]:
        return tuple(n.id for n in self.blueprint.nodes if n.uses == LOOP_CONTROLLER)

    def continue_targets(self, controller: str) -> tuple[str, ...]:
        """Targets of the controller's ``continue`` edges."""
        return tuple(
            e.target
            for e in self.blueprint.out_edges.get(controller, ())
            if e.action == "continue" and e.target in self.blueprint.node_map
        )

    @cached_property
    def loop_bodies(self) -> Mapping[str, frozenset[str]]:
        """For each loop controller, the nodes on a path from a ``continue`` target back to it."""
        bodies: dict[str, frozenset[str]] = {}
        for controller in self.loop_controllers:
            forward = self._reachable(self.continue_targets(controller), self.succs, controller)
            backward = self._reachable(self.preds.get(controller, ()), self.preds, controller)
            bodies[controller] = frozenset(forward & backward)
        return MappingProxyType(bodies)

    @staticmethod
    def _reachable(
        roots: tuple[str, ...], graph: Mapping[str, tuple[str, ...]], stop: str
    ) -> set[str]:
        seen: set[str] = set()
        stack = [r for r in roots if r != stop]
        while stack:
            node = stack.pop()
            if node in seen:
                continue
            seen.add(node)
            stack.extend(n for n in graph.get(node, ()) if n != stop and n not in seen)
        return seen

    def rearm_set(self, controller: str) -> tuple[str, ...]:
        """What a ``continue`` re-arms: the controller and its loop body, in blueprint order."""
        members = self.loop_bodies[controller] | {controller}
        return tuple(n.id for n in self.blueprint.nodes if n.id in members)

    @cached_property
    def cycles(self) -> tuple[tuple[str, ...], ...]:
        """Strongly connected groups of nodes that form a cycle (Tarjan), in blueprint order."""
        index: dict[str, int] = {}
        low: dict[str, int] = {}
        on_stack: set[str] = set()
        stack: list[str] = []
        groups: list[tuple[str, ...]] = []
        order = {n.id: i for i, n in enumerate(self.blueprint.nodes)}

        def visit(root: str) -> None:
            work = [(root, iter(self.succs.get(root, ())))]
            index[root] = low[root] = len(index)
            stack.append(root)
            on_stack.add(root)
            while work:
                node, children = work[-1]
                advanced = False
                for child in children:
                    if child not in index:
                        index[child] = low[child] = len(index)
                        stack.append(child)
                        on_stack.add(child)
                        work.append((child, iter(self.succs.get(child, ()))))
                        advanced = True
                        break
                    if child in on_stack:
                        low[node] = min(low[node], index[child])
                if advanced:
                    continue
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    group = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        group.append(member)
                        if member == node:
                            break
                    if len(group) > 1 or node in self.succs.get(node, ()):
                        groups.append(tuple(sorted(group, key=order.__getitem__)))

        for node_id in self.succs:
            if node_id not in index:
                visit(node_id)
        return tuple(sorted(groups, key=lambda g: order[g[0]]))

    @cached_property
    def topology(self) -> Mapping[str, TopologyNode]:
        """The per-run topology handed to the run store at start."""
        bp = self.blueprint
        result: dict[str, TopologyNode] = {}
        for node_id, succs in self.succs.items():
            node = bp.node_map[node_id]
            back: tuple[str, ...] = ()
            if node.uses == LOOP_CONTROLLER:
                body = self.loop_bodies[node_id]
                back = tuple(p for p in self.preds[node_id] if p in body)
            result[node_id] = TopologyNode(succs=succs, join=node.config.join, back_preds=back)
        return MappingProxyType(result)
