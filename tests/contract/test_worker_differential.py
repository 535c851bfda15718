"""The Worker answers every call of a random sequence exactly as the reference state machine.

Each example draws a random topology (``all``/``any`` joins, loops with ``backPreds``, an
optional parent link) and a random sequence of calls drawn from the reference run's current
state: claims with either token, any generation and version, leases of 1 ms or 1 h; commits
with arrivals and skips among the node's successors, writes, re-arms, batch workers and awaiting
records (timers, hooks); attempts with retry delays; resumes; webhook deliveries, replays and
forged tokens; fail, cancel, reconcile, coordination ops (failing ones included), gets and
repeated starts — a few of them through ``POST /v1/batch``, and a few carrying a value over the
2,000,000-byte limit (a context, write, result, op value, resume output or webhook body; or
awaiting details, alone or only together with another awaiting node's), or a name, key or
action one character over its length limit, or a failure text over its limit (truncated).
Every call goes to the
Worker under workerd over HTTP and to the reference
:class:`~flowcraft_puller.runstore.memory.MemoryRunStore` (``RunState``) in this process; after
each call both must agree on the HTTP status, the response, the run view and the jobs sent.

The comparison normalises only what legitimately differs:

- error bodies are compared by ``code`` and ``field``; ``message`` is prose (protocol §1.1);
- JSON numbers are compared by value: JSON has one number type and JavaScript writes ``2.0``
  as ``2`` (a bool is still not a number);
- time: the reference's clock reads the wall time at which the step began; the Worker reads its
  own clock (the same host clock) somewhere before its answer arrived. So ``createdAtMs`` and
  ``updatedAtMs`` must fall in the window of the step at which the reference stamped them, and
  durations (``retryAfterMs``, a job's delay) may differ by at most the longest step window;
- a job's delay: the Worker's queue takes whole seconds, ``ceil(delayMs / 1000)`` capped at
  43,200 (protocol §2.3), so the reference's ``delayMs`` is converted before comparing.

Time-dependent choices stay far from their boundaries so that the two clocks never disagree
on a decision: leases last 1 ms (expired at the next step, which starts at least 2 ms after
the previous answer) or 1 h, retry delays are 0 or 1 h, timers wake 1 h ago, in 1 h or in
14 h (past the 12 h queue limit), coordination TTLs are 1 h. Key expiry is therefore not
covered here; the contract suite pins it.

Examples are derandomised, so CI always runs the same sequences; ``FLOWCRAFT_DIFF_EXAMPLES=N``
runs N of them instead of the default 60 (about 25 s).
"""

from __future__ import annotations

import math
import os
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import quote

import httpx
import orjson
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st

from flowcraft_puller.emulator.runs import RUN_CALLS, validate
from flowcraft_puller.queue.protocol import OutgoingMessage
from flowcraft_puller.runstore.memory import MemoryRunStore
from flowcraft_puller.runstore.protocol import (
    MAX_KEY_CHARS,
    MAX_NAME_CHARS,
    MAX_TEXT_CHARS,
    TERMINAL_STATUSES,
    RunStoreError,
)
from flowcraft_puller.runstore.state import RunState
from tests.contract.conftest import SentJob, WorkerWithJobLog

EXAMPLES: Final = int(os.environ.get("FLOWCRAFT_DIFF_EXAMPLES", "60"))
MAX_CALLS: Final = 30
CALLS_AFTER_END: Final = 4
"""Calls made once the run has ended (or was never created); a sequence stops after them."""

NODE_IDS: Final = ("A", "B", "C", "D", "E", "n/1 é", "__proto__")
"""Topology node ids: plain ones first (shrinking prefers them), then ones that need
percent-encoding in a hook path or that JavaScript objects treat specially."""
DYNAMIC_IDS: Final = ("w1", "w2", "w3")
UNKNOWN_NODE: Final = "ghost"
CONTEXT_KEYS: Final = ("k0", "k1", "k2", "__proto__")
COORDINATION_KEYS: Final = ("c0", "c1", "c2")
HOOK_TOKENS: Final = ("hook-token-aaaaaaaaaaaaaaaaaaaaaa", "hook-token-bbbbbbbbbbbbbbbbbbbbbb")
FORGED_HOOK_TOKEN: Final = "hook-token-forged-0000000000000"
LEASES_MS: Final = (3_600_000, 1)
RETRY_DELAYS_MS: Final = (None, 0, 3_600_000)
WAKE_OFFSETS_MS: Final = (None, 3_600_500, -3_600_000, 50_000_500)
"""A timer's ``wakeAtMs`` relative to the step's time: none, in 1 h, 1 h ago, in 14 h."""
MAX_DELAY_SECONDS: Final = 43_200
LATE_DELIVERY_S: Final = 8.0
"""How long a job the Worker has not sent yet is waited for: its alarm re-sends after 5 s."""
INSTANT_FIELDS: Final = ("createdAtMs", "updatedAtMs")
DURATION_FIELDS: Final = ("retryAfterMs",)


