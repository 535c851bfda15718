"""A blueprint whose id, version or node ids exceed the run store's limits (protocol §8) is
refused when it is loaded, naming the field, instead of failing each run at its start."""

from __future__ import annotations

from typing import Any

import pytest

from flowcraft_puller.engine.blueprint import MAX_ID_CHARS, MAX_WORKER_USES_CHARS, load_blueprint
from flowcraft_puller.engine.errors import BlueprintError
from flowcraft_puller.runstore.protocol import MAX_NAME_CHARS, MAX_NODE_ID_CHARS


def blueprint(
    blueprint_id: str = "bp", node_id: str = "A", version: object = None
) -> dict[str, Any]:
    return {
        "id": blueprint_id,
        "nodes": [{"id": node_id, "uses": "echo"}, {"id": "B", "uses": "echo"}],
        "edges": [{"source": node_id, "target": "B"}],
        "metadata": {} if version is None else {"version": version},
    }


def refused_paths(data: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(BlueprintError) as caught:
        load_blueprint(data)
    return {issue.path: issue.message for issue in caught.value.issues}


def test_the_engine_limit_is_the_run_store_limit() -> None:
    assert MAX_ID_CHARS == MAX_NAME_CHARS == MAX_NODE_ID_CHARS


def test_ids_and_a_version_at_the_limit_load() -> None:
    long = "x" * MAX_ID_CHARS
    loaded = load_blueprint(blueprint(long, long, long))
    assert (loaded.id, loaded.nodes[0].id, loaded.version) == (long, long, long)


def test_a_blueprint_id_over_the_limit_is_refused_at_load() -> None:
    found = refused_paths(blueprint("x" * (MAX_ID_CHARS + 1)))
    assert list(found) == ["id"]
    assert f"at most {MAX_ID_CHARS} characters" in found["id"]


def test_a_version_over_the_limit_is_refused_at_load() -> None:
    found = refused_paths(blueprint(version="v" * (MAX_ID_CHARS + 1)))
    assert list(found) == ["metadata.version"]
    assert f"at most {MAX_ID_CHARS} characters" in found["metadata.version"]


def test_a_node_id_over_the_limit_is_refused_at_load_without_also_breaking_its_edges() -> None:
    found = refused_paths(blueprint(node_id="n" * (MAX_ID_CHARS + 1)))
    assert list(found) == ["nodes[0].id"]


def scatter(worker_uses: str) -> dict[str, Any]:
    return {
        "id": "bp",
        "nodes": [
            {
                "id": "S",
                "uses": "batch-scatter",
                "params": {"workerUsesKey": worker_uses, "gatherNodeId": "G"},
            },
            {"id": "G", "uses": "batch-gather"},
        ],
        "edges": [{"source": "S", "target": "G"}],
    }


def test_a_worker_uses_key_at_its_limit_loads_and_its_worker_ids_fit_the_store() -> None:
    uses = "w" * MAX_WORKER_USES_CHARS
    load_blueprint(scatter(uses))
    tenth_digit_worker = f"{uses}_{'0' * 12}_{9_999_999_999}"
    assert len(tenth_digit_worker) == MAX_NODE_ID_CHARS


def test_a_worker_uses_key_too_long_for_its_worker_ids_is_refused_at_load() -> None:
    found = refused_paths(scatter("w" * (MAX_WORKER_USES_CHARS + 1)))
    [(path, message)] = found.items()
    assert path.endswith("params.workerUsesKey")
    assert f"at most {MAX_WORKER_USES_CHARS} characters" in message
