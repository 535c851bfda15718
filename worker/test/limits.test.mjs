// @ts-check
/**
 * The length limits of docs/protocol.md §8 on names, keys, texts and the topology: at the limit a
 * request is accepted, one over it is a 400 naming the field (the reference pins the same cases in
 * tests/unit/test_protocol_limits.py). Lengths count characters (code points), so most texts use a
 * character that JavaScript counts as two UTF-16 units.
 */

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { Coordinator, eventually, runId, startCoordinator } from "./support/harness.mjs";

const MAX_NAME_CHARS = 512;
const MAX_NODE_ID_CHARS = 512;
const MAX_KEY_CHARS = 1024;
const MAX_TEXT_CHARS = 4096;
const MAX_TOPOLOGY_NODES = 10_000;
const WIDE = "\u{1D11E}";

/** @param {number} length */
const text = (length) => WIDE.repeat(length);

/** @type {Coordinator} */
let worker;

before(async () => {
  worker = await startCoordinator({ recordQueue: true });
});

after(() => worker.dispose());

/** @param {Record<string, unknown>} [fields] */
const startBody = (fields = {}) => ({
  blueprintId: "bp",
  topology: { A: { succs: ["G"] }, G: {} },
  startNodes: ["A"],
  ...fields,
});

/** @param {Record<string, unknown>} [fields] */
const commitBody = (fields = {}) => ({
  nodeId: "A",
  gen: 0,
  token: "t",
  result: { output: null },
  arrivals: ["G"],
  ...fields,
});

/** @param {Record<string, string>} fields */
const dynamic = (fields) => ({ dynamic: [{ nodeId: "w", uses: "map", inputs: "items", gather: "G", ...fields }] });

/** @param {number} count */
const nodes = (count) => Object.fromEntries(Array.from({ length: count }, (_, index) => [`n${index}`, {}]));

/** @param {number} count */
const ids = (count) => Array.from({ length: count }, () => "A");

async function started() {
  const id = runId("limits");
  const reply = await worker.post(`/v1/runs/${id}/start`, startBody());
  assert.equal(reply.status, 200, JSON.stringify(reply.body));
  return id;
}

/**
 * @typedef {{ call: string, body: (n: number) => Record<string, unknown>, limit: number, field: string, accepted: number }} LengthCase
 * `call` is the path verb, `accepted` the status of the request at the limit (a resume without a
 * target is a 409: past the schema).
 */

