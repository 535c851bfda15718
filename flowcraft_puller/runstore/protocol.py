"""The run-store protocol: typed requests and responses, errors, and the RunStore interface.

Every implementation (in memory, the local emulator over SQLite, the Worker's Durable Object)
speaks exactly this; the HTTP form of each call is specified in ``docs/protocol.md``. Field
names on the wire are camelCase.
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal, Protocol

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints
from pydantic.alias_generators import to_camel

RunStatus = Literal["running", "awaiting", "completed", "failed", "cancelled"]
TERMINAL_STATUSES: Final = frozenset({"completed", "failed", "cancelled"})
SETTLED_STATUSES: Final = frozenset({*TERMINAL_STATUSES, "awaiting"})
"""Statuses a run stays in until someone acts (or forever): nothing more happens on its own."""
RUN_ID_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
MAX_LEASE_MS: Final = 43_200_000
MAX_NODE_ID_CHARS: Final = 512
MAX_NAME_CHARS: Final = 512
"""A blueprint id or version, and a batch worker's ``uses`` (protocol §8)."""
MAX_KEY_CHARS: Final = 1024
"""A context key, a coordination key and a batch worker's ``inputs`` key: room for the keys the
engine derives from a node id of the longest length, ``_batch.<scatter>_<batch>_item_<i>``."""
MAX_TEXT_CHARS: Final = 4096
"""A routing ``action``; failure reasons and attempt errors longer than this are truncated."""
MAX_TOPOLOGY_NODES: Final = 10_000
"""Nodes in a topology, and node ids in each of its lists (``succs``, ``backPreds``, starts)."""


def clip_text(text: str) -> str:
    """``text`` cut to :data:`MAX_TEXT_CHARS` characters: a failure's reason or error message
    comes from user code, and refusing it would make the failure path itself fail."""
    return text[:MAX_TEXT_CHARS]


RunId = Annotated[str, StringConstraints(pattern=RUN_ID_PATTERN)]
NodeId = Annotated[str, StringConstraints(min_length=1, max_length=MAX_NODE_ID_CHARS)]
NodeIds = Annotated[list[NodeId], Field(max_length=MAX_TOPOLOGY_NODES)]
Gen = Annotated[int, Field(ge=0)]
Name = Annotated[str, StringConstraints(max_length=MAX_NAME_CHARS)]
ContextKey = Annotated[str, StringConstraints(max_length=MAX_KEY_CHARS)]
Action = Annotated[str, StringConstraints(max_length=MAX_TEXT_CHARS)]
Text = Annotated[str, AfterValidator(clip_text)]


class Wire(BaseModel):
    """Base of protocol models: camelCase on the wire, unknown request fields rejected."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        extra="forbid",
    )


class Reply(Wire):
    """Base of responses: unknown fields are ignored so servers can add fields."""

    model_config = ConfigDict(extra="ignore")


class NodeRef(Reply):
    node_id: NodeId
    gen: Gen


class Resolution(Wire):
    """A node result as stored: ``output`` (any JSON) and the routing ``action``."""

    output: Any = None
    action: Action | None = None


class TopologyNode(Wire):
    succs: NodeIds = Field(default_factory=list)
    join: Literal["all", "any"] = "all"
    back_preds: NodeIds = Field(default_factory=list)


class ParentLink(Wire):
    """The parent node of a subflow's child run: notified when the child settles."""

    run_id: RunId
    blueprint_id: Name
    node_id: NodeId
    gen: Gen


class StartRequest(Wire):
    blueprint_id: Annotated[Name, StringConstraints(min_length=1)]
    blueprint_version: Name | None = None
    context: dict[ContextKey, Any] = Field(default_factory=dict)
    topology: Annotated[dict[NodeId, TopologyNode], Field(max_length=MAX_TOPOLOGY_NODES)]
    start_nodes: NodeIds
    parent: ParentLink | None = None


class StartResponse(Reply):
    run_id: RunId
    created: bool
    status: RunStatus


ClaimState = Literal[
    "run", "completed", "awaiting", "busy", "terminal", "not_ready", "version_mismatch"
]


class ClaimRequest(Wire):
    node_id: NodeId
    gen: Gen | None = None
    token: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    lease_ms: Annotated[int, Field(ge=1, le=MAX_LEASE_MS)]
    blueprint_version: Name | None = None


class AwaitingView(Reply):
    reason: str
    details: dict[str, Any] = Field(default_factory=dict)
    external: bool = False
    wake_at_ms: int | None = None
    resolution: Resolution | None = None
    """Present once the node can complete: a resume, a webhook delivery, or a due timer."""


class ClaimResponse(Reply):
    state: ClaimState
    status: RunStatus
    gen: Gen = 0
    attempts: int = 0
    last_error: str | None = None
    context: dict[str, Any] | None = None
    result: Resolution | None = None
    awaiting: AwaitingView | None = None
    retry_after_ms: int | None = None
    reason: str | None = None
    blueprint_version: str | None = None


class DynamicSpec(Wire):
    node_id: NodeId
    uses: Name
    inputs: ContextKey
    gather: NodeId


class AwaitingSpec(Wire):
    reason: Literal["external_event", "timer", "webhook", "subflow"]
    details: dict[str, Any] = Field(default_factory=dict)
    external: bool = False
    wake_at_ms: int | None = None
    hook_token: Annotated[str, StringConstraints(min_length=22, max_length=200)] | None = None
    result: Resolution | None = None


class CommitRequest(Wire):
    node_id: NodeId
    gen: Gen
    token: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    result: Resolution | None = None
    writes: dict[ContextKey, Any] = Field(default_factory=dict)
    deletes: list[ContextKey] = Field(default_factory=list)
    arrivals: list[NodeId] = Field(default_factory=list)
    skips: list[NodeId] = Field(default_factory=list)
    rearm: list[NodeId] = Field(default_factory=list)
    dynamic: list[DynamicSpec] = Field(default_factory=list)
    awaiting: AwaitingSpec | None = None