class OversizedText(str):
    """A string whose JSON text exceeds one stored value's 2,000,000 bytes; short in reports."""

    def __repr__(self) -> str:
        return "OVERSIZED"


OVERSIZED: Final = OversizedText("x" * 2_000_000)


class HalfLimitText(str):
    """A string half as long as one stored value's limit: the awaiting details of two nodes
    holding one each exceed it together (``_awaitingDetails``); short in reports."""

    def __repr__(self) -> str:
        return "HALF_LIMIT"


HALF_LIMIT: Final = HalfLimitText("x" * 1_000_000)


class OverLimitText(str):
    """A name, key or text one character over its length limit (protocol §8); short in reports."""

    def __repr__(self) -> str:
        return f"TEXT[{len(self)}]"


LONG_NAME: Final = OverLimitText("n" * (MAX_NAME_CHARS + 1))
LONG_KEY: Final = "k" * (MAX_KEY_CHARS + 1)
"""A plain string: orjson refuses a subclass of ``str`` as an object key."""
LONG_TEXT: Final = OverLimitText("e" * (MAX_TEXT_CHARS + 1))
"""Refused as an action; truncated as a failure reason or an attempts error."""


# ---- calls ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """One protocol call: ``op`` is a path verb, ``get`` or ``hook``.

    For ``hook`` the body holds ``nodeId``, ``token`` and ``payload`` (the posted JSON).
    """

    op: str
    body: Mapping[str, Any]
    via_batch: bool = False
    wake_in_ms: int | None = None
    """commit: the awaiting record's ``wakeAtMs``, relative to the time of the step."""
    parent_node: str | None = None
    """start: link the run to this node of the run ``<runId>.parent``."""

    def request(self, run_id: str, now_ms: int) -> dict[str, Any]:
        """The body as sent: relative times and the parent link made concrete."""
        body = dict(self.body)
        if self.wake_in_ms is not None:
            body["awaiting"] = {**body["awaiting"], "wakeAtMs": now_ms + self.wake_in_ms}
        if self.parent_node is not None:
            body["parent"] = {
                "runId": parent_run_id(run_id),
                "blueprintId": "outer",
                "nodeId": self.parent_node,
                "gen": 0,
            }
        return body


def parent_run_id(run_id: str) -> str:
    return f"{run_id}.parent"


@dataclass(frozen=True)
class RunShape:
    """What the next call is drawn from: the reference run's nodes, generations and version."""

    start: Call
    succs: Mapping[str, Sequence[str]]
    topology: Sequence[str]
    gens: Mapping[str, int]
    version: str | None
    live: Sequence[tuple[str, int]] = ()
    """The pairs released or awaiting, older generations included: where calls take effect."""
    awaiting: Sequence[str] = ()
    hook_tokens: Mapping[str, str] = field(default_factory=dict)
    """The hook token of each awaiting node that has one."""

    @classmethod
    def of(cls, run: RunState | None, start: Call) -> RunShape:
        if run is None:
            topology = start.body["topology"]
            succs = {node: spec["succs"] for node, spec in topology.items()}
            return cls(start, succs, list(topology), {}, start.body["blueprintVersion"])
        succs = {node: spec.succs for node, spec in run.topology.items()}
        succs |= {node: [info.spec["gather"]] for node, info in run.dynamic.items()}
        return cls(
            start,
            succs,
            list(run.topology),
            dict(run.gens),
            run.blueprint_version,
            sorted(run.pending | run.awaiting),
            sorted({node for node, _ in run.awaiting}),
            {
                node: token
                for node, gen in run.awaiting
                if (token := run.records[(node, gen)].hook_token) is not None
            },
        )

    @property
    def nodes(self) -> list[str]:
        return list(self.succs)


# ---- strategies ----------------------------------------------------------------------------


def one_in(n: int) -> st.SearchStrategy[bool]:
    """True once in ``n`` draws; shrinks to False."""
    return st.integers(0, n - 1).map(lambda drawn: drawn == n - 1)


JSON_VALUES: Final = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53) + 1, 2**53 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=6),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=5,
)
PAYLOADS: Final = one_in(25).flatmap(lambda big: st.just(OVERSIZED) if big else JSON_VALUES)
"""Stored values: JSON, and once in a while one over the stored-value limit."""
WAKING_PAYLOADS: Final = one_in(4).flatmap(lambda big: st.just(OVERSIZED) if big else JSON_VALUES)
"""Resume outputs and webhook bodies: drawn more rarely than other values, so more often large."""
ACTIONS: Final = one_in(30).flatmap(
    lambda long: st.just(LONG_TEXT) if long else st.sampled_from([None, "go", "again"])
)
CONTEXT_KEY_DRAWS: Final = one_in(40).flatmap(
    lambda long: st.just(LONG_KEY) if long else st.sampled_from(CONTEXT_KEYS)
)
"""Context keys, now and then one over the key limit."""


