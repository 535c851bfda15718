#!/usr/bin/env node
// @ts-check
/**
 * Serve the coordinator Worker in Miniflare (workerd) on 127.0.0.1.
 *
 *   node scripts/serve.mjs [--port N] [--persist DIR]
 *
 * The port defaults to $PORT or a free one; state is in memory unless --persist (or
 * $PERSIST_DIR) names a directory. Variables come from the environment: SECRET,
 * QUEUE_REST_URL, QUEUE_REST_TOKEN, STATUS_INTERVAL_SECONDS, STATUS_KEY_PREFIX,
 * RUN_RETENTION_SECONDS, OUTBOX_RETRY_SECONDS. When ready it prints one JSON line
 * {"url": ..., "pid": ...} on stdout; everything else goes to stderr. SIGTERM stops it.
 */

import { parseArgs } from "node:util";
import { Miniflare } from "miniflare";
import { bundleWorker, coordinatorOptions, varsFrom } from "./worker-options.mjs";

const { values } = parseArgs({
  options: { port: { type: "string" }, persist: { type: "string" } },
  strict: true,
});
const port = Number(values.port ?? process.env["PORT"] ?? "0");
if (!Number.isInteger(port) || port < 0 || port > 65535) {
  process.stderr.write(`serve.mjs: --port must be an integer from 0 to 65535, not ${values.port}\n`);
  process.exit(2);
}
const persist = values.persist ?? process.env["PERSIST_DIR"];

const mf = new Miniflare({
  host: "127.0.0.1",
  port,
  ...(persist ? { defaultPersistRoot: persist } : {}),
  /**
   * @param {import("node:stream").Readable} stdout
   * @param {import("node:stream").Readable} stderr
   */
  handleRuntimeStdio(stdout, stderr) {
    stdout.pipe(process.stderr);
    stderr.pipe(process.stderr);
  },
  workers: [coordinatorOptions(await bundleWorker(), varsFrom(process.env))],
});
const url = await mf.ready;
process.stdout.write(`${JSON.stringify({ url: url.origin, pid: process.pid })}\n`);

// Miniflare installs SIGTERM/SIGINT listeners that exit at once (status 143) without waiting
// for workerd; replace them with a stop that disposes Miniflare (workerd exits and is reaped)
// and then exits with 0.
let stopping = false;
for (const signal of /** @type {const} */ (["SIGTERM", "SIGINT"])) {
  process.removeAllListeners(signal);
  process.on(signal, () => {
    if (stopping) {
      return;
    }
    stopping = true;
    process.stderr.write(`serve.mjs: ${signal}, stopping\n`);
    mf.dispose().then(
      () => process.exit(0),
      (error) => {
        process.stderr.write(`serve.mjs: stopping failed: ${error}\n`);
        process.exit(1);
      },
    );
  });
}
