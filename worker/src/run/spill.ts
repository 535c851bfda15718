/**
 * Large column texts, kept in rows of their own.
 *
 * Durable Object SQLite limits a row (and a string) to 2 MB, yet one record can hold several
 * values of up to 2,000,000 bytes each (§8): a result, awaiting details, an awaiting result and a
 * delivered resolution; and one topology node's node lists may each take most of a 4 MiB start
 * request. So a column text longer than {@link INLINE_CHARS} is not stored in its
 * row: the row holds {@link SPILLED}, a zero-length BLOB (no text column of the old layout ever
 * held a BLOB), and the text lives in the `spill` table, cut into parts of at most
 * {@link PART_CHARS} UTF-16 code units (≤ 1.5 MB of UTF-8), keyed by an owner string naming the
 * row and column. Parts are written and deleted in the caller's transaction.
 *
 * Rows written before the `spill` table existed hold their texts inline; they are read as they
 * are, and a long record text moves to the new layout when a call first reads its record, so no
 * migration runs (see {@link ensureSpillTable}).
 */

/** Texts up to this many UTF-16 code units stay in their row (at most 48 KiB of UTF-8). */
export const INLINE_CHARS = 16_384;
/** The most UTF-16 code units of one part (at most 1,500,000 bytes of UTF-8). */
export const PART_CHARS = 500_000;

/** The stored marker of a spilled text: a zero-length BLOB. */
export const SPILLED: ArrayBuffer = new ArrayBuffer(0);

export const SPILL_TABLE = `CREATE TABLE IF NOT EXISTS spill (
    owner TEXT NOT NULL,
    part INTEGER NOT NULL,
    text TEXT NOT NULL,
    PRIMARY KEY (owner, part)
  )`;

/** Create the `spill` table in a run stored before it existed (idempotent). */
export function ensureSpillTable(sql: SqlStorage): void {
  sql.exec(SPILL_TABLE);
}

/** Cut `text` into parts of at most {@link PART_CHARS} code units, never inside a surrogate pair. */
function parts(text: string): string[] {
  const cut: string[] = [];
  let start = 0;
  while (start < text.length) {
    let end = Math.min(start + PART_CHARS, text.length);
    const last = text.charCodeAt(end - 1);
    if (end < text.length && last >= 0xd800 && last <= 0xdbff) {
      end -= 1;
    }
    cut.push(text.slice(start, end));
    start = end;
  }
  return cut;
}

export class SpillStore {
  constructor(private readonly sql: SqlStorage) {}

  /**
   * Store `text` for one column whose stored value was `previous` (undefined for a new row):
   * returns what the column must hold, the text itself or {@link SPILLED}.
   */
  replace(owner: string, previous: SqlStorageValue | undefined, text: string | null): string | ArrayBuffer | null {
    this.drop(owner, previous);
    if (text === null || text.length <= INLINE_CHARS) {
      return text;
    }
    parts(text).forEach((part, index) => {
      this.sql.exec("INSERT INTO spill (owner, part, text) VALUES (?, ?, ?)", owner, index, part);
    });
    return SPILLED;
  }

  /** The text of a column as stored: inline text, null, or the spilled parts put together. */
  load(owner: string, stored: SqlStorageValue): string | null {
    if (stored === null || typeof stored === "string") {
      return stored;
    }
    if (!(stored instanceof ArrayBuffer)) {
      throw new Error(`column ${owner} holds a number, not text`);
    }
    const rows = this.sql
      .exec<{ text: string }>("SELECT text FROM spill WHERE owner = ? ORDER BY part", owner)
      .toArray();
    return rows.map((row) => row.text).join("");
  }

  /** Delete the parts of a column whose stored value was `previous` (nothing unless it was spilled). */
  drop(owner: string, previous: SqlStorageValue | undefined): void {
    if (previous instanceof ArrayBuffer) {
      this.sql.exec("DELETE FROM spill WHERE owner = ?", owner);
    }
  }
}
