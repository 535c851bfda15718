/** POST /v1/batch: many calls for many runs; each run's entries go to its object in one call, runs in parallel. */

import { BATCH_OPS, type BatchOp, buildCall } from "./calls";
import type { Env } from "./env";
import { ApiError, BadRequest, Internal } from "./errors";
import { readEnum, readList, readShape, requireObject, requireRunId } from "./fields";
import { type Json, RawJson, toJsonText } from "./json";
import { type CallReply, MAX_BATCH_ENTRIES, type RunCall } from "./protocol";
import { callRun } from "./runs";

interface Entry {
  op: BatchOp;
  runId: string;
  body: Json;
}

function readEntry(value: Json, path: string): Entry {
  return readShape(value, path, ["op", "runId", "body"], (fields) => ({
    op: fields.required("op", (raw, at) => readEnum(raw, at, BATCH_OPS)),
    runId: fields.required("runId", requireRunId),
    body: fields.raw("body") ?? {},
  }));
}

/** The envelope, or 400 for the whole request. */
function parseBatch(body: Json): Entry[] {
  return readShape(body, "", ["entries"], (fields) => {
    const entries = fields.required("entries", (value, path) => readList(value, path, readEntry));
    if (entries.length < 1 || entries.length > MAX_BATCH_ENTRIES) {
      throw new BadRequest(`entries must hold 1 to ${MAX_BATCH_ENTRIES} entries`, "entries");
    }
    return entries;
  });
}

async function entryCall(entry: Entry): Promise<RunCall | CallReply> {
  try {
    return await buildCall(entry.op, requireObject(entry.body, ""));
  } catch (error) {
    if (error instanceof ApiError) {
      return { status: error.httpStatus, body: JSON.stringify(error.body()) };
    }
    throw error;
  }
}

function isReply(value: RunCall | CallReply): value is CallReply {
  return "status" in value;
}

const UNANSWERED: CallReply = { status: 500, body: JSON.stringify(new Internal("the run gave no answer").body()) };

/** Run a batch; the response text lists `{status, body}` per entry, in entry order. */
export async function runBatch(env: Env, body: Json): Promise<string> {
  const prepared = await Promise.all(
    parseBatch(body).map(async (entry) => ({ runId: entry.runId, outcome: await entryCall(entry) })),
  );
  const results = prepared.map(({ outcome }) => (isReply(outcome) ? outcome : UNANSWERED));
  const groups = new Map<string, { indexes: number[]; calls: RunCall[] }>();
  prepared.forEach(({ runId, outcome }, index) => {
    if (!isReply(outcome)) {
      const group = groups.get(runId) ?? { indexes: [], calls: [] };
      group.indexes.push(index);
      group.calls.push(outcome);
      groups.set(runId, group);
    }
  });
  await Promise.all(
    [...groups].map(async ([runId, group]) => {
      const replies = await callRun(env, runId, group.calls);
      replies.forEach((reply, position) => {
        const index = group.indexes[position];
        if (index !== undefined) {
          results[index] = reply;
        }
      });
    }),
  );
  return toJsonText({ results: results.map((reply) => ({ status: reply.status, body: new RawJson(reply.body) })) });
}