LARGE_DETAIL: Final = st.sampled_from([OVERSIZED, HALF_LIMIT, HALF_LIMIT])
AWAITING_DETAILS: Final = st.fixed_dictionaries(
    {"why": one_in(3).flatmap(lambda big: LARGE_DETAIL if big else st.integers(0, 3))}
)
"""An awaiting record's details: small, and now and then too large alone or beside another's."""


def resolutions(outputs: st.SearchStrategy[Any] = PAYLOADS) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({"output": outputs, "action": ACTIONS})


def sometimes_unknown(values: Sequence[str]) -> st.SearchStrategy[str]:
    """One of ``values`` (an unknown node once in a while, or always when there are none)."""
    if not values:
        return st.just(UNKNOWN_NODE)
    return one_in(15).flatmap(lambda odd: st.just(UNKNOWN_NODE) if odd else st.sampled_from(values))


def generations(shape: RunShape, node: str) -> st.SearchStrategy[int]:
    """Mostly the node's current generation; also the next one, and the previous one if any."""
    current = shape.gens.get(node, 0)
    return st.sampled_from([current, current, current, current + 1, max(0, current - 1)])


@st.composite
def targets(draw: st.DrawFn, shape: RunShape) -> tuple[str, int]:
    """A ``(node, gen)`` pair: mostly one that is released or awaiting, else any node."""
    if shape.live and not draw(one_in(4)):
        return draw(st.sampled_from(shape.live))
    node = draw(sometimes_unknown(shape.nodes))
    return node, draw(generations(shape, node))


def awaiting_nodes(shape: RunShape) -> st.SearchStrategy[str]:
    """Mostly a node that awaits, else any node."""
    if not shape.awaiting:
        return sometimes_unknown(shape.nodes)
    return one_in(4).flatmap(
        lambda other: sometimes_unknown(shape.nodes) if other else st.sampled_from(shape.awaiting)
    )


@st.composite
def start_calls(draw: st.DrawFn) -> Call:
    """A start: a DAG over 1–6 of the node ids plus loops closed by back edges, and an
    initial context whose values are rarely too large (400)."""
    nodes = draw(st.permutations(NODE_IDS))[: draw(st.integers(1, 6))]
    topology: dict[str, dict[str, Any]] = {}
    for index, node in enumerate(nodes):
        later = nodes[index + 1 :]
        succs = draw(st.lists(st.sampled_from(later), unique=True, max_size=3)) if later else []
        join = draw(st.sampled_from(["all", "any"]))
        topology[node] = {"succs": succs, "join": join, "backPreds": []}
    loops = draw(st.lists(st.tuples(st.integers(0, len(nodes) - 1), st.integers(0, 5)), max_size=2))
    for controller, length in loops:
        body_end = nodes[min(controller + length, len(nodes) - 1)]
        head = nodes[controller]
        if head not in topology[body_end]["succs"]:
            topology[body_end]["succs"].append(head)
        if body_end not in topology[head]["backPreds"]:
            topology[head]["backPreds"].append(body_end)
    no_start = draw(one_in(12))
    starts = (
        []
        if no_start
        else draw(st.lists(st.sampled_from(nodes), min_size=1, max_size=2, unique=True))
    )
    body = {
        "blueprintId": LONG_NAME if draw(one_in(40)) else "bp",
        "blueprintVersion": draw(st.sampled_from([None, "v1"])),
        "context": draw(st.dictionaries(CONTEXT_KEY_DRAWS, PAYLOADS, max_size=2)),
        "topology": topology,
        "startNodes": starts,
    }
    parent = draw(st.sampled_from([None, None, "sub"]))
    return Call("start", body, parent_node=parent)


@st.composite
def restart_calls(draw: st.DrawFn, shape: RunShape) -> Call:
    """The run's start again: the same blueprint (idempotent) or another id or version (409)."""
    body = dict(shape.start.body)
    body["blueprintId"] = draw(st.sampled_from(["bp", "bp", "other"]))
    body["blueprintVersion"] = draw(st.sampled_from([body["blueprintVersion"], None, "v2"]))
    return Call("start", body, parent_node=shape.start.parent_node)


@st.composite
def claim_calls(draw: st.DrawFn, shape: RunShape) -> Call:
    node, gen = draw(targets(shape))
    body = {
        "nodeId": node,
        "gen": None if draw(one_in(4)) else gen,
        "token": draw(st.sampled_from(["a", "b"])),
        "leaseMs": draw(st.sampled_from(LEASES_MS)),
        "blueprintVersion": draw(st.sampled_from([shape.version, shape.version, "v2", None])),
    }
    return Call("claim", body, via_batch=draw(st.booleans()))