class CommitResponse(Reply):
    status: RunStatus
    released: list[NodeRef] = Field(default_factory=list)
    duplicate: bool = False
    stale: bool = False


class AttemptsRequest(Wire):
    node_id: NodeId
    gen: Gen
    token: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    attempts: Annotated[int, Field(ge=0)]
    error: Text | None = None
    release: bool = False
    retry_after_ms: Annotated[int, Field(ge=0)] | None = None


class StatusResponse(Reply):
    status: RunStatus
    reason: str | None = None


class FailRequest(Wire):
    reason: Annotated[Text, StringConstraints(min_length=1)]
    node_id: NodeId | None = None
    gen: Gen | None = None


class ResumeRequest(Wire):
    action: Action | None = None
    output: Any = None
    node_id: NodeId | None = None


class ResumeResponse(Reply):
    status: RunStatus
    resumed: list[NodeRef] = Field(default_factory=list)


class CancelRequest(Wire):
    reason: Text | None = None


class ReconcileResponse(Reply):
    status: RunStatus
    requeued: list[NodeRef] = Field(default_factory=list)


NodeState = Literal["idle", "released", "completed", "skipped", "awaiting", "failed"]


class NodeView(Reply):
    gen: Gen
    state: NodeState
    attempts: int = 0


class RunView(Reply):
    run_id: RunId
    blueprint_id: str
    blueprint_version: str | None = None
    status: RunStatus
    reason: str | None = None
    context: dict[str, Any] = Field(default_factory=dict)
    nodes: dict[str, NodeView] = Field(default_factory=dict)
    awaiting: dict[str, AwaitingView] = Field(default_factory=dict)
    parent: ParentLink | None = None
    created_at_ms: int = 0
    updated_at_ms: int = 0

    @property
    def outputs(self) -> dict[str, Any]:
        """Each completed node's output (the ``_outputs.<id>`` context keys), by node id."""
        prefix = "_outputs."
        return {k[len(prefix) :]: v for k, v in self.context.items() if k.startswith(prefix)}


CoordinationOp = Literal[
    "get",
    "setIfNotExist",
    "increment",
    "extendTTL",
    "delete",
    "context.get",
    "context.set",
    "context.has",
    "context.delete",
    "context.toJSON",
]


class Op(Wire):
    op: CoordinationOp
    key: ContextKey | None = None
    value: Any = None
    ttl_seconds: Annotated[int, Field(ge=1, le=31_536_000)] | None = None


class OpsRequest(Wire):
    ops: Annotated[list[Op], Field(min_length=1, max_length=100)]


class OpsResponse(Reply):
    results: list[Any]


class RunSummary(Reply):
    run_id: RunId
    status: RunStatus
    last_updated: int
    blueprint_id: str | None = None


class RunList(Reply):
    runs: list[RunSummary]
    cursor: str | None = None


class HookResponse(Reply):
    status: RunStatus
    node_id: NodeId


def field_path(loc: tuple[int | str, ...]) -> str:
    """A pydantic error location as the protocol's JSON path: ``topology.B.succs[0]``."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part != "[key]":
            path += f".{part}" if path else part
    return path


class ErrorDetail(Reply):
    code: str
    message: str
    field: str | None = None


class ErrorBody(Reply):
    error: ErrorDetail


class RunStoreError(Exception):
    """A run-store call was refused; ``code`` and ``http_status`` follow docs/protocol.md."""

    code = "internal"
    http_status = 500

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def body(self) -> ErrorBody:
        return ErrorBody(error=ErrorDetail(code=self.code, message=self.message, field=self.field))


class BadRequest(RunStoreError):
    code = "bad_request"
    http_status = 400


class Unauthorized(RunStoreError):
    code = "unauthorized"
    http_status = 401


class RunNotFound(RunStoreError):
    code = "not_found"
    http_status = 404


class Conflict(RunStoreError):
    code = "conflict"
    http_status = 409


class PayloadTooLarge(RunStoreError):
    code = "payload_too_large"
    http_status = 413


class StoreUnavailable(RunStoreError):
    """The store could not be reached or answered 5xx/429 after retries."""

    code = "unavailable"
    http_status = 503


ERRORS_BY_CODE: Final[dict[str, type[RunStoreError]]] = {
    cls.code: cls for cls in (BadRequest, Unauthorized, RunNotFound, Conflict, PayloadTooLarge)
}


class RunStore(Protocol):
    """The per-run state machine the daemon drives (docs/protocol.md)."""

    async def start(self, run_id: str, request: StartRequest) -> StartResponse: ...

    async def claim(self, run_id: str, request: ClaimRequest) -> ClaimResponse: ...

    async def commit(self, run_id: str, request: CommitRequest) -> CommitResponse: ...

    async def attempts(self, run_id: str, request: AttemptsRequest) -> StatusResponse: ...

    async def fail(self, run_id: str, request: FailRequest) -> StatusResponse: ...

    async def resume(self, run_id: str, request: ResumeRequest) -> ResumeResponse: ...

    async def cancel(self, run_id: str, request: CancelRequest) -> StatusResponse: ...

    async def reconcile(self, run_id: str) -> ReconcileResponse: ...

    async def get(self, run_id: str) -> RunView: ...

    async def ops(self, run_id: str, request: OpsRequest) -> OpsResponse: ...

    async def hook(self, run_id: str, node_id: str, token: str, body: Any) -> HookResponse: ...

    async def list_runs(
        self,
        *,
        status: RunStatus | None = None,
        stale_seconds: int | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> RunList: ...
