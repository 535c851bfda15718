/**
 * Row access for one run's SQLite storage. Records and meta are cached for the duration of one
 * call and written back by `flush()` when they changed; every other table is written through.
 * All of it runs inside the call's `transactionSync`.
 */

import { type Json, RawJson } from "../json";
import type { DynamicSpec, JoinMode, NodeRef, NodeState, ParentLink, Resolution, RunStatus } from "../protocol";
import { INLINE_CHARS, SpillStore, SPILLED } from "./spill";
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
  ord: number;
  succs: SqlStorageValue;
  join_mode: string;
  back_preds: SqlStorageValue;
  preds: SqlStorageValue;
  gen: number;
};

type RecordColumns = {
  node: string;
  gen: number;
  state: string;
  arrivals: SqlStorageValue;
  dynamic_preds: SqlStorageValue;
  attempts: number;
  last_error: SqlStorageValue;
  lease_token: string | null;
  lease_until_ms: number;
  not_before_ms: number;
  result: SqlStorageValue;
  released: SqlStorageValue;
  awaiting: SqlStorageValue;
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

/** The record columns whose text may be long enough to be spilled (src/run/spill.ts). */
const SPILL_COLUMNS = ["arrivals", "dynamic_preds", "last_error", "result", "released", "awaiting"] as const;
type SpillColumn = (typeof SPILL_COLUMNS)[number];
type SpillTexts = Record<SpillColumn, string | null>;

/**
 * The topology columns holding node lists: with 512-character ids, one list may take most of a
 * 4 MiB start request (§8), so a long one is spilled like a record text.
 */
type TopologyList = "succs" | "back_preds" | "preds";

/** Topology lists are owned by the node's place in the start request (rows never move or go). */
function topologyOwner(column: TopologyList, ord: number): string {
  return `topology/${column}/${ord}`;
}

function contextOwner(ord: number): string {
  return `context/${ord}`;
}

/** Coordination values are owned by row id: a key may be far longer than a node id. */
function coordinationOwner(id: number): string {
  return `coordination/${id}`;
}

function recordOwner(column: SpillColumn, node: string, gen: number): string {
  return `records/${column}/${gen}/${node}`;
}

function recordFromRow(row: RecordColumns, texts: SpillTexts): GenRecord {
  return {
    node: row.node,
    gen: row.gen,
    state: row.state as NodeState,
    arrivals: new Map(parseText<[string, boolean][]>(texts.arrivals ?? "[]")),
    dynamicPreds: parseText<string[]>(texts.dynamic_preds ?? "[]"),
    attempts: row.attempts,
    lastError: texts.last_error,
    leaseToken: row.lease_token,
    leaseUntilMs: row.lease_until_ms,
    notBeforeMs: row.not_before_ms,
    result: parseNullable<Resolution>(texts.result),
    released: parseNullable<NodeRef[]>(texts.released),
    awaiting: parseNullable<Awaiting>(texts.awaiting),
    hookHash: row.hook_hash,
    pending: row.pending === 1,
    waiting: row.waiting === 1,
  };
}

function recordTexts(record: GenRecord): SpillTexts {
  return {
    arrivals: JSON.stringify([...record.arrivals]),
    dynamic_preds: JSON.stringify(record.dynamicPreds),
    last_error: record.lastError,
    result: record.result === null ? null : JSON.stringify(record.result),
    released: record.released === null ? null : JSON.stringify(record.released),
    awaiting: record.awaiting === null ? null : JSON.stringify(record.awaiting),
  };
}

/** The columns other than the spill columns, which change on most calls and are always small. */
function recordScalars(record: GenRecord): unknown[] {
  return [
    record.state,
    record.attempts,
    record.leaseToken,
    record.leaseUntilMs,
    record.notBeforeMs,
    record.hookHash,
    record.pending ? 1 : 0,
    record.waiting ? 1 : 0,
  ];
}

/** A record as read or last written: its texts and what each spill column holds in its row. */
interface CachedRecord {
  value: GenRecord;
  scalars: string;
  texts: SpillTexts | null;
  stored: Record<SpillColumn, SqlStorageValue> | null;
}

/** Whether a column must be written: its text changed, or it is a long text of the old layout. */
function needsWrite(
  stored: SqlStorageValue | undefined,
  before: string | null | undefined,
  after: string | null,
): boolean {
  return before !== after || (typeof stored === "string" && stored.length > INLINE_CHARS);
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
  private readonly records = new Map<string, CachedRecord | null>();
  private readonly spill: SpillStore;

  constructor(private readonly sql: SqlStorage) {
    this.spill = new SpillStore(sql);
  }

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
    rows.forEach((row, ord) => {
      const list = (column: TopologyList, nodes: readonly string[]): string | ArrayBuffer | null =>
        this.spill.replace(topologyOwner(column, ord), undefined, JSON.stringify(nodes));
      this.sql.exec(
        "INSERT INTO topology (node, ord, succs, join_mode, back_preds, preds, gen) VALUES (?, ?, ?, ?, ?, ?, ?)",
        row.node,
        ord,
        list("succs", row.succs),
        row.join,
        list("back_preds", row.backPreds),
        list("preds", row.preds),
        row.gen,
      );
      this.topologyCache.set(row.node, row);
    });
  }

  topology(node: string): TopologyRow | undefined {
    let row = this.topologyCache.get(node);
    if (row === undefined) {
      const found = this.sql.exec<TopologyColumns>("SELECT * FROM topology WHERE node = ?", node).toArray()[0];
      row = found === undefined ? null : this.topologyFromRow(found);
      this.topologyCache.set(node, row);
    }
    return row ?? undefined;
  }

  /** Every topology node, in the order the start request listed them. */
  topologyNodes(): TopologyRow[] {
    const rows = this.sql.exec<TopologyColumns>("SELECT * FROM topology ORDER BY ord").toArray();
    return rows.map((found) => {
      let row = this.topologyCache.get(found.node);
      if (row === undefined || row === null) {
        row = this.topologyFromRow(found);
        this.topologyCache.set(found.node, row);
      }
      return row;
    });
  }

  /** A topology row as stored; only a spilled list (its marker in the row) costs a read of `spill`. */
  private topologyFromRow(row: TopologyColumns): TopologyRow {
    const list = (column: TopologyList): string[] =>
      parseText<string[]>(this.spill.load(topologyOwner(column, row.ord), row[column]) ?? "[]");
    return {
      node: row.node,
      succs: list("succs"),
      join: row.join_mode as JoinMode,
      backPreds: list("back_preds"),
      preds: list("preds"),
      gen: row.gen,
    };
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
        const stored = Object.fromEntries(SPILL_COLUMNS.map((column) => [column, found[column]])) as Record<
          SpillColumn,
          SqlStorageValue
        >;
        const texts = Object.fromEntries(
          SPILL_COLUMNS.map((column) => [column, this.spill.load(recordOwner(column, node, gen), found[column])]),
        ) as SpillTexts;
        const value = recordFromRow(found, texts);
        cached = { value, scalars: JSON.stringify(recordScalars(value)), texts, stored };
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
    this.records.set(recordKey(node, gen), { value: created, scalars: "", texts: null, stored: null });
    return created;
  }

  deleteRecord(node: string, gen: number): void {
    for (const column of SPILL_COLUMNS) {
      this.spill.drop(recordOwner(column, node, gen), SPILLED);
    }
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

  /** A context key's place and whether its value is spilled; undefined for a missing key. */
  private contextSlot(key: string): { ord: number; previous: SqlStorageValue } | undefined {
    const row = this.sql
      .exec<{ ord: number; kind: string }>("SELECT ord, typeof(value) AS kind FROM context WHERE key = ?", key)
      .toArray()[0];
    return row === undefined ? undefined : { ord: row.ord, previous: row.kind === "blob" ? SPILLED : null };
  }

  contextGet(key: string): Json | undefined {
    const row = this.sql
      .exec<{ ord: number; value: SqlStorageValue }>("SELECT ord, value FROM context WHERE key = ?", key)
      .toArray()[0];
    return row === undefined ? undefined : parseText<Json>(this.spill.load(contextOwner(row.ord), row.value) ?? "null");
  }

  contextHas(key: string): boolean {
    return this.sql.exec("SELECT 1 FROM context WHERE key = ?", key).toArray().length > 0;
  }

  /** Set a key; a new key goes last, an existing one keeps its place (dict semantics). */
  contextSet(key: string, value: Json): void {
    const text = JSON.stringify(value);
    const slot = this.contextSlot(key);
    if (slot !== undefined) {
      const stored = this.spill.replace(contextOwner(slot.ord), slot.previous, text);
      this.sql.exec("UPDATE context SET value = ? WHERE key = ?", stored, key);
      return;
    }
    const ord = this.sql.exec<{ next: number }>("SELECT COALESCE(MAX(ord), 0) + 1 AS next FROM context").one().next;
    const stored = this.spill.replace(contextOwner(ord), undefined, text);
    this.sql.exec("INSERT INTO context (key, ord, value) VALUES (?, ?, ?)", key, ord, stored);
  }

  contextDelete(key: string): void {
    const slot = this.contextSlot(key);
    if (slot !== undefined) {
      this.spill.drop(contextOwner(slot.ord), slot.previous);
      this.sql.exec("DELETE FROM context WHERE key = ?", key);
    }
  }

  /** The whole context as one JSON object, without parsing the stored values. */
  contextJson(): RawJson {
    const rows = this.sql
      .exec<{ key: string; ord: number; value: SqlStorageValue }>("SELECT key, ord, value FROM context ORDER BY ord")
      .toArray();
    const members = rows.map(
      (row) => `${JSON.stringify(row.key)}:${this.spill.load(contextOwner(row.ord), row.value) ?? "null"}`,
    );
    return new RawJson(`{${members.join(",")}}`);
  }

  // ---- coordination keys -----------------------------------------------------------------

  /** A coordination key's row id and whether its value is spilled; undefined for a missing key. */
  private coordinationSlot(key: string): { id: number; previous: SqlStorageValue } | undefined {
    const row = this.sql
      .exec<{ id: number; kind: string }>(
        "SELECT rowid AS id, typeof(value) AS kind FROM coordination WHERE key = ?",
        key,
      )
      .toArray()[0];
    return row === undefined ? undefined : { id: row.id, previous: row.kind === "blob" ? SPILLED : null };
  }

  coordinationGet(key: string): CoordinationEntry | undefined {
    const row = this.sql
      .exec<{ id: number; value: SqlStorageValue; expires_at: number | null }>(
        "SELECT rowid AS id, value, expires_at FROM coordination WHERE key = ?",
        key,
      )
      .toArray()[0];
    if (row === undefined) {
      return undefined;
    }
    return { valueText: this.spill.load(coordinationOwner(row.id), row.value) ?? "null", expiresAtMs: row.expires_at };
  }

  coordinationPut(key: string, value: Json, expiresAtMs: number | null): void {
    const slot = this.coordinationSlot(key) ?? {
      id: this.sql
        .exec<{ id: number }>(
          "INSERT INTO coordination (key, value, expires_at) VALUES (?, 'null', ?) RETURNING rowid AS id",
          key,
          expiresAtMs,
        )
        .one().id,
      previous: null,
    };
    const stored = this.spill.replace(coordinationOwner(slot.id), slot.previous, JSON.stringify(value));
    this.sql.exec("UPDATE coordination SET value = ?, expires_at = ? WHERE rowid = ?", stored, expiresAtMs, slot.id);
  }

  coordinationExpire(key: string, expiresAtMs: number | null): void {
    this.sql.exec("UPDATE coordination SET expires_at = ? WHERE key = ?", expiresAtMs, key);
  }

  /** Delete a key; true if it existed. */
  coordinationDelete(key: string): boolean {
    const slot = this.coordinationSlot(key);
    if (slot === undefined) {
      return false;
    }
    this.spill.drop(coordinationOwner(slot.id), slot.previous);
    this.sql.exec("DELETE FROM coordination WHERE rowid = ?", slot.id);
    return true;
  }

  /** Drop every key whose TTL has passed. */
  sweepCoordination(nowMs: number): void {
    this.sql.exec(
      `DELETE FROM spill WHERE owner IN (SELECT 'coordination/' || rowid FROM coordination
        WHERE expires_at IS NOT NULL AND expires_at <= ? AND typeof(value) = 'blob')`,
      nowMs,
    );
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
      if (cached !== null) {
        this.flushRecord(cached);
      }
    }
  }

  /** Write one cached record if it changed, spilling long texts and rewriting only changed ones. */
  private flushRecord(cached: CachedRecord): void {
    const record = cached.value;
    const scalars = JSON.stringify(recordScalars(record));
    const texts = recordTexts(record);
    const changed = SPILL_COLUMNS.filter((column) =>
      needsWrite(cached.stored?.[column], cached.texts?.[column], texts[column]),
    );
    if (scalars === cached.scalars && changed.length === 0) {
      return;
    }
    const stored = {
      ...(cached.stored ?? {
        arrivals: null,
        dynamic_preds: null,
        last_error: null,
        result: null,
        released: null,
        awaiting: null,
      }),
    };
    for (const column of changed) {
      stored[column] = this.spill.replace(
        recordOwner(column, record.node, record.gen),
        cached.stored?.[column],
        texts[column],
      );
    }
    this.sql.exec(
      `INSERT OR REPLACE INTO records (node, gen, state, arrivals, dynamic_preds, attempts, last_error,
        lease_token, lease_until_ms, not_before_ms, result, released, awaiting, hook_hash, pending, waiting)
        VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
      record.node,
      record.gen,
      record.state,
      stored.arrivals,
      stored.dynamic_preds,
      record.attempts,
      stored.last_error,
      record.leaseToken,
      record.leaseUntilMs,
      record.notBeforeMs,
      stored.result,
      stored.released,
      stored.awaiting,
      record.hookHash,
      record.pending ? 1 : 0,
      record.waiting ? 1 : 0,
    );
    cached.scalars = scalars;
    cached.texts = texts;
    cached.stored = stored;
  }
}
