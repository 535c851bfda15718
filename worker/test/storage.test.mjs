// @ts-check
/**
 * Row sizes in the run's SQLite storage: Cloudflare limits a row to 2 MB (workerd does not), so
 * however many near-limit values (§8) one node gathers, no row may hold more than one of them.
 */

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { Coordinator, runId, startBody, startCoordinator } from "./support/harness.mjs";

/** §8: a request body. */
const MAX_BODY_BYTES = 4 * 1024 * 1024;

/** §8: one JSON value, as compact UTF-8 JSON. */
const MAX_VALUE_BYTES = 2_000_000;
/** A row's columns other than its one value: keys, node ids, counters. */
const ROW_OVERHEAD_BYTES = 4096;

/** @type {Coordinator} */
let worker;

before(async () => {
  worker = await startCoordinator();
});

after(() => worker.dispose());

/**
 * A string whose JSON text is just under the value limit. A leading `tag` shifts the four-byte
 * characters so that a surrogate pair straddles every 500,000-unit boundary of a spilled text.
 * @param {string} tag
 */
function nearLimit(tag) {
  const text = `${tag}${"\u{1F600}".repeat(Math.floor((MAX_VALUE_BYTES - 1000) / 4))}`;
  assert.ok(Buffer.byteLength(JSON.stringify({ d: text })) <= MAX_VALUE_BYTES);
  return text;
}

/**
 * @param {string} path
 * @param {unknown} body
 */
async function ok(path, body) {
  const reply = await worker.post(path, body);
  assert.equal(reply.status, 200, JSON.stringify(reply.body)?.slice(0, 500));
  return reply.body;
}

/** @param {string} id */
async function largestRows(id) {
  return /** @type {Record<string, number>} */ (await (await worker.probe(id)).largestRows());
}

