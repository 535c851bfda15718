// @ts-check
/** The KV status records and GET /v1/runs. */

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { Coordinator, runId, startBody, startCoordinator } from "./support/harness.mjs";

/** @type {Coordinator} */
let worker;

before(async () => {
  worker = await startCoordinator({ vars: { STATUS_INTERVAL_SECONDS: "3600" } });
});

after(() => worker.dispose());

/** @param {string} id */
async function record(id) {
  const kv = await worker.kv();
  return kv.get(`flowcraft:status:${id}`, "json");
}

/** @param {string} id */
async function start(id) {
  await worker.post(`/v1/runs/${id}/start`, startBody({ A: {} }, ["A"], { context: { n: 1 } }));
}

describe("status records", () => {
  test("a run's record follows its status, with the final context once completed", async () => {
    const id = runId("status");
    await start(id);
    const running = /** @type {any} */ (await record(id));
    assert.equal(running.status, "running");
    assert.equal(running.blueprintId, "bp");
    assert.ok(Math.abs(running.lastUpdated - Date.now() / 1000) < 60, "lastUpdated is in seconds");
    assert.equal("finalStatus" in running, false);
    await worker.post(`/v1/runs/${id}/commit`, {
      nodeId: "A",
      gen: 0,
      token: "t",
      result: { output: 1 },
      writes: { out: [1, 2] },
    });
    const context = { n: 1, blueprintId: "bp", blueprintVersion: null, out: [1, 2] };
    const completed = /** @type {any} */ (await record(id));
    assert.deepEqual(completed.finalStatus, {
      status: "completed",
      payload: { context, serializedContext: JSON.stringify(context), status: "completed" },
    });
    assert.equal("error" in completed, false);
  });

  test("failed and cancelled records carry the reason", async () => {
    const failed = runId("status");
    await start(failed);
    await worker.post(`/v1/runs/${failed}/fail`, { reason: "boom" });
    assert.deepEqual(await record(failed), {
      status: "failed",
      lastUpdated: /** @type {any} */ (await record(failed)).lastUpdated,
      blueprintId: "bp",
      finalStatus: { status: "failed", reason: "boom" },
      error: "boom",
    });
    const cancelled = runId("status");
    await start(cancelled);
    await worker.post(`/v1/runs/${cancelled}/cancel`, {});
    const value = /** @type {any} */ (await record(cancelled));
    assert.deepEqual([value.finalStatus, value.error], [{ status: "cancelled", reason: "cancelled" }, "cancelled"]);
  });

  test("records expire after a day", async () => {
    const id = runId("status");
    await start(id);
    const kv = await worker.kv();
    const listed = await kv.list({ prefix: `flowcraft:status:${id}` });
    const expiration = listed.keys[0]?.expiration ?? 0;
    assert.ok(Math.abs(expiration - (Date.now() / 1000 + 86_400)) < 60);
  });

  test("without a status change the record is not rewritten within the interval", async () => {
    const id = runId("status");
    await start(id);
    const kv = await worker.kv();
    await kv.delete(`flowcraft:status:${id}`);
    await worker.post(`/v1/runs/${id}/claim`, { nodeId: "A", token: "t", leaseMs: 1000 });
    assert.equal(await record(id), null);
    await worker.post(`/v1/runs/${id}/cancel`, {});
    assert.equal(/** @type {any} */ (await record(id)).status, "cancelled");
  });
});

describe("listing runs", () => {
  test("filters by status and staleness, and pages with a cursor", async () => {
    const prefix = runId("list");
    const ids = [1, 2, 3, 4, 5].map((n) => `${prefix}-${n}`);
    for (const id of ids) {
      await start(id);
    }
    await worker.post(`/v1/runs/${ids[1]}/cancel`, {});
    const cancelled = await worker.get("/v1/runs?status=cancelled&limit=1000");
    assert.ok(cancelled.body.runs.some((/** @type {any} */ run) => run.runId === ids[1]));
    assert.ok(cancelled.body.runs.every((/** @type {any} */ run) => run.status === "cancelled"));

    const stale = await worker.get("/v1/runs?stale=3600");
    assert.deepEqual(stale.body, { runs: [], cursor: null });

    /** @type {any[]} */
    const seen = [];
    let cursor = null;
    do {
      const query = cursor === null ? "limit=2" : `limit=2&cursor=${encodeURIComponent(cursor)}`;
      const page = await worker.get(`/v1/runs?status=running&stale=0&${query}`);
      assert.equal(page.status, 200);
      assert.ok(page.body.runs.length <= 2);
      seen.push(...page.body.runs);
      cursor = page.body.cursor;
    } while (cursor !== null);
    const mine = seen.filter((run) => run.runId.startsWith(prefix));
    assert.deepEqual(
      mine.map((run) => run.runId),
      [ids[0], ids[2], ids[3], ids[4]],
    );
    assert.deepEqual(Object.keys(mine[0]).sort(), ["blueprintId", "lastUpdated", "runId", "status"]);
    assert.equal(new Set(seen.map((run) => run.runId)).size, seen.length, "no run is listed twice");
  });

  for (const [query, field] of [
    ["status=done", "status"],
    ["limit=0", "limit"],
    ["limit=1001", "limit"],
    ["stale=-1", "stale"],
    ["cursor=garbage", "cursor"],
    ["page=2", "page"],
  ]) {
    test(`?${query} is 400 naming ${field}`, async () => {
      const reply = await worker.get(`/v1/runs?${query}`);
      assert.deepEqual([reply.status, reply.body.error.field], [400, field]);
    });
  }
});