@st.composite
def dynamic_specs(draw: st.DrawFn, shape: RunShape) -> dict[str, Any]:
    clash = draw(one_in(10))
    node = draw(st.sampled_from(shape.topology if clash else DYNAMIC_IDS))
    return {
        "nodeId": node,
        "uses": draw(st.sampled_from(["map", "echo", "map", "echo", LONG_NAME])),
        "inputs": draw(st.sampled_from(["items", "rows", "items", "rows", LONG_KEY])),
        "gather": draw(sometimes_unknown(shape.topology)),
    }


@st.composite
def commit_calls(draw: st.DrawFn, shape: RunShape, awaiting: bool) -> Call:
    """A completion (or an awaiting commit): successors reached and skipped (mostly all of
    them, as the daemon sends), writes, re-arms, batch workers."""
    node, gen = draw(targets(shape))
    succs = list(shape.succs.get(node, []))
    arrivals = draw(st.lists(st.sampled_from(succs), unique=True)) if succs else []
    rest = [succ for succ in succs if succ not in arrivals]
    # The daemon skips every successor it did not reach (protocol §3); now and then only some.
    partial = bool(rest) and draw(one_in(4))
    skips = draw(st.lists(st.sampled_from(rest), unique=True)) if partial else list(rest)
    if draw(one_in(20)):
        skips.append(UNKNOWN_NODE)
    body: dict[str, Any] = {
        "nodeId": node,
        "gen": gen,
        "token": "a",
        "writes": draw(st.dictionaries(CONTEXT_KEY_DRAWS, PAYLOADS, max_size=2)),
        "deletes": draw(st.lists(CONTEXT_KEY_DRAWS, max_size=1)),
        "arrivals": arrivals,
        "skips": skips,
    }
    if draw(one_in(5)):
        body["rearm"] = draw(
            st.lists(sometimes_unknown(shape.topology), min_size=1, max_size=3, unique=True)
        )
    if draw(one_in(6)):
        body["dynamic"] = draw(st.lists(dynamic_specs(shape), min_size=1, max_size=2))
    wake_in_ms = None
    if awaiting:
        reason = draw(st.sampled_from(["external_event", "webhook", "timer", "subflow"]))
        wake_in_ms = draw(
            st.sampled_from(WAKE_OFFSETS_MS[1:] if reason == "timer" else WAKE_OFFSETS_MS)
        )
        body["result"] = None
        body["awaiting"] = {
            "reason": reason,
            "details": draw(AWAITING_DETAILS),
            "external": draw(st.booleans()),
            "hookToken": draw(st.sampled_from([*HOOK_TOKENS, None])),
            "result": draw(st.one_of(st.none(), resolutions())),
        }
    else:
        body["result"] = None if draw(one_in(20)) else draw(resolutions())
    return Call("commit", body, via_batch=draw(st.booleans()), wake_in_ms=wake_in_ms)


@st.composite
def attempts_calls(draw: st.DrawFn, shape: RunShape) -> Call:
    node, gen = draw(targets(shape))
    body = {
        "nodeId": node,
        "gen": gen,
        "token": draw(st.sampled_from(["a", "b"])),
        "attempts": draw(st.integers(0, 3)),
        "error": draw(st.sampled_from(["boom", None, LONG_TEXT])),
        "release": draw(st.booleans()),
        "retryAfterMs": draw(st.sampled_from(RETRY_DELAYS_MS)),
    }
    return Call("attempts", body, via_batch=draw(st.booleans()))


@st.composite
def fail_calls(draw: st.DrawFn, shape: RunShape) -> Call:
    body: dict[str, Any] = {"reason": draw(st.sampled_from(["node failed", LONG_TEXT]))}
    if draw(st.booleans()):
        node, gen = draw(targets(shape))
        body |= {"nodeId": node, "gen": gen}
    return Call("fail", body, via_batch=draw(st.booleans()))


@st.composite
def resume_calls(draw: st.DrawFn, shape: RunShape) -> Call:
    body: dict[str, Any] = {
        "action": draw(ACTIONS),
        "nodeId": None if draw(st.booleans()) else draw(awaiting_nodes(shape)),
    }
    if draw(st.booleans()):
        body["output"] = draw(WAKING_PAYLOADS)
    return Call("resume", body)


@st.composite
def hook_calls(draw: st.DrawFn, shape: RunShape) -> Call:
    """A delivery: mostly with the node's own token, else another or a forged one."""
    node = draw(awaiting_nodes(shape))
    tokens = [*HOOK_TOKENS, FORGED_HOOK_TOKEN]
    if node in shape.hook_tokens:
        tokens = [shape.hook_tokens[node]] * 3 + tokens
    body = {
        "nodeId": node,
        "token": draw(st.sampled_from(tokens)),
        "payload": draw(WAKING_PAYLOADS),
    }
    return Call("hook", body)


