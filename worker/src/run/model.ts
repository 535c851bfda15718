/** The rows of one run's state, as the state machine reads and changes them. */

import type { Json, JsonObject } from "../json";
import type {
  AwaitReason,
  DynamicSpec,
  JoinMode,
  NodeRef,
  NodeState,
  ParentLink,
  Resolution,
  RunStatus,
} from "../protocol";

export interface Meta {
  runId: string;
  blueprintId: string;
  blueprintVersion: string | null;
  parent: ParentLink | null;
  status: RunStatus;
  reason: string | null;
  createdAtMs: number;
  updatedAtMs: number;
  finishedAtMs: number | null;
}

export interface TopologyRow {
  node: string;
  succs: string[];
  join: JoinMode;
  backPreds: string[];
  /** Derived at start: every node that lists this one in its `succs`, in topology order. */
  preds: string[];
  gen: number;
}

export interface DynamicRow {
  node: string;
  /** The node whose commit registered this batch worker. */
  source: string;
  spec: DynamicSpec;
}

/** The awaiting record as stored (without the hook token, which is kept only as a hash). */
export interface AwaitingRecord {
  reason: AwaitReason;
  details: JsonObject;
  external: boolean;
  wakeAtMs: number | null;
  result: Resolution | null;
}

export interface Awaiting {
  spec: AwaitingRecord;
  resolution: Resolution | null;
  /** When the last chained timer job was scheduled to arrive. */
  nextTimerMs: number | null;
}

/** One generation of one node: its join arrivals, lease, attempts and outcome. */
export interface GenRecord {
  readonly node: string;
  readonly gen: number;
  state: NodeState;
  /** Source node → true for an arrival, false for a skip (insertion ordered). */
  arrivals: Map<string, boolean>;
  dynamicPreds: string[];
  attempts: number;
  lastError: string | null;
  leaseToken: string | null;
  leaseUntilMs: number;
  notBeforeMs: number;
  result: Resolution | null;
  released: NodeRef[] | null;
  awaiting: Awaiting | null;
  hookHash: string | null;
  /** Released and not yet completed or failed. */
  pending: boolean;
  /** A member of the run's awaiting set. */
  waiting: boolean;
}

export function newRecord(node: string, gen: number): GenRecord {
  return {
    node,
    gen,
    state: "idle",
    arrivals: new Map(),
    dynamicPreds: [],
    attempts: 0,
    lastError: null,
    leaseToken: null,
    leaseUntilMs: 0,
    notBeforeMs: 0,
    result: null,
    released: null,
    awaiting: null,
    hookHash: null,
    pending: false,
    waiting: false,
  };
}

/** A coordination key's value (JSON text) and expiry. */
export interface CoordinationEntry {
  valueText: string;
  expiresAtMs: number | null;
}

/** A job message for the queue, `delayMs` after it was written. */
export interface OutboxRow {
  id: number;
  body: string;
  delayMs: number;
}

export type JobBody = Record<string, Json>;
