// @ts-check
/** The deployment files: wrangler.toml as wrangler reads it, pinned tooling, and a Worker without SECRET. */

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, test } from "node:test";
import { Miniflare } from "miniflare";
import {
  bundleWorker,
  COMPATIBILITY_DATE,
  coordinatorOptions,
  QUEUE_NAME,
  VAR_NAMES,
  WORKER_DIR,
} from "../scripts/worker-options.mjs";

/** @param {string} name */
function read(name) {
  return readFileSync(join(WORKER_DIR, name), "utf8");
}

describe("wrangler.toml", () => {
  test("wrangler reads the same bindings the local Miniflare setup uses", async () => {
    const { unstable_getMiniflareWorkerOptions } = await import("wrangler");
    const { workerOptions } = unstable_getMiniflareWorkerOptions(join(WORKER_DIR, "wrangler.toml"));
    const local = coordinatorOptions("", {});
    assert.equal(workerOptions.compatibilityDate, COMPATIBILITY_DATE);
    /** @param {unknown} value */
    const plain = (value) => JSON.parse(JSON.stringify(value));
    assert.deepEqual(plain(workerOptions.durableObjects), local.durableObjects);
    assert.deepEqual(plain(workerOptions.queueProducers), { JOBS: { queueName: QUEUE_NAME } });
    assert.deepEqual(Object.keys(workerOptions.kvNamespaces ?? {}), ["STATUS"]);
    const vars = Object.keys(workerOptions.bindings ?? {});
    assert.ok(
      vars.every((name) => VAR_NAMES.includes(name)),
      `unexpected vars ${vars}`,
    );
    assert.ok(!vars.includes("SECRET"), "the secret is not a plain var");
  });

  test("declares no http_pull consumer (wrangler >= 4.78 refuses it; the README creates it)", () => {
    assert.ok(!read("wrangler.toml").includes("http_pull"));
    assert.match(read("README.md"), /wrangler queues consumer http add/);
  });
});

describe("tooling", () => {
  test("wrangler and miniflare are pinned to the last releases that run on Node 20", () => {
    const manifest = JSON.parse(read("package.json"));
    assert.equal(manifest.devDependencies.wrangler, "4.86.0");
    assert.equal(manifest.devDependencies.miniflare, "4.20260426.0");
  });

  test("the lockfile records no download URLs", () => {
    assert.ok(!read("package-lock.json").includes('"resolved"'));
  });

  test("the health version is the package version", () => {
    const manifest = JSON.parse(read("package.json"));
    assert.match(read("src/version.ts"), new RegExp(`VERSION = "${manifest.version.replaceAll(".", "\\.")}"`));
  });
});

describe("a Worker without SECRET", () => {
  test("refuses every request", async () => {
    const mf = new Miniflare({
      host: "127.0.0.1",
      port: 0,
      workers: [coordinatorOptions(await bundleWorker(), {})],
      /**
       * @param {import("node:stream").Readable} stdout
       * @param {import("node:stream").Readable} stderr
       */
      handleRuntimeStdio(stdout, stderr) {
        stdout.resume();
        stderr.resume();
      },
    });
    try {
      const url = await mf.ready;
      for (const auth of ["Bearer ", "Bearer undefined", "Bearer null"]) {
        const response = await fetch(new URL("/v1/health", url), { headers: { authorization: auth } });
        assert.equal(response.status, 401);
        assert.equal(/** @type {any} */ (await response.json()).error.code, "unauthorized");
      }
    } finally {
      await mf.dispose();
    }
  });
});