@st.composite
def ops_calls(draw: st.DrawFn, shape: RunShape) -> Call:
    """1–3 ops; a missing key or an increment of a non-integer fails the whole call."""
    names = st.sampled_from(
        [
            "get",
            "setIfNotExist",
            "increment",
            "delete",
            "extendTTL",
            "context.get",
            "context.has",
            "context.set",
            "context.delete",
            "context.toJSON",
        ]
    )
    keys = st.integers(0, 29).flatmap(
        lambda drawn: (
            st.none()
            if drawn < 2
            else st.just(LONG_KEY)
            if drawn == 2
            else st.sampled_from(COORDINATION_KEYS)
        )
    )
    op = st.fixed_dictionaries(
        {
            "op": names,
            "key": keys,
            "value": PAYLOADS,
            "ttlSeconds": st.sampled_from([None, 3600]),
        }
    )
    return Call("ops", {"ops": draw(st.lists(op, min_size=1, max_size=3))})


def cancel_calls(shape: RunShape) -> st.SearchStrategy[Call]:
    reasons = st.fixed_dictionaries({"reason": st.sampled_from([None, "stop", LONG_TEXT])})
    return st.builds(Call, st.just("cancel"), reasons)


def get_calls(shape: RunShape) -> st.SearchStrategy[Call]:
    """``GET /runs/{id}`` is compared after every step anyway; this one goes through the batch."""
    return st.just(Call("get", {}, via_batch=True))


def reconcile_calls(shape: RunShape) -> st.SearchStrategy[Call]:
    return st.just(Call("reconcile", {}))


CALL_KINDS: Final[dict[str, tuple[int, Callable[[RunShape], st.SearchStrategy[Call]]]]] = {
    "claim": (16, claim_calls),
    "commit": (16, lambda shape: commit_calls(shape, awaiting=False)),
    "await": (8, lambda shape: commit_calls(shape, awaiting=True)),
    "attempts": (8, attempts_calls),
    "resume": (2, resume_calls),
    "hook": (2, hook_calls),
    "ops": (4, ops_calls),
    "reconcile": (2, reconcile_calls),
    "get": (2, get_calls),
    "start": (2, restart_calls),
    "cancel": (1, cancel_calls),
    "fail": (1, fail_calls),
}
"""Each kind of call with its weight (out of 64): fail and cancel end a run, so they are rare."""
WAKING_WEIGHT: Final = 10
"""The weight of resume and hook calls while a node awaits."""


@st.composite
def calls(draw: st.DrawFn, shape: RunShape) -> Call:
    weights = {kind: weight for kind, (weight, _) in CALL_KINDS.items()}
    if shape.awaiting:
        weights |= {"resume": WAKING_WEIGHT, "hook": WAKING_WEIGHT}
    kind = draw(st.sampled_from([kind for kind, weight in weights.items() for _ in range(weight)]))
    return draw(CALL_KINDS[kind][1](shape).filter(fits_one_request))


def fits_one_request(call: Call) -> bool:
    """At most one oversized value: two would pass the 4 MiB request limit (413)."""
    return oversized_values(call.body) <= 1


def oversized_values(value: Any) -> int:
    if isinstance(value, OversizedText):
        return 1
    if isinstance(value, Mapping):
        return sum(oversized_values(item) for item in value.values())
    if isinstance(value, list):
        return sum(oversized_values(item) for item in value)
    return 0


# ---- the two sides -------------------------------------------------------------------------

Answer = tuple[int, Any]
"""An HTTP status and the response body; an error body reduced to its ``code`` and ``field``."""


def answer(status: int, body: Any) -> Answer:
    if status == 200:
        return status, body
    return status, {"code": body["error"]["code"], "field": body["error"].get("field")}


class WorkerSide:
    """The Worker under workerd, reached over HTTP only."""

    def __init__(self, worker: WorkerWithJobLog, http: httpx.Client, anon: httpx.Client) -> None:
        self.worker = worker
        self.http = http
        self.anon = anon

    def call(self, run_id: str, call: Call, body: dict[str, Any]) -> Answer:
        if call.op == "hook":
            segments = (run_id, body["nodeId"], body["token"])
            path = "/hooks/" + "/".join(quote(segment, safe="") for segment in segments)
            response = self.anon.post(path, content=orjson.dumps(body["payload"]))
        elif call.via_batch:
            entry = {"op": call.op, "runId": run_id, "body": body}
            response = self.http.post("/batch", content=orjson.dumps({"entries": [entry]}))
            assert response.status_code == 200, response.text
            result = response.json()["results"][0]
            return answer(result["status"], result["body"])
        elif call.op == "get":
            response = self.http.get(f"/runs/{run_id}")
        else:
            response = self.http.post(f"/runs/{run_id}/{call.op}", content=orjson.dumps(body))
        return answer(response.status_code, response.json())

    def view(self, run_id: str) -> Answer:
        response = self.http.get(f"/runs/{run_id}")
        return answer(response.status_code, response.json())

    def job_count(self) -> int:
        return len(self.worker.jobs)

    def jobs_since(self, index: int, run_ids: set[str]) -> list[SentJob]:
        return [job for job in self.worker.jobs.since(index) if job.body.get("runId") in run_ids]

    def await_jobs(self, index: int, run_ids: set[str], expected: int) -> list[SentJob]:
        """The run's jobs sent since ``index``, once ``expected`` arrived or the alarm's
        re-send is overdue (a send that failed is retried ``OUTBOX_RETRY_SECONDS`` later)."""
        deadline = time.monotonic() + LATE_DELIVERY_S
        while len(jobs := self.jobs_since(index, run_ids)) < expected:
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        return jobs


