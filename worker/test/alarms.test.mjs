// @ts-check
/** Alarms: coordination keys expire and are swept; finished runs are deleted after their retention. */

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { Coordinator, eventually, runId, startBody, startCoordinator } from "./support/harness.mjs";

/** @type {Coordinator} */
let worker;

before(async () => {
  worker = await startCoordinator({ vars: { RUN_RETENTION_SECONDS: "1" } });
});

after(() => worker.dispose());

/**
 * @param {string} id
 * @param {unknown[]} ops
 */
async function ops(id, ops) {
  const reply = await worker.post(`/v1/runs/${id}/ops`, { ops });
  assert.equal(reply.status, 200, JSON.stringify(reply.body));
  return reply.body.results;
}

describe("coordination TTL", () => {
  test("the alarm sweeps expired keys without any further call", async () => {
    const id = runId("ttl");
    await worker.post(`/v1/runs/${id}/start`, startBody({ A: {} }, ["A"]));
    await ops(id, [
      { op: "setIfNotExist", key: "short", value: 1, ttlSeconds: 2 },
      { op: "setIfNotExist", key: "forever", value: 2 },
    ]);
    const probe = await worker.probe(id);
    const [short] = (await probe.rows("coordination")).filter((/** @type {any} */ row) => row.key === "short");
    assert.ok(short.expires_at > Date.now());
    assert.equal(await probe.alarmAt(), short.expires_at);
    await eventually(async () => (await probe.rows("coordination")).length === 1, "the alarm to sweep the expired key");
    assert.deepEqual(
      (await probe.rows("coordination")).map((/** @type {any} */ row) => row.key),
      ["forever"],
    );
    assert.equal(await probe.alarmAt(), null);
    assert.deepEqual(
      await ops(id, [
        { op: "get", key: "short" },
        { op: "get", key: "forever" },
      ]),
      [null, 2],
    );
  });

  test("extendTTL moves the expiry, or removes it without ttlSeconds", async () => {
    const id = runId("ttl");
    await worker.post(`/v1/runs/${id}/start`, startBody({ A: {} }, ["A"]));
    await ops(id, [
      { op: "setIfNotExist", key: "k", value: 1, ttlSeconds: 1 },
      { op: "extendTTL", key: "k" },
    ]);
    const probe = await worker.probe(id);
    assert.equal((await probe.rows("coordination"))[0].expires_at, null);
    await ops(id, [{ op: "extendTTL", key: "k", ttlSeconds: 100 }]);
    assert.ok((await probe.rows("coordination"))[0].expires_at > Date.now() + 90_000);
  });
});

describe("retention", () => {
  test("a finished run's state is deleted after the retention period; a running one is kept", async () => {
    const finished = runId("retained");
    const running = runId("retained");
    for (const id of [finished, running]) {
      await worker.post(`/v1/runs/${id}/start`, startBody({ A: {} }, ["A"]));
    }
    await worker.post(`/v1/runs/${finished}/ops`, { ops: [{ op: "setIfNotExist", key: "k", value: 1 }] });
    await worker.post(`/v1/runs/${finished}/commit`, { nodeId: "A", gen: 0, token: "t", result: { output: 1 } });
    const probe = await worker.probe(finished);
    await eventually(async () => !(await probe.holdsRun()), "the finished run to be deleted");
    assert.equal((await worker.get(`/v1/runs/${finished}`)).status, 404);
    assert.equal(await probe.alarmAt(), null);
    assert.equal((await worker.get(`/v1/runs/${running}`)).body.status, "running");
  });
});
