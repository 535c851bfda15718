/** Schema validation of request bodies (docs/protocol.md §4): typed requests or 400 with the field. */

import { BadRequest } from "./errors";
import {
  clipText,
  type Fields,
  readEnum,
  readList,
  readShape,
  requireInt,
  requireNodeId,
  requireObject,
  requireRunId,
  requireString,
} from "./fields";
import type { Json, JsonObject } from "./json";
import {
  type AttemptsRequest,
  type AwaitReason,
  type CancelRequest,
  type ClaimRequest,
  COORDINATION_OPS,
  type DynamicSpec,
  type FailRequest,
  type JoinMode,
  MAX_KEY_CHARS,
  MAX_LEASE_MS,
  MAX_NAME_CHARS,
  MAX_OPS,
  MAX_TEXT_CHARS,
  MAX_TOPOLOGY_NODES,
  type Op,
  type ParentLink,
  type Resolution,
  type ResumeRequest,
  type StartRequest,
  type TopologyNode,
} from "./protocol";

const TOKEN_MAX = 200;
const HOOK_TOKEN_MIN = 22;
const MAX_TTL_SECONDS = 31_536_000;
const AWAIT_REASONS: readonly AwaitReason[] = ["external_event", "timer", "webhook", "subflow"];
const JOIN_MODES: readonly JoinMode[] = ["all", "any"];

function readGen(value: Json, path: string): number {
  return requireInt(value, path, 0);
}

function readToken(value: Json, path: string): string {
  return requireString(value, path, 1, TOKEN_MAX);
}

function readKey(value: Json, path: string): string {
  return requireString(value, path, 0, MAX_KEY_CHARS);
}

/** An object of context values: each key holds at most {@link MAX_KEY_CHARS} characters. */
function readKeyed(fields: Fields, key: string): JsonObject {
  const object = fields.object(key);
  for (const name of Object.keys(object)) {
    readKey(name, `${fields.at(key)}.${name}`);
  }
  return object;
}

/** A failure's reason or error message: any string, truncated to {@link MAX_TEXT_CHARS}. */
function readText(fields: Fields, key: string, min = 0): string {
  return clipText(fields.string(key, min));
}

function readNullableText(fields: Fields, key: string): string | null {
  const text = fields.nullableString(key);
  return text === null ? null : clipText(text);
}

function readResolution(value: Json, path: string): Resolution {
  return readShape(value, path, ["output", "action"], (fields) => ({
    output: fields.raw("output") ?? null,
    action: fields.nullableString("action", 0, MAX_TEXT_CHARS),
  }));
}

function readTopologyNode(value: Json, path: string): TopologyNode {
  return readShape(value, path, ["succs", "join", "backPreds"], (fields) => ({
    succs: fields.list("succs", requireNodeId, MAX_TOPOLOGY_NODES),
    join: fields.optional("join", "all", (raw, at) => readEnum(raw, at, JOIN_MODES)),
    backPreds: fields.list("backPreds", requireNodeId, MAX_TOPOLOGY_NODES),
  }));
}

/** The topology: its nodes are read first, then their number is checked (pydantic's order). */
function readTopology(value: Json, path: string): Map<string, TopologyNode> {
  const topology = new Map<string, TopologyNode>();
  for (const [node, spec] of Object.entries(requireObject(value, path))) {
    const at = `${path}.${node}`;
    requireNodeId(node, at);
    topology.set(node, readTopologyNode(spec, at));
  }
  if (topology.size > MAX_TOPOLOGY_NODES) {
    throw new BadRequest(`${path} must hold at most ${MAX_TOPOLOGY_NODES} nodes, not ${topology.size}`, path);
  }
  return topology;
}

function readParent(value: Json, path: string): ParentLink {
  return readShape(value, path, ["runId", "blueprintId", "nodeId", "gen"], (fields) => ({
    runId: fields.required("runId", requireRunId),
    blueprintId: fields.string("blueprintId", 0, MAX_NAME_CHARS),
    nodeId: fields.required("nodeId", requireNodeId),
    gen: fields.required("gen", readGen),
  }));
}

export function parseStart(body: Json): StartRequest {
  const allowed = ["blueprintId", "blueprintVersion", "context", "topology", "startNodes", "parent"];
  return readShape(body, "", allowed, (fields) => ({
    blueprintId: fields.string("blueprintId", 1, MAX_NAME_CHARS),
    blueprintVersion: fields.nullableString("blueprintVersion", 0, MAX_NAME_CHARS),
    context: readKeyed(fields, "context"),
    topology: fields.required("topology", readTopology),
    startNodes: fields.required("startNodes", (value, path) =>
      readList(value, path, requireNodeId, MAX_TOPOLOGY_NODES),
    ),
    parent: fields.nullable("parent", readParent),
  }));
}

export function parseClaim(body: Json): ClaimRequest {
  return readShape(body, "", ["nodeId", "gen", "token", "leaseMs", "blueprintVersion"], (fields) => ({
    nodeId: fields.required("nodeId", requireNodeId),
    gen: fields.nullable("gen", readGen),
    token: fields.required("token", readToken),
    leaseMs: fields.required("leaseMs", (value, path) => requireInt(value, path, 1, MAX_LEASE_MS)),
    blueprintVersion: fields.nullableString("blueprintVersion", 0, MAX_NAME_CHARS),
  }));
}

