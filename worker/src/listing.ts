/** GET /v1/runs: runs listed from the KV status records, for `reconcile --stalled` (§4.12). */

import { BadRequest } from "./errors";
import { toJsonText, type WireValue } from "./json";
import { RUN_STATUSES, type RunStatus } from "./protocol";
import type { StatusMetadata } from "./status-record";

const MAX_LIMIT = 1000;
const DEFAULT_LIMIT = 100;
/** KV list pages read by one request at most (1000 keys each); the cursor continues the scan. */
const MAX_PAGES = 20;
const QUERY_FIELDS = ["status", "stale", "limit", "cursor"];

export interface ListQuery {
  status: RunStatus | null;
  staleSeconds: number | null;
  limit: number;
  cursor: ScanPosition | null;
}

/** Where a listing stopped: a KV page cursor, and the last run id returned from that page. */
interface ScanPosition {
  page: string | null;
  after: string | null;
}

function integer(params: URLSearchParams, name: string, min: number, max: number): number | null {
  const raw = params.get(name);
  if (raw === null || raw === "") {
    return null;
  }
  const value = Number(raw);
  if (!/^\d+$/.test(raw) || value < min || value > max) {
    throw new BadRequest(`${name} must be an integer from ${min} to ${max}`, name);
  }
  return value;
}

function encodeCursor(position: ScanPosition): string {
  return btoa(JSON.stringify(position)).replaceAll("+", "-").replaceAll("/", "_").replaceAll("=", "");
}

function decodeCursor(raw: string): ScanPosition {
  try {
    const text = atob(raw.replaceAll("-", "+").replaceAll("_", "/"));
    const value = JSON.parse(text) as { page?: unknown; after?: unknown };
    const page = value.page ?? null;
    const after = value.after ?? null;
    if ((page === null || typeof page === "string") && (after === null || typeof after === "string")) {
      return { page, after };
    }
  } catch {
    // Reported below.
  }
  throw new BadRequest("cursor is not one this store returned", "cursor");
}

export function parseListQuery(params: URLSearchParams): ListQuery {
  for (const name of params.keys()) {
    if (!QUERY_FIELDS.includes(name)) {
      throw new BadRequest(`unknown query parameter ${name}`, name);
    }
  }
  const status = params.get("status");
  if (status !== null && status !== "" && !(RUN_STATUSES as readonly string[]).includes(status)) {
    throw new BadRequest(`status must be one of ${RUN_STATUSES.join(", ")}`, "status");
  }
  const cursor = params.get("cursor");
  return {
    status: status === null || status === "" ? null : (status as RunStatus),
    staleSeconds: integer(params, "stale", 0, Number.MAX_SAFE_INTEGER),
    limit: integer(params, "limit", 1, MAX_LIMIT) ?? DEFAULT_LIMIT,
    cursor: cursor === null || cursor === "" ? null : decodeCursor(cursor),
  };
}

function isStatusMetadata(value: unknown): value is StatusMetadata {
  if (typeof value !== "object" || value === null) {
    return false;
  }
  const record = value as Partial<Record<keyof StatusMetadata, unknown>>;
  return typeof record.status === "string" && typeof record.lastUpdated === "number";
}

/** The summary of one key, from its metadata or, when that lacks a field, from its value. */
async function summary(kv: KVNamespace, name: string, metadata: unknown): Promise<StatusMetadata | null> {
  if (isStatusMetadata(metadata) && typeof metadata.blueprintId === "string") {
    return metadata;
  }
  const value = await kv.get(name, "json");
  return isStatusMetadata(value) ? value : null;
}

export async function listRuns(kv: KVNamespace, prefix: string, query: ListQuery, nowMs: number): Promise<string> {
  const runs: WireValue[] = [];
  let page = query.cursor?.page ?? null;
  let after = query.cursor?.after ?? null;
  for (let pages = 0; pages < MAX_PAGES; pages += 1) {
    const listing = await kv.list({ prefix, limit: MAX_LIMIT, ...(page === null ? {} : { cursor: page }) });
    for (const key of listing.keys) {
      const runId = key.name.slice(prefix.length);
      if (after !== null && runId <= after) {
        continue;
      }
      const record = await summary(kv, key.name, key.metadata);
      if (record === null || (query.status !== null && record.status !== query.status)) {
        continue;
      }
      if (query.staleSeconds !== null && record.lastUpdated > nowMs / 1000 - query.staleSeconds) {
        continue;
      }
      runs.push({
        runId,
        status: record.status,
        lastUpdated: record.lastUpdated,
        blueprintId: record.blueprintId ?? null,
      });
      if (runs.length === query.limit) {
        return toJsonText({ runs, cursor: encodeCursor({ page, after: runId }) });
      }
    }
    if (listing.list_complete) {
      return toJsonText({ runs, cursor: null });
    }
    page = listing.cursor;
    after = null;
  }
  return toJsonText({ runs, cursor: encodeCursor({ page, after }) });
}
