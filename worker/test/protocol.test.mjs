// @ts-check
/** The run-store semantics of docs/protocol.md §2 and §4, call by call (state.py is the reference). */

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { Coordinator, eventually, runId, startBody, startCoordinator } from "./support/harness.mjs";

/** @type {Coordinator} */
let worker;

before(async () => {
  worker = await startCoordinator({ recordQueue: true });
});

after(() => worker.dispose());

/**
 * Start a run and return its id.
 * @param {Record<string, { succs?: string[], join?: "all" | "any", backPreds?: string[] }>} topology
 * @param {string[]} startNodes
 * @param {Record<string, unknown>} [extra]
 */
async function started(topology, startNodes, extra = {}) {
  const id = runId("proto");
  const reply = await worker.post(`/v1/runs/${id}/start`, startBody(topology, startNodes, extra));
  assert.equal(reply.status, 200, JSON.stringify(reply.body));
  return id;
}

/**
 * @param {string} id
 * @param {Record<string, unknown>} body
 */
async function commit(id, body) {
  return worker.post(`/v1/runs/${id}/commit`, { token: "t", result: { output: null, action: null }, ...body });
}

/**
 * @param {string} id
 * @param {string} nodeId
 * @param {Record<string, unknown>} [extra]
 */
async function claim(id, nodeId, extra = {}) {
  const reply = await worker.post(`/v1/runs/${id}/claim`, { nodeId, token: "t", leaseMs: 60_000, ...extra });
  assert.equal(reply.status, 200, JSON.stringify(reply.body));
  return reply.body;
}

/** @param {string} id */
async function view(id) {
  return (await worker.get(`/v1/runs/${id}`)).body;
}

/**
 * The job messages for one run the queue delivered, once there are at least `count`.
 * @param {string} id
 * @param {number} count
 */
async function jobs(id, count) {
  return eventually(async () => {
    const bodies = (await worker.received()).map((message) => message.body).filter((body) => body.runId === id);
    return bodies.length >= count ? bodies : null;
  }, `${count} jobs of ${id}`);
}

describe("start", () => {
  test("a new run seeds the context, releases its start nodes and queues their jobs", async () => {
    const id = await started({ A: { succs: ["B"] }, B: {} }, ["A"], { context: { seed: 1 }, blueprintVersion: "v1" });
    const run = await view(id);
    assert.equal(run.status, "running");
    assert.deepEqual(run.context, { seed: 1, blueprintId: "bp", blueprintVersion: "v1" });
    assert.deepEqual(run.nodes, {
      A: { gen: 0, state: "released", attempts: 0 },
      B: { gen: 0, state: "idle", attempts: 0 },
    });
    assert.equal(run.parent, null);
    assert.deepEqual(await jobs(id, 1), [{ runId: id, blueprintId: "bp", nodeId: "A", gen: 0 }]);
  });

  test("a repeated start answers created false; another blueprint or version is a conflict", async () => {
    const id = await started({ A: {} }, ["A"], { blueprintVersion: "v1" });
    const again = await worker.post(`/v1/runs/${id}/start`, startBody({ A: {} }, ["A"], { blueprintVersion: "v1" }));
    assert.deepEqual(again.body, { runId: id, created: false, status: "running" });
    const otherVersion = await worker.post(
      `/v1/runs/${id}/start`,
      startBody({ A: {} }, ["A"], { blueprintVersion: "v2" }),
    );
    assert.equal(otherVersion.status, 409);
    const otherBlueprint = await worker.post(`/v1/runs/${id}/start`, {
      ...startBody({ A: {} }, ["A"]),
      blueprintId: "x",
      blueprintVersion: "v1",
    });
    assert.equal(otherBlueprint.status, 409);
  });

  test("a run without start nodes completes at once", async () => {
    const id = await started({ A: {} }, []);
    assert.equal((await view(id)).status, "completed");
  });

  for (const [label, topology, startNodes, field] of [
    ["an unknown successor", { A: { succs: ["Z"] } }, ["A"], "topology.A.succs[0]"],
    ["an unknown start node", { A: {} }, ["Z"], "startNodes[0]"],
    ["a back predecessor without an edge", { A: { backPreds: ["B"] }, B: {} }, ["A"], "topology.A.backPreds"],
  ]) {
    test(`${label} is refused with the field, and no run is created`, async () => {
      const id = runId("bad-start");
      const reply = await worker.post(
        `/v1/runs/${id}/start`,
        startBody(/** @type {any} */ (topology), /** @type {string[]} */ (startNodes)),
      );
      assert.equal(reply.status, 400);
      assert.equal(reply.body.error.field, field);
      assert.equal((await worker.get(`/v1/runs/${id}`)).status, 404);
    });
  }
});