class ReferenceJobs:
    """The reference store's job sender: keeps every message it is given."""

    def __init__(self) -> None:
        self.sent: list[OutgoingMessage] = []

    async def send_batch(self, messages: list[OutgoingMessage]) -> None:
        self.sent.extend(messages)


class ReferenceSide:
    """The reference store in this process; its clock reads the time the current step began."""

    def __init__(self, portal: BlockingPortal) -> None:
        self.portal = portal
        self.now_ms = 0
        self.jobs = ReferenceJobs()
        self.store = MemoryRunStore(self.jobs, clock_ms=lambda: self.now_ms)

    def call(self, run_id: str, call: Call, body: dict[str, Any], now_ms: int) -> Answer:
        self.now_ms = now_ms
        try:
            if call.op == "hook":
                response = self.portal.call(
                    self.store.hook, run_id, body["nodeId"], body["token"], body["payload"]
                )
            else:
                model, method = RUN_CALLS[call.op]
                response = self.portal.call(method, self.store, run_id, validate(model, body))
        except RunStoreError as exc:
            return exc.http_status, {"code": exc.code, "field": exc.field}
        return 200, response.model_dump(mode="json", by_alias=True)

    def view(self, run_id: str) -> Answer:
        return self.call(run_id, Call("get", {}), {}, self.now_ms)

    def run(self, run_id: str) -> RunState | None:
        return self.store.runs.get(run_id)


# ---- comparing -----------------------------------------------------------------------------


def wall_ms() -> int:
    return math.floor(time.time() * 1000)


@dataclass
class StepClock:
    """The wall-clock window of each step, from just before its request to just after its answer.

    The Worker reads its clock inside the window; the reference reads the window's start.
    Windows never overlap, so a time the reference stamped names the step it came from.
    """

    windows: dict[int, int] = field(default_factory=dict)
    widest_ms: int = 0
    _last_end: int = 0

    def begin(self) -> int:
        """The start of a new step, at least 2 ms after the last answer (1 ms leases expire)."""
        while (now := wall_ms()) < self._last_end + 2:
            time.sleep(0.001)
        return now

    def end(self, began: int) -> None:
        ended = math.ceil(time.time() * 1000)
        self.windows[began] = ended
        self.widest_ms = max(self.widest_ms, ended - began)
        self._last_end = ended

    def check_instant(self, where: str, reference: Any, worker: Any) -> None:
        assert reference in self.windows, (
            f"{where}: the reference stamped {reference}, no step time"
        )
        low, high = reference, self.windows[reference]
        assert isinstance(worker, int), f"{where}: the Worker sent {worker!r}, not a time"
        assert low <= worker <= high, (
            f"{where}: the Worker's {worker} is outside the window [{low}, {high}] of the step"
            f" the reference stamped"
        )

    def check_duration(self, where: str, reference: Any, worker: Any) -> None:
        if reference is None or worker is None:
            assert reference == worker, f"{where}: reference {reference}, Worker {worker}"
            return
        assert abs(worker - reference) <= self.widest_ms, (
            f"{where}: reference {reference} ms, Worker {worker} ms;"
            f" the clocks may differ by {self.widest_ms} ms at most"
        )


def canonical(value: Any) -> Any:
    """``value`` with every JSON number as a float: numbers compare by value (zero has no
    sign), bools stay bools."""
    if isinstance(value, dict):
        return {key: canonical(item) for key, item in value.items()}
    if isinstance(value, list):
        return [canonical(item) for item in value]
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value) + 0.0  # -0.0 + 0.0 is 0.0: JavaScript writes -0 as 0
    return value


def json_text(value: Any) -> str:
    options = orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2
    return orjson.dumps(canonical(value), option=options).decode()


def assert_same_answer(where: str, reference: Answer, worker: Answer, clock: StepClock) -> None:
    (reference_status, reference_body), (worker_status, worker_body) = reference, worker
    assert worker_status == reference_status, (
        f"{where}: the Worker answered HTTP {worker_status} {worker_body},"
        f" the reference HTTP {reference_status} {reference_body}"
    )
    if isinstance(reference_body, dict) and isinstance(worker_body, dict):
        reference_body, worker_body = dict(reference_body), dict(worker_body)
        for name in INSTANT_FIELDS:
            if name in reference_body or name in worker_body:
                at = f"{where}, {name}"
                clock.check_instant(at, reference_body.pop(name, None), worker_body.pop(name, None))
        for name in DURATION_FIELDS:
            if name in reference_body or name in worker_body:
                at = f"{where}, {name}"
                clock.check_duration(
                    at, reference_body.pop(name, None), worker_body.pop(name, None)
                )
    assert json_text(worker_body) == json_text(reference_body), (
        f"{where}: the Worker's answer (+) differs from the reference's (-)"
    )


