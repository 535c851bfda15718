/**
 * Bookkeeping of what still has to leave the Durable Object: whether the KV status record is
 * due, and when the alarm should retry after a failed send or write.
 */

import type { RunStatus } from "../protocol";

type DeliveryColumns = {
  status_due: number;
  status_seq: number;
  status_written: string | null;
  status_written_ms: number | null;
  retry_at_ms: number | null;
  failures: number;
};

/** The longest wait between two retries of a failed send or status write. */
const MAX_RETRY_MS = 300_000;

export class DeliveryBook {
  constructor(private readonly sql: SqlStorage) {}

  create(): void {
    this.sql.exec(
      "INSERT INTO delivery (id, status_due, status_seq, failures) VALUES (1, 0, 0, 0) ON CONFLICT (id) DO NOTHING",
    );
  }

  private row(): DeliveryColumns | undefined {
    return this.sql.exec<DeliveryColumns>("SELECT * FROM delivery WHERE id = 1").toArray()[0];
  }

  /**
   * After a call: the status record is due when it was never written, the status changed, or
   * `intervalMs` passed since the last write (KV takes one write per second per key).
   */
  markStatus(status: RunStatus, nowMs: number, intervalMs: number): void {
    const row = this.row();
    if (row === undefined) {
      return;
    }
    const due =
      row.status_written === null ||
      row.status_written !== status ||
      row.status_written_ms === null ||
      nowMs - row.status_written_ms >= intervalMs;
    if (due) {
      this.sql.exec("UPDATE delivery SET status_due = 1, status_seq = status_seq + 1 WHERE id = 1");
    }
  }

  /** The sequence number of the pending status write, or null when none is due. */
  statusDue(): number | null {
    const row = this.row();
    return row !== undefined && row.status_due === 1 ? row.status_seq : null;
  }

  /** A status write succeeded; it clears the due flag unless a later change marked it again. */
  statusWritten(status: RunStatus, nowMs: number, seq: number): void {
    this.sql.exec(
      `UPDATE delivery SET status_written = ?, status_written_ms = ?,
        status_due = CASE WHEN status_seq = ? THEN 0 ELSE 1 END WHERE id = 1`,
      status,
      nowMs,
      seq,
    );
  }

  /** A send or write failed: retry after an exponentially growing delay. */
  failed(nowMs: number, baseMs: number): void {
    const failures = (this.row()?.failures ?? 0) + 1;
    const delay = Math.min(baseMs * 2 ** (failures - 1), MAX_RETRY_MS);
    this.sql.exec("UPDATE delivery SET failures = ?, retry_at_ms = ? WHERE id = 1", failures, nowMs + delay);
  }

  succeeded(): void {
    this.sql.exec("UPDATE delivery SET failures = 0, retry_at_ms = NULL WHERE id = 1");
  }

  retryAtMs(): number | null {
    return this.row()?.retry_at_ms ?? null;
  }
}