describe("claim", () => {
  test("a released node runs with the context; another token is busy until the lease expires", async () => {
    const id = await started({ A: {} }, ["A"]);
    const first = await claim(id, "A", { token: "one", leaseMs: 300 });
    assert.equal(first.state, "run");
    assert.equal(first.gen, 0);
    assert.deepEqual(first.context, { blueprintId: "bp", blueprintVersion: null });
    const other = await claim(id, "A", { token: "two" });
    assert.equal(other.state, "busy");
    assert.ok(other.retryAfterMs > 0 && other.retryAfterMs <= 300);
    const renewed = await claim(id, "A", { token: "one", leaseMs: 300 });
    assert.equal(renewed.state, "run");
    await eventually(async () => (await claim(id, "A", { token: "two" })).state === "run", "the lease to expire");
  });

  test("the decision order: terminal, version, unknown node, not released", async () => {
    const id = await started({ A: { succs: ["B"] }, B: {} }, ["A"], { blueprintVersion: "v1" });
    assert.equal((await claim(id, "A")).state, "version_mismatch");
    const unknown = await claim(id, "Z", { blueprintVersion: "v1" });
    assert.equal(unknown.state, "not_ready");
    assert.equal(unknown.reason, "unknown node 'Z'");
    const idle = await claim(id, "B", { blueprintVersion: "v1" });
    assert.deepEqual([idle.state, idle.reason], ["not_ready", "not released"]);
    assert.equal((await claim(id, "A", { blueprintVersion: "v1", gen: 3 })).state, "not_ready");
    await worker.post(`/v1/runs/${id}/cancel`, { reason: "stop" });
    const terminal = await claim(id, "A", { blueprintVersion: "v2" });
    assert.deepEqual([terminal.state, terminal.status, terminal.reason], ["terminal", "cancelled", "stop"]);
  });

  test("a completed node answers with its stored result", async () => {
    const id = await started({ A: {} }, ["A"]);
    await commit(id, { nodeId: "A", gen: 0, result: { output: { x: 1 }, action: "go" } });
    const done = await claim(id, "A");
    assert.equal(done.state, "terminal");
    const id2 = await started({ A: { succs: ["B"] }, B: {} }, ["A"]);
    await commit(id2, { nodeId: "A", gen: 0, result: { output: { x: 1 }, action: "go" }, arrivals: ["B"] });
    const completed = await claim(id2, "A");
    assert.equal(completed.state, "completed");
    assert.deepEqual(completed.result, { output: { x: 1 }, action: "go" });
  });
});