function readDynamic(value: Json, path: string): DynamicSpec {
  return readShape(value, path, ["nodeId", "uses", "inputs", "gather"], (fields) => ({
    nodeId: fields.required("nodeId", requireNodeId),
    uses: fields.string("uses", 0, MAX_NAME_CHARS),
    inputs: fields.string("inputs", 0, MAX_KEY_CHARS),
    gather: fields.required("gather", requireNodeId),
  }));
}

/** An awaiting spec as sent; the Worker replaces `hookToken` by its hash before the DO sees it. */
export interface AwaitingInput {
  reason: AwaitReason;
  details: JsonObject;
  external: boolean;
  wakeAtMs: number | null;
  hookToken: string | null;
  result: Resolution | null;
}

function readAwaiting(value: Json, path: string): AwaitingInput {
  const allowed = ["reason", "details", "external", "wakeAtMs", "hookToken", "result"];
  return readShape(value, path, allowed, (fields) => ({
    reason: fields.required("reason", (raw, at) => readEnum(raw, at, AWAIT_REASONS)),
    details: fields.object("details"),
    external: fields.boolean("external", false),
    wakeAtMs: fields.nullable("wakeAtMs", (raw, at) => requireInt(raw, at, Number.MIN_SAFE_INTEGER)),
    hookToken: fields.nullableString("hookToken", HOOK_TOKEN_MIN, TOKEN_MAX),
    result: fields.nullable("result", readResolution),
  }));
}

/** A commit as sent; see {@link AwaitingInput} for the hook token. */
export interface CommitInput {
  nodeId: string;
  gen: number;
  token: string;
  result: Resolution | null;
  writes: Map<string, Json>;
  deletes: string[];
  arrivals: string[];
  skips: string[];
  rearm: string[];
  dynamic: DynamicSpec[];
  awaiting: AwaitingInput | null;
}

export function parseCommit(body: Json): CommitInput {
  const allowed = [
    "nodeId",
    "gen",
    "token",
    "result",
    "writes",
    "deletes",
    "arrivals",
    "skips",
    "rearm",
    "dynamic",
    "awaiting",
  ];
  return readShape(body, "", allowed, (fields) => ({
    nodeId: fields.required("nodeId", requireNodeId),
    gen: fields.required("gen", readGen),
    token: fields.required("token", readToken),
    result: fields.nullable("result", readResolution),
    writes: new Map(Object.entries(readKeyed(fields, "writes"))),
    deletes: fields.list("deletes", readKey),
    arrivals: fields.list("arrivals", requireNodeId),
    skips: fields.list("skips", requireNodeId),
    rearm: fields.list("rearm", requireNodeId),
    dynamic: fields.list("dynamic", readDynamic),
    awaiting: fields.nullable("awaiting", readAwaiting),
  }));
}

export function parseAttempts(body: Json): AttemptsRequest {
  const allowed = ["nodeId", "gen", "token", "attempts", "error", "release", "retryAfterMs"];
  return readShape(body, "", allowed, (fields) => ({
    nodeId: fields.required("nodeId", requireNodeId),
    gen: fields.required("gen", readGen),
    token: fields.required("token", readToken),
    attempts: fields.required("attempts", (value, path) => requireInt(value, path, 0)),
    error: readNullableText(fields, "error"),
    release: fields.boolean("release", false),
    retryAfterMs: fields.nullable("retryAfterMs", (value, path) => requireInt(value, path, 0)),
  }));
}

export function parseFail(body: Json): FailRequest {
  return readShape(body, "", ["reason", "nodeId", "gen"], (fields) => ({
    reason: readText(fields, "reason", 1),
    nodeId: fields.nullable("nodeId", requireNodeId),
    gen: fields.nullable("gen", readGen),
  }));
}

export function parseResume(body: Json): ResumeRequest {
  return readShape(body, "", ["action", "output", "nodeId"], (fields) => ({
    action: fields.nullableString("action", 0, MAX_TEXT_CHARS),
    output: fields.raw("output") ?? null,
    hasOutput: fields.has("output"),
    nodeId: fields.nullable("nodeId", requireNodeId),
  }));
}

export function parseCancel(body: Json): CancelRequest {
  return readShape(body, "", ["reason"], (fields) => ({ reason: readNullableText(fields, "reason") }));
}

/** Calls without parameters (`reconcile`, `get`) accept only an empty object. */
export function parseEmpty(body: Json): void {
  readShape(body, "", [], () => undefined);
}

function readOp(value: Json, path: string): Op {
  return readShape(value, path, ["op", "key", "value", "ttlSeconds"], (fields) => ({
    op: fields.required("op", (raw, at) => readEnum(raw, at, COORDINATION_OPS)),
    key: fields.nullableString("key", 0, MAX_KEY_CHARS),
    value: fields.raw("value") ?? null,
    ttlSeconds: fields.nullable("ttlSeconds", (raw, at) => requireInt(raw, at, 1, MAX_TTL_SECONDS)),
  }));
}

export function parseOps(body: Json): Op[] {
  return readShape(body, "", ["ops"], (fields) => {
    const ops = fields.required("ops", (value, path) => readList(value, path, readOp, MAX_OPS));
    if (ops.length < 1) {
      throw new BadRequest(`ops must hold 1 to ${MAX_OPS} operations`, "ops");
    }
    return ops;
  });
}