/** @type {Record<string, LengthCase>} */
const LIMITED = {
  "blueprint id": {
    call: "start",
    body: (n) => startBody({ blueprintId: text(n) }),
    limit: MAX_NAME_CHARS,
    field: "blueprintId",
    accepted: 200,
  },
  "blueprint version": {
    call: "start",
    body: (n) => startBody({ blueprintVersion: text(n) }),
    limit: MAX_NAME_CHARS,
    field: "blueprintVersion",
    accepted: 200,
  },
  "start context key": {
    call: "start",
    body: (n) => startBody({ context: { k: 1, ["x".repeat(n)]: 2 } }),
    limit: MAX_KEY_CHARS,
    field: `context.${"x".repeat(MAX_KEY_CHARS + 1)}`,
    accepted: 200,
  },
  "parent blueprint id": {
    call: "start",
    body: (n) => startBody({ parent: { runId: "p", blueprintId: text(n), nodeId: "P", gen: 0 } }),
    limit: MAX_NAME_CHARS,
    field: "parent.blueprintId",
    accepted: 200,
  },
  "topology nodes": {
    call: "start",
    body: (n) => startBody({ topology: nodes(n), startNodes: [] }),
    limit: MAX_TOPOLOGY_NODES,
    field: "topology",
    accepted: 200,
  },
  "successors of a node": {
    call: "start",
    body: (n) => startBody({ topology: { A: { succs: ids(n) } } }),
    limit: MAX_TOPOLOGY_NODES,
    field: "topology.A.succs",
    accepted: 200,
  },
  "back predecessors of a node": {
    call: "start",
    body: (n) => startBody({ topology: { A: { succs: ["A"], backPreds: ids(n) } } }),
    limit: MAX_TOPOLOGY_NODES,
    field: "topology.A.backPreds",
    accepted: 200,
  },
  "start nodes": {
    call: "start",
    body: (n) => startBody({ topology: { A: {} }, startNodes: ids(n) }),
    limit: MAX_TOPOLOGY_NODES,
    field: "startNodes",
    accepted: 200,
  },
  "claim version": {
    call: "claim",
    body: (n) => ({ nodeId: "A", token: "t", leaseMs: 1, blueprintVersion: text(n) }),
    limit: MAX_NAME_CHARS,
    field: "blueprintVersion",
    accepted: 200,
  },
  "write key": {
    call: "commit",
    body: (n) => commitBody({ writes: { ["x".repeat(n)]: 1 } }),
    limit: MAX_KEY_CHARS,
    field: `writes.${"x".repeat(MAX_KEY_CHARS + 1)}`,
    accepted: 200,
  },
  "delete key": {
    call: "commit",
    body: (n) => commitBody({ deletes: ["k", text(n)] }),
    limit: MAX_KEY_CHARS,
    field: "deletes[1]",
    accepted: 200,
  },
  "result action": {
    call: "commit",
    body: (n) => commitBody({ result: { output: null, action: text(n) } }),
    limit: MAX_TEXT_CHARS,
    field: "result.action",
    accepted: 200,
  },
  "awaiting result action": {
    call: "commit",
    body: (n) =>
      commitBody({
        result: null,
        arrivals: [],
        awaiting: { reason: "timer", result: { output: null, action: text(n) } },
      }),
    limit: MAX_TEXT_CHARS,
    field: "awaiting.result.action",
    accepted: 200,
  },
  "batch worker uses": {
    call: "commit",
    body: (n) => commitBody(dynamic({ uses: text(n) })),
    limit: MAX_NAME_CHARS,
    field: "dynamic[0].uses",
    accepted: 200,
  },
  "batch worker inputs": {
    call: "commit",
    body: (n) => commitBody(dynamic({ inputs: text(n) })),
    limit: MAX_KEY_CHARS,
    field: "dynamic[0].inputs",
    accepted: 200,
  },
  "resume action": {
    call: "resume",
    body: (n) => ({ action: text(n) }),
    limit: MAX_TEXT_CHARS,
    field: "action",
    accepted: 409,
  },
  "coordination key": {
    call: "ops",
    body: (n) => ({
      ops: [
        { op: "get", key: "k" },
        { op: "get", key: text(n) },
      ],
    }),
    limit: MAX_KEY_CHARS,
    field: "ops[1].key",
    accepted: 200,
  },
};

