/** The Worker's bindings and variables (wrangler.toml, README "Configuration"). */

import { ConfigError } from "./errors";
import type { RunObject } from "./run/object";

export interface Env {
  RUNS: DurableObjectNamespace<RunObject>;
  JOBS: Queue;
  STATUS: KVNamespace;
  SECRET?: string;
  QUEUE_REST_URL?: string;
  QUEUE_REST_TOKEN?: string;
  STATUS_INTERVAL_SECONDS?: string;
  STATUS_KEY_PREFIX?: string;
  RUN_RETENTION_SECONDS?: string;
  OUTBOX_RETRY_SECONDS?: string;
}

export interface Settings {
  /** Least time between two status-record writes while the status does not change. */
  statusIntervalMs: number;
  statusKeyPrefix: string;
  /** How long a finished run's state is kept. */
  retentionMs: number;
  /** First delay before the alarm re-sends an outbox that failed to send (doubles up to 5 min). */
  outboxRetryMs: number;
  /** When set, jobs go to this Cloudflare-compatible REST queue instead of the JOBS binding. */
  queueRestUrl: string | null;
  queueRestToken: string | null;
}

function seconds(
  env: Env,
  name: "STATUS_INTERVAL_SECONDS" | "RUN_RETENTION_SECONDS" | "OUTBOX_RETRY_SECONDS",
  fallback: number,
): number {
  const raw = env[name];
  if (raw === undefined || raw.trim() === "") {
    return fallback * 1000;
  }
  const value = Number(raw);
  if (!Number.isFinite(value) || value < 0) {
    throw new ConfigError(
      `${name} must be a number of seconds >= 0, not ${JSON.stringify(raw)}; fix it in wrangler.toml [vars]`,
    );
  }
  return Math.round(value * 1000);
}

function optional(raw: string | undefined): string | null {
  return raw === undefined || raw.trim() === "" ? null : raw.trim();
}

export function settings(env: Env): Settings {
  return {
    statusIntervalMs: seconds(env, "STATUS_INTERVAL_SECONDS", 10),
    statusKeyPrefix: env.STATUS_KEY_PREFIX ?? "flowcraft:status:",
    retentionMs: seconds(env, "RUN_RETENTION_SECONDS", 604_800),
    outboxRetryMs: seconds(env, "OUTBOX_RETRY_SECONDS", 5),
    queueRestUrl: optional(env.QUEUE_REST_URL)?.replace(/\/+$/, "") ?? null,
    queueRestToken: optional(env.QUEUE_REST_TOKEN),
  };
}