describe("commit", () => {
  test("a retried commit answers the stored released list as a duplicate and changes nothing", async () => {
    const id = await started({ A: { succs: ["B"] }, B: {} }, ["A"]);
    const first = await commit(id, { nodeId: "A", gen: 0, arrivals: ["B"], writes: { k: 1 } });
    assert.deepEqual(first.body, {
      status: "running",
      released: [{ nodeId: "B", gen: 0 }],
      duplicate: false,
      stale: false,
    });
    const again = await commit(id, { nodeId: "A", gen: 0, arrivals: ["B"], writes: { k: 2 } });
    assert.deepEqual(again.body, {
      status: "running",
      released: [{ nodeId: "B", gen: 0 }],
      duplicate: true,
      stale: false,
    });
    assert.equal((await view(id)).context.k, 1);
  });

  test("commits are refused for unknown nodes (400), unreleased pairs (409) and foreign successors (400)", async () => {
    const id = await started({ A: { succs: ["B"] }, B: { succs: ["C"] }, C: {} }, ["A"]);
    const unknown = await commit(id, { nodeId: "Z", gen: 0 });
    assert.deepEqual([unknown.status, unknown.body.error.field], [400, "nodeId"]);
    assert.equal((await commit(id, { nodeId: "B", gen: 0 })).status, 409);
    const foreign = await commit(id, { nodeId: "A", gen: 0, arrivals: ["B", "C"] });
    assert.deepEqual([foreign.status, foreign.body.error.field], [400, "arrivals[1]"]);
    const skip = await commit(id, { nodeId: "A", gen: 0, skips: ["A"] });
    assert.deepEqual([skip.status, skip.body.error.field], [400, "skips[0]"]);
    const rearm = await commit(id, { nodeId: "A", gen: 0, rearm: ["Q"] });
    assert.deepEqual([rearm.status, rearm.body.error.field], [400, "rearm[0]"]);
    const empty = await worker.post(`/v1/runs/${id}/commit`, { nodeId: "A", gen: 0, token: "t" });
    assert.deepEqual([empty.status, empty.body.error.field], [400, "result"]);
    assert.equal((await view(id)).nodes.A.state, "released");
  });

  test("deletes apply before writes", async () => {
    const id = await started({ A: {} }, ["A"], { context: { gone: 1, kept: 1 } });
    await commit(id, { nodeId: "A", gen: 0, deletes: ["gone", "kept"], writes: { kept: 2 } });
    const context = (await view(id)).context;
    assert.equal("gone" in context, false);
    assert.equal(context.kept, 2);
  });

  test("an all-join releases once every predecessor arrived", async () => {
    const id = await started({ S: { succs: ["A", "B"] }, A: { succs: ["J"] }, B: { succs: ["J"] }, J: {} }, ["S"]);
    await commit(id, { nodeId: "S", gen: 0, arrivals: ["A", "B"] });
    assert.deepEqual((await commit(id, { nodeId: "A", gen: 0, arrivals: ["J"] })).body.released, []);
    assert.deepEqual((await commit(id, { nodeId: "B", gen: 0, arrivals: ["J"] })).body.released, [
      { nodeId: "J", gen: 0 },
    ]);
  });

  test("an any-join releases on the first arrival only", async () => {
    const id = await started({ A: { succs: ["J"] }, B: { succs: ["J"] }, J: { join: "any" } }, ["A", "B"]);
    assert.deepEqual((await commit(id, { nodeId: "A", gen: 0, arrivals: ["J"] })).body.released, [
      { nodeId: "J", gen: 0 },
    ]);
    assert.deepEqual((await commit(id, { nodeId: "B", gen: 0, arrivals: ["J"] })).body.released, []);
  });

  test("an all-join with one arrival and one skip releases; all skips skip it and its successors", async () => {
    const id = await started({ A: { succs: ["J", "K"] }, B: { succs: ["J"] }, J: {}, K: { succs: ["L"] }, L: {} }, [
      "A",
      "B",
    ]);
    await commit(id, { nodeId: "A", gen: 0, arrivals: ["J"], skips: ["K"] });
    assert.deepEqual((await commit(id, { nodeId: "B", gen: 0, skips: ["J"] })).body.released, [
      { nodeId: "J", gen: 0 },
    ]);
    const run = await view(id);
    assert.deepEqual([run.nodes.K.state, run.nodes.L.state], ["skipped", "skipped"]);
    const done = await commit(id, { nodeId: "J", gen: 0 });
    assert.equal(done.body.status, "completed");
  });

  test("re-arming carries over the arrivals of sources outside the re-armed set", async () => {
    const topology = { P: { succs: ["J"] }, Q: { succs: ["J"] }, J: {} };
    const carried = await started(topology, ["P", "Q"]);
    await commit(carried, { nodeId: "P", gen: 0, arrivals: ["J"] });
    const released = await commit(carried, { nodeId: "Q", gen: 0, arrivals: ["J"], rearm: ["J"] });
    assert.deepEqual(released.body.released, [{ nodeId: "J", gen: 1 }]);
    assert.deepEqual((await view(carried)).nodes.J, { gen: 1, state: "released", attempts: 0 });

    const dropped = await started(topology, ["P", "Q"]);
    await commit(dropped, { nodeId: "P", gen: 0, arrivals: ["J"] });
    const waiting = await commit(dropped, { nodeId: "Q", gen: 0, arrivals: ["J"], rearm: ["J", "P"] });
    assert.deepEqual(waiting.body.released, []);
  });

  test("a loop controller expects its back predecessors after the first generation", async () => {
    const id = await started(
      { S: { succs: ["C"] }, C: { succs: ["B", "X"], backPreds: ["B"] }, B: { succs: ["C"] }, X: {} },
      ["S"],
    );
    assert.deepEqual((await commit(id, { nodeId: "S", gen: 0, arrivals: ["C"] })).body.released, [
      { nodeId: "C", gen: 0 },
    ]);
    const cont = await commit(id, { nodeId: "C", gen: 0, arrivals: ["B"], rearm: ["C"] });
    assert.deepEqual(cont.body.released, [{ nodeId: "B", gen: 0 }]);
    assert.deepEqual((await commit(id, { nodeId: "B", gen: 0, arrivals: ["C"] })).body.released, [
      { nodeId: "C", gen: 1 },
    ]);
    assert.equal((await claim(id, "C")).gen, 1);
    const exit = await commit(id, { nodeId: "C", gen: 1, arrivals: ["X"], skips: ["B"] });
    assert.deepEqual(exit.body.released, [{ nodeId: "X", gen: 0 }]);
    assert.equal((await commit(id, { nodeId: "X", gen: 0 })).body.status, "completed");
  });

  test("a commit of an older generation is recorded but releases nothing (stale)", async () => {
    const id = await started({ A: { succs: ["B"] }, B: { succs: ["C"] }, C: {} }, ["A", "B"]);
    await commit(id, { nodeId: "A", gen: 0, rearm: ["B"] });
    const stale = await commit(id, { nodeId: "B", gen: 0, arrivals: ["C"] });
    assert.deepEqual(stale.body, { status: "running", released: [], duplicate: false, stale: true });
    assert.deepEqual((await claim(id, "B")).state, "not_ready");
  });

  test("dynamic batch workers are released at gen 0 and join their gather node", async () => {
    const id = await started({ A: { succs: ["G"] }, G: {} }, ["A"]);
    const workers = ["w1", "w2"].map((nodeId) => ({ nodeId, uses: "double", inputs: "items", gather: "G" }));
    const fanned = await commit(id, { nodeId: "A", gen: 0, dynamic: workers, arrivals: ["G"] });
    assert.deepEqual(fanned.body.released, [
      { nodeId: "w1", gen: 0 },
      { nodeId: "w2", gen: 0 },
    ]);
    const queued = (await jobs(id, 3)).filter((job) => job.nodeId === "w1");
    assert.deepEqual(queued, [
      { runId: id, blueprintId: "bp", nodeId: "w1", gen: 0, dynamic: { uses: "double", inputs: "items", gather: "G" } },
    ]);
    assert.equal((await claim(id, "w1")).state, "run");
    assert.deepEqual((await commit(id, { nodeId: "w1", gen: 0, arrivals: ["G"] })).body.released, []);
    assert.deepEqual((await commit(id, { nodeId: "w2", gen: 0, arrivals: ["G"] })).body.released, [
      { nodeId: "G", gen: 0 },
    ]);
    assert.deepEqual(Object.keys((await view(id)).nodes), ["A", "G", "w1", "w2"]);
  });

  test("dynamic workers need a known gather node and an id outside the topology", async () => {
    const id = await started({ A: { succs: ["G"] }, G: {} }, ["A"]);
    const badGather = await commit(id, {
      nodeId: "A",
      gen: 0,
      dynamic: [{ nodeId: "w", uses: "u", inputs: "i", gather: "Z" }],
    });
    assert.deepEqual([badGather.status, badGather.body.error.field], [400, "dynamic[0].gather"]);
    const clash = await commit(id, {
      nodeId: "A",
      gen: 0,
      dynamic: [{ nodeId: "G", uses: "u", inputs: "i", gather: "G" }],
    });
    assert.deepEqual([clash.status, clash.body.error.field], [400, "dynamic[0].nodeId"]);
  });
});