describe("length limits (§8)", () => {
  for (const [name, { call, body, limit, field, accepted }] of Object.entries(LIMITED)) {
    test(`a ${name} at its limit is accepted; one over is refused naming ${field.slice(0, 40)}`, async () => {
      const id = call === "start" ? runId("limits") : await started();
      const fits = await worker.post(`/v1/runs/${id}/${call}`, body(limit));
      assert.equal(fits.status, accepted, JSON.stringify(fits.body).slice(0, 300));
      const over = await worker.post(`/v1/runs/${runId("limits")}/${call}`, body(limit + 1));
      assert.deepEqual([over.status, over.body.error.code, over.body.error.field], [400, "bad_request", field]);
    });
  }

  test("a batch entry over a limit is refused alone, naming the field", async () => {
    const id = await started();
    const reply = await worker.post("/v1/batch", {
      entries: [
        { op: "commit", runId: id, body: commitBody({ writes: { ["x".repeat(MAX_KEY_CHARS + 1)]: 1 } }) },
        { op: "get", runId: id, body: {} },
      ],
    });
    assert.equal(reply.status, 200);
    const [refused, view] = reply.body.results;
    assert.deepEqual([refused.status, refused.body.error.field], [400, `writes.${"x".repeat(MAX_KEY_CHARS + 1)}`]);
    assert.equal(view.status, 200);
  });

  test("a bad node id is named before the topology is counted", async () => {
    const longId = "x".repeat(MAX_NODE_ID_CHARS + 1);
    const first = await worker.post(`/v1/runs/${runId("limits")}/start`, {
      ...startBody({ topology: { ...nodes(MAX_TOPOLOGY_NODES), [longId]: {} }, startNodes: [] }),
    });
    assert.deepEqual([first.status, first.body.error.field], [400, `topology.${longId}`]);
    const second = await worker.post(`/v1/runs/${runId("limits")}/start`, {
      ...startBody({ topology: { ...nodes(MAX_TOPOLOGY_NODES), bad: { succs: 1 } }, startNodes: [] }),
    });
    assert.deepEqual([second.status, second.body.error.field], [400, "topology.bad.succs"]);
  });

  test("a list over its limit is refused before its items are read", async () => {
    const reply = await worker.post(
      `/v1/runs/${runId("limits")}/start`,
      startBody({ startNodes: ["", ...ids(MAX_TOPOLOGY_NODES)] }),
    );
    assert.deepEqual([reply.status, reply.body.error.field], [400, "startNodes"]);
  });

  test("a job of a run at the name limits carries the long blueprint id", async () => {
    const id = runId("limits");
    const blueprintId = text(MAX_NAME_CHARS);
    const reply = await worker.post(`/v1/runs/${id}/start`, startBody({ blueprintId, topology: { A: {} } }));
    assert.equal(reply.status, 200);
    const received = await eventually(async () => {
      const jobs = (await worker.received()).filter((job) => job.body.runId === id);
      return jobs.length > 0 ? jobs : undefined;
    }, "the start node's job");
    assert.equal(received[0].body.blueprintId, blueprintId);
  });
});

describe("failure texts over the limit are truncated, not refused (§8)", () => {
  const over = "\u00e9".repeat(10) + text(MAX_TEXT_CHARS);
  const truncated = "\u00e9".repeat(10) + text(MAX_TEXT_CHARS - 10);

  test("a fail reason", async () => {
    const id = await started();
    const reply = await worker.post(`/v1/runs/${id}/fail`, { reason: over });
    assert.deepEqual([reply.status, reply.body.reason], [200, truncated]);
    assert.equal((await worker.get(`/v1/runs/${id}`)).body.reason, truncated);
  });

  test("a cancel reason", async () => {
    const id = await started();
    const reply = await worker.post(`/v1/runs/${id}/cancel`, { reason: over });
    assert.deepEqual([reply.status, reply.body.reason], [200, truncated]);
  });

  test("an attempts error, and one of exactly the limit is kept whole", async () => {
    const id = await started();
    const claim = { nodeId: "A", token: "t", leaseMs: 60_000 };
    assert.equal((await worker.post(`/v1/runs/${id}/claim`, claim)).status, 200);
    const attempts = { nodeId: "A", gen: 0, token: "t", attempts: 1 };
    assert.equal((await worker.post(`/v1/runs/${id}/attempts`, { ...attempts, error: over })).status, 200);
    assert.equal((await worker.post(`/v1/runs/${id}/claim`, claim)).body.lastError, truncated);
    const whole = text(MAX_TEXT_CHARS);
    assert.equal((await worker.post(`/v1/runs/${id}/attempts`, { ...attempts, error: whole })).status, 200);
    assert.equal((await worker.post(`/v1/runs/${id}/claim`, claim)).body.lastError, whole);
  });

  test("an empty fail reason is still refused", async () => {
    const id = await started();
    const reply = await worker.post(`/v1/runs/${id}/fail`, { reason: "" });
    assert.deepEqual([reply.status, reply.body.error.field], [400, "reason"]);
  });
});
