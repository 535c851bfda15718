"""The run-store contract (docs/protocol.md), checked over HTTP only.

Every store — the emulator today, the Worker under workerd later — must pass this suite. It
only speaks HTTP to ``run_store_url`` and reads delivered jobs from ``job_sink``; each test
works on runs of its own, so the tests share one store.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from urllib.parse import quote

import httpx
import orjson
import pytest

JobSink = Callable[[], list[Any]]

LEASE_MS = 60_000
HOOK_TOKEN = "hook-token-0123456789abcdefghij"
_UNSET: Any = object()


# ---- helpers -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def http(run_store_url: tuple[str, str]) -> Iterator[httpx.Client]:
    base_url, secret = run_store_url
    headers = {"Authorization": f"Bearer {secret}"}
    with httpx.Client(base_url=base_url, headers=headers, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def anon(run_store_url: tuple[str, str]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=run_store_url[0], timeout=30) as client:
        yield client


def new_run_id() -> str:
    return f"c-{uuid.uuid4().hex}"


def topology(
    edges: dict[str, list[str]],
    *,
    any_join: Iterable[str] = (),
    back: dict[str, list[str]] | None = None,
) -> dict[str, Any]:
    nodes = set(edges) | {t for targets in edges.values() for t in targets}
    joins = set(any_join)
    return {
        node: {
            "succs": edges.get(node, []),
            "join": "any" if node in joins else "all",
            "backPreds": (back or {}).get(node, []),
        }
        for node in sorted(nodes)
    }


def send(client: httpx.Client, method: str, path: str, body: Any = _UNSET) -> httpx.Response:
    content = None if body is _UNSET else orjson.dumps(body)
    return client.request(method, path, content=content)


def ok(client: httpx.Client, path: str, body: Any = _UNSET, *, method: str = "POST") -> Any:
    response = send(client, method, path, body)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    return response.json()


def rejected(
    response: httpx.Response, status: int, code: str, field: Any = _UNSET
) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert isinstance(error["message"], str)
    assert error["message"]
    if field is not _UNSET:
        assert error.get("field") == field
    return error  # type: ignore[no-any-return]


def start(
    client: httpx.Client,
    edges: dict[str, list[str]],
    start_nodes: list[str],
    *,
    run_id: str | None = None,
    blueprint: str = "contract",
    version: str | None = None,
    context: dict[str, Any] | None = None,
    **extra: Any,
) -> str:
    run_id = run_id or new_run_id()
    body = {
        "blueprintId": blueprint,
        "blueprintVersion": version,
        "context": context or {},
        "topology": extra.pop("topology", None) or topology(edges),
        "startNodes": start_nodes,
        **extra,
    }
    answer = ok(client, f"/runs/{run_id}/start", body)
    assert answer["runId"] == run_id
    assert answer["created"] is True
    return run_id


def claim(
    client: httpx.Client,
    run_id: str,
    node: str,
    *,
    token: str = "token-1",
    gen: int | None = None,
    lease_ms: int = LEASE_MS,
    version: str | None = None,
) -> dict[str, Any]:
    body = {"nodeId": node, "gen": gen, "token": token, "leaseMs": lease_ms}
    body["blueprintVersion"] = version
    return ok(client, f"/runs/{run_id}/claim", body)  # type: ignore[no-any-return]


def commit_body(
    node: str,
    gen: int = 0,
    *,
    output: Any = None,
    action: str | None = None,
    token: str = "token-1",
    **fields: Any,
) -> dict[str, Any]:
    body = {"nodeId": node, "gen": gen, "token": token, **fields}
    if "awaiting" not in fields and "result" not in fields:
        body["result"] = {"output": output, "action": action}
    return body


def commit(client: httpx.Client, run_id: str, node: str, gen: int = 0, **fields: Any) -> Any:
    return ok(client, f"/runs/{run_id}/commit", commit_body(node, gen, **fields))


def run_node(
    client: httpx.Client,
    run_id: str,
    node: str,
    gen: int = 0,
    *,
    version: str | None = None,
    **fields: Any,
) -> Any:
    assert claim(client, run_id, node, gen=gen, version=version)["state"] == "run"
    return commit(client, run_id, node, gen, **fields)


def view(client: httpx.Client, run_id: str) -> dict[str, Any]:
    return ok(client, f"/runs/{run_id}", method="GET")  # type: ignore[no-any-return]


def refs(answer: dict[str, Any], key: str = "released") -> list[tuple[str, int]]:
    return sorted((ref["nodeId"], ref["gen"]) for ref in answer[key])


def jobs_for(
    sink: JobSink, run_id: str, *, until: Callable[[list[Any]], bool] | None = None
) -> list[Any]:
    """The jobs delivered for ``run_id``, waiting (up to 5 s) until ``until`` holds."""
    wanted = until or (lambda jobs: bool(jobs))
    deadline = time.monotonic() + 5
    while True:
        jobs = [job for job in sink() if isinstance(job, dict) and job.get("runId") == run_id]
        if wanted(jobs) or time.monotonic() > deadline:
            return jobs
        time.sleep(0.01)


def has_job(node: str, gen: int = 0) -> Callable[[list[Any]], bool]:
    return lambda jobs: any(j.get("nodeId") == node and j.get("gen") == gen for j in jobs)


def awaiting_spec(reason: str = "external_event", **fields: Any) -> dict[str, Any]:
    return {"reason": reason, "details": fields.pop("details", {}), "external": False, **fields}


# ---- health, auth, routing, limits -------------------------------------------------------


def test_health_reports_ok_version_and_store_kind(http: httpx.Client) -> None:
    answer = ok(http, "/health", method="GET")
    assert answer["ok"] is True
    assert isinstance(answer["version"], str)
    assert answer["store"] in ("worker", "emulator")


ROUTES = [
    ("GET", "/health"),
    ("GET", "/runs"),
    ("POST", "/batch"),
    ("GET", "/runs/{run}"),
    ("POST", "/runs/{run}/start"),
    ("POST", "/runs/{run}/claim"),
    ("POST", "/runs/{run}/commit"),
    ("POST", "/runs/{run}/attempts"),
    ("POST", "/runs/{run}/fail"),
    ("POST", "/runs/{run}/resume"),
    ("POST", "/runs/{run}/cancel"),
    ("POST", "/runs/{run}/reconcile"),
    ("POST", "/runs/{run}/ops"),
]
UNKNOWN_PATHS = [
    ("GET", "/nope"),
    ("POST", "/runs/{run}/explode"),
    ("GET", "/runs/{run}/claim/extra"),
    ("POST", "/hooks/{run}/A"),
    ("GET", "/"),
]
VALID_BODIES: dict[str, Any] = {
    "start": {"blueprintId": "other", "topology": {"A": {}}, "startNodes": []},
    "claim": {"nodeId": "A", "token": "intruder", "leaseMs": 1000},
    "commit": commit_body("A", output="forged"),
    "attempts": {"nodeId": "A", "gen": 0, "token": "t", "attempts": 9, "error": "forged"},
    "fail": {"reason": "forged"},
    "resume": {"action": "forged"},
    "cancel": {"reason": "forged"},
    "reconcile": {},
    "ops": {"ops": [{"op": "context.set", "key": "forged", "value": 1}]},
    "batch": {"entries": [{"op": "fail", "runId": "{run}", "body": {"reason": "forged"}}]},
}


def _body_for(path: str, run_id: str) -> Any:
    name = path.rsplit("/", 1)[-1]
    body = VALID_BODIES.get(name, _UNSET)
    if body is _UNSET:
        return body
    return orjson.loads(orjson.dumps(body).replace(b"{run}", run_id.encode()))


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer wrong-secret", "Basic {secret}", "Bearer", "Bearer {secret}x", "{secret}"],
    ids=["missing", "wrong", "basic-scheme", "empty", "longer", "no-scheme"],
)
def test_every_route_and_unknown_path_requires_the_bearer_secret(
    http: httpx.Client,
    anon: httpx.Client,
    run_store_url: tuple[str, str],
    authorization: str | None,
) -> None:
    run_id = start(http, {"A": []}, ["A"])
    before = view(http, run_id)
    headers = {}
    if authorization is not None:
        headers["Authorization"] = authorization.replace("{secret}", run_store_url[1])
    for method, template in [*ROUTES, *UNKNOWN_PATHS]:
        path = template.replace("{run}", run_id)
        body = _body_for(path, run_id)
        content = None if body is _UNSET else orjson.dumps(body)
        response = anon.request(method, path, content=content, headers=headers)
        rejected(response, 401, "unauthorized")
    assert view(http, run_id) == before


def test_unknown_paths_answer_404_when_authenticated(http: httpx.Client) -> None:
    run_id = start(http, {"A": []}, ["A"])
    for method, template in UNKNOWN_PATHS:
        rejected(send(http, method, template.replace("{run}", run_id), {}), 404, "not_found")


@pytest.mark.parametrize(
    ("method", "template", "allowed"),
    [
        ("POST", "/health", "GET"),
        ("DELETE", "/runs", "GET"),
        ("GET", "/batch", "POST"),
        ("POST", "/runs/{run}", "GET"),
        ("PUT", "/runs/{run}", "GET"),
        ("GET", "/runs/{run}/start", "POST"),
        ("GET", "/runs/{run}/claim", "POST"),
        ("DELETE", "/runs/{run}/commit", "POST"),
        ("PATCH", "/runs/{run}/attempts", "POST"),
        ("GET", "/runs/{run}/fail", "POST"),
        ("GET", "/runs/{run}/resume", "POST"),
        ("GET", "/runs/{run}/cancel", "POST"),
        ("GET", "/runs/{run}/reconcile", "POST"),
        ("GET", "/runs/{run}/ops", "POST"),
        ("GET", "/hooks/{run}/A/" + HOOK_TOKEN, "POST"),
    ],
)
def test_known_paths_with_a_wrong_method_answer_405_with_allow(
    http: httpx.Client, method: str, template: str, allowed: str
) -> None:
    run_id = start(http, {"A": []}, ["A"])
    before = view(http, run_id)
    response = send(http, method, template.replace("{run}", run_id))
    rejected(response, 405, "method_not_allowed")
    assert allowed in [m.strip() for m in response.headers["allow"].split(",")]
    assert view(http, run_id) == before


def test_a_body_over_4_mib_answers_413_and_changes_nothing(
    http: httpx.Client, anon: httpx.Client
) -> None:
    run_id = start(http, {"A": []}, ["A"])
    before = view(http, run_id)
    padding = b" " * (10 * 1024 * 1024)
    body = orjson.dumps(commit_body("A", output="x"))
    huge = body[:-1] + padding + b"}"
    rejected(http.post(f"/runs/{run_id}/commit", content=huge), 413, "payload_too_large")
    rejected(anon.post(f"/runs/{run_id}/commit", content=huge), 413, "payload_too_large")

    def chunked() -> Iterator[bytes]:
        yield body[:-1]
        for _ in range(5):
            yield b" " * (1024 * 1024)
        yield b"}"

    rejected(http.post(f"/runs/{run_id}/commit", content=chunked()), 413, "payload_too_large")
    assert view(http, run_id) == before


def test_a_body_just_under_the_limit_is_parsed(http: httpx.Client) -> None:
    run_id = start(http, {"A": []}, ["A"])
    claim(http, run_id, "A")
    body = orjson.dumps(commit_body("A", output="x"))
    padded = body[:-1] + b" " * (4 * 1024 * 1024 - len(body)) + b"}"
    assert len(padded) == 4 * 1024 * 1024
    response = http.post(f"/runs/{run_id}/commit", content=padded)
    assert response.status_code == 200, response.text
    assert view(http, run_id)["status"] == "completed"


def test_malformed_json_answers_400(http: httpx.Client) -> None:
    run_id = start(http, {"A": []}, ["A"])
    for path in (f"/runs/{run_id}/claim", f"/runs/{new_run_id()}/claim", "/batch"):
        rejected(http.post(path, content=b'{"nodeId": "A",'), 400, "bad_request")


def test_a_body_that_is_not_a_json_object_answers_400(http: httpx.Client) -> None:
    run_id = start(http, {"A": []}, ["A"])
    bodies: list[Any] = [[], "claim", 3, None]
    for body in bodies:
        rejected(send(http, "POST", f"/runs/{run_id}/claim", body), 400, "bad_request")


@pytest.mark.parametrize(
    ("call", "body", "field"),
    [
        ("claim", {"nodeId": "A", "token": "t", "leaseMs": 1000, "extra": 1}, "extra"),
        ("claim", {"node_id": "A", "nodeId": "A", "token": "t", "leaseMs": 1000}, "node_id"),
        ("claim", {"nodeId": "A", "leaseMs": 1000}, "token"),
        ("claim", {"nodeId": "A", "token": "t", "leaseMs": 0}, "leaseMs"),
        ("claim", {"nodeId": "A", "token": "t", "leaseMs": 43_200_001}, "leaseMs"),
        ("claim", {"nodeId": "", "token": "t", "leaseMs": 10}, "nodeId"),
        ("claim", {"nodeId": "A", "token": "t", "leaseMs": 10, "gen": -1}, "gen"),
        ("commit", commit_body("A", arrivals=["B", 3]), "arrivals[1]"),
        ("commit", commit_body("A", result={"output": 1, "extra": 2}), "result.extra"),
        ("commit", commit_body("A", awaiting={"reason": "nap"}), "awaiting.reason"),
        (
            "commit",
            commit_body("A", awaiting={"reason": "webhook", "hookToken": "short"}),
            "awaiting.hookToken",
        ),
        ("attempts", {"nodeId": "A", "gen": 0, "token": "t", "attempts": -1}, "attempts"),
        ("fail", {"reason": ""}, "reason"),
        ("cancel", {"reason": 5}, "reason"),
        ("reconcile", {"force": True}, "force"),
        ("ops", {"ops": []}, "ops"),
        ("ops", {"ops": [{"op": "get", "key": "k"}] * 101}, "ops"),
        ("ops", {"ops": [{"op": "explode", "key": "k"}]}, "ops[0].op"),
        ("ops", {"ops": [{"op": "get", "key": "k", "ttlSeconds": 0}]}, "ops[0].ttlSeconds"),
        (
            "start",
            {"blueprintId": "b", "topology": {"A": {"succs": [1]}}, "startNodes": []},
            "topology.A.succs[0]",
        ),
        ("start", {"blueprintId": "", "topology": {}, "startNodes": []}, "blueprintId"),
        ("start", {"blueprintId": "b", "topology": {}}, "startNodes"),
    ],
)
def test_schema_errors_answer_400_naming_the_field(
    http: httpx.Client, call: str, body: dict[str, Any], field: str
) -> None:
    run_id = start(http, {"A": ["B"], "B": []}, ["A"])
    claim(http, run_id, "A")
    before = view(http, run_id)
    rejected(send(http, "POST", f"/runs/{run_id}/{call}", body), 400, "bad_request", field)
    assert view(http, run_id) == before


@pytest.mark.parametrize("run_id", ["bad id", "-leading-dash", "x" * 129, "semi;colon"])
def test_a_malformed_run_id_answers_400_naming_run_id(http: httpx.Client, run_id: str) -> None:
    path = quote(run_id, safe="")
    rejected(send(http, "GET", f"/runs/{path}"), 400, "bad_request", "runId")
    body = VALID_BODIES["claim"]
    rejected(send(http, "POST", f"/runs/{path}/claim", body), 400, "bad_request", "runId")


@pytest.mark.parametrize(
    "call", ["claim", "commit", "attempts", "fail", "resume", "cancel", "reconcile", "ops"]
)
def test_calls_on_an_unknown_run_answer_404(http: httpx.Client, call: str) -> None:
    run_id = new_run_id()
    rejected(send(http, "POST", f"/runs/{run_id}/{call}", VALID_BODIES[call]), 404, "not_found")
    rejected(send(http, "GET", f"/runs/{run_id}"), 404, "not_found")


def test_schema_is_checked_before_run_existence(http: httpx.Client) -> None:
    response = send(http, "POST", f"/runs/{new_run_id()}/claim", {"nodeId": "A"})
    rejected(response, 400, "bad_request", "token")


def test_rejected_requests_leave_the_run_unchanged(http: httpx.Client, job_sink: JobSink) -> None:
    run_id = start(http, {"A": ["B"], "B": []}, ["A"])
    claim(http, run_id, "A")
    ok(http, f"/runs/{run_id}/ops", {"ops": [{"op": "setIfNotExist", "key": "k", "value": 1}]})
    before = view(http, run_id)
    jobs_before = len(jobs_for(job_sink, run_id))
    attempts = [
        ("commit", commit_body("A", arrivals=["Z"])),
        ("commit", commit_body("B")),
        ("commit", {"nodeId": "A", "gen": 0, "token": "t"}),
        ("commit", commit_body("nope")),
        ("resume", {"action": "go"}),
        ("start", {"blueprintId": "other", "topology": {"A": {}}, "startNodes": ["A"]}),
        (
            "ops",
            {
                "ops": [
                    {"op": "context.set", "key": "half", "value": 1},
                    {"op": "set", "key": "k"},
                ]
            },
        ),
        (
            "ops",
            {
                "ops": [
                    {"op": "context.set", "key": "half", "value": 1},
                    {"op": "increment", "key": "missing-ttl", "ttlSeconds": 5},
                    {"op": "get"},
                ]
            },
        ),
        (
            "ops",
            {
                "ops": [
                    {"op": "delete", "key": "k"},
                    {"op": "context.set", "key": "text", "value": "x"},
                    {"op": "setIfNotExist", "key": "s", "value": "str"},
                    {"op": "increment", "key": "s"},
                ]
            },
        ),
    ]
    for call, body in attempts:
        response = send(http, "POST", f"/runs/{run_id}/{call}", body)
        assert response.status_code in (400, 409), (call, body, response.text)
    assert view(http, run_id) == before
    assert ok(http, f"/runs/{run_id}/ops", {"ops": [{"op": "get", "key": "k"}]}) == {"results": [1]}
    assert len(jobs_for(job_sink, run_id)) == jobs_before


# ---- start --------------------------------------------------------------------------------


def test_start_creates_the_run_and_releases_its_start_nodes(
    http: httpx.Client, job_sink: JobSink
) -> None:
    run_id = new_run_id()
    body = {
        "blueprintId": "orders",
        "blueprintVersion": "v7",
        "context": {"order": 42},
        "topology": topology({"A": ["C"], "B": ["C"], "C": []}),
        "startNodes": ["A", "B"],
    }
    answer = ok(http, f"/runs/{run_id}/start", body)
    assert answer == {"runId": run_id, "created": True, "status": "running"}
    run = view(http, run_id)
    assert run["status"] == "running"
    assert run["blueprintId"] == "orders"
    assert run["blueprintVersion"] == "v7"
    assert run["context"] == {"order": 42, "blueprintId": "orders", "blueprintVersion": "v7"}
    assert run["nodes"]["A"] == {"gen": 0, "state": "released", "attempts": 0}
    assert run["nodes"]["C"]["state"] == "idle"
    jobs = jobs_for(job_sink, run_id, until=lambda js: len(js) >= 2)
    assert sorted(jobs, key=lambda j: j["nodeId"]) == [
        {"runId": run_id, "blueprintId": "orders", "nodeId": "A", "gen": 0},
        {"runId": run_id, "blueprintId": "orders", "nodeId": "B", "gen": 0},
    ]


def test_start_seeds_a_null_blueprint_version_when_unversioned(http: httpx.Client) -> None:
    run_id = start(http, {"A": []}, ["A"])
    context = view(http, run_id)["context"]
    assert "blueprintVersion" in context
    assert context["blueprintVersion"] is None


def test_starting_again_with_the_same_blueprint_changes_nothing(http: httpx.Client) -> None:
    run_id = start(http, {"A": ["B"], "B": []}, ["A"], version="1")
    run_node(http, run_id, "A", version="1", arrivals=["B"])
    before = view(http, run_id)
    again = {
        "blueprintId": "contract",
        "blueprintVersion": "1",
        "context": {"other": True},
        "topology": topology({"A": []}),
        "startNodes": ["A"],
    }
    answer = ok(http, f"/runs/{run_id}/start", again)
    assert answer == {"runId": run_id, "created": False, "status": "running"}
    assert view(http, run_id) == before


@pytest.mark.parametrize(
    ("blueprint", "version"), [("another", "1"), ("contract", "2"), ("contract", None)]
)
def test_starting_again_with_another_blueprint_or_version_conflicts(
    http: httpx.Client, blueprint: str, version: str | None
) -> None:
    run_id = start(http, {"A": []}, ["A"], version="1")
    before = view(http, run_id)
    body = {
        "blueprintId": blueprint,
        "blueprintVersion": version,
        "topology": topology({"A": []}),
        "startNodes": ["A"],
    }
    rejected(send(http, "POST", f"/runs/{run_id}/start", body), 409, "conflict")
    assert view(http, run_id) == before


def test_a_run_without_start_nodes_completes_at_once(http: httpx.Client) -> None:
    run_id = new_run_id()
    body = {"blueprintId": "empty", "topology": topology({"A": []}), "startNodes": []}
    assert ok(http, f"/runs/{run_id}/start", body)["status"] == "completed"
    assert view(http, run_id)["status"] == "completed"


@pytest.mark.parametrize(
    ("topo", "start_nodes", "field"),
    [
        ({"A": {"succs": ["B", "X"]}, "B": {}}, ["A"], "topology.A.succs[1]"),
        ({"A": {}, "B": {}}, ["A", "Q"], "startNodes[1]"),
        ({"A": {"succs": []}, "B": {"backPreds": ["A"]}}, ["A"], "topology.B.backPreds"),
    ],
)
def test_start_rejects_a_topology_that_does_not_hold_together(
    http: httpx.Client, topo: dict[str, Any], start_nodes: list[str], field: str
) -> None:
    run_id = new_run_id()
    body = {"blueprintId": "b", "topology": topo, "startNodes": start_nodes}
    rejected(send(http, "POST", f"/runs/{run_id}/start", body), 400, "bad_request", field)
    rejected(send(http, "GET", f"/runs/{run_id}"), 404, "not_found")


# ---- claim --------------------------------------------------------------------------------


def test_claim_takes_a_lease_and_returns_the_context(http: httpx.Client) -> None:
    run_id = start(http, {"A": []}, ["A"], context={"x": 1}, version="v1")
    answer = claim(http, run_id, "A", version="v1")
    assert answer["state"] == "run"
    assert answer["status"] == "running"
    assert answer["gen"] == 0
    assert answer["attempts"] == 0
    assert answer["lastError"] is None
    assert answer["context"] == {"x": 1, "blueprintId": "contract", "blueprintVersion": "v1"}
    assert answer["blueprintVersion"] == "v1"


def test_claiming_again_with_the_same_token_renews_the_lease(http: httpx.Client) -> None:
    run_id = start(http, {"A": []}, ["A"])
    assert claim(http, run_id, "A", token="same")["state"] == "run"
    assert claim(http, run_id, "A", token="same")["state"] == "run"
    assert claim(http, run_id, "A", token="other")["state"] == "busy"


def test_a_claim_by_another_token_is_busy_until_the_lease_expires(http: httpx.Client) -> None:
    run_id = start(http, {"A": []}, ["A"])
    assert claim(http, run_id, "A", token="first", lease_ms=800)["state"] == "run"
    busy = claim(http, run_id, "A", token="second")
    assert busy["state"] == "busy"
    assert 0 < busy["retryAfterMs"] <= 800
    time.sleep(busy["retryAfterMs"] / 1000 + 0.05)
    assert claim(http, run_id, "A", token="second")["state"] == "run"
    assert claim(http, run_id, "A", token="first")["state"] == "busy"


def test_a_claim_of_a_node_not_released_is_not_ready(http: httpx.Client) -> None:
    run_id = start(http, {"A": ["B"], "B": []}, ["A"])
    answer = claim(http, run_id, "B")
    assert answer["state"] == "not_ready"
    assert answer["reason"]
    assert claim(http, run_id, "A", gen=1)["state"] == "not_ready"


def test_a_claim_of_an_unknown_node_is_not_ready(http: httpx.Client) -> None:
    run_id = start(http, {"A": []}, ["A"])
    answer = claim(http, run_id, "ghost")
    assert answer["state"] == "not_ready"
    assert "unknown node" in answer["reason"]


def test_a_claim_with_another_blueprint_version_is_refused_without_a_lease(
    http: httpx.Client,
) -> None:
    run_id = start(http, {"A": []}, ["A"], version="v1")
    mismatch = claim(http, run_id, "A", token="old", version="v0")
    assert mismatch["state"] == "version_mismatch"
    assert mismatch["blueprintVersion"] == "v1"
    assert claim(http, run_id, "A", token="old", version=None)["state"] == "version_mismatch"
    assert claim(http, run_id, "A", token="new", version="v1")["state"] == "run"


def test_a_claim_of_a_completed_node_returns_its_result(http: httpx.Client) -> None:
    run_id = start(http, {"A": ["B"], "B": []}, ["A"])
    run_node(http, run_id, "A", output={"n": 1}, action="left", arrivals=["B"])
    answer = claim(http, run_id, "A", token="late")
    assert answer["state"] == "completed"
    assert answer["result"] == {"output": {"n": 1}, "action": "left"}


def test_a_claim_on_a_terminal_run_is_terminal(http: httpx.Client) -> None:
    run_id = start(http, {"A": []}, ["A"])
    ok(http, f"/runs/{run_id}/cancel", {"reason": "stop"})
    answer = claim(http, run_id, "A")
    assert answer["state"] == "terminal"
    assert answer["status"] == "cancelled"
    assert answer["reason"] == "stop"


def test_a_claim_without_gen_means_the_current_generation(http: httpx.Client) -> None:
    run_id = start(http, {"A": []}, ["A"])
    assert claim(http, run_id, "A", gen=None)["gen"] == 0
    assert claim(http, run_id, "A", gen=0)["state"] == "run"


# ---- commit -------------------------------------------------------------------------------


def test_commit_releases_reached_successors_and_queues_their_jobs(
    http: httpx.Client, job_sink: JobSink
) -> None:
    run_id = start(http, {"A": ["B", "C"], "B": [], "C": []}, ["A"])
    answer = run_node(http, run_id, "A", output=1, arrivals=["B", "C"])
    assert answer["status"] == "running"
    assert refs(answer) == [("B", 0), ("C", 0)]
    assert answer["duplicate"] is False
    assert answer["stale"] is False
    jobs_for(job_sink, run_id, until=lambda js: has_job("B")(js) and has_job("C")(js))
    nodes = view(http, run_id)["nodes"]
    assert nodes["A"]["state"] == "completed"
    assert nodes["B"]["state"] == "released"


def test_a_duplicate_commit_returns_the_same_released_list(http: httpx.Client) -> None:
    run_id = start(http, {"A": ["B"], "B": []}, ["A"])
    first = run_node(http, run_id, "A", output=1, arrivals=["B"])
    before = view(http, run_id)
    again = commit(http, run_id, "A", output="different", token="token-2", arrivals=[])
    assert again["duplicate"] is True
    assert refs(again) == refs(first) == [("B", 0)]
    assert view(http, run_id) == before


def test_the_last_commit_completes_the_run(http: httpx.Client) -> None:
    run_id = start(http, {"A": ["B"], "B": []}, ["A"])
    run_node(http, run_id, "A", arrivals=["B"])
    assert run_node(http, run_id, "B")["status"] == "completed"
    assert view(http, run_id)["status"] == "completed"


def test_a_commit_of_a_node_that_is_not_released_conflicts(http: httpx.Client) -> None:
    run_id = start(http, {"A": ["B"], "B": []}, ["A"])
    before = view(http, run_id)
    rejected(send(http, "POST", f"/runs/{run_id}/commit", commit_body("B")), 409, "conflict")
    assert view(http, run_id) == before


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"arrivals": ["B", "Z"]}, "arrivals[1]"),
        ({"skips": ["A"]}, "skips[0]"),
        ({"rearm": ["B", "nope"]}, "rearm[1]"),
        (
            {"dynamic": [{"nodeId": "w", "uses": "u", "inputs": "i", "gather": "nope"}]},
            "dynamic[0].gather",
        ),
        (
            {"dynamic": [{"nodeId": "B", "uses": "u", "inputs": "i", "gather": "B"}]},
            "dynamic[0].nodeId",
        ),
    ],
)
def test_a_commit_that_breaks_the_topology_answers_400(
    http: httpx.Client, fields: dict[str, Any], field: str
) -> None:
    run_id = start(http, {"A": ["B"], "B": []}, ["A"])
    claim(http, run_id, "A")
    before = view(http, run_id)
    response = send(http, "POST", f"/runs/{run_id}/commit", commit_body("A", **fields))
    rejected(response, 400, "bad_request", field)
    assert view(http, run_id) == before


def test_a_commit_without_result_or_awaiting_answers_400(http: httpx.Client) -> None:
    run_id = start(http, {"A": []}, ["A"])
    body = {"nodeId": "A", "gen": 0, "token": "t"}
    rejected(send(http, "POST", f"/runs/{run_id}/commit", body), 400, "bad_request", "result")


def test_a_commit_of_an_unknown_node_answers_400(http: httpx.Client) -> None:
    run_id = start(http, {"A": []}, ["A"])
    response = send(http, "POST", f"/runs/{run_id}/commit", commit_body("ghost"))
    rejected(response, 400, "bad_request", "nodeId")


def test_a_commit_applies_deletes_then_writes(http: httpx.Client) -> None:
    run_id = start(http, {"A": []}, ["A"], context={"keep": 1, "drop": 2, "swap": 3})
    run_node(http, run_id, "A", deletes=["drop", "swap"], writes={"swap": "new", "out": [1]})
    context = view(http, run_id)["context"]
    assert context["keep"] == 1
    assert "drop" not in context
    assert context["swap"] == "new"
    assert context["out"] == [1]


def test_a_commit_without_lease_is_accepted_first_commit_wins(http: httpx.Client) -> None:
    run_id = start(http, {"A": [], "B": []}, ["A", "B"])
    claim(http, run_id, "A", token="holder")
    answer = commit(http, run_id, "A", token="someone-else", output="first")
    assert answer["duplicate"] is False
    assert claim(http, run_id, "A")["result"] == {"output": "first", "action": None}


# ---- joins and skips ---------------------------------------------------------------------


def test_an_all_join_waits_for_every_predecessor(http: httpx.Client) -> None:
    run_id = start(http, {"A": ["B", "C"], "B": ["D"], "C": ["D"], "D": []}, ["A"])
    run_node(http, run_id, "A", arrivals=["B", "C"])
    assert refs(run_node(http, run_id, "B", arrivals=["D"])) == []
    assert view(http, run_id)["nodes"]["D"]["state"] == "idle"
    assert refs(run_node(http, run_id, "C", arrivals=["D"])) == [("D", 0)]


def test_an_all_join_with_some_skipped_predecessors_is_released(http: httpx.Client) -> None:
    run_id = start(http, {"A": ["B", "C"], "B": ["D"], "C": ["D"], "D": []}, ["A"])
    run_node(http, run_id, "A", arrivals=["B", "C"])
    run_node(http, run_id, "B", skips=["D"])
    assert refs(run_node(http, run_id, "C", arrivals=["D"])) == [("D", 0)]


def test_an_any_join_is_released_once_by_the_first_arrival(http: httpx.Client) -> None:
    edges = {"A": ["B", "C"], "B": ["D"], "C": ["D"], "D": []}
    run_id = start(http, {}, ["A"], topology=topology(edges, any_join=["D"]))
    run_node(http, run_id, "A", arrivals=["B", "C"])
    assert refs(run_node(http, run_id, "B", arrivals=["D"])) == [("D", 0)]
    assert refs(run_node(http, run_id, "C", arrivals=["D"])) == []
    assert view(http, run_id)["nodes"]["D"] == {"gen": 0, "state": "released", "attempts": 0}


def test_an_any_join_is_skipped_when_every_predecessor_skipped(http: httpx.Client) -> None:
    edges = {"A": ["B", "C"], "B": ["D"], "C": ["D"], "D": []}
    run_id = start(http, {}, ["A"], topology=topology(edges, any_join=["D"]))
    run_node(http, run_id, "A", arrivals=["B", "C"])
    run_node(http, run_id, "B", skips=["D"])
    assert run_node(http, run_id, "C", skips=["D"])["status"] == "completed"
    assert view(http, run_id)["nodes"]["D"]["state"] == "skipped"


def test_skips_propagate_through_nodes_whose_predecessors_all_skipped(
    http: httpx.Client,
) -> None:
    edges = {"A": ["B", "C"], "B": ["D"], "C": ["D"], "D": ["E"], "E": []}
    run_id = start(http, edges, ["A"])
    assert refs(run_node(http, run_id, "A", arrivals=["C"], skips=["B"])) == [("C", 0)]
    assert view(http, run_id)["nodes"]["B"]["state"] == "skipped"
    answer = run_node(http, run_id, "C", skips=["D"])
    assert refs(answer) == []
    assert answer["status"] == "completed"
    nodes = view(http, run_id)["nodes"]
    assert nodes["D"]["state"] == "skipped"
    assert nodes["E"]["state"] == "skipped"


def test_a_commit_of_a_skipped_node_conflicts(http: httpx.Client) -> None:
    run_id = start(http, {"A": ["B", "C"], "B": [], "C": []}, ["A"])
    run_node(http, run_id, "A", arrivals=["C"], skips=["B"])
    rejected(send(http, "POST", f"/runs/{run_id}/commit", commit_body("B")), 409, "conflict")


# ---- generations: re-arm, dynamic nodes --------------------------------------------------


def test_rearm_gives_nodes_a_new_generation(http: httpx.Client, job_sink: JobSink) -> None:
    edges = {"S": ["L"], "L": ["B", "X"], "B": ["L"], "X": []}
    run_id = start(http, {}, ["S"], topology=topology(edges, back={"L": ["B"]}))
    assert refs(run_node(http, run_id, "S", arrivals=["L"])) == [("L", 0)]
    assert refs(run_node(http, run_id, "L", arrivals=["B"])) == [("B", 0)]
    answer = run_node(http, run_id, "B", arrivals=["L"], rearm=["L"])
    assert refs(answer) == [("L", 1)]
    assert view(http, run_id)["nodes"]["L"] == {"gen": 1, "state": "released", "attempts": 0}
    jobs_for(job_sink, run_id, until=has_job("L", 1))
    assert claim(http, run_id, "L", gen=0)["state"] == "completed"
    assert claim(http, run_id, "L")["gen"] == 1
    done = run_node(http, run_id, "L", gen=1, skips=["B"], arrivals=["X"])
    assert refs(done) == [("X", 0)]


def test_a_commit_of_an_older_generation_is_stale_and_releases_nothing(
    http: httpx.Client,
) -> None:
    run_id = start(http, {"A": [], "B": ["C"], "C": []}, ["A", "B"])
    claim(http, run_id, "B")
    run_node(http, run_id, "A", rearm=["B"])
    stale = commit(http, run_id, "B", 0, arrivals=["C"])
    assert stale["stale"] is True
    assert refs(stale) == []
    nodes = view(http, run_id)["nodes"]
    assert nodes["B"] == {"gen": 1, "state": "idle", "attempts": 0}
    assert nodes["C"]["state"] == "idle"


def test_dynamic_nodes_are_released_with_their_spec_and_gathered(
    http: httpx.Client, job_sink: JobSink
) -> None:
    run_id = start(http, {"A": ["G"], "G": []}, ["A"])
    dynamic = [
        {"nodeId": f"w{i}", "uses": "double", "inputs": f"items[{i}]", "gather": "G"}
        for i in range(2)
    ]
    answer = run_node(http, run_id, "A", dynamic=dynamic, arrivals=["G"])
    assert refs(answer) == [("w0", 0), ("w1", 0)]
    jobs = jobs_for(job_sink, run_id, until=lambda js: has_job("w0")(js) and has_job("w1")(js))
    job = next(j for j in jobs if j["nodeId"] == "w1")
    assert job["dynamic"] == {"uses": "double", "inputs": "items[1]", "gather": "G"}
    assert set(view(http, run_id)["nodes"]) == {"A", "G", "w0", "w1"}
    assert refs(run_node(http, run_id, "w0", arrivals=["G"])) == []
    assert refs(run_node(http, run_id, "w1", arrivals=["G"])) == [("G", 0)]


# ---- attempts -----------------------------------------------------------------------------


def attempts(client: httpx.Client, run_id: str, node: str, **fields: Any) -> Any:
    body = {"nodeId": node, "gen": 0, "token": "token-1", "attempts": 1, **fields}
    return ok(client, f"/runs/{run_id}/attempts", body)


def test_attempts_keep_the_highest_count_and_the_last_error(http: httpx.Client) -> None:
    run_id = start(http, {"A": []}, ["A"])
    claim(http, run_id, "A")
    assert attempts(http, run_id, "A", attempts=3, error="e3") == {
        "status": "running",
        "reason": None,
    }
    attempts(http, run_id, "A", attempts=2, error="e2")
    assert view(http, run_id)["nodes"]["A"]["attempts"] == 3
    again = claim(http, run_id, "A")
    assert again["attempts"] == 3
    assert again["lastError"] == "e2"


def test_attempts_with_retry_after_delay_the_node_and_queue_its_job(
    http: httpx.Client, job_sink: JobSink
) -> None:
    run_id = start(http, {"A": []}, ["A"])
    claim(http, run_id, "A")
    jobs_for(job_sink, run_id)
    attempts(http, run_id, "A", error="later", release=True, retryAfterMs=60_000)
    busy = claim(http, run_id, "A", token="token-1")
    assert busy["state"] == "busy"
    assert 0 < busy["retryAfterMs"] <= 60_000
    jobs_for(job_sink, run_id, until=lambda js: len(js) >= 2)


def test_attempts_release_drops_the_lease_of_the_same_token_only(http: httpx.Client) -> None:
    run_id = start(http, {"A": []}, ["A"])
    claim(http, run_id, "A", token="holder")
    attempts(http, run_id, "A", token="stranger", release=True)
    assert claim(http, run_id, "A", token="next")["state"] == "busy"
    attempts(http, run_id, "A", token="holder", release=True)
    assert claim(http, run_id, "A", token="next")["state"] == "run"


def test_attempts_on_a_node_that_is_not_released_change_nothing(http: httpx.Client) -> None:
    run_id = start(http, {"A": ["B"], "B": []}, ["A"])
    before = view(http, run_id)
    assert attempts(http, run_id, "B", attempts=5)["status"] == "running"
    assert view(http, run_id)["nodes"] == before["nodes"]


# ---- fail and cancel ---------------------------------------------------------------------


def test_fail_latches_failed_and_marks_the_node(http: httpx.Client, job_sink: JobSink) -> None:
    run_id = start(http, {"A": ["B"], "B": []}, ["A"])
    claim(http, run_id, "A")
    body = {"reason": "boom", "nodeId": "A", "gen": 0}
    assert ok(http, f"/runs/{run_id}/fail", body) == {"status": "failed", "reason": "boom"}
    run = view(http, run_id)
    assert run["status"] == "failed"
    assert run["reason"] == "boom"
    assert run["nodes"]["A"]["state"] == "failed"
    assert claim(http, run_id, "A")["state"] == "terminal"


def test_the_first_terminal_status_wins(http: httpx.Client) -> None:
    failed = start(http, {"A": []}, ["A"])
    ok(http, f"/runs/{failed}/fail", {"reason": "first"})
    assert ok(http, f"/runs/{failed}/fail", {"reason": "second"}) == {
        "status": "failed",
        "reason": "first",
    }
    assert ok(http, f"/runs/{failed}/cancel", {})["status"] == "failed"
    completed = start(http, {"A": []}, ["A"])
    run_node(http, completed, "A")
    assert ok(http, f"/runs/{completed}/fail", {"reason": "late"})["status"] == "completed"
    assert ok(http, f"/runs/{completed}/cancel", {})["status"] == "completed"


def test_cancel_latches_cancelled_with_a_default_reason(http: httpx.Client) -> None:
    run_id = start(http, {"A": ["B"], "B": []}, ["A"])
    assert ok(http, f"/runs/{run_id}/cancel", {}) == {"status": "cancelled", "reason": "cancelled"}
    assert ok(http, f"/runs/{run_id}/cancel", {"reason": "again"})["reason"] == "cancelled"
    assert view(http, run_id)["status"] == "cancelled"
    assert claim(http, run_id, "A")["state"] == "terminal"


def test_commits_after_a_terminal_status_are_recorded_but_release_nothing(
    http: httpx.Client,
) -> None:
    run_id = start(http, {"A": ["B"], "B": []}, ["A"])
    claim(http, run_id, "A")
    ok(http, f"/runs/{run_id}/cancel", {"reason": "stop"})
    answer = commit(http, run_id, "A", arrivals=["B"])
    assert answer["status"] == "cancelled"
    assert refs(answer) == []
    assert view(http, run_id)["nodes"]["B"]["state"] == "idle"


# ---- awaiting, resume, hooks, timers -------------------------------------------------------


def test_an_external_wait_makes_the_run_await(http: httpx.Client) -> None:
    run_id = start(http, {"W": ["N"], "N": []}, ["W"])
    claim(http, run_id, "W")
    spec = awaiting_spec(details={"event": "approval"}, external=True)
    answer = commit(http, run_id, "W", awaiting=spec)
    assert answer == {"status": "awaiting", "released": [], "duplicate": False, "stale": False}
    run = view(http, run_id)
    assert run["status"] == "awaiting"
    assert run["nodes"]["W"]["state"] == "awaiting"
    assert run["context"]["_awaitingNodeIds"] == ["W"]
    assert run["context"]["_awaitingDetails"] == {"W": {"event": "approval"}}
    assert run["awaiting"]["W"]["reason"] == "external_event"
    assert run["awaiting"]["W"]["external"] is True
    assert run["awaiting"]["W"]["resolution"] is None


def _awaiting_run(http: httpx.Client, *, reason: str = "external_event", **spec: Any) -> str:
    run_id = start(http, {"W": ["N"], "N": []}, ["W"])
    claim(http, run_id, "W")
    commit(http, run_id, "W", awaiting=awaiting_spec(reason, external=True, **spec))
    return run_id


def test_resume_resolves_the_wait_and_queues_its_job(http: httpx.Client, job_sink: JobSink) -> None:
    run_id = _awaiting_run(http)
    answer = ok(http, f"/runs/{run_id}/resume", {"action": "approve", "output": {"ok": 1}})
    assert answer["status"] == "running"
    assert refs(answer, "resumed") == [("W", 0)]
    jobs_for(job_sink, run_id, until=lambda js: sum(has_job("W")([j]) for j in js) >= 2)
    run = view(http, run_id)
    assert run["context"]["_resume.action"] == "approve"
    assert run["context"]["_resume.output"] == {"ok": 1}
    assert run["awaiting"]["W"]["resolution"] == {"output": {"ok": 1}, "action": "approve"}
    resumed = claim(http, run_id, "W", token="after")
    assert resumed["state"] == "awaiting"
    assert resumed["awaiting"]["resolution"] == {"output": {"ok": 1}, "action": "approve"}
    done = commit(http, run_id, "W", output={"ok": 1}, action="approve", arrivals=["N"])
    assert refs(done) == [("N", 0)]
    context = view(http, run_id)["context"]
    assert "_awaitingNodeIds" not in context
    assert "_awaitingDetails" not in context


def test_resume_without_output_leaves_resume_output_unset(http: httpx.Client) -> None:
    run_id = _awaiting_run(http)
    ok(http, f"/runs/{run_id}/resume", {"action": None})
    context = view(http, run_id)["context"]
    assert context["_resume.action"] is None
    assert "_resume.output" not in context


def test_a_second_resume_conflicts(http: httpx.Client) -> None:
    run_id = _awaiting_run(http)
    ok(http, f"/runs/{run_id}/resume", {"action": "a"})
    before = view(http, run_id)
    rejected(send(http, "POST", f"/runs/{run_id}/resume", {"action": "b"}), 409, "conflict")
    assert view(http, run_id) == before


def test_resume_of_a_run_without_wait_nodes_or_a_terminal_run_conflicts(
    http: httpx.Client,
) -> None:
    running = start(http, {"A": []}, ["A"])
    rejected(send(http, "POST", f"/runs/{running}/resume", {"action": "a"}), 409, "conflict")
    cancelled = _awaiting_run(http)
    ok(http, f"/runs/{cancelled}/cancel", {})
    rejected(send(http, "POST", f"/runs/{cancelled}/resume", {"action": "a"}), 409, "conflict")


def test_resume_by_node_id_targets_that_node_only(http: httpx.Client) -> None:
    run_id = start(http, {"S": ["W1", "W2"], "W1": [], "W2": []}, ["S"])
    run_node(http, run_id, "S", arrivals=["W1", "W2"])
    for node in ("W1", "W2"):
        claim(http, run_id, node)
        commit(http, run_id, node, awaiting=awaiting_spec(external=True))
    answer = ok(http, f"/runs/{run_id}/resume", {"action": "go", "nodeId": "W2"})
    assert refs(answer, "resumed") == [("W2", 0)]
    awaiting = view(http, run_id)["awaiting"]
    assert awaiting["W1"]["resolution"] is None
    assert awaiting["W2"]["resolution"] == {"output": None, "action": "go"}
    response = send(http, "POST", f"/runs/{run_id}/resume", {"action": "go", "nodeId": "W2"})
    rejected(response, 409, "conflict")


def test_an_awaiting_commit_again_updates_the_record(http: httpx.Client) -> None:
    run_id = start(http, {"S": []}, ["S"])
    claim(http, run_id, "S")
    spec = awaiting_spec("subflow", details={"childRunId": "child-1"})
    assert commit(http, run_id, "S", awaiting=spec)["status"] == "running"
    spec["external"] = True
    assert commit(http, run_id, "S", awaiting=spec, token="token-2")["status"] == "awaiting"
    assert view(http, run_id)["awaiting"]["S"]["external"] is True


def _webhook_run(http: httpx.Client, node: str = "H") -> str:
    run_id = start(http, {node: ["N"], "N": []}, [node])
    claim(http, run_id, node)
    spec = awaiting_spec("webhook", hookToken=HOOK_TOKEN, external=True)
    commit(http, run_id, node, awaiting=spec)
    return run_id


def test_a_webhook_delivery_resolves_the_node_without_a_bearer(
    http: httpx.Client, anon: httpx.Client, job_sink: JobSink
) -> None:
    run_id = _webhook_run(http)
    response = anon.post(f"/hooks/{run_id}/H/{HOOK_TOKEN}", content=b'{"paid": true}')
    assert response.status_code == 200, response.text
    assert response.json() == {"status": "running", "nodeId": "H"}
    jobs_for(job_sink, run_id, until=lambda js: sum(has_job("H")([j]) for j in js) >= 2)
    resolved = claim(http, run_id, "H", token="after")
    assert resolved["awaiting"]["resolution"]["output"] == {"paid": True}


def test_a_webhook_with_an_empty_body_delivers_null(http: httpx.Client, anon: httpx.Client) -> None:
    run_id = _webhook_run(http)
    assert anon.post(f"/hooks/{run_id}/H/{HOOK_TOKEN}").status_code == 200
    assert view(http, run_id)["awaiting"]["H"]["resolution"]["output"] is None


def test_a_webhook_replay_conflicts(http: httpx.Client, anon: httpx.Client) -> None:
    run_id = _webhook_run(http)
    assert anon.post(f"/hooks/{run_id}/H/{HOOK_TOKEN}", content=b"1").status_code == 200
    rejected(anon.post(f"/hooks/{run_id}/H/{HOOK_TOKEN}", content=b"2"), 409, "conflict")
    claim(http, run_id, "H", token="done")
    commit(http, run_id, "H", token="done", output=1)
    rejected(anon.post(f"/hooks/{run_id}/H/{HOOK_TOKEN}", content=b"3"), 409, "conflict")


def test_webhook_failures_are_indistinguishable_404s(
    http: httpx.Client, anon: httpx.Client
) -> None:
    run_id = _webhook_run(http)
    plain = start(http, {"A": []}, ["A"])
    before = view(http, run_id)
    paths = [
        f"/hooks/{run_id}/H/{'x' * len(HOOK_TOKEN)}",
        f"/hooks/{run_id}/H/{HOOK_TOKEN}extra",
        f"/hooks/{new_run_id()}/H/{HOOK_TOKEN}",
        f"/hooks/{run_id}/N/{HOOK_TOKEN}",
        f"/hooks/{run_id}/ghost/{HOOK_TOKEN}",
        f"/hooks/{plain}/A/{HOOK_TOKEN}",
        f"/hooks/bad%20id/H/{HOOK_TOKEN}",
    ]
    bodies = set()
    for path in paths:
        response = anon.post(path, content=b"{}")
        rejected(response, 404, "not_found")
        bodies.add(response.content)
    assert len(bodies) == 1
    assert view(http, run_id) == before


def test_webhook_node_ids_are_percent_decoded(http: httpx.Client, anon: httpx.Client) -> None:
    node = "pay/ment hook?"
    run_id = _webhook_run(http, node)
    response = anon.post(f"/hooks/{run_id}/{quote(node, safe='')}/{HOOK_TOKEN}", content=b"7")
    assert response.status_code == 200, response.text
    assert response.json()["nodeId"] == node


def test_a_timer_not_yet_due_awaits_and_schedules_its_job(
    http: httpx.Client, job_sink: JobSink
) -> None:
    run_id = start(http, {"T": ["N"], "N": []}, ["T"])
    claim(http, run_id, "T")
    wake = int(time.time() * 1000) + 3_600_000
    spec = awaiting_spec("timer", wakeAtMs=wake, result={"output": "woke", "action": None})
    assert commit(http, run_id, "T", awaiting=spec)["status"] == "running"
    jobs_for(job_sink, run_id, until=lambda js: sum(has_job("T")([j]) for j in js) >= 2)
    early = claim(http, run_id, "T", token="early")
    assert early["state"] == "awaiting"
    assert early["awaiting"]["wakeAtMs"] == wake
    assert early["awaiting"]["resolution"] is None
    assert view(http, run_id)["status"] == "running"


def test_a_due_timer_resolves_with_its_result(http: httpx.Client) -> None:
    run_id = start(http, {"T": ["N"], "N": []}, ["T"])
    claim(http, run_id, "T")
    wake = int(time.time() * 1000) - 1
    spec = awaiting_spec("timer", wakeAtMs=wake, result={"output": "woke", "action": "on"})
    commit(http, run_id, "T", awaiting=spec)
    due = claim(http, run_id, "T", token="due")
    assert due["state"] == "awaiting"
    assert due["awaiting"]["resolution"] == {"output": "woke", "action": "on"}


# ---- reconcile -------------------------------------------------------------------------------


def test_reconcile_requeues_released_nodes_without_a_live_lease(
    http: httpx.Client, job_sink: JobSink
) -> None:
    run_id = start(http, {"A": ["B", "C"], "B": [], "C": []}, ["A"])
    run_node(http, run_id, "A", arrivals=["B", "C"])
    claim(http, run_id, "B")
    answer = ok(http, f"/runs/{run_id}/reconcile", {})
    assert answer["status"] == "running"
    assert refs(answer, "requeued") == [("C", 0)]
    jobs_for(job_sink, run_id, until=lambda js: sum(has_job("C")([j]) for j in js) >= 2)


def test_reconcile_requeues_resolved_awaiting_nodes(http: httpx.Client) -> None:
    run_id = _awaiting_run(http)
    assert refs(ok(http, f"/runs/{run_id}/reconcile", {}), "requeued") == []
    ok(http, f"/runs/{run_id}/resume", {"action": "go"})
    assert refs(ok(http, f"/runs/{run_id}/reconcile", {}), "requeued") == [("W", 0)]


def test_reconcile_accepts_an_empty_request(http: httpx.Client) -> None:
    run_id = start(http, {"A": []}, ["A"])
    response = http.post(f"/runs/{run_id}/reconcile")
    assert response.status_code == 200, response.text
    assert refs(response.json(), "requeued") == [("A", 0)]


def test_reconcile_of_a_terminal_run_requeues_nothing(http: httpx.Client) -> None:
    run_id = start(http, {"A": []}, ["A"])
    ok(http, f"/runs/{run_id}/cancel", {})
    assert ok(http, f"/runs/{run_id}/reconcile", {}) == {"status": "cancelled", "requeued": []}


# ---- get ---------------------------------------------------------------------------------


def test_get_returns_the_run_view(http: httpx.Client) -> None:
    parent = {"runId": "parent-1", "blueprintId": "p", "nodeId": "sub", "gen": 2}
    run_id = start(http, {"A": ["B"], "B": []}, ["A"], version="3", parent=parent)
    before_ms = int(time.time() * 1000) - 60_000
    run_node(http, run_id, "A", version="3", arrivals=["B"])
    attempts(http, run_id, "B", attempts=2)
    run = view(http, run_id)
    assert run["runId"] == run_id
    assert run["blueprintId"] == "contract"
    assert run["blueprintVersion"] == "3"
    assert run["status"] == "running"
    assert run["reason"] is None
    assert run["parent"] == parent
    assert run["nodes"] == {
        "A": {"gen": 0, "state": "completed", "attempts": 0},
        "B": {"gen": 0, "state": "released", "attempts": 2},
    }
    assert run["awaiting"] == {}
    assert before_ms < run["createdAtMs"] <= run["updatedAtMs"]


def test_a_child_run_notifies_its_parent_when_it_settles(
    http: httpx.Client, job_sink: JobSink
) -> None:
    parent_id = new_run_id()
    parent = {"runId": parent_id, "blueprintId": "outer", "nodeId": "sub", "gen": 1}
    child = start(http, {"A": []}, ["A"], parent=parent)
    run_node(http, child, "A")
    jobs = jobs_for(job_sink, parent_id)
    assert jobs == [{"runId": parent_id, "blueprintId": "outer", "nodeId": "sub", "gen": 1}]


# ---- ops ---------------------------------------------------------------------------------


def ops(client: httpx.Client, run_id: str, *items: dict[str, Any]) -> list[Any]:
    return ok(client, f"/runs/{run_id}/ops", {"ops": list(items)})["results"]  # type: ignore[no-any-return]


def test_ops_coordination_keys(http: httpx.Client) -> None:
    run_id = start(http, {"A": []}, ["A"])
    assert ops(
        http,
        run_id,
        {"op": "setIfNotExist", "key": "lock", "value": "me"},
        {"op": "setIfNotExist", "key": "lock", "value": "you"},
        {"op": "get", "key": "lock"},
        {"op": "get", "key": "missing"},
        {"op": "increment", "key": "n"},
        {"op": "increment", "key": "n"},
        {"op": "extendTTL", "key": "missing", "ttlSeconds": 5},
        {"op": "extendTTL", "key": "lock", "ttlSeconds": 5},
        {"op": "delete", "key": "lock"},
        {"op": "delete", "key": "lock"},
        {"op": "get", "key": "lock"},
    ) == [True, False, "me", None, 1, 2, False, True, True, False, None]


def test_ops_keys_expire_after_their_ttl(http: httpx.Client) -> None:
    run_id = start(http, {"A": []}, ["A"])
    ops(
        http,
        run_id,
        {"op": "setIfNotExist", "key": "short", "value": 1, "ttlSeconds": 1},
        {"op": "setIfNotExist", "key": "long", "value": 2, "ttlSeconds": 3600},
        {"op": "increment", "key": "count", "ttlSeconds": 1},
    )
    time.sleep(1.1)
    assert ops(
        http,
        run_id,
        {"op": "get", "key": "short"},
        {"op": "get", "key": "long"},
        {"op": "increment", "key": "count"},
        {"op": "setIfNotExist", "key": "short", "value": 3},
    ) == [None, 2, 1, True]


def test_ops_read_and_write_the_context(http: httpx.Client) -> None:
    run_id = start(http, {"A": []}, ["A"], context={"a": 1})
    results = ops(
        http,
        run_id,
        {"op": "context.get", "key": "a"},
        {"op": "context.has", "key": "b"},
        {"op": "context.set", "key": "b", "value": {"deep": [1]}},
        {"op": "context.has", "key": "b"},
        {"op": "context.delete", "key": "a"},
        {"op": "context.toJSON"},
    )
    assert results[:5] == [1, False, True, True, True]
    assert results[5] == {"b": {"deep": [1]}, "blueprintId": "contract", "blueprintVersion": None}
    assert claim(http, run_id, "A")["context"]["b"] == {"deep": [1]}


def test_ops_without_a_key_answer_400_naming_key(http: httpx.Client) -> None:
    run_id = start(http, {"A": []}, ["A"])
    response = send(http, "POST", f"/runs/{run_id}/ops", {"ops": [{"op": "get"}]})
    rejected(response, 400, "bad_request", "key")


def test_incrementing_a_non_integer_answers_400_and_applies_no_op(http: httpx.Client) -> None:
    run_id = start(http, {"A": []}, ["A"])
    ops(http, run_id, {"op": "setIfNotExist", "key": "s", "value": "text"})
    body = {
        "ops": [
            {"op": "setIfNotExist", "key": "first", "value": 1},
            {"op": "increment", "key": "s"},
        ]
    }
    rejected(send(http, "POST", f"/runs/{run_id}/ops", body), 400, "bad_request", "key")
    assert ops(http, run_id, {"op": "get", "key": "first"}) == [None]


# ---- list ---------------------------------------------------------------------------------


def list_all(client: httpx.Client, **params: Any) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = []
    cursor = None
    while True:
        query = {**params, "limit": 1000, **({"cursor": cursor} if cursor else {})}
        page = ok(client, "/runs?" + str(httpx.QueryParams(query)), method="GET")
        runs += page["runs"]
        cursor = page["cursor"]
        if cursor is None:
            return runs


def _listed_runs(http: httpx.Client) -> tuple[str, str, str]:
    marker = f"list-{uuid.uuid4().hex[:8]}"
    done = new_run_id()
    ok(
        http,
        f"/runs/{done}/start",
        {"blueprintId": marker, "topology": topology({"A": []}), "startNodes": []},
    )
    running = start(http, {"A": []}, ["A"], blueprint=marker)
    failed = start(http, {"A": []}, ["A"], blueprint=marker)
    ok(http, f"/runs/{failed}/fail", {"reason": "x"})
    return done, running, failed


def test_list_returns_status_records_filtered_by_status(http: httpx.Client) -> None:
    done, running, failed = _listed_runs(http)
    everything = {run["runId"]: run for run in list_all(http)}
    for run_id, status in ((done, "completed"), (running, "running"), (failed, "failed")):
        record = everything[run_id]
        assert record["status"] == status
        assert abs(record["lastUpdated"] - time.time()) < 120
        assert record["blueprintId"].startswith("list-")
    completed = {run["runId"] for run in list_all(http, status="completed")}
    assert done in completed
    assert running not in completed
    assert failed not in completed
    assert all(run["status"] == "completed" for run in list_all(http, status="completed"))


def test_list_stale_keeps_only_runs_not_updated_for_that_long(http: httpx.Client) -> None:
    done, running, _ = _listed_runs(http)
    stale = {run["runId"] for run in list_all(http, stale=3600)}
    assert done not in stale
    assert running not in stale
    assert running in {run["runId"] for run in list_all(http, stale=0)}


def test_list_pages_with_a_cursor(http: httpx.Client) -> None:
    _listed_runs(http)
    first = ok(http, "/runs?limit=1", method="GET")
    assert len(first["runs"]) == 1
    assert first["cursor"] is not None
    second = ok(http, f"/runs?limit=1&cursor={quote(first['cursor'])}", method="GET")
    assert len(second["runs"]) == 1
    assert second["runs"][0]["runId"] != first["runs"][0]["runId"]


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=many", "limit"),
        ("status=sleeping", "status"),
        ("stale=-1", "stale"),
    ],
)
def test_list_rejects_bad_parameters(http: httpx.Client, query: str, field: str) -> None:
    rejected(send(http, "GET", f"/runs?{query}"), 400, "bad_request", field)


# ---- batch --------------------------------------------------------------------------------


def batch(client: httpx.Client, *entries: tuple[str, str, Any]) -> list[dict[str, Any]]:
    body = {"entries": [{"op": op, "runId": run, "body": b} for op, run, b in entries]}
    results = ok(client, "/batch", body)["results"]
    assert len(results) == len(entries)
    return results  # type: ignore[no-any-return]


def test_batch_answers_each_entry_on_its_own(http: httpx.Client) -> None:
    first = start(http, {"A": ["B"], "B": []}, ["A"])
    second = start(http, {"A": []}, ["A"])
    claim(http, second, "A")
    results = batch(
        http,
        ("claim", first, {"nodeId": "A", "token": "b1", "leaseMs": LEASE_MS}),
        ("commit", new_run_id(), commit_body("A")),
        ("claim", first, {"nodeId": "A", "token": "b2"}),
        ("commit", second, commit_body("A", arrivals=["nowhere"])),
        ("commit", first, commit_body("B")),
        ("attempts", second, {"nodeId": "A", "gen": 0, "token": "t", "attempts": 2}),
        ("fail", second, {"reason": "batch failure"}),
        ("get", first, {}),
    )
    statuses = [r["status"] for r in results]
    assert statuses == [200, 404, 400, 400, 409, 200, 200, 200]
    assert results[0]["body"]["state"] == "run"
    assert results[1]["body"]["error"]["code"] == "not_found"
    assert results[2]["body"]["error"]["field"] == "leaseMs"
    assert results[3]["body"]["error"]["field"] == "arrivals[0]"
    assert results[4]["body"]["error"]["code"] == "conflict"
    assert results[6]["body"] == {"status": "failed", "reason": "batch failure"}
    assert results[7]["body"]["runId"] == first
    assert view(http, second)["nodes"]["A"]["attempts"] == 2


def test_batch_applies_the_entries_of_one_run_in_order(http: httpx.Client) -> None:
    run_id = start(http, {"A": ["B"], "B": []}, ["A"])
    results = batch(
        http,
        ("claim", run_id, {"nodeId": "A", "token": "t", "leaseMs": LEASE_MS}),
        ("commit", run_id, commit_body("A", token="t", arrivals=["B"])),
        ("claim", run_id, {"nodeId": "B", "token": "t", "leaseMs": LEASE_MS}),
        ("commit", run_id, commit_body("B", token="t")),
        ("get", run_id, {}),
    )
    assert [r["status"] for r in results] == [200] * 5
    assert results[2]["body"]["state"] == "run"
    assert results[4]["body"]["status"] == "completed"


def test_an_entry_refused_after_an_earlier_change_to_its_run_leaves_no_trace(
    http: httpx.Client,
) -> None:
    run_id = start(http, {"A": ["B"], "B": []}, ["A"])
    results = batch(
        http,
        ("claim", run_id, {"nodeId": "A", "token": "t", "leaseMs": LEASE_MS}),
        ("commit", run_id, commit_body("A", token="t", writes={"x": 1}, arrivals=["nowhere"])),
        ("commit", run_id, commit_body("B", token="t", writes={"x": 2})),
        ("attempts", run_id, {"nodeId": "A", "gen": 0, "token": "t", "attempts": 1}),
        ("commit", run_id, commit_body("A", token="t", writes={"y": 3}, arrivals=["B"])),
        ("get", run_id, {}),
    )
    assert [r["status"] for r in results] == [200, 400, 409, 200, 200, 200]
    assert results[4]["body"]["released"] == [{"nodeId": "B", "gen": 0}]
    for after in (results[5]["body"], view(http, run_id)):
        assert "x" not in after["context"]
        assert after["context"]["y"] == 3
        assert after["nodes"]["A"]["state"] == "completed"
        assert after["nodes"]["A"]["attempts"] == 1
        assert after["nodes"]["B"]["state"] == "released"


def test_batch_entries_for_many_runs(http: httpx.Client) -> None:
    run_ids = [start(http, {"A": []}, ["A"]) for _ in range(20)]
    claims = batch(
        http,
        *[("claim", r, {"nodeId": "A", "token": "t", "leaseMs": LEASE_MS}) for r in run_ids],
    )
    assert all(c["body"]["state"] == "run" for c in claims)
    commits = batch(http, *[("commit", r, commit_body("A", token="t")) for r in run_ids])
    assert all(c["body"]["status"] == "completed" for c in commits)


@pytest.mark.parametrize(
    "envelope",
    [
        [],
        "entries",
        {},
        {"entries": []},
        {"entries": "all"},
        {"entries": [{"op": "get", "runId": "{run}"}] * 257},
        {"entries": [{"op": "explode", "runId": "{run}", "body": {}}]},
        {"entries": [{"op": "resume", "runId": "{run}", "body": {}}]},
        {"entries": [{"runId": "{run}", "body": {}}]},
        {"entries": [{"op": "get", "body": {}}]},
        {"entries": [{"op": "get", "runId": "bad id", "body": {}}]},
        {"entries": [{"op": "get", "runId": "{run}", "body": {}, "extra": 1}]},
    ],
    ids=[
        "list",
        "string",
        "no-entries",
        "empty",
        "entries-not-a-list",
        "257-entries",
        "unknown-op",
        "op-not-batchable",
        "no-op",
        "no-run-id",
        "bad-run-id",
        "unknown-entry-field",
    ],
)
def test_a_malformed_batch_envelope_rejects_the_whole_request(
    http: httpx.Client, envelope: Any
) -> None:
    run_id = start(http, {"A": []}, ["A"])
    before = view(http, run_id)
    claim_entry = {
        "op": "claim",
        "runId": run_id,
        "body": {"nodeId": "A", "token": "t", "leaseMs": LEASE_MS},
    }
    body = orjson.loads(orjson.dumps(envelope).replace(b"{run}", run_id.encode()))
    if isinstance(body, dict) and isinstance(body.get("entries"), list) and body["entries"]:
        body["entries"] = [claim_entry, *body["entries"]][:257]
    rejected(send(http, "POST", "/batch", body), 400, "bad_request")
    assert view(http, run_id) == before
    assert claim(http, run_id, "A", token="other")["state"] == "run"