describe("row sizes", () => {
  test("no row exceeds one value's limit when a node gathers four near-limit values", async () => {
    const id = runId("rows");
    const [details, awaitingOutput, resumeOutput, resultOutput, keyValue] = ["a", "b", "c", "d", "e"].map(nearLimit);
    await ok(`/v1/runs/${id}/start`, startBody({ A: { succs: ["B"] }, B: {} }, ["A"], { context: { big: keyValue } }));
    await ok(`/v1/runs/${id}/claim`, { nodeId: "A", token: "t1", leaseMs: 60_000, blueprintVersion: null });
    await ok(`/v1/runs/${id}/commit`, {
      nodeId: "A",
      gen: 0,
      token: "t1",
      awaiting: {
        reason: "external_event",
        details: { d: details },
        external: true,
        result: { output: awaitingOutput, action: null },
      },
    });
    await ok(`/v1/runs/${id}/resume`, { output: resumeOutput, action: "go" });
    const claimed = await ok(`/v1/runs/${id}/claim`, {
      nodeId: "A",
      token: "t2",
      leaseMs: 60_000,
      blueprintVersion: null,
    });
    assert.equal(claimed.state, "awaiting");
    assert.deepEqual(claimed.awaiting.resolution, { output: resumeOutput, action: "go" });
    assert.equal(claimed.awaiting.details.d, details);
    await ok(`/v1/runs/${id}/commit`, {
      nodeId: "A",
      gen: 0,
      token: "t2",
      result: { output: resultOutput, action: null },
      arrivals: ["B"],
    });
    await ok(`/v1/runs/${id}/ops`, { ops: [{ op: "setIfNotExist", key: "k", value: keyValue }] });

    const sizes = await largestRows(id);
    for (const [table, size] of Object.entries(sizes)) {
      assert.ok(size <= MAX_VALUE_BYTES + ROW_OVERHEAD_BYTES, `a row of ${table} holds ${size} bytes`);
    }
    assert.ok((sizes["spill"] ?? 0) > 1_000_000, "the near-limit values are kept in spill rows");

    const completed = await ok(`/v1/runs/${id}/claim`, {
      nodeId: "A",
      token: "t3",
      leaseMs: 60_000,
      blueprintVersion: null,
    });
    assert.equal(completed.state, "completed");
    assert.deepEqual(completed.result, { output: resultOutput, action: null });
    const ops = await ok(`/v1/runs/${id}/ops`, {
      ops: [
        { op: "get", key: "k" },
        { op: "context.get", key: "big" },
      ],
    });
    assert.deepEqual(ops.results, [keyValue, keyValue]);
    const view = (await worker.get(`/v1/runs/${id}`)).body;
    assert.equal(view.context["_resume.output"], resumeOutput);
    assert.equal(view.nodes.A.state, "completed");
  });

  test("deleting keys and re-arming nodes leaves no spilled text behind", async () => {
    const id = runId("rows");
    const value = nearLimit("f");
    await ok(`/v1/runs/${id}/start`, startBody({ A: { succs: ["A"], backPreds: ["A"] } }, ["A"]));
    await ok(`/v1/runs/${id}/ops`, {
      ops: [
        { op: "setIfNotExist", key: "k", value },
        { op: "context.set", key: "c", value },
      ],
    });
    for (const gen of [0, 1, 2]) {
      await ok(`/v1/runs/${id}/claim`, { nodeId: "A", gen, token: `t${gen}`, leaseMs: 60_000, blueprintVersion: null });
      await ok(`/v1/runs/${id}/commit`, {
        nodeId: "A",
        gen,
        token: `t${gen}`,
        result: { output: value, action: null },
        rearm: gen < 2 ? ["A"] : [],
        arrivals: gen < 2 ? ["A"] : [],
      });
    }
    await ok(`/v1/runs/${id}/ops`, {
      ops: [
        { op: "delete", key: "k" },
        { op: "context.delete", key: "c" },
      ],
    });
    const probe = await worker.probe(id);
    const owners = new Set((await probe.rows("spill")).map((/** @type {any} */ row) => row.owner));
    const records = (await probe.rows("records")).map((/** @type {any} */ row) => `${row.gen}/${row.node}`);
    assert.deepEqual(records.sort(), ["1/A", "2/A"]);
    assert.deepEqual([...owners].sort(), ["records/result/1/A", "records/result/2/A"]);
  });

  test("a run stored before the spill table is read as it is and takes near-limit values", async () => {
    const id = runId("rows");
    await ok(`/v1/runs/${id}/start`, startBody({ A: { succs: ["B"] }, B: {} }, ["A"], { context: { small: 1 } }));
    await ok(`/v1/runs/${id}/claim`, { nodeId: "A", token: "t1", leaseMs: 60_000, blueprintVersion: null });
    const before = (await worker.get(`/v1/runs/${id}`)).body;
    await assert.rejects((await worker.probe(id)).revertToInlineLayout());
    assert.deepEqual((await worker.get(`/v1/runs/${id}`)).body, before);
    const output = nearLimit("g");
    await ok(`/v1/runs/${id}/commit`, {
      nodeId: "A",
      gen: 0,
      token: "t1",
      result: { output, action: null },
      arrivals: ["B"],
    });
    const claimed = await ok(`/v1/runs/${id}/claim`, {
      nodeId: "A",
      token: "t2",
      leaseMs: 60_000,
      blueprintVersion: null,
    });
    assert.deepEqual(claimed.result, { output, action: null });
    const sizes = await largestRows(id);
    assert.ok((sizes["records"] ?? 0) < 100_000, `a records row holds ${sizes["records"]} bytes`);
  });

  test("a start request near its size limit keeps every topology row small and reads back unchanged", async () => {
    const id = runId("rows");
    const count = 3900;
    const fanned = Array.from({ length: count }, (_, index) => `P${String(index).padStart(5, "0")}`.padEnd(512, "x"));
    const looped = fanned.slice(0, 40);
    /** @type {Record<string, { succs?: string[], join?: "all" | "any", backPreds?: string[] }>} */
    const topology = { S: { succs: fanned, backPreds: looped } };
    for (const node of fanned) {
      topology[node] = { succs: looped.includes(node) ? ["J", "S"] : ["J"] };
    }
    topology["J"] = { join: "all" };
    const body = startBody(topology, ["S"]);
    assert.ok(Buffer.byteLength(JSON.stringify(body)) <= MAX_BODY_BYTES);
    assert.ok(
      Buffer.byteLength(JSON.stringify(fanned)) > MAX_VALUE_BYTES,
      "S's succs and J's preds pass a row's limit",
    );
    await ok(`/v1/runs/${id}/start`, body);

    const expected = [
      { node: "S", succs: fanned, join: "all", backPreds: looped, preds: looped, gen: 0 },
      ...fanned.map((node) => ({
        node,
        succs: topology[node]?.succs,
        join: "all",
        backPreds: [],
        preds: ["S"],
        gen: 0,
      })),
      { node: "J", succs: [], join: "all", backPreds: [], preds: fanned, gen: 0 },
    ];
    assert.deepEqual(await (await worker.probe(id)).topologyRows(), expected);
    const started = await largestRows(id);
    for (const [table, size] of Object.entries(started)) {
      assert.ok(size <= MAX_VALUE_BYTES + ROW_OVERHEAD_BYTES, `a row of ${table} holds ${size} bytes`);
    }

    const [last] = fanned.slice(-1);
    assert.ok(last !== undefined);
    await ok(`/v1/runs/${id}/claim`, { nodeId: "S", token: "s", leaseMs: 60_000, blueprintVersion: null });
    const fannedOut = await ok(`/v1/runs/${id}/commit`, {
      nodeId: "S",
      gen: 0,
      token: "s",
      result: { output: null, action: null },
      arrivals: [last],
      skips: fanned.slice(0, -1),
    });
    assert.deepEqual(fannedOut.released, [{ nodeId: last, gen: 0 }]);
    const early = await ok(`/v1/runs/${id}/claim`, {
      nodeId: "J",
      token: "j",
      leaseMs: 60_000,
      blueprintVersion: null,
    });
    assert.equal(early.state, "not_ready");
    await ok(`/v1/runs/${id}/claim`, { nodeId: last, token: "p", leaseMs: 60_000, blueprintVersion: null });
    const joined = await ok(`/v1/runs/${id}/commit`, {
      nodeId: last,
      gen: 0,
      token: "p",
      result: { output: null, action: null },
      arrivals: ["J"],
    });
    assert.deepEqual(joined.released, [{ nodeId: "J", gen: 0 }]);
    const claimed = await ok(`/v1/runs/${id}/claim`, {
      nodeId: "J",
      token: "j",
      leaseMs: 60_000,
      blueprintVersion: null,
    });
    assert.equal(claimed.state, "run");
    const finished = await ok(`/v1/runs/${id}/commit`, {
      nodeId: "J",
      gen: 0,
      token: "j",
      result: { output: "joined", action: null },
    });
    assert.equal(finished.status, "completed");

    const view = (await worker.get(`/v1/runs/${id}`)).body;
    assert.deepEqual(Object.keys(view.nodes), ["S", ...fanned, "J"]);
    const states = Object.fromEntries(Object.entries(view.nodes).map(([node, shown]) => [node, shown.state]));
    assert.deepEqual(states, {
      S: "completed",
      ...Object.fromEntries(fanned.map((node) => [node, node === last ? "completed" : "skipped"])),
      J: "completed",
    });
    const sizes = await largestRows(id);
    for (const [table, size] of Object.entries(sizes)) {
      assert.ok(size <= MAX_VALUE_BYTES + ROW_OVERHEAD_BYTES, `a row of ${table} holds ${size} bytes`);
    }
    assert.deepEqual(await (await worker.probe(id)).topologyRows(), expected);
  });

  test("a topology whose long lists are stored inline, as before they were spilled, reads the same", async () => {
    const id = runId("rows");
    const fanned = Array.from({ length: 100 }, (_, index) => `Q${index}`.padEnd(512, "\u00e9"));
    const topology = Object.fromEntries([["S", { succs: fanned }], ...fanned.map((node) => [node, { succs: ["J"] }])]);
    await ok(`/v1/runs/${id}/start`, startBody({ ...topology, J: { join: "all" } }, ["S"]));
    const probe = await worker.probe(id);
    const rows = await probe.topologyRows();
    const owners = (await probe.rows("spill")).map((/** @type {any} */ row) => row.owner).sort();
    assert.deepEqual(owners, [`topology/preds/${fanned.length + 1}`, "topology/succs/0"]);
    const before = (await worker.get(`/v1/runs/${id}`)).body;

    await probe.inlineTopologyLists();
    assert.deepEqual(await probe.rows("spill"), []);
    assert.ok(((await largestRows(id))["topology"] ?? 0) > 100_000, "the lists are back in their rows");
    assert.deepEqual((await worker.get(`/v1/runs/${id}`)).body, before);
    assert.deepEqual(await probe.topologyRows(), rows);
    await ok(`/v1/runs/${id}/claim`, { nodeId: "S", token: "s", leaseMs: 60_000, blueprintVersion: null });
    const committed = await ok(`/v1/runs/${id}/commit`, {
      nodeId: "S",
      gen: 0,
      token: "s",
      result: { output: null, action: null },
      arrivals: fanned,
    });
    assert.deepEqual(
      committed.released,
      fanned.map((nodeId) => ({ nodeId, gen: 0 })),
    );
  });
});
