// @ts-check
/** The outbox: sent after the transaction, split per send, deleted once sent, re-sent by the alarm. */

import assert from "node:assert/strict";
import { after, before, beforeEach, describe, test } from "node:test";
import { Coordinator, eventually, runId, startBody, startCoordinator } from "./support/harness.mjs";
import { FakeQueue } from "./support/fake-queue.mjs";

const queue = new FakeQueue();
/** @type {Coordinator} */
let worker;

before(async () => {
  const url = await queue.start();
  worker = await startCoordinator({
    vars: { QUEUE_REST_URL: url, QUEUE_REST_TOKEN: "queue-token", OUTBOX_RETRY_SECONDS: "0.2" },
  });
});

after(async () => {
  await worker.dispose();
  await queue.stop();
});

beforeEach(() => {
  queue.refuse = 0;
});

/** @param {string} id */
function acceptedFor(id) {
  return queue.accepted().filter((message) => message.body.runId === id);
}

describe("sending through the queue REST endpoint", () => {
  test("jobs are sent as JSON messages with the token, and their rows deleted", async () => {
    const id = runId("rest");
    await worker.post(`/v1/runs/${id}/start`, startBody({ A: {}, B: {} }, ["A", "B"]));
    assert.deepEqual(acceptedFor(id), [
      { body: { runId: id, blueprintId: "bp", nodeId: "A", gen: 0 }, content_type: "json", delay_seconds: 0 },
      { body: { runId: id, blueprintId: "bp", nodeId: "B", gen: 0 }, content_type: "json", delay_seconds: 0 },
    ]);
    assert.equal(queue.calls.at(-1)?.authorization, "Bearer queue-token");
    assert.deepEqual(await (await worker.probe(id)).rows("outbox"), []);
  });

  test("a large release is split into sends of at most 100 messages and 256 KB", async () => {
    const id = runId("split");
    // Ids at their length limits (§8) in 4-byte characters: about 4 KB a job, so 100 jobs exceed 256 KB.
    const wide = "\u{1D11E}";
    const nodes = Array.from({ length: 250 }, (_, index) => `${wide.repeat(508)}${index}`);
    const topology = Object.fromEntries(nodes.map((node) => [node, {}]));
    const before = queue.calls.length;
    const reply = await worker.post(`/v1/runs/${id}/start`, {
      ...startBody(topology, nodes),
      blueprintId: wide.repeat(512),
    });
    assert.equal(reply.status, 200);
    const calls = queue.calls.slice(before);
    assert.ok(calls.length >= 3);
    for (const call of calls) {
      assert.ok(call.messages.length <= 100);
      const bodies = call.messages.reduce((sum, message) => sum + Buffer.byteLength(JSON.stringify(message.body)), 0);
      assert.ok(bodies <= 256_000, `a send carried ${bodies} bytes of bodies`);
    }
    assert.deepEqual(
      acceptedFor(id).map((message) => message.body.nodeId),
      nodes,
    );
  });

  test("after a refused send the call still succeeds, the rows stay, and the alarm re-sends them", async () => {
    const id = runId("retry");
    queue.refuse = 2;
    const reply = await worker.post(`/v1/runs/${id}/start`, startBody({ A: {} }, ["A"]));
    assert.equal(reply.status, 200);
    const probe = await worker.probe(id);
    assert.equal(acceptedFor(id).length, 0);
    assert.equal((await probe.rows("outbox")).length, 1);
    assert.ok((await probe.alarmAt()) !== null, "an alarm is set to retry");
    await eventually(async () => acceptedFor(id).length === 1, "the alarm to re-send the job");
    await eventually(async () => (await probe.rows("outbox")).length === 0, "the sent row to be deleted");
    assert.deepEqual(acceptedFor(id)[0]?.body, { runId: id, blueprintId: "bp", nodeId: "A", gen: 0 });
    assert.equal((await probe.rows("delivery"))[0].failures, 0);
  });

  test("a retry delay becomes delay_seconds, rounded up", async () => {
    const id = runId("delay");
    await worker.post(`/v1/runs/${id}/start`, startBody({ A: {} }, ["A"]));
    await worker.post(`/v1/runs/${id}/attempts`, { nodeId: "A", gen: 0, token: "t", attempts: 1, retryAfterMs: 2500 });
    assert.equal(acceptedFor(id).at(-1)?.delay_seconds, 3);
  });
});

describe("timers", () => {
  test("a timer schedules its job at the wake time, chains past 12 h, and resolves when due", async () => {
    const id = runId("timer");
    await worker.post(`/v1/runs/${id}/start`, startBody({ T: { succs: ["N"] }, L: {}, N: {} }, ["T", "L"]));
    const wakeAtMs = Date.now() + 5_000;
    const result = { output: "woke", action: null };
    await worker.post(`/v1/runs/${id}/commit`, {
      nodeId: "T",
      gen: 0,
      token: "t",
      result: null,
      awaiting: { reason: "timer", wakeAtMs, result },
    });
    const scheduled = acceptedFor(id).at(-1);
    assert.equal(scheduled?.body.nodeId, "T");
    assert.ok(scheduled.delay_seconds >= 4 && scheduled.delay_seconds <= 5);

    const early = await worker.post(`/v1/runs/${id}/claim`, { nodeId: "T", token: "t", leaseMs: 1000 });
    assert.deepEqual([early.body.state, early.body.awaiting.resolution], ["awaiting", null]);
    assert.equal(
      acceptedFor(id).filter((message) => message.body.nodeId === "T").length,
      2,
      "no second timer job while one is scheduled",
    );

    await worker.post(`/v1/runs/${id}/commit`, {
      nodeId: "L",
      gen: 0,
      token: "t",
      result: null,
      awaiting: { reason: "timer", wakeAtMs: Date.now() + 50 * 3600_000 },
    });
    assert.equal(acceptedFor(id).at(-1)?.delay_seconds, 43_200);

    const shortId = runId("timer");
    await worker.post(`/v1/runs/${shortId}/start`, startBody({ T: {} }, ["T"]));
    await worker.post(`/v1/runs/${shortId}/commit`, {
      nodeId: "T",
      gen: 0,
      token: "t",
      result: null,
      awaiting: { reason: "timer", wakeAtMs: Date.now() + 100, result },
    });
    await new Promise((resolve) => setTimeout(resolve, 150));
    const due = await worker.post(`/v1/runs/${shortId}/claim`, { nodeId: "T", token: "t", leaseMs: 1000 });
    assert.deepEqual(due.body.awaiting.resolution, result);
  });
});

describe("sending through the queue binding", () => {
  test("jobs reach the queue's consumer", async () => {
    const bound = await startCoordinator({ recordQueue: true });
    try {
      const id = runId("binding");
      await bound.post(`/v1/runs/${id}/start`, startBody({ A: {}, B: {} }, ["A", "B"]));
      const bodies = await eventually(async () => {
        const received = (await bound.received()).map((message) => message.body);
        return received.length >= 2 ? received : null;
      }, "the jobs at the consumer");
      assert.deepEqual(bodies.map((body) => body.nodeId).sort(), ["A", "B"]);
      assert.deepEqual(await (await bound.probe(id)).rows("outbox"), []);
    } finally {
      await bound.dispose();
    }
  });
});