describe("awaiting, resume and quiescence", () => {
  test("an external wait makes the run awaiting; resume resolves it; completion clears the awaiting keys", async () => {
    const id = await started({ W: { succs: ["N"] }, N: {} }, ["W"]);
    const details = { event: "approval" };
    const waiting = await commit(id, {
      nodeId: "W",
      gen: 0,
      result: null,
      awaiting: { reason: "external_event", details, external: true },
    });
    assert.deepEqual(waiting.body, { status: "awaiting", released: [], duplicate: false, stale: false });
    let run = await view(id);
    assert.deepEqual(run.context._awaitingNodeIds, ["W"]);
    assert.deepEqual(run.context._awaitingDetails, { W: details });
    assert.deepEqual(run.awaiting.W, {
      reason: "external_event",
      details,
      external: true,
      wakeAtMs: null,
      resolution: null,
    });
    assert.equal(run.nodes.W.state, "awaiting");
    assert.equal((await claim(id, "W")).awaiting.resolution, null);

    const resumed = await worker.post(`/v1/runs/${id}/resume`, { action: "approve", output: { ok: true } });
    assert.deepEqual(resumed.body, { status: "running", resumed: [{ nodeId: "W", gen: 0 }] });
    const claimed = await claim(id, "W");
    assert.deepEqual(
      [claimed.state, claimed.awaiting.resolution],
      ["awaiting", { output: { ok: true }, action: "approve" }],
    );
    assert.equal((await worker.post(`/v1/runs/${id}/resume`, { action: "again" })).status, 409);

    const done = await commit(id, {
      nodeId: "W",
      gen: 0,
      result: { output: { ok: true }, action: "approve" },
      arrivals: ["N"],
    });
    assert.deepEqual(done.body.released, [{ nodeId: "N", gen: 0 }]);
    run = await view(id);
    assert.equal("_awaitingNodeIds" in run.context, false);
    assert.equal("_awaitingDetails" in run.context, false);
    assert.deepEqual([run.context["_resume.action"], run.context["_resume.output"]], ["approve", { ok: true }]);
    assert.equal((await commit(id, { nodeId: "N", gen: 0 })).body.status, "completed");
  });

  test("resume without output leaves _resume.output unset; a named node must await a resumable reason", async () => {
    const id = await started({ W: {}, T: {} }, ["W", "T"]);
    await commit(id, { nodeId: "W", gen: 0, result: null, awaiting: { reason: "external_event", external: true } });
    await commit(id, {
      nodeId: "T",
      gen: 0,
      result: null,
      awaiting: { reason: "subflow", details: { childRunId: "c" } },
    });
    assert.equal((await worker.post(`/v1/runs/${id}/resume`, { action: "x", nodeId: "T" })).status, 409);
    const resumed = await worker.post(`/v1/runs/${id}/resume`, { action: "x", nodeId: "W" });
    assert.deepEqual(resumed.body.resumed, [{ nodeId: "W", gen: 0 }]);
    assert.equal("_resume.output" in (await view(id)).context, false);
  });

  test("a second awaiting commit updates the record and keeps a delivered resolution", async () => {
    const id = await started({ S: {} }, ["S"]);
    await commit(id, {
      nodeId: "S",
      gen: 0,
      result: null,
      awaiting: { reason: "webhook", hookToken: "h".repeat(22), details: { a: 1 } },
    });
    assert.equal((await view(id)).status, "running");
    await worker.post(`/v1/runs/${id}/resume`, { action: null, output: 5, nodeId: "S" });
    await commit(id, {
      nodeId: "S",
      gen: 0,
      result: null,
      awaiting: { reason: "webhook", external: true, details: { a: 2 } },
    });
    const run = await view(id);
    assert.deepEqual(run.awaiting.S.details, { a: 2 });
    assert.deepEqual(run.awaiting.S.resolution, { output: 5, action: null });
    assert.equal(run.status, "running");
  });

  test("a non-external awaiting node (a running subflow) keeps the run running", async () => {
    const id = await started({ S: {} }, ["S"]);
    const reply = await commit(id, {
      nodeId: "S",
      gen: 0,
      result: null,
      awaiting: { reason: "subflow", details: { childRunId: "c1" } },
    });
    assert.equal(reply.body.status, "running");
  });
});

