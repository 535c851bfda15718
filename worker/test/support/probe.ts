/**
 * The Worker as deployed, with its Durable Object class extended by read-only probes, so that
 * tests can see what alarms and sends did to storage (the outbox, expired keys, retention).
 */

import { RunObject } from "../../src/run/object";
import { schemaExists } from "../../src/run/schema";

export { default } from "../../src/index";

const TABLES = new Set([
  "meta",
  "delivery",
  "topology",
  "dynamic_nodes",
  "records",
  "context",
  "coordination",
  "outbox",
]);

export class RunObjectProbe extends RunObject {
  /** Every row of one of the run's tables ([] when the run holds no state). */
  rows(table: string): Record<string, SqlStorageValue>[] {
    if (!TABLES.has(table)) {
      throw new Error(`unknown table ${table}`);
    }
    if (!schemaExists(this.ctx.storage.sql)) {
      return [];
    }
    return this.ctx.storage.sql.exec(`SELECT * FROM ${table}`).toArray();
  }

  /** Whether the object holds a run at all. */
  holdsRun(): boolean {
    return schemaExists(this.ctx.storage.sql);
  }

  alarmAt(): Promise<number | null> {
    return this.ctx.storage.getAlarm();
  }
}
