/** Typed requests and values of the run-store protocol (docs/protocol.md §2, §4). */

import type { Json, JsonObject } from "./json";

export type RunStatus = "running" | "awaiting" | "completed" | "failed" | "cancelled";
export const RUN_STATUSES: readonly RunStatus[] = ["running", "awaiting", "completed", "failed", "cancelled"];
export const TERMINAL_STATUSES: ReadonlySet<RunStatus> = new Set<RunStatus>(["completed", "failed", "cancelled"]);

export type NodeState = "idle" | "released" | "completed" | "skipped" | "awaiting" | "failed";
export type JoinMode = "all" | "any";
export type AwaitReason = "external_event" | "timer" | "webhook" | "subflow";

export const RUN_ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$/;
export const MAX_NODE_ID_CHARS = 512;
/** A blueprint id or version, and a batch worker's `uses` (§8). */
export const MAX_NAME_CHARS = 512;
/**
 * A context key, a coordination key and a batch worker's `inputs` key: room for the keys the
 * engine derives from a node id of the longest length, `_batch.<scatter>_<batch>_item_<i>` (§8).
 */
export const MAX_KEY_CHARS = 1024;
/** A routing `action`; failure reasons and attempt errors longer than this are truncated (§8). */
export const MAX_TEXT_CHARS = 4096;
/** Nodes in a topology, and node ids in each of its lists (`succs`, `backPreds`, start nodes). */
export const MAX_TOPOLOGY_NODES = 10_000;
export const MAX_LEASE_MS = 43_200_000;
/** The longest queue delivery delay (12 h); longer waits chain. */
export const MAX_DELAY_MS = 43_200_000;
export const MAX_BODY_BYTES = 4 * 1024 * 1024;
export const MAX_BATCH_ENTRIES = 256;
export const MAX_OPS = 100;
/**
 * The largest serialized JSON value (§8): a context value, a result output, an op value, a resume
 * output, a webhook body, and all awaiting nodes' details together (`_awaitingDetails`); larger → 400.
 */
export const MAX_VALUE_BYTES = 2_000_000;

export type Resolution = {
  output: Json;
  action: string | null;
};

export type NodeRef = {
  nodeId: string;
  gen: number;
};

export interface TopologyNode {
  succs: string[];
  join: JoinMode;
  backPreds: string[];
}

export type ParentLink = {
  runId: string;
  blueprintId: string;
  nodeId: string;
  gen: number;
};

export interface StartRequest {
  blueprintId: string;
  blueprintVersion: string | null;
  context: JsonObject;
  topology: Map<string, TopologyNode>;
  startNodes: string[];
  parent: ParentLink | null;
}

export interface ClaimRequest {
  nodeId: string;
  gen: number | null;
  token: string;
  leaseMs: number;
  blueprintVersion: string | null;
}

export interface DynamicSpec {
  nodeId: string;
  uses: string;
  inputs: string;
  gather: string;
}

/** An awaiting record as committed; the hook token travels only as its SHA-256 (hex). */
export interface AwaitingSpec {
  reason: AwaitReason;
  details: JsonObject;
  external: boolean;
  wakeAtMs: number | null;
  hookTokenHash: string | null;
  result: Resolution | null;
}

export interface CommitRequest {
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
  awaiting: AwaitingSpec | null;
}

export interface AttemptsRequest {
  nodeId: string;
  gen: number;
  token: string;
  attempts: number;
  error: string | null;
  release: boolean;
  retryAfterMs: number | null;
}

export interface FailRequest {
  reason: string;
  nodeId: string | null;
  gen: number | null;
}

export interface ResumeRequest {
  action: string | null;
  output: Json;
  hasOutput: boolean;
  nodeId: string | null;
}

export interface CancelRequest {
  reason: string | null;
}

export type CoordinationOpName =
  | "get"
  | "setIfNotExist"
  | "increment"
  | "extendTTL"
  | "delete"
  | "context.get"
  | "context.set"
  | "context.has"
  | "context.delete"
  | "context.toJSON";

export const COORDINATION_OPS: readonly CoordinationOpName[] = [
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
];

export interface Op {
  op: CoordinationOpName;
  key: string | null;
  value: Json;
  ttlSeconds: number | null;
}

export interface HookDelivery {
  nodeId: string;
  tokenHash: string;
  body: Json;
}

/** One call on one run, as the Worker hands it to the run's Durable Object. */
export type RunCall =
  | { op: "start"; request: StartRequest }
  | { op: "claim"; request: ClaimRequest }
  | { op: "commit"; request: CommitRequest }
  | { op: "attempts"; request: AttemptsRequest }
  | { op: "fail"; request: FailRequest }
  | { op: "resume"; request: ResumeRequest }
  | { op: "cancel"; request: CancelRequest }
  | { op: "reconcile" }
  | { op: "get" }
  | { op: "ops"; ops: Op[] }
  | { op: "hook"; delivery: HookDelivery };

/** A call's answer: its HTTP status and its JSON body as text. */
export interface CallReply {
  status: number;
  body: string;
}