describe("attempts, fail, cancel and the terminal latch", () => {
  test("attempts keep the maximum, the last error, drop the lease and delay the next claim", async () => {
    const id = await started({ A: {} }, ["A"]);
    await claim(id, "A", { token: "one" });
    const recorded = await worker.post(`/v1/runs/${id}/attempts`, {
      nodeId: "A",
      gen: 0,
      token: "one",
      attempts: 2,
      error: "boom",
      release: true,
    });
    assert.deepEqual(recorded.body, { status: "running", reason: null });
    await worker.post(`/v1/runs/${id}/attempts`, { nodeId: "A", gen: 0, token: "one", attempts: 1, error: "again" });
    const next = await claim(id, "A", { token: "two" });
    assert.deepEqual([next.state, next.attempts, next.lastError], ["run", 2, "again"]);
    await worker.post(`/v1/runs/${id}/attempts`, {
      nodeId: "A",
      gen: 0,
      token: "two",
      attempts: 3,
      error: "x",
      release: true,
      retryAfterMs: 60_000,
    });
    const busy = await claim(id, "A", { token: "three" });
    assert.equal(busy.state, "busy");
    assert.ok(busy.retryAfterMs > 59_000);
    assert.equal((await view(id)).nodes.A.attempts, 3);
  });

  test("attempts on a pair that is not released change nothing", async () => {
    const id = await started({ A: { succs: ["B"] }, B: {} }, ["A"]);
    const reply = await worker.post(`/v1/runs/${id}/attempts`, { nodeId: "B", gen: 0, token: "t", attempts: 4 });
    assert.deepEqual(reply.body, { status: "running", reason: null });
    assert.equal((await view(id)).nodes.B.attempts, 0);
  });

  test("fail latches: the first terminal state wins and later commits release nothing", async () => {
    const id = await started({ A: { succs: ["C"] }, B: { succs: ["C"] }, C: {} }, ["A", "B"]);
    const failed = await worker.post(`/v1/runs/${id}/fail`, {
      reason: "Node 'A' execution failed: boom",
      nodeId: "A",
      gen: 0,
    });
    assert.deepEqual(failed.body, { status: "failed", reason: "Node 'A' execution failed: boom" });
    assert.equal((await view(id)).nodes.A.state, "failed");
    assert.deepEqual((await worker.post(`/v1/runs/${id}/fail`, { reason: "second" })).body, failed.body);
    assert.deepEqual((await worker.post(`/v1/runs/${id}/cancel`, {})).body, failed.body);
    const late = await commit(id, { nodeId: "B", gen: 0, arrivals: ["C"] });
    assert.deepEqual(late.body, { status: "failed", released: [], duplicate: false, stale: false });
    assert.equal((await claim(id, "C")).state, "terminal");
    assert.equal((await worker.post(`/v1/runs/${id}/resume`, { action: "x" })).status, 409);
  });

  test("failing an awaiting node takes it out of the awaiting keys", async () => {
    const id = await started({ W: {} }, ["W"]);
    await commit(id, {
      nodeId: "W",
      gen: 0,
      result: null,
      awaiting: { reason: "subflow", details: { childRunId: "c" }, external: true },
    });
    await worker.post(`/v1/runs/${id}/fail`, { reason: "child failed", nodeId: "W", gen: 0 });
    const run = await view(id);
    assert.deepEqual(run.awaiting, {});
    assert.equal("_awaitingNodeIds" in run.context, false);
    assert.equal(run.nodes.W.state, "failed");
  });

  test("cancel defaults its reason; a completed run stays completed", async () => {
    const cancelled = await started({ A: {} }, ["A"]);
    assert.deepEqual((await worker.post(`/v1/runs/${cancelled}/cancel`, { reason: null })).body, {
      status: "cancelled",
      reason: "cancelled",
    });
    const completed = await started({ A: {} }, []);
    assert.deepEqual((await worker.post(`/v1/runs/${completed}/fail`, { reason: "late" })).body, {
      status: "completed",
      reason: null,
    });
  });

  test("a child run notifies its parent's node when it settles", async () => {
    const parent = { runId: "parent-run", blueprintId: "outer", nodeId: "sub", gen: 2 };
    const id = await started({ A: {} }, ["A"], { parent });
    assert.deepEqual((await view(id)).parent, parent);
    await commit(id, { nodeId: "A", gen: 0 });
    const notified = await eventually(async () => {
      const bodies = (await worker.received())
        .map((message) => message.body)
        .filter((body) => body.runId === "parent-run");
      return bodies.length > 0 ? bodies : null;
    }, "the parent notification");
    assert.deepEqual(notified, [{ runId: "parent-run", blueprintId: "outer", nodeId: "sub", gen: 2 }]);
  });
});

