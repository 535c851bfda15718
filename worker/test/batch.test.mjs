// @ts-check
/** POST /v1/batch, and many concurrent commits to one run: the join releases exactly once. */

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { Coordinator, eventually, runId, startBody, startCoordinator } from "./support/harness.mjs";

/** @type {Coordinator} */
let worker;

before(async () => {
  worker = await startCoordinator({ recordQueue: true });
});

after(() => worker.dispose());

const FAN = 25;
const BRANCHES = Array.from({ length: FAN }, (_, index) => `W${index}`);

/** S fans out to W0..W24, which all join at J. */
async function fanRun() {
  /** @type {Record<string, { succs?: string[] }>} */
  const topology = { S: { succs: BRANCHES }, J: {} };
  for (const branch of BRANCHES) {
    topology[branch] = { succs: ["J"] };
  }
  const id = runId("fan");
  assert.equal((await worker.post(`/v1/runs/${id}/start`, startBody(topology, ["S"]))).status, 200);
  const fanned = await worker.post(`/v1/runs/${id}/commit`, {
    nodeId: "S",
    gen: 0,
    token: "t",
    result: { output: 1 },
    arrivals: BRANCHES,
  });
  assert.equal(fanned.body.released.length, FAN);
  return id;
}

/** @param {string} branch */
function branchCommit(branch) {
  return {
    nodeId: branch,
    gen: 0,
    token: `tok-${branch}`,
    result: { output: branch },
    writes: { [`_outputs.${branch}`]: branch },
    arrivals: ["J"],
  };
}

/**
 * The J jobs the queue delivered for a run, after every job of the run arrived.
 * @param {string} id
 */
async function joinJobs(id) {
  const bodies = await eventually(async () => {
    const all = (await worker.received()).map((message) => message.body).filter((body) => body.runId === id);
    return all.length >= FAN + 2 ? all : null;
  }, "the run's jobs");
  await new Promise((resolve) => setTimeout(resolve, 300));
  const settled = (await worker.received()).map((message) => message.body).filter((body) => body.runId === id);
  assert.equal(settled.length, bodies.length, "no job arrives late");
  return settled.filter((body) => body.nodeId === "J");
}

describe("concurrent commits to one run", () => {
  test("50 concurrent commits with duplicates release the join exactly once", async () => {
    const id = await fanRun();
    const replies = await Promise.all(
      [...BRANCHES, ...BRANCHES].map((branch) => worker.post(`/v1/runs/${id}/commit`, branchCommit(branch))),
    );
    assert.ok(replies.every((reply) => reply.status === 200));
    const releasing = replies.filter((reply) =>
      reply.body.released.some((/** @type {any} */ ref) => ref.nodeId === "J"),
    );
    const firsts = replies.filter((reply) => !reply.body.duplicate);
    assert.equal(firsts.length, FAN);
    assert.equal(releasing.filter((reply) => !reply.body.duplicate).length, 1);
    assert.equal(releasing.length, 2, "the duplicate of the releasing commit answers the same released list");
    assert.deepEqual(await joinJobs(id), [{ runId: id, blueprintId: "bp", nodeId: "J", gen: 0 }]);
    const run = (await worker.get(`/v1/runs/${id}`)).body;
    assert.equal(run.nodes.J.state, "released");
    assert.equal(Object.keys(run.context).filter((key) => key.startsWith("_outputs.")).length, FAN);
  });

  test("the same commits spread over concurrent batches release the join exactly once", async () => {
    const id = await fanRun();
    const entries = [...BRANCHES, ...BRANCHES].map((branch) => ({
      op: "commit",
      runId: id,
      body: branchCommit(branch),
    }));
    const batches = Array.from({ length: 5 }, (_, index) => entries.filter((_, position) => position % 5 === index));
    const replies = await Promise.all(batches.map((chunk) => worker.post("/v1/batch", { entries: chunk })));
    const results = replies.flatMap((reply) => reply.body.results);
    assert.equal(results.length, 2 * FAN);
    assert.ok(results.every((result) => result.status === 200));
    const releasing = results.filter((result) => !result.body.duplicate && result.body.released.length > 0);
    assert.equal(releasing.length, 1);
    assert.deepEqual(await joinJobs(id), [{ runId: id, blueprintId: "bp", nodeId: "J", gen: 0 }]);
  });
});

describe("batch", () => {
  test("entries answer in order with each call's status and body; failures stay per entry", async () => {
    const first = runId("batch");
    const second = runId("batch");
    for (const id of [first, second]) {
      await worker.post(`/v1/runs/${id}/start`, startBody({ A: { succs: ["B"] }, B: {} }, ["A"]));
    }
    const reply = await worker.post("/v1/batch", {
      entries: [
        { op: "claim", runId: first, body: { nodeId: "A", token: "t", leaseMs: 1000 } },
        {
          op: "commit",
          runId: first,
          body: { nodeId: "A", gen: 0, token: "t", result: { output: 1 }, arrivals: ["B"] },
        },
        { op: "claim", runId: first, body: { nodeId: "B", token: "t", leaseMs: 1000 } },
        { op: "commit", runId: second, body: { nodeId: "B", gen: 0, token: "t", result: null } },
        { op: "claim", runId: second, body: { nodeId: "A" } },
        { op: "get", runId: "no-such-run", body: {} },
        { op: "attempts", runId: second, body: { nodeId: "A", gen: 0, token: "t", attempts: 1, error: "e" } },
        { op: "fail", runId: second, body: { reason: "stop" } },
        { op: "get", runId: second },
        { op: "claim", runId: first, body: [] },
      ],
    });
    assert.equal(reply.status, 200);
    const results = reply.body.results;
    assert.deepEqual(
      results.map((/** @type {any} */ result) => result.status),
      [200, 200, 200, 409, 400, 404, 200, 200, 200, 400],
    );
    assert.equal(results[0].body.state, "run");
    assert.deepEqual(results[1].body.released, [{ nodeId: "B", gen: 0 }]);
    assert.equal(results[2].body.state, "run");
    assert.equal(results[4].body.error.field, "token");
    assert.equal(results[5].body.error.code, "not_found");
    assert.deepEqual(results[7].body, { status: "failed", reason: "stop" });
    assert.equal(results[8].body.status, "failed");
    assert.equal(results[8].body.nodes.A.attempts, 1);
  });

  const envelopes = [
    ["not an object", [1], null],
    ["no entries", {}, "entries"],
    ["empty entries", { entries: [] }, "entries"],
    ["257 entries", { entries: Array.from({ length: 257 }, () => ({ op: "get", runId: "r", body: {} })) }, "entries"],
    ["an unknown op", { entries: [{ op: "start", runId: "r", body: {} }] }, "entries[0].op"],
    ["a missing run id", { entries: [{ op: "get", body: {} }] }, "entries[0].runId"],
    ["a malformed run id", { entries: [{ op: "get", runId: "-r", body: {} }] }, "entries[0].runId"],
    ["an unknown entry field", { entries: [{ op: "get", runId: "r", body: {}, x: 1 }] }, "entries[0].x"],
    ["an unknown envelope field", { entries: [{ op: "get", runId: "r" }], extra: true }, "extra"],
  ];
  for (const [label, body, field] of envelopes) {
    test(`a batch with ${label} is 400 as a whole`, async () => {
      const reply = await worker.post("/v1/batch", body);
      assert.equal(reply.status, 400);
      assert.equal(reply.body.error.code, "bad_request");
      assert.equal(reply.body.error.field, field);
    });
  }
});
