// @ts-check
/** A coordinator Worker in Miniflare for tests, with a client that speaks its HTTP protocol. */

import { fileURLToPath } from "node:url";
import { build } from "esbuild";
import { Miniflare } from "miniflare";
import { COMPATIBILITY_DATE, coordinatorOptions, QUEUE_NAME } from "../../scripts/worker-options.mjs";

export const SECRET = "test-secret-9f2c4e1a7b";

/** @type {Promise<string> | undefined} */
let probeScript;

/** The Worker bundled with the probe subclass of its Durable Object (test/support/probe.ts). */
function bundleProbe() {
  probeScript ??= build({
    entryPoints: [fileURLToPath(new URL("./probe.ts", import.meta.url))],
    bundle: true,
    format: "esm",
    platform: "neutral",
    target: "es2022",
    conditions: ["workerd", "worker", "browser"],
    external: ["cloudflare:*"],
    write: false,
    logLevel: "silent",
  }).then((result) => {
    const [output] = result.outputFiles;
    if (output === undefined) {
      throw new Error("esbuild produced no output for probe.ts");
    }
    return output.text;
  });
  return probeScript;
}

/** A consumer of the job queue that keeps every message it receives and lists them on GET. */
const RECORDER = `
const received = [];
export default {
  async queue(batch) {
    for (const message of batch.messages) {
      received.push({ body: message.body, at: Date.now() });
      message.ack();
    }
  },
  async fetch() {
    return Response.json(received);
  },
};
`;

/**
 * @typedef {{ status: number, body: any, headers: Headers }} Reply
 * @typedef {{ auth?: string | null, headers?: Record<string, string>, rawBody?: string | Uint8Array }} CallOptions
 */

export class Coordinator {
  /**
   * @param {Miniflare} mf
   * @param {URL} url
   */
  constructor(mf, url) {
    this.mf = mf;
    this.url = url;
  }

  /**
   * One HTTP call. `body` is sent as JSON unless `rawBody` is given; `auth` defaults to the secret.
   * @param {string} method
   * @param {string} path
   * @param {unknown} [body]
   * @param {CallOptions} [options]
   * @returns {Promise<Reply>}
   */
  async call(method, path, body, options = {}) {
    /** @type {Record<string, string>} */
    const headers = { ...options.headers };
    const auth = options.auth === undefined ? `Bearer ${SECRET}` : options.auth;
    if (auth !== null) {
      headers["authorization"] = auth;
    }
    /** @type {string | Uint8Array | undefined} */
    let payload = options.rawBody;
    if (payload === undefined && body !== undefined) {
      payload = JSON.stringify(body);
    }
    const response = await fetch(new URL(path, this.url), { method, headers, body: payload ?? null });
    const text = await response.text();
    return { status: response.status, body: text === "" ? null : JSON.parse(text), headers: response.headers };
  }

  /**
   * @param {string} path
   * @param {unknown} [body]
   */
  post(path, body) {
    return this.call("POST", path, body ?? {});
  }

  /** @param {string} path */
  get(path) {
    return this.call("GET", path);
  }

  /**
   * The probe of one run's Durable Object.
   * @param {string} runId
   */
  async probe(runId) {
    const namespace = await this.mf.getDurableObjectNamespace("RUNS");
    return /** @type {any} */ (namespace.get(namespace.idFromName(runId)));
  }

  /** Every job message the recorder consumer received (only with `recordQueue`). */
  async received() {
    const worker = await this.mf.getWorker("recorder");
    const response = await worker.fetch("http://recorder/");
    return /** @type {{ body: any, at: number }[]} */ (await response.json());
  }

  async kv() {
    return this.mf.getKVNamespace("STATUS");
  }

  dispose() {
    return this.mf.dispose();
  }
}

/**
 * Start the coordinator (with the probe) in Miniflare on 127.0.0.1.
 * @param {{ vars?: Record<string, string>, recordQueue?: boolean }} [options]
 */
export async function startCoordinator(options = {}) {
  const coordinator = coordinatorOptions(await bundleProbe(), { SECRET, ...options.vars });
  coordinator.durableObjects = { RUNS: { className: "RunObjectProbe", useSQLite: true } };
  /** @type {import("miniflare").WorkerOptions[]} */
  const workers = [coordinator];
  if (options.recordQueue) {
    workers.push({
      name: "recorder",
      modules: true,
      script: RECORDER,
      compatibilityDate: COMPATIBILITY_DATE,
      queueConsumers: { [QUEUE_NAME]: { maxBatchSize: 100, maxBatchTimeout: 0 } },
    });
  }
  const mf = new Miniflare({
    host: "127.0.0.1",
    port: 0,
    workers,
    /**
     * @param {import("node:stream").Readable} stdout
     * @param {import("node:stream").Readable} stderr
     */
    handleRuntimeStdio(stdout, stderr) {
      stdout.resume();
      stderr.resume();
    },
  });
  const url = await mf.ready;
  return new Coordinator(mf, url);
}

/**
 * Wait until `check` returns a truthy value, polling; fail after `timeoutMs`.
 * @template T
 * @param {() => Promise<T | null | false | undefined>} check
 * @param {string} what
 * @param {number} [timeoutMs]
 * @returns {Promise<T>}
 */
export async function eventually(check, what, timeoutMs = 10_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value) {
      return value;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out waiting for ${what}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

/**
 * A start request body.
 * @param {Record<string, { succs?: string[], join?: "all" | "any", backPreds?: string[] }>} topology
 * @param {string[]} startNodes
 * @param {Record<string, unknown>} [extra]
 */
export function startBody(topology, startNodes, extra = {}) {
  return { blueprintId: "bp", topology, startNodes, ...extra };
}

let counter = 0;
/** A run id unique within the test process. */
export function runId(prefix = "run") {
  counter += 1;
  return `${prefix}-${process.pid}-${counter}`;
}