describe("reconcile", () => {
  test("requeues pending pairs without a live lease and resolvable awaiting pairs", async () => {
    const id = await started({ A: {}, B: {}, W: {}, T: {} }, ["A", "B", "W", "T"]);
    await claim(id, "A", { token: "live", leaseMs: 600_000 });
    await commit(id, { nodeId: "W", gen: 0, result: null, awaiting: { reason: "external_event", external: true } });
    await commit(id, {
      nodeId: "T",
      gen: 0,
      result: null,
      awaiting: { reason: "timer", wakeAtMs: Date.now() + 600_000 },
    });
    const reply = await worker.post(`/v1/runs/${id}/reconcile`);
    assert.deepEqual(reply.body, {
      status: "running",
      requeued: [
        { nodeId: "B", gen: 0 },
        { nodeId: "T", gen: 0 },
      ],
    });
  });

  test("a terminal run requeues nothing", async () => {
    const id = await started({ A: {} }, ["A"]);
    await worker.post(`/v1/runs/${id}/cancel`, {});
    assert.deepEqual((await worker.post(`/v1/runs/${id}/reconcile`)).body, { status: "cancelled", requeued: [] });
  });
});

describe("ops", () => {
  test("the coordination store and context operations", async () => {
    const id = await started({ A: {} }, ["A"]);
    const ops = [
      { op: "setIfNotExist", key: "lock", value: "me", ttlSeconds: 60 },
      { op: "setIfNotExist", key: "lock", value: "you" },
      { op: "get", key: "lock" },
      { op: "increment", key: "n" },
      { op: "increment", key: "n", ttlSeconds: 5 },
      { op: "extendTTL", key: "n", ttlSeconds: 100 },
      { op: "extendTTL", key: "missing" },
      { op: "delete", key: "lock" },
      { op: "delete", key: "lock" },
      { op: "get", key: "lock" },
      { op: "context.set", key: "c", value: { deep: [1] } },
      { op: "context.get", key: "c" },
      { op: "context.has", key: "c" },
      { op: "context.delete", key: "c" },
      { op: "context.has", key: "c" },
      { op: "context.get", key: "c" },
      { op: "context.toJSON" },
    ];
    const reply = await worker.post(`/v1/runs/${id}/ops`, { ops });
    assert.deepEqual(reply.body.results, [
      true,
      false,
      "me",
      1,
      2,
      true,
      false,
      true,
      false,
      null,
      true,
      { deep: [1] },
      true,
      true,
      false,
      null,
      { blueprintId: "bp", blueprintVersion: null },
    ]);
  });

  test("a failing op rolls back the whole call", async () => {
    const id = await started({ A: {} }, ["A"]);
    await worker.post(`/v1/runs/${id}/ops`, { ops: [{ op: "setIfNotExist", key: "text", value: "abc" }] });
    const reply = await worker.post(`/v1/runs/${id}/ops`, {
      ops: [
        { op: "context.set", key: "x", value: 1 },
        { op: "increment", key: "text" },
      ],
    });
    assert.deepEqual([reply.status, reply.body.error.field], [400, "key"]);
    const check = await worker.post(`/v1/runs/${id}/ops`, { ops: [{ op: "context.has", key: "x" }, { op: "get" }] });
    assert.deepEqual([check.status, check.body.error.field], [400, "key"]);
    assert.equal("x" in (await view(id)).context, false);
  });
});

