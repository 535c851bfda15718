/** Turning a validated request body into the call its run's Durable Object applies. */

import type { Json } from "./json";
import type { CommitRequest, RunCall } from "./protocol";
import {
  parseAttempts,
  parseCancel,
  parseClaim,
  parseCommit,
  parseEmpty,
  parseFail,
  parseOps,
  parseResume,
  parseStart,
} from "./requests";
import type { RunVerb } from "./routes";
import { sha256Hex } from "./secrets";

/** The calls the batch route accepts. */
export type BatchOp = "claim" | "commit" | "attempts" | "fail" | "get";
export const BATCH_OPS: readonly BatchOp[] = ["claim", "commit", "attempts", "fail", "get"];

/** The commit with its hook token replaced by the token's SHA-256 (the store keeps only the hash). */
async function commitCall(body: Json): Promise<RunCall> {
  const input = parseCommit(body);
  const awaiting = input.awaiting;
  const request: CommitRequest = {
    ...input,
    awaiting:
      awaiting === null
        ? null
        : {
            reason: awaiting.reason,
            details: awaiting.details,
            external: awaiting.external,
            wakeAtMs: awaiting.wakeAtMs,
            hookTokenHash: awaiting.hookToken === null ? null : await sha256Hex(awaiting.hookToken),
            result: awaiting.result,
          },
  };
  return { op: "commit", request };
}

/** Validate `body` for `verb` (400 with the field) and build the call. */
export async function buildCall(verb: RunVerb | "get", body: Json): Promise<RunCall> {
  switch (verb) {
    case "start":
      return { op: "start", request: parseStart(body) };
    case "claim":
      return { op: "claim", request: parseClaim(body) };
    case "commit":
      return commitCall(body);
    case "attempts":
      return { op: "attempts", request: parseAttempts(body) };
    case "fail":
      return { op: "fail", request: parseFail(body) };
    case "resume":
      return { op: "resume", request: parseResume(body) };
    case "cancel":
      return { op: "cancel", request: parseCancel(body) };
    case "reconcile":
      parseEmpty(body);
      return { op: "reconcile" };
    case "get":
      parseEmpty(body);
      return { op: "get" };
    case "ops":
      return { op: "ops", ops: parseOps(body) };
  }
}
