// @ts-check
/** POST /v1/hooks/{runId}/{nodeId}/{token}: the token is the credential; replays are conflicts. */

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { Coordinator, runId, startBody, startCoordinator } from "./support/harness.mjs";

/** @type {Coordinator} */
let worker;
const TOKEN = "hk_4f9d2c8e1b7a6f3e5d0c9b8a7f6e5d4c";

before(async () => {
  worker = await startCoordinator();
});

after(() => worker.dispose());

/**
 * A run whose node awaits a webhook with TOKEN.
 * @param {string} [node]
 */
async function awaitingHook(node = "H") {
  const id = runId("hook");
  await worker.post(`/v1/runs/${id}/start`, startBody({ [node]: { succs: ["N"] }, N: {} }, [node]));
  const reply = await worker.post(`/v1/runs/${id}/commit`, {
    nodeId: node,
    gen: 0,
    token: "t",
    result: null,
    awaiting: { reason: "webhook", details: { url: "x" }, external: true, hookToken: TOKEN },
  });
  assert.equal(reply.body.status, "awaiting");
  return id;
}

/**
 * @param {string} id
 * @param {string} node
 * @param {string} token
 * @param {string} [body]
 */
function deliver(id, node, token, body = '{"paid": true}') {
  return worker.call("POST", `/v1/hooks/${id}/${encodeURIComponent(node)}/${encodeURIComponent(token)}`, undefined, {
    auth: null,
    rawBody: body,
  });
}

describe("webhooks", () => {
  test("a delivery resolves the node without the bearer secret; a replay is 409", async () => {
    const id = await awaitingHook();
    const reply = await deliver(id, "H", TOKEN);
    assert.deepEqual([reply.status, reply.body], [200, { status: "running", nodeId: "H" }]);
    const claim = await worker.post(`/v1/runs/${id}/claim`, { nodeId: "H", token: "t", leaseMs: 1000 });
    assert.deepEqual(claim.body.awaiting.resolution, { output: { paid: true }, action: null });
    assert.equal((await deliver(id, "H", TOKEN)).status, 409);
    await worker.post(`/v1/runs/${id}/commit`, {
      nodeId: "H",
      gen: 0,
      token: "t",
      result: { output: { paid: true } },
      arrivals: ["N"],
    });
    const replay = await deliver(id, "H", TOKEN);
    assert.deepEqual([replay.status, replay.body.error.code], [409, "conflict"]);
  });

  test("an empty body delivers null", async () => {
    const id = await awaitingHook();
    assert.equal((await deliver(id, "H", TOKEN, "")).status, 200);
    const run = (await worker.get(`/v1/runs/${id}`)).body;
    assert.deepEqual(run.awaiting.H.resolution, { output: null, action: null });
  });

  test("a wrong token, node or run, and a malformed run id, are the same 404", async () => {
    const id = await awaitingHook();
    const replies = await Promise.all([
      deliver(id, "H", `${TOKEN}x`),
      deliver(id, "H", TOKEN.slice(0, -1)),
      deliver(id, "N", TOKEN),
      deliver(id, "Z", TOKEN),
      deliver("no-such-run", "H", TOKEN),
      deliver("-malformed", "H", TOKEN),
      deliver(id, "x".repeat(513), TOKEN),
    ]);
    for (const reply of replies) {
      assert.equal(reply.status, 404);
      assert.deepEqual(reply.body, replies[0]?.body);
    }
    assert.equal((await worker.get(`/v1/runs/${id}`)).body.awaiting.H.resolution, null);
  });

  test("node ids with reserved characters are percent-decoded", async () => {
    const id = await awaitingHook("pay/ment step");
    assert.equal((await deliver(id, "pay/ment step", TOKEN)).status, 200);
  });

  test("the hook token is stored only as its SHA-256", async () => {
    const id = await awaitingHook();
    const rows = await (await worker.probe(id)).rows("records");
    assert.ok(!JSON.stringify(rows).includes(TOKEN));
    const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(TOKEN));
    const hex = [...new Uint8Array(digest)].map((byte) => byte.toString(16).padStart(2, "0")).join("");
    assert.equal(rows.find((/** @type {any} */ row) => row.node === "H").hook_hash, hex);
  });

  test("a delivery to a terminal run is 409; malformed JSON is 400; GET is 405", async () => {
    const id = await awaitingHook();
    assert.equal((await deliver(id, "H", TOKEN, "{not json")).status, 400);
    const get = await worker.call("GET", `/v1/hooks/${id}/H/${TOKEN}`, undefined, { auth: null });
    assert.deepEqual([get.status, get.headers.get("allow")], [405, "POST"]);
    await worker.post(`/v1/runs/${id}/cancel`, {});
    assert.equal((await deliver(id, "H", TOKEN)).status, 409);
  });
});

describe("the size limit of a webhook body (§8)", () => {
  const LIMIT = 2_000_000;
  /** A JSON string body whose text is `bytes` long (its two quotes included). */
  const serializedAs = (/** @type {number} */ bytes) => JSON.stringify("x".repeat(bytes - 2));

  test("a body of exactly the limit is accepted", async () => {
    const id = await awaitingHook();
    const body = serializedAs(LIMIT);
    assert.equal((await deliver(id, "H", TOKEN, body)).status, 200);
    const run = (await worker.get(`/v1/runs/${id}`)).body;
    assert.equal(run.awaiting.H.resolution.output.length, LIMIT - 2);
  });

  test("a body one byte over the limit is refused as body, changing nothing", async () => {
    const id = await awaitingHook();
    const before = (await worker.get(`/v1/runs/${id}`)).body;
    const reply = await deliver(id, "H", TOKEN, serializedAs(LIMIT + 1));
    assert.deepEqual([reply.status, reply.body.error.code, reply.body.error.field], [400, "bad_request", "body"]);
    assert.deepEqual((await worker.get(`/v1/runs/${id}`)).body, before);
    assert.equal((await deliver(id, "H", TOKEN)).status, 200);
  });

  test("the size is measured as compact JSON, whatever whitespace the body was sent with", async () => {
    const id = await awaitingHook();
    const padded = ` ${serializedAs(LIMIT)}${" ".repeat(1000)}`;
    assert.equal((await deliver(id, "H", TOKEN, padded)).status, 200);
  });

  test("a wrong token is 404 and a replay 409 before the body is measured", async () => {
    const id = await awaitingHook();
    const oversized = serializedAs(LIMIT + 1);
    assert.equal((await deliver(id, "H", `${TOKEN}x`, oversized)).status, 404);
    assert.equal((await deliver(id, "H", TOKEN)).status, 200);
    assert.equal((await deliver(id, "H", TOKEN, oversized)).status, 409);
  });
});
