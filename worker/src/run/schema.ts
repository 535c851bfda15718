/** The SQLite tables of one run's Durable Object. */

import { SPILL_TABLE } from "./spill";

const TABLES: readonly string[] = [
  `CREATE TABLE IF NOT EXISTS meta (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    run_id TEXT NOT NULL,
    blueprint_id TEXT NOT NULL,
    blueprint_version TEXT,
    parent TEXT,
    status TEXT NOT NULL,
    reason TEXT,
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL,
    finished_at_ms INTEGER
  )`,
  `CREATE TABLE IF NOT EXISTS delivery (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    status_due INTEGER NOT NULL,
    status_seq INTEGER NOT NULL,
    status_written TEXT,
    status_written_ms INTEGER,
    retry_at_ms INTEGER,
    failures INTEGER NOT NULL
  )`,
  `CREATE TABLE IF NOT EXISTS topology (
    node TEXT PRIMARY KEY,
    ord INTEGER NOT NULL,
    succs TEXT NOT NULL,
    join_mode TEXT NOT NULL,
    back_preds TEXT NOT NULL,
    preds TEXT NOT NULL,
    gen INTEGER NOT NULL
  )`,
  `CREATE TABLE IF NOT EXISTS dynamic_nodes (
    node TEXT PRIMARY KEY,
    ord INTEGER NOT NULL,
    source TEXT NOT NULL,
    spec TEXT NOT NULL
  )`,
  `CREATE TABLE IF NOT EXISTS records (
    node TEXT NOT NULL,
    gen INTEGER NOT NULL,
    state TEXT NOT NULL,
    arrivals TEXT NOT NULL,
    dynamic_preds TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    last_error TEXT,
    lease_token TEXT,
    lease_until_ms INTEGER NOT NULL,
    not_before_ms INTEGER NOT NULL,
    result TEXT,
    released TEXT,
    awaiting TEXT,
    hook_hash TEXT,
    pending INTEGER NOT NULL,
    waiting INTEGER NOT NULL,
    PRIMARY KEY (node, gen)
  )`,
  "CREATE INDEX IF NOT EXISTS records_pending ON records (node, gen) WHERE pending = 1",
  "CREATE INDEX IF NOT EXISTS records_waiting ON records (node, gen) WHERE waiting = 1",
  `CREATE TABLE IF NOT EXISTS context (
    key TEXT PRIMARY KEY,
    ord INTEGER NOT NULL,
    value TEXT NOT NULL
  )`,
  `CREATE TABLE IF NOT EXISTS coordination (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    expires_at INTEGER
  )`,
  "CREATE INDEX IF NOT EXISTS coordination_expiry ON coordination (expires_at) WHERE expires_at IS NOT NULL",
  `CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    body TEXT NOT NULL,
    delay_ms INTEGER NOT NULL
  )`,
  SPILL_TABLE,
];

export function createSchema(sql: SqlStorage): void {
  for (const statement of TABLES) {
    sql.exec(statement);
  }
}

/** Whether this object holds a run (the schema is created by `start` only, so probes store nothing). */
export function schemaExists(sql: SqlStorage): boolean {
  return sql.exec("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'").toArray().length > 0;
}
