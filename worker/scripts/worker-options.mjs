// @ts-check
/** Miniflare options for the coordinator Worker, mirroring wrangler.toml (test/config.test.mjs keeps them equal). */

import { fileURLToPath } from "node:url";
import { build } from "esbuild";

export const WORKER_DIR = fileURLToPath(new URL("..", import.meta.url));
export const COMPATIBILITY_DATE = "2026-04-01";
export const QUEUE_NAME = "flowcraft-jobs";

/** The Worker's variables and secrets, passed through from the environment when set. */
export const VAR_NAMES = [
  "SECRET",
  "QUEUE_REST_URL",
  "QUEUE_REST_TOKEN",
  "STATUS_INTERVAL_SECONDS",
  "STATUS_KEY_PREFIX",
  "RUN_RETENTION_SECONDS",
  "OUTBOX_RETRY_SECONDS",
];

/** Bundle src/index.ts into one ES module, as wrangler would. */
export async function bundleWorker() {
  const result = await build({
    entryPoints: [fileURLToPath(new URL("../src/index.ts", import.meta.url))],
    bundle: true,
    format: "esm",
    platform: "neutral",
    target: "es2022",
    conditions: ["workerd", "worker", "browser"],
    external: ["cloudflare:*"],
    write: false,
    logLevel: "silent",
  });
  const [output] = result.outputFiles;
  if (output === undefined) {
    throw new Error("esbuild produced no output for src/index.ts");
  }
  return output.text;
}

/**
 * @param {NodeJS.ProcessEnv} env
 * @returns {Record<string, string>}
 */
export function varsFrom(env) {
  /** @type {Record<string, string>} */
  const vars = {};
  for (const name of VAR_NAMES) {
    const value = env[name];
    if (value !== undefined) {
      vars[name] = value;
    }
  }
  return vars;
}

/**
 * The coordinator as one Miniflare worker.
 * @param {string} script the bundled Worker
 * @param {Record<string, string>} vars
 * @returns {import("miniflare").WorkerOptions}
 */
export function coordinatorOptions(script, vars) {
  return {
    name: "flowcraft-coordinator",
    modules: true,
    script,
    compatibilityDate: COMPATIBILITY_DATE,
    durableObjects: { RUNS: { className: "RunObject", useSQLite: true } },
    queueProducers: { JOBS: { queueName: QUEUE_NAME } },
    kvNamespaces: ["STATUS"],
    bindings: vars,
  };
}
