/**
 * Row access for one run's SQLite storage. Records and meta are cached for the duration of one
 * call and written back by `flush()` when they changed; every other table is written through.
 * All of it runs inside the call's `transactionSync`.
 */

import { type Json, RawJson } from "../json";
import type { DynamicSpec, JoinMode, NodeRef, NodeState, ParentLink, Resolution, RunStatus } from "../protocol";
import {
  type Awaiting,
  type CoordinationEntry,
  type DynamicRow,
  type GenRecord,
  type JobBody,
  type Meta,
  newRecord,
  type OutboxRow,
  type TopologyRow,
} from "./model";

type MetaColumns = {
  run_id: string;
  blueprint_id: string;
  blueprint_version: string | null;
  parent: string | null;
  status: string;
  reason: string | null;
  created_at_ms: number;
  updated_at_ms: number;
  finished_at_ms: number | null;
};

type TopologyColumns = {
  node: string;
  succs: string;
  join_mode: string;
  back_preds: string;
  preds: string;
  gen: number;
};

type RecordColumns = {
  node: string;
  gen: number;
  state: string;
  arrivals: string;
  dynamic_preds: string;
  attempts: number;
  last_error: string | null;
  lease_token: string | null;
  lease_until_ms: number;
  not_before_ms: number;
  result: string | null;
  released: string | null;
  awaiting: string | null;
  hook_hash: string | null;
  pending: number;
  waiting: number;
};

function parseText<T>(text: string): T {
  return JSON.parse(text) as T;
}

function parseNullable<T>(text: string | null): T | null {
  return text === null ? null : parseText<T>(text);
}

function metaFromRow(row: MetaColumns): Meta {
  return {
    runId: row.run_id,
    blueprintId: row.blueprint_id,
    blueprintVersion: row.blueprint_version,
    parent: parseNullable<ParentLink>(row.parent),
    status: row.status as RunStatus,
    reason: row.reason,
    createdAtMs: row.created_at_ms,
    updatedAtMs: row.updated_at_ms,
    finishedAtMs: row.finished_at_ms,
  };
}

function metaValues(meta: Meta): unknown[] {
  return [
    meta.runId,
    meta.blueprintId,
    meta.blueprintVersion,
    meta.parent === null ? null : JSON.stringify(meta.parent),
    meta.status,
    meta.reason,
    meta.createdAtMs,
    meta.updatedAtMs,
    meta.finishedAtMs,
  ];
}

function recordFromRow(row: RecordColumns): GenRecord {
  return {
    node: row.node,
    gen: row.gen,
    state: row.state as NodeState,
    arrivals: new Map(parseText<[string, boolean][]>(row.arrivals)),
    dynamicPreds: parseText<string[]>(row.dynamic_preds),
    attempts: row.attempts,
    lastError: row.last_error,
    leaseToken: row.lease_token,
    leaseUntilMs: row.lease_until_ms,
    notBeforeMs: row.not_before_ms,
    result: parseNullable<Resolution>(row.result),
    released: parseNullable<NodeRef[]>(row.released),
    awaiting: parseNullable<Awaiting>(row.awaiting),
    hookHash: row.hook_hash,
    pending: row.pending === 1,
    waiting: row.waiting === 1,
  };
}

function recordValues(record: GenRecord): unknown[] {
  return [
    record.node,
    record.gen,
    record.state,
    JSON.stringify([...record.arrivals]),
    JSON.stringify(record.dynamicPreds),
    record.attempts,
    record.lastError,
    record.leaseToken,
    record.leaseUntilMs,
    record.notBeforeMs,
    record.result === null ? null : JSON.stringify(record.result),
    record.released === null ? null : JSON.stringify(record.released),
    record.awaiting === null ? null : JSON.stringify(record.awaiting),
    record.hookHash,
    record.pending ? 1 : 0,
    record.waiting ? 1 : 0,
  ];
}

interface Cached<T> {
  value: T;
  snapshot: string;
}