describe("the size limit of one JSON value (§8)", () => {
  const LIMIT = 2_000_000;
  /** A string whose JSON text is `bytes` long (its two quotes included). */
  const serializedAs = (/** @type {number} */ bytes) => "x".repeat(bytes - 2);
  const OVERSIZED = serializedAs(LIMIT + 1);

  test("an op value of exactly the limit is accepted; one byte more is refused", async () => {
    const id = await started({ A: {} }, ["A"]);
    const fits = await worker.post(`/v1/runs/${id}/ops`, {
      ops: [{ op: "get", key: "k", value: serializedAs(LIMIT) }],
    });
    assert.deepEqual([fits.status, fits.body.results], [200, [null]]);
    const over = await worker.post(`/v1/runs/${id}/ops`, { ops: [{ op: "get", key: "k", value: OVERSIZED }] });
    assert.deepEqual([over.status, over.body.error.field], [400, "ops[0].value"]);
  });

  const OP_NAMES = [
    "get",
    "setIfNotExist",
    "increment",
    "extendTTL",
    "delete",
    "context.get",
    "context.has",
    "context.set",
    "context.delete",
    "context.toJSON",
  ];
  for (const name of OP_NAMES) {
    test(`an oversized value in ${name} is refused with its JSON path, even where it is not stored`, async () => {
      const id = await started({ A: {} }, ["A"]);
      await worker.post(`/v1/runs/${id}/ops`, { ops: [{ op: "setIfNotExist", key: "k", value: 1 }] });
      const reply = await worker.post(`/v1/runs/${id}/ops`, {
        ops: [
          { op: "get", key: "k" },
          { op: name, key: "k", value: OVERSIZED },
        ],
      });
      assert.deepEqual(
        [reply.status, reply.body.error.code, reply.body.error.field],
        [400, "bad_request", "ops[1].value"],
      );
    });
  }

  test("the first failing op names the error: each value is checked as its op applies", async () => {
    const id = await started({ A: {} }, ["A"]);
    const keyFirst = await worker.post(`/v1/runs/${id}/ops`, {
      ops: [{ op: "get" }, { op: "context.set", key: "k", value: OVERSIZED }],
    });
    assert.deepEqual([keyFirst.status, keyFirst.body.error.field], [400, "key"]);
    const valueFirst = await worker.post(`/v1/runs/${id}/ops`, {
      ops: [{ op: "context.get", key: "k", value: OVERSIZED }, { op: "get" }],
    });
    assert.deepEqual([valueFirst.status, valueFirst.body.error.field], [400, "ops[0].value"]);
  });

  test("run existence comes first: an oversized op value for a missing run answers 404", async () => {
    const reply = await worker.post(`/v1/runs/${runId("missing")}/ops`, {
      ops: [{ op: "get", key: "k", value: OVERSIZED }],
    });
    assert.equal(reply.status, 404);
  });

  test("a refused op value rolls back the ops before it", async () => {
    const id = await started({ A: {} }, ["A"]);
    const reply = await worker.post(`/v1/runs/${id}/ops`, {
      ops: [
        { op: "context.set", key: "x", value: 1 },
        { op: "setIfNotExist", key: "lock", value: "me" },
        { op: "get", key: "lock", value: OVERSIZED },
      ],
    });
    assert.deepEqual([reply.status, reply.body.error.field], [400, "ops[2].value"]);
    const check = await worker.post(`/v1/runs/${id}/ops`, { ops: [{ op: "get", key: "lock" }] });
    assert.deepEqual(check.body.results, [null]);
    assert.equal("x" in (await view(id)).context, false);
  });

  test("an oversized awaiting result is refused before the node awaits", async () => {
    const id = await started({ A: {} }, ["A"]);
    const reply = await commit(id, {
      nodeId: "A",
      gen: 0,
      result: null,
      writes: { w: 1 },
      awaiting: { reason: "timer", wakeAtMs: Date.now(), result: { output: OVERSIZED, action: null } },
    });
    assert.deepEqual([reply.status, reply.body.error.field], [400, "awaiting.result.output"]);
    const run = await view(id);
    assert.deepEqual(
      [run.status, run.nodes.A.state, run.awaiting, "w" in run.context],
      ["running", "released", {}, false],
    );
    const fits = await commit(id, {
      nodeId: "A",
      gen: 0,
      result: null,
      awaiting: { reason: "timer", result: { output: serializedAs(LIMIT), action: null } },
    });
    assert.equal(fits.status, 200, JSON.stringify(fits.body));
  });

  test("a retried commit of a completed node answers as a duplicate before any value is checked", async () => {
    const id = await started({ A: {} }, ["A"]);
    assert.equal((await commit(id, { nodeId: "A", gen: 0 })).status, 200);
    const again = await commit(id, {
      nodeId: "A",
      gen: 0,
      result: null,
      awaiting: { reason: "timer", result: { output: OVERSIZED, action: null } },
    });
    assert.deepEqual([again.status, again.body.duplicate], [200, true]);
  });

  /** A run whose node W awaits an external event. */
  async function waiting() {
    const id = await started({ W: {} }, ["W"]);
    const reply = await commit(id, {
      nodeId: "W",
      gen: 0,
      result: null,
      awaiting: { reason: "external_event", details: {}, external: true },
    });
    assert.equal(reply.body.status, "awaiting");
    return id;
  }

  test("a resume output of exactly the limit is accepted", async () => {
    const id = await waiting();
    const output = serializedAs(LIMIT);
    const reply = await worker.post(`/v1/runs/${id}/resume`, { action: "go", output });
    assert.equal(reply.status, 200, JSON.stringify(reply.body));
    assert.equal((await view(id)).context["_resume.output"], output);
  });

  test("a resume output one byte over the limit is refused as output, changing nothing", async () => {
    const id = await waiting();
    const before = await view(id);
    const reply = await worker.post(`/v1/runs/${id}/resume`, { action: "go", output: OVERSIZED });
    assert.deepEqual([reply.status, reply.body.error.code, reply.body.error.field], [400, "bad_request", "output"]);
    assert.deepEqual(await view(id), before);
    const resumed = await worker.post(`/v1/runs/${id}/resume`, { action: "go" });
    assert.deepEqual(resumed.body.resumed, [{ nodeId: "W", gen: 0 }]);
  });

  test("a resume that finds no target is a conflict before its output is measured", async () => {
    const id = await waiting();
    await worker.post(`/v1/runs/${id}/cancel`, {});
    const reply = await worker.post(`/v1/runs/${id}/resume`, { action: "go", output: OVERSIZED });
    assert.equal(reply.status, 409);
  });

  /**
   * Details whose `_awaitingDetails` entry `{node: details}` alone is `bytes` long.
   * @param {string} node
   * @param {number} bytes
   */
  const detailsSerializedAs = (node, bytes) => {
    const overhead = JSON.stringify({ [node]: { k: "" } }).length;
    return { k: "x".repeat(bytes - overhead) };
  };

  /**
   * Commit `node` (gen 0) as awaiting an external event with `details`, writing `w`.
   * @param {string} id
   * @param {string} node
   * @param {Record<string, unknown>} details
   */
  const awaitWith = (id, node, details) =>
    commit(id, {
      nodeId: node,
      gen: 0,
      result: null,
      writes: { w: node },
      awaiting: { reason: "external_event", details, external: true },
    });

  test("awaiting details of exactly the limit are accepted", async () => {
    const id = await started({ W: {} }, ["W"]);
    const details = detailsSerializedAs("W", LIMIT);
    const reply = await awaitWith(id, "W", details);
    assert.equal(reply.status, 200, JSON.stringify(reply.body));
    const stored = (await view(id)).context["_awaitingDetails"];
    assert.deepEqual(stored, { W: details });
    assert.equal(JSON.stringify(stored).length, LIMIT);
  });

  test("awaiting details one byte over the limit are refused as awaiting.details, changing nothing", async () => {
    const id = await started({ W: {} }, ["W"]);
    const before = await view(id);
    const reply = await awaitWith(id, "W", detailsSerializedAs("W", LIMIT + 1));
    assert.deepEqual(
      [reply.status, reply.body.error.code, reply.body.error.field],
      [400, "bad_request", "awaiting.details"],
    );
    assert.deepEqual(await view(id), before);
  });

  test("the limit applies to the details of every awaiting node together", async () => {
    const id = await started({ P: {}, Q: {} }, ["P", "Q"]);
    const half = LIMIT / 2;
    assert.equal((await awaitWith(id, "P", detailsSerializedAs("P", half))).status, 200);
    const before = await view(id);
    // {P} and {Q} merge into {P,Q}: one byte less than the two apart (two braces, one comma).
    const over = await awaitWith(id, "Q", detailsSerializedAs("Q", half + 2));
    assert.deepEqual([over.status, over.body.error.field], [400, "awaiting.details"]);
    assert.deepEqual(await view(id), before);
    assert.equal((await awaitWith(id, "Q", detailsSerializedAs("Q", half + 1))).status, 200);
    const run = await view(id);
    assert.deepEqual(Object.keys(run.awaiting), ["P", "Q"]);
    assert.equal(JSON.stringify(run.context["_awaitingDetails"]).length, LIMIT);
  });

  test("an awaiting node that commits again counts only its new details", async () => {
    const id = await started({ P: {}, Q: {} }, ["P", "Q"]);
    const half = LIMIT / 2;
    await awaitWith(id, "P", detailsSerializedAs("P", half));
    await awaitWith(id, "Q", detailsSerializedAs("Q", half));
    assert.equal((await awaitWith(id, "Q", detailsSerializedAs("Q", half + 1))).status, 200);
    const over = await awaitWith(id, "Q", detailsSerializedAs("Q", half + 2));
    assert.deepEqual([over.status, over.body.error.field], [400, "awaiting.details"]);
  });

  test("a completed awaiting node frees its share of the limit", async () => {
    const id = await started({ P: {}, Q: {} }, ["P", "Q"]);
    await awaitWith(id, "P", detailsSerializedAs("P", LIMIT));
    assert.equal((await commit(id, { nodeId: "P", gen: 0 })).status, 200);
    assert.equal((await awaitWith(id, "Q", detailsSerializedAs("Q", LIMIT))).status, 200);
    assert.deepEqual(Object.keys((await view(id)).context["_awaitingDetails"]), ["Q"]);
  });
});
