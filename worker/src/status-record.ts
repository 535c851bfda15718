/** The KV status record of a run (SEMANTICS "Wire formats", docs/protocol.md §6). */

import type { RawJson, WireValue } from "./json";
import type { RunStatus } from "./protocol";

export const STATUS_TTL_SECONDS = 86_400;

export interface StatusSource {
  status: RunStatus;
  reason: string | null;
  blueprintId: string;
}

/** What the status listing needs, kept in the KV key's metadata so listing reads no values. */
export interface StatusMetadata {
  status: RunStatus;
  lastUpdated: number;
  blueprintId: string;
}

export function statusRecord(run: StatusSource, context: RawJson, nowMs: number): WireValue {
  const record: { [key: string]: WireValue } = {
    status: run.status,
    lastUpdated: Math.floor(nowMs / 1000),
    blueprintId: run.blueprintId,
  };
  if (run.status === "completed") {
    record["finalStatus"] = {
      status: "completed",
      payload: { context, serializedContext: context.text, status: "completed" },
    };
  } else if (run.status === "failed" || run.status === "cancelled") {
    record["finalStatus"] = { status: run.status, reason: run.reason };
  }
  if (run.reason !== null && run.reason !== "" && run.status !== "completed") {
    record["error"] = run.reason;
  }
  return record;
}

export function statusMetadata(run: StatusSource, nowMs: number): StatusMetadata {
  return { status: run.status, lastUpdated: Math.floor(nowMs / 1000), blueprintId: run.blueprintId };
}
