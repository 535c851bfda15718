/**
 * The Worker as deployed, with its Durable Object class extended by read-only probes, so that
 * tests can see what alarms and sends did to storage (the outbox, expired keys, retention).
 */

import type { TopologyRow } from "../../src/run/model";
import { RunObject } from "../../src/run/object";
import { RunRepo } from "../../src/run/repo";
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
  "spill",
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

  /** The stored bytes of the largest row of each of the run's tables (every column's bytes summed). */
  largestRows(): Record<string, number> {
    const sql = this.ctx.storage.sql;
    const tables = sql
      .exec<{ name: string }>(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' AND name NOT LIKE '\\_cf\\_%' ESCAPE '\\'",
      )
      .toArray()
      .map((row) => row.name);
    const sizes: Record<string, number> = {};
    for (const table of tables) {
      const columns = sql
        .exec<{ name: string }>("SELECT name FROM pragma_table_info(?)", table)
        .toArray()
        .map((row) => `COALESCE(LENGTH(CAST("${row.name}" AS BLOB)), 0)`);
      const row = sql.exec<{ size: number | null }>(`SELECT MAX(${columns.join(" + ")}) AS size FROM "${table}"`).one();
      sizes[table] = row.size ?? 0;
    }
    return sizes;
  }

  /**
   * Put the run back in the layout of the version before the `spill` table (every text inline,
   * no `spill` table), then reset the object so that the next call loads it afresh.
   */
  revertToInlineLayout(): void {
    const sql = this.ctx.storage.sql;
    const spilled = sql.exec<{ n: number }>("SELECT COUNT(*) AS n FROM spill").one().n;
    if (spilled > 0) {
      throw new Error("only a run without spilled texts can be reverted");
    }
    sql.exec("DROP TABLE spill");
    this.ctx.abort("reverted to the inline layout");
  }

  /** The topology as the run's repository reads it back (lists joined from their spilled parts). */
  topologyRows(): TopologyRow[] {
    return new RunRepo(this.ctx.storage.sql).topologyNodes();
  }

  /**
   * Put the topology's spilled lists back in their rows, as the version before topology spilling
   * stored them (each call reads its rows afresh, so the next one sees this layout).
   */
  inlineTopologyLists(): void {
    const sql = this.ctx.storage.sql;
    for (const column of ["succs", "back_preds", "preds"]) {
      sql.exec(
        `UPDATE topology SET ${column} = (SELECT group_concat(text, '') FROM
          (SELECT text FROM spill WHERE owner = 'topology/${column}/' || topology.ord ORDER BY part))
          WHERE typeof(${column}) = 'blob'`,
      );
    }
    sql.exec("DELETE FROM spill WHERE owner LIKE 'topology/%'");
  }

  /** Whether the object holds a run at all. */
  holdsRun(): boolean {
    return schemaExists(this.ctx.storage.sql);
  }

  alarmAt(): Promise<number | null> {
    return this.ctx.storage.getAlarm();
  }
}