def delay_seconds(delay_ms: int) -> int:
    """The queue's delivery delay for ``delay_ms`` (protocol §2.3)."""
    return min(math.ceil(max(0, delay_ms) / 1000), MAX_DELAY_SECONDS)


def assert_same_jobs(
    where: str, reference: list[OutgoingMessage], worker: list[SentJob], clock: StepClock
) -> None:
    worker_bodies = json_text([job.body for job in worker])
    reference_bodies = json_text([message.body for message in reference])
    assert worker_bodies == reference_bodies, (
        f"{where}: the jobs the Worker sent (+) differ from the reference's (-)"
    )
    for message, job in zip(reference, worker, strict=True):
        low = delay_seconds(message.delay_ms - clock.widest_ms)
        high = delay_seconds(message.delay_ms + clock.widest_ms)
        assert low <= job.delay_seconds <= high, (
            f"{where}: job {job.body} delayed {job.delay_seconds} s by the Worker,"
            f" {message.delay_ms} ms by the reference"
        )


def record_for_hypothesis(where: str, call: Call, answer: Answer) -> None:
    """Note the reference's answer (shown with a failing example) and count its kind."""
    note(f"{where}: HTTP {answer[0]} {answer[1]}")
    event(outcome(call, answer))


def outcome(call: Call, answer: Answer) -> str:
    """The kind of answer a call got, for ``--hypothesis-show-statistics``."""
    status, body = answer
    if status != 200:
        return f"{call.op}: HTTP {status} {body['field'] or ''}".rstrip()
    if call.op == "claim":
        return f"claim: {body['state']}"
    if call.op == "commit":
        released = "released" if body["released"] else "nothing released"
        flags = [name for name in ("duplicate", "stale") if body[name]]
        return f"commit: {body['status']}, {released} {' '.join(flags)}".rstrip()
    if call.op == "reconcile":
        return f"reconcile: {len(body['requeued'])} requeued"
    return f"{call.op}: {body.get('status', 'ok')}"


class Differential:
    """One run driven on both sides, call by call, compared after every call."""

    def __init__(
        self,
        run_id: str,
        worker: WorkerSide,
        reference: ReferenceSide,
        observe: Callable[[str, Call, Answer], None] = lambda where, call, answer: None,
    ) -> None:
        self.run_id = run_id
        self.worker = worker
        self.reference = reference
        self.observe = observe
        """Called with each call and the reference's answer, before comparing."""
        self.clock = StepClock()
        self.steps = 0

    def step(self, call: Call) -> None:
        now_ms = self.clock.begin()
        body = call.request(self.run_id, now_ms)
        worker_jobs, reference_jobs = self.worker.job_count(), len(self.reference.jobs.sent)
        worker_answer = self.worker.call(self.run_id, call, body)
        self.clock.end(now_ms)
        reference_answer = self.reference.call(self.run_id, call, body, now_ms)
        self.steps += 1
        where = f"call {self.steps} ({call.op})"
        self.observe(where, call, reference_answer)
        assert_same_answer(where, reference_answer, worker_answer, self.clock)
        run_ids = {self.run_id, parent_run_id(self.run_id)}
        answered_with = len(self.worker.jobs_since(worker_jobs, run_ids))
        reference_view, worker_view = (
            self.reference.view(self.run_id),
            self.worker.view(self.run_id),
        )
        sent = self.reference.jobs.sent[reference_jobs:]
        delivered = self.worker.await_jobs(worker_jobs, run_ids, len(sent))
        if answered_with < len(delivered):
            warnings.warn(
                f"{where}: the Worker answered before {len(delivered) - answered_with} of its"
                " jobs reached the queue (a failed send, re-sent later)",
                stacklevel=1,
            )
        assert_same_jobs(where, sent, delivered, self.clock)
        assert_same_answer(
            f"{where}, then GET /runs/{{id}}", reference_view, worker_view, self.clock
        )


# ---- the test ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def portal() -> Iterator[BlockingPortal]:
    with start_blocking_portal() as portal:
        yield portal


@pytest.fixture(scope="module")
def worker_side(worker_with_job_log: WorkerWithJobLog) -> Iterator[WorkerSide]:
    worker = worker_with_job_log
    headers = {"Authorization": f"Bearer {worker.secret}"}
    with (
        httpx.Client(base_url=worker.base_url, headers=headers, timeout=30) as http,
        httpx.Client(base_url=worker.base_url, timeout=30) as anon,
    ):
        yield WorkerSide(worker, http, anon)


@settings(
    max_examples=EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data())
