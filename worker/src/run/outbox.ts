/** Sending outbox rows to the job queue: the producer binding, or a Cloudflare-compatible REST endpoint. */

import { RawJson, toJsonText, utf8Length } from "../json";
import type { OutboxRow } from "./model";

/** Cloudflare's per-call limits for a batch send (1 KB = 1000 B). */
const MAX_BATCH_MESSAGES = 100;
const MAX_BATCH_BYTES = 256_000;
/** Allowance per message for the metadata Cloudflare counts against the limits. */
const MESSAGE_OVERHEAD_BYTES = 100;
const MAX_DELAY_SECONDS = 43_200;
const REST_TIMEOUT_MS = 15_000;

export class SendError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "SendError";
  }
}

export interface JobSender {
  /** Send one batch (already within the limits); throw if it was not accepted. */
  send(rows: readonly OutboxRow[]): Promise<void>;
}

function delaySeconds(delayMs: number): number {
  return Math.min(Math.ceil(delayMs / 1000), MAX_DELAY_SECONDS);
}

/** Split rows into sends of at most 100 messages and 256 KB. */
export function batches(rows: readonly OutboxRow[]): OutboxRow[][] {
  const result: OutboxRow[][] = [];
  let current: OutboxRow[] = [];
  let bytes = 0;
  for (const row of rows) {
    const size = utf8Length(row.body) + MESSAGE_OVERHEAD_BYTES;
    if (current.length > 0 && (current.length === MAX_BATCH_MESSAGES || bytes + size > MAX_BATCH_BYTES)) {
      result.push(current);
      current = [];
      bytes = 0;
    }
    current.push(row);
    bytes += size;
  }
  if (current.length > 0) {
    result.push(current);
  }
  return result;
}

export class BindingSender implements JobSender {
  constructor(private readonly queue: Queue) {}

  async send(rows: readonly OutboxRow[]): Promise<void> {
    await this.queue.sendBatch(
      rows.map((row) => ({
        body: JSON.parse(row.body) as unknown,
        contentType: "json" as const,
        delaySeconds: delaySeconds(row.delayMs),
      })),
    );
  }
}

interface Envelope {
  success?: boolean;
  errors?: unknown;
}

function parseEnvelope(text: string): Envelope {
  try {
    return JSON.parse(text) as Envelope;
  } catch {
    return {};
  }
}

/** POST {url}/messages/batch with Cloudflare's body and v4 envelope (QUEUE_REST_URL). */
export class RestSender implements JobSender {
  constructor(
    private readonly url: string,
    private readonly token: string | null,
  ) {}

  async send(rows: readonly OutboxRow[]): Promise<void> {
    const body = toJsonText({
      messages: rows.map((row) => ({
        body: new RawJson(row.body),
        content_type: "json",
        delay_seconds: delaySeconds(row.delayMs),
      })),
    });
    const headers: Record<string, string> = { "content-type": "application/json" };
    if (this.token !== null) {
      headers["authorization"] = `Bearer ${this.token}`;
    }
    const response = await fetch(`${this.url}/messages/batch`, {
      method: "POST",
      headers,
      body,
      signal: AbortSignal.timeout(REST_TIMEOUT_MS),
    });
    const text = await response.text();
    if (!response.ok || parseEnvelope(text).success !== true) {
      throw new SendError(`queue REST send answered ${response.status}: ${text.slice(0, 300)}`);
    }
  }
}