function recordKey(node: string, gen: number): string {
  return `${gen}\u0000${node}`;
}

export class RunRepo {
  private metaCache: Cached<Meta> | null = null;
  private readonly topologyCache = new Map<string, TopologyRow | null>();
  private readonly dynamicCache = new Map<string, DynamicRow | null>();
  private readonly records = new Map<string, Cached<GenRecord> | null>();

  constructor(private readonly sql: SqlStorage) {}

  // ---- meta ----------------------------------------------------------------------------

  findMeta(): Meta | null {
    if (this.metaCache === null) {
      const row = this.sql.exec<MetaColumns>("SELECT * FROM meta WHERE id = 1").toArray()[0];
      if (row === undefined) {
        return null;
      }
      const value = metaFromRow(row);
      this.metaCache = { value, snapshot: JSON.stringify(metaValues(value)) };
    }
    return this.metaCache.value;
  }

  insertMeta(meta: Meta): void {
    this.sql.exec(
      `INSERT INTO meta (id, run_id, blueprint_id, blueprint_version, parent, status, reason,
        created_at_ms, updated_at_ms, finished_at_ms) VALUES (1, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
      ...metaValues(meta),
    );
    this.metaCache = { value: meta, snapshot: JSON.stringify(metaValues(meta)) };
  }

  // ---- topology and dynamic nodes ------------------------------------------------------

  insertTopology(rows: readonly TopologyRow[]): void {
    rows.forEach((row, index) => {
      this.sql.exec(
        "INSERT INTO topology (node, ord, succs, join_mode, back_preds, preds, gen) VALUES (?, ?, ?, ?, ?, ?, ?)",
        row.node,
        index,
        JSON.stringify(row.succs),
        row.join,
        JSON.stringify(row.backPreds),
        JSON.stringify(row.preds),
        row.gen,
      );
      this.topologyCache.set(row.node, row);
    });
  }

  topology(node: string): TopologyRow | undefined {
    let row = this.topologyCache.get(node);
    if (row === undefined) {
      const found = this.sql.exec<TopologyColumns>("SELECT * FROM topology WHERE node = ?", node).toArray()[0];
      row = found === undefined ? null : topologyFromRow(found);
      this.topologyCache.set(node, row);
    }
    return row ?? undefined;
  }

  /** Every topology node, in the order the start request listed them. */
  topologyNodes(): TopologyRow[] {
    const rows = this.sql.exec<TopologyColumns>("SELECT * FROM topology ORDER BY ord").toArray();
    return rows.map((found) => this.topology(found.node) ?? topologyFromRow(found));
  }

  setGen(row: TopologyRow, gen: number): void {
    row.gen = gen;
    this.sql.exec("UPDATE topology SET gen = ? WHERE node = ?", gen, row.node);
  }

  dynamic(node: string): DynamicRow | undefined {
    let row = this.dynamicCache.get(node);
    if (row === undefined) {
      const found = this.sql
        .exec<{ source: string; spec: string }>("SELECT source, spec FROM dynamic_nodes WHERE node = ?", node)
        .toArray()[0];
      row = found === undefined ? null : { node, source: found.source, spec: parseText<DynamicSpec>(found.spec) };
      this.dynamicCache.set(node, row);
    }
    return row ?? undefined;
  }

  /** Register (or re-register) a batch worker; a new one goes after every existing one. */
  putDynamic(row: DynamicRow): void {
    this.sql.exec(
      `INSERT INTO dynamic_nodes (node, ord, source, spec)
        VALUES (?, (SELECT COALESCE(MAX(ord), 0) + 1 FROM dynamic_nodes), ?, ?)
        ON CONFLICT (node) DO UPDATE SET source = excluded.source, spec = excluded.spec`,
      row.node,
      row.source,
      JSON.stringify(row.spec),
    );
    this.dynamicCache.set(row.node, row);
  }

  dynamicNodes(): DynamicRow[] {
    const rows = this.sql.exec<{ node: string }>("SELECT node FROM dynamic_nodes ORDER BY ord").toArray();
    return rows.map((found) => this.dynamic(found.node)).filter((row): row is DynamicRow => row !== undefined);
  }

  // ---- generation records ----------------------------------------------------------------

  record(node: string, gen: number): GenRecord | undefined {
    const key = recordKey(node, gen);
    let cached = this.records.get(key);
    if (cached === undefined) {
      const found = this.sql
        .exec<RecordColumns>("SELECT * FROM records WHERE node = ? AND gen = ?", node, gen)
        .toArray()[0];
      if (found === undefined) {
        cached = null;
      } else {
        const value = recordFromRow(found);
        cached = { value, snapshot: JSON.stringify(recordValues(value)) };
      }
      this.records.set(key, cached);
    }
    return cached?.value;
  }

  /** The record of `(node, gen)`, created idle if there is none. */
  ensureRecord(node: string, gen: number): GenRecord {
    const existing = this.record(node, gen);
    if (existing !== undefined) {
      return existing;
    }
    const created = newRecord(node, gen);
    this.records.set(recordKey(node, gen), { value: created, snapshot: "" });
    return created;
  }

  deleteRecord(node: string, gen: number): void {
    this.sql.exec("DELETE FROM records WHERE node = ? AND gen = ?", node, gen);
    this.records.set(recordKey(node, gen), null);
  }

  /** The pending pairs, sorted by node then generation. */
  pendingRecords(): GenRecord[] {
    return this.recordsWhere("pending = 1");
  }

  hasPending(): boolean {
    this.flush();
    return this.sql.exec("SELECT 1 FROM records WHERE pending = 1 LIMIT 1").toArray().length > 0;
  }

  /** The members of the awaiting set, sorted by node then generation (code point order). */
  waitingRecords(): GenRecord[] {
    return this.recordsWhere("waiting = 1");
  }

  private recordsWhere(condition: "pending = 1" | "waiting = 1"): GenRecord[] {
    this.flush();
    const keys = this.sql
      .exec<{ node: string; gen: number }>(`SELECT node, gen FROM records WHERE ${condition} ORDER BY node, gen`)
      .toArray();
    return keys
      .map((key) => this.record(key.node, key.gen))
      .filter((record): record is GenRecord => record !== undefined);
  }

  // ---- context ---------------------------------------------------------------------------

  contextGet(key: string): Json | undefined {
    const row = this.sql.exec<{ value: string }>("SELECT value FROM context WHERE key = ?", key).toArray()[0];
    return row === undefined ? undefined : parseText<Json>(row.value);
  }

  contextHas(key: string): boolean {
    return this.sql.exec("SELECT 1 FROM context WHERE key = ?", key).toArray().length > 0;
  }

  /** Set a key; a new key goes last, an existing one keeps its place (dict semantics). */
  contextSet(key: string, value: Json): void {
    this.sql.exec(
      `INSERT INTO context (key, ord, value) VALUES (?, (SELECT COALESCE(MAX(ord), 0) + 1 FROM context), ?)
        ON CONFLICT (key) DO UPDATE SET value = excluded.value`,
      key,
      JSON.stringify(value),
    );
  }

  contextDelete(key: string): void {
    this.sql.exec("DELETE FROM context WHERE key = ?", key);
  }

  /** The whole context as one JSON object, without parsing the stored values. */
  contextJson(): RawJson {
    const rows = this.sql.exec<{ key: string; value: string }>("SELECT key, value FROM context ORDER BY ord").toArray();
    return new RawJson(`{${rows.map((row) => `${JSON.stringify(row.key)}:${row.value}`).join(",")}}`);
  }

  // ---- coordination keys -----------------------------------------------------------------

  coordinationGet(key: string): CoordinationEntry | undefined {
    const row = this.sql
      .exec<{ value: string; expires_at: number | null }>(
        "SELECT value, expires_at FROM coordination WHERE key = ?",
        key,
      )
      .toArray()[0];
    return row === undefined ? undefined : { valueText: row.value, expiresAtMs: row.expires_at };
  }

  coordinationPut(key: string, value: Json, expiresAtMs: number | null): void {
    this.sql.exec(
      `INSERT INTO coordination (key, value, expires_at) VALUES (?, ?, ?)
        ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at`,
      key,
      JSON.stringify(value),
      expiresAtMs,
    );
  }

  coordinationExpire(key: string, expiresAtMs: number | null): void {
    this.sql.exec("UPDATE coordination SET expires_at = ? WHERE key = ?", expiresAtMs, key);
  }

  /** Delete a key; true if it existed. */
  coordinationDelete(key: string): boolean {
    return this.sql.exec("DELETE FROM coordination WHERE key = ? RETURNING key", key).toArray().length > 0;
  }

  /** Drop every key whose TTL has passed. */
  sweepCoordination(nowMs: number): void {
    this.sql.exec("DELETE FROM coordination WHERE expires_at IS NOT NULL AND expires_at <= ?", nowMs);
  }

  nextExpiryMs(): number | null {
    const row = this.sql
      .exec<{ next: number | null }>("SELECT MIN(expires_at) AS next FROM coordination WHERE expires_at IS NOT NULL")
      .toArray()[0];
    return row?.next ?? null;
  }

  // ---- outbox ----------------------------------------------------------------------------

  appendOutbox(body: JobBody, delayMs: number): void {
    this.sql.exec("INSERT INTO outbox (body, delay_ms) VALUES (?, ?)", JSON.stringify(body), delayMs);
  }

  outboxRows(): OutboxRow[] {
    return this.sql
      .exec<{ id: number; body: string; delay_ms: number }>("SELECT id, body, delay_ms FROM outbox ORDER BY id")
      .toArray()
      .map((row) => ({ id: row.id, body: row.body, delayMs: row.delay_ms }));
  }

  deleteOutbox(ids: readonly number[]): void {
    for (const id of ids) {
      this.sql.exec("DELETE FROM outbox WHERE id = ?", id);
    }
  }

  hasOutbox(): boolean {
    return this.sql.exec("SELECT 1 FROM outbox LIMIT 1").toArray().length > 0;
  }

  // ---- write-back --------------------------------------------------------------------------

  /** Write the cached meta and records that changed since they were read. */
  flush(): void {
    if (this.metaCache !== null) {
      const values = metaValues(this.metaCache.value);
      const snapshot = JSON.stringify(values);
      if (snapshot !== this.metaCache.snapshot) {
        this.sql.exec(
          `UPDATE meta SET run_id = ?, blueprint_id = ?, blueprint_version = ?, parent = ?, status = ?,
            reason = ?, created_at_ms = ?, updated_at_ms = ?, finished_at_ms = ? WHERE id = 1`,
          ...values,
        );
        this.metaCache.snapshot = snapshot;
      }
    }
    for (const cached of this.records.values()) {
      if (cached === null) {
        continue;
      }
      const values = recordValues(cached.value);
      const snapshot = JSON.stringify(values);
      if (snapshot !== cached.snapshot) {
        this.sql.exec(
          `INSERT OR REPLACE INTO records (node, gen, state, arrivals, dynamic_preds, attempts, last_error,
            lease_token, lease_until_ms, not_before_ms, result, released, awaiting, hook_hash, pending, waiting)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
          ...values,
        );
        cached.snapshot = snapshot;
      }
    }
  }
}

function topologyFromRow(row: TopologyColumns): TopologyRow {
  return {
    node: row.node,
    succs: parseText<string[]>(row.succs),
    join: row.join_mode as JoinMode,
    backPreds: parseText<string[]>(row.back_preds),
    preds: parseText<string[]>(row.preds),
    gen: row.gen,
  };
}