def test_worker_answers_every_call_like_the_reference_run_state(
    data: st.DataObject, worker_side: WorkerSide, portal: BlockingPortal
) -> None:
    run_id = f"diff-{uuid.uuid4().hex}"
    run = Differential(run_id, worker_side, ReferenceSide(portal), record_for_hypothesis)
    start = data.draw(start_calls().filter(fits_one_request), label="start")
    run.step(start)
    calls_after_end = 0
    for index in range(data.draw(st.integers(1, MAX_CALLS), label="calls")):
        state = run.reference.run(run_id)
        if state is None or state.status in TERMINAL_STATUSES:
            calls_after_end += 1
            if calls_after_end > CALLS_AFTER_END:
                break
        shape = RunShape.of(state, start)
        run.step(data.draw(calls(shape), label=f"call {index + 1}"))


# ---- drift found and fixed ------------------------------------------------------------------
# Each test below replays the minimal sequence of a drift the random test found in the Worker:
# it checked an op value's size only where it stored it, named the field `value`, and stored
# an awaiting result of any size. They pin the fix whatever sequences the random test draws.

ONE_NODE_START: Final = Call(
    "start",
    {
        "blueprintId": "bp",
        "topology": {"A": {"succs": [], "join": "all", "backPreds": []}},
        "startNodes": ["A"],
    },
)


def new_differential(worker_side: WorkerSide, portal: BlockingPortal) -> Differential:
    return Differential(f"diff-{uuid.uuid4().hex}", worker_side, ReferenceSide(portal))


def test_an_oversized_value_in_any_op_is_refused(
    worker_side: WorkerSide, portal: BlockingPortal
) -> None:
    run = new_differential(worker_side, portal)
    run.step(ONE_NODE_START)
    run.step(Call("ops", {"ops": [{"op": "get", "key": "c0", "value": OVERSIZED}]}))


def test_an_oversized_op_value_is_refused_naming_its_path(
    worker_side: WorkerSide, portal: BlockingPortal
) -> None:
    run = new_differential(worker_side, portal)
    run.step(ONE_NODE_START)
    ops = [{"op": "get", "key": "c0"}, {"op": "context.set", "key": "c0", "value": OVERSIZED}]
    run.step(Call("ops", {"ops": ops}))


def test_an_oversized_awaiting_result_is_refused(
    worker_side: WorkerSide, portal: BlockingPortal
) -> None:
    run = new_differential(worker_side, portal)
    run.step(ONE_NODE_START)
    awaiting = {"reason": "timer", "result": {"output": OVERSIZED}}
    run.step(Call("commit", {"nodeId": "A", "gen": 0, "token": "a", "awaiting": awaiting}))


# ---- limits both sides gained together --------------------------------------------------------
# A resume's output, a webhook body and the awaiting details (of every awaiting node together)
# are stored values too; the random test draws them rarely, these replays always.

TWO_NODE_START: Final = Call(
    "start",
    {
        "blueprintId": "bp",
        "topology": {
            "A": {"succs": [], "join": "all", "backPreds": []},
            "B": {"succs": [], "join": "all", "backPreds": []},
        },
        "startNodes": ["A", "B"],
    },
)


def awaiting_commit(node: str, details: dict[str, Any], hook_token: str | None = None) -> Call:
    awaiting = {
        "reason": "webhook" if hook_token else "external_event",
        "details": details,
        "external": True,
        "hookToken": hook_token,
    }
    return Call("commit", {"nodeId": node, "gen": 0, "token": "a", "awaiting": awaiting})


def test_an_oversized_resume_output_is_refused(
    worker_side: WorkerSide, portal: BlockingPortal
) -> None:
    run = new_differential(worker_side, portal)
    run.step(ONE_NODE_START)
    run.step(awaiting_commit("A", {}))
    run.step(Call("resume", {"action": "go", "output": OVERSIZED}))
    run.step(Call("resume", {"action": "go", "output": 1}))


def test_an_oversized_webhook_body_is_refused(
    worker_side: WorkerSide, portal: BlockingPortal
) -> None:
    run = new_differential(worker_side, portal)
    run.step(ONE_NODE_START)
    run.step(awaiting_commit("A", {}, HOOK_TOKENS[0]))
    run.step(Call("hook", {"nodeId": "A", "token": HOOK_TOKENS[0], "payload": OVERSIZED}))
    run.step(Call("hook", {"nodeId": "A", "token": HOOK_TOKENS[0], "payload": 1}))


def test_awaiting_details_over_the_limit_only_together_are_refused(
    worker_side: WorkerSide, portal: BlockingPortal
) -> None:
    run = new_differential(worker_side, portal)
    run.step(TWO_NODE_START)
    run.step(awaiting_commit("A", {"why": HALF_LIMIT}))
    run.step(awaiting_commit("B", {"why": HALF_LIMIT}))
    run.step(awaiting_commit("B", {"why": OVERSIZED}))
    run.step(awaiting_commit("B", {"why": 1}))
