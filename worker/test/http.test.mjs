// @ts-check
/** The HTTP surface: auth on every route, size limits, routing, methods and schema errors. */

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { Coordinator, SECRET, runId, startBody, startCoordinator } from "./support/harness.mjs";

/** @type {Coordinator} */
let worker;
const RUN = runId("http");
const TOPOLOGY = { A: { succs: ["B"] }, B: {} };

before(async () => {
  worker = await startCoordinator();
  const started = await worker.post(`/v1/runs/${RUN}/start`, startBody(TOPOLOGY, ["A"]));
  assert.equal(started.status, 200);
});

after(() => worker.dispose());

/** Everything the run holds: its view and every table of its Durable Object. */
async function snapshot() {
  const probe = await worker.probe(RUN);
  const tables = ["meta", "topology", "records", "context", "coordination", "outbox", "dynamic_nodes"];
  const rows = await Promise.all(tables.map((table) => probe.rows(table)));
  return { view: (await worker.get(`/v1/runs/${RUN}`)).body, rows };
}

/**
 * @param {{ status: number, body: any, headers: Headers }} reply
 * @param {number} status
 * @param {string} code
 */
function assertError(reply, status, code) {
  assert.equal(reply.status, status);
  assert.equal(reply.headers.get("content-type"), "application/json");
  assert.equal(reply.body.error.code, code);
  assert.equal(typeof reply.body.error.message, "string");
}

const ROUTES = /** @type {const} */ ([
  ["GET", "/v1/health"],
  ["GET", "/v1/runs"],
  ["POST", "/v1/batch"],
  ["GET", `/v1/runs/${RUN}`],
  ...["start", "claim", "commit", "attempts", "fail", "resume", "cancel", "reconcile", "ops"].map(
    (verb) => /** @type {const} */ (["POST", `/v1/runs/${RUN}/${verb}`]),
  ),
]);

const BAD_AUTH = [
  ["no header", null],
  ["a wrong secret", `Bearer ${SECRET}x`],
  ["a prefix of the secret", `Bearer ${SECRET.slice(0, -1)}`],
  ["another scheme", `Basic ${SECRET}`],
  ["an empty bearer", "Bearer "],
  ["the bare secret", SECRET],
];

describe("authentication", () => {
  for (const [method, path] of ROUTES) {
    for (const [label, auth] of BAD_AUTH) {
      test(`${method} ${path} with ${label} is 401 and changes nothing`, async () => {
        const before = await snapshot();
        const body = method === "POST" ? { nodeId: "A", gen: 0, token: "t", leaseMs: 1000, reason: "x" } : undefined;
        const reply = await worker.call(method, path, body, { auth });
        assertError(reply, 401, "unauthorized");
        assert.deepEqual(await snapshot(), before);
      });
    }
  }

  test("an unauthenticated caller cannot tell an existing run from a missing one", async () => {
    const existing = await worker.call("GET", `/v1/runs/${RUN}`, undefined, { auth: null });
    const missing = await worker.call("GET", "/v1/runs/no-such-run", undefined, { auth: null });
    assert.equal(existing.status, 401);
    assert.deepEqual(existing.body, missing.body);
  });

  for (const path of [
    "/",
    "/v1",
    "/v1/nothing",
    `/v1/runs/${RUN}/nothing`,
    "/v2/health",
    "/v1/hooks/a/b",
    "/v1/runs/",
  ]) {
    test(`the unknown path ${path} is 401 without the secret and 404 with it, changing nothing`, async () => {
      const before = await snapshot();
      assertError(await worker.call("POST", path, {}, { auth: null }), 401, "unauthorized");
      assertError(await worker.call("GET", path, undefined, { auth: `Bearer wrong` }), 401, "unauthorized");
      assertError(await worker.call("GET", path), 404, "not_found");
      assertError(await worker.call("POST", path, { nodeId: "A", gen: 0, token: "t", result: null }), 404, "not_found");
      assert.deepEqual(await snapshot(), before);
    });
  }

  test("health answers with the implementation version", async () => {
    const reply = await worker.get("/v1/health");
    assert.equal(reply.status, 200);
    assert.deepEqual(reply.body, { ok: true, version: "0.1.0", store: "worker" });
  });
});

describe("size limit", () => {
  const tenMegabytes = "x".repeat(10 * 1024 * 1024);

  for (const [label, path, auth] of [
    ["an authenticated call", `/v1/runs/${RUN}/commit`, undefined],
    ["an unauthenticated call", `/v1/runs/${RUN}/commit`, null],
    ["an unknown path", "/v1/nothing", undefined],
    ["a webhook", `/v1/hooks/${RUN}/A/${"t".repeat(32)}`, null],
  ]) {
    test(`a 10 MB body to ${label} is 413 and changes nothing`, async () => {
      const before = await snapshot();
      const reply = await worker.call("POST", /** @type {string} */ (path), undefined, {
        auth: /** @type {string | null | undefined} */ (auth),
        rawBody: `{"nodeId":"A","gen":0,"token":"t","result":{"output":"${tenMegabytes}"}}`,
      });
      assertError(reply, 413, "payload_too_large");
      assert.deepEqual(await snapshot(), before);
    });
  }

  test("a streamed body without Content-Length is cut off at the limit with 413", async () => {
    const chunk = new TextEncoder().encode("x".repeat(1024 * 1024));
    let sent = 0;
    const stream = new ReadableStream({
      pull(controller) {
        if (sent === 6) {
          controller.close();
        } else {
          sent += 1;
          controller.enqueue(chunk);
        }
      },
    });
    const response = await fetch(new URL(`/v1/runs/${RUN}/commit`, worker.url), {
      method: "POST",
      headers: { authorization: `Bearer ${SECRET}` },
      body: stream,
      duplex: "half",
    });
    assert.equal(response.status, 413);
    assert.equal(/** @type {any} */ (await response.json()).error.code, "payload_too_large");
  });

  test("a body just under the limit is parsed", async () => {
    const filler = "y".repeat(4 * 1024 * 1024 - 200);
    const reply = await worker.call("POST", `/v1/runs/${RUN}/ops`, undefined, {
      rawBody: JSON.stringify({ ops: [{ op: "get", key: "k" }], pad: filler }),
    });
    assertError(reply, 400, "bad_request");
    assert.equal(reply.body.error.field, "pad");
  });
});

describe("methods", () => {
  for (const [method, path, allow] of [
    ["GET", `/v1/runs/${RUN}/claim`, "POST"],
    ["POST", "/v1/health", "GET"],
    ["PUT", "/v1/batch", "POST"],
    ["DELETE", `/v1/runs/${RUN}`, "GET"],
    ["POST", "/v1/runs", "GET"],
  ]) {
    test(`${method} ${path} is 405 with Allow: ${allow}`, async () => {
      const before = await snapshot();
      const reply = await worker.call(method, path, method === "GET" || method === "DELETE" ? undefined : {});
      assertError(reply, 405, "method_not_allowed");
      assert.equal(reply.headers.get("allow"), allow);
      assert.deepEqual(await snapshot(), before);
    });
  }

  test("a wrong method without the secret is 401, not 405", async () => {
    assertError(await worker.call("GET", `/v1/runs/${RUN}/claim`, undefined, { auth: null }), 401, "unauthorized");
  });
});

describe("request validation", () => {
  test("malformed JSON is 400 and changes nothing", async () => {
    const before = await snapshot();
    const reply = await worker.call("POST", `/v1/runs/${RUN}/commit`, undefined, {
      rawBody: '{"nodeId": "A", "gen": ',
    });
    assertError(reply, 400, "bad_request");
    assert.deepEqual(await snapshot(), before);
  });

  test("a body that is not a JSON object is 400", async () => {
    assertError(
      await worker.call("POST", `/v1/runs/${RUN}/claim`, undefined, { rawBody: "[1, 2]" }),
      400,
      "bad_request",
    );
    assertError(
      await worker.call("POST", `/v1/runs/${RUN}/claim`, undefined, { rawBody: '"text"' }),
      400,
      "bad_request",
    );
  });

  test("invalid UTF-8 is 400", async () => {
    const reply = await worker.call("POST", `/v1/runs/${RUN}/claim`, undefined, {
      rawBody: new Uint8Array([0x7b, 0xff, 0x7d]),
    });
    assertError(reply, 400, "bad_request");
  });

  const cases = [
    ["an unknown field", "claim", { nodeId: "A", token: "t", leaseMs: 10, extra: 1 }, "extra"],
    ["a missing field", "claim", { nodeId: "A", leaseMs: 10 }, "token"],
    ["a wrong type", "claim", { nodeId: "A", token: "t", leaseMs: "10" }, "leaseMs"],
    ["a lease over 12 h", "claim", { nodeId: "A", token: "t", leaseMs: 43_200_001 }, "leaseMs"],
    ["an empty node id", "claim", { nodeId: "", token: "t", leaseMs: 10 }, "nodeId"],
    ["a token over 200 characters", "claim", { nodeId: "A", token: "t".repeat(201), leaseMs: 10 }, "token"],
    ["a negative gen", "commit", { nodeId: "A", gen: -1, token: "t", result: null }, "gen"],
    ["a fractional gen", "commit", { nodeId: "A", gen: 0.5, token: "t", result: null }, "gen"],
    [
      "a nested unknown field",
      "commit",
      { nodeId: "A", gen: 0, token: "t", result: { output: 1, extra: 2 } },
      "result.extra",
    ],
    ["a bad list element", "commit", { nodeId: "A", gen: 0, token: "t", arrivals: ["B", 3] }, "arrivals[1]"],
    [
      "a short hook token",
      "commit",
      { nodeId: "A", gen: 0, token: "t", awaiting: { reason: "webhook", hookToken: "short" } },
      "awaiting.hookToken",
    ],
    [
      "an unknown awaiting reason",
      "commit",
      { nodeId: "A", gen: 0, token: "t", awaiting: { reason: "nap" } },
      "awaiting.reason",
    ],
    ["an empty fail reason", "fail", { reason: "" }, "reason"],
    ["a non-boolean release", "attempts", { nodeId: "A", gen: 0, token: "t", attempts: 1, release: "yes" }, "release"],
    ["no ops", "ops", { ops: [] }, "ops"],
    ["101 ops", "ops", { ops: Array.from({ length: 101 }, () => ({ op: "get", key: "k" })) }, "ops"],
    ["an unknown op", "ops", { ops: [{ op: "explode", key: "k" }] }, "ops[0].op"],
    ["a TTL of 0", "ops", { ops: [{ op: "setIfNotExist", key: "k", ttlSeconds: 0 }] }, "ops[0].ttlSeconds"],
    ["fields on reconcile", "reconcile", { force: true }, "force"],
    [
      "a bad topology successor type",
      "start",
      { blueprintId: "b", topology: { A: { succs: [1] } }, startNodes: [] },
      "topology.A.succs[0]",
    ],
    ["a bad join", "start", { blueprintId: "b", topology: { A: { join: "some" } }, startNodes: [] }, "topology.A.join"],
  ];
  for (const [label, verb, body, field] of cases) {
    test(`${label} is 400 naming ${field}`, async () => {
      const before = await snapshot();
      const reply = await worker.post(`/v1/runs/${RUN}/${verb}`, body);
      assertError(reply, 400, "bad_request");
      assert.equal(reply.body.error.field, field);
      assert.deepEqual(await snapshot(), before);
    });
  }

  for (const bad of ["-starts-with-dash", "a".repeat(129), "has%20space", "slash%2Finside", "bad%ZZ"]) {
    test(`the run id ${bad.slice(0, 20)} is 400 naming runId`, async () => {
      const reply = await worker.post(`/v1/runs/${bad}/claim`, { nodeId: "A", token: "t", leaseMs: 10 });
      assertError(reply, 400, "bad_request");
      assert.equal(reply.body.error.field, "runId");
    });
  }

  test("schema errors come before run existence", async () => {
    const reply = await worker.post("/v1/runs/no-such-run/claim", { nodeId: "A" });
    assertError(reply, 400, "bad_request");
  });

  test("a call for a missing run is 404", async () => {
    assertError(await worker.get("/v1/runs/no-such-run"), 404, "not_found");
    assertError(
      await worker.post("/v1/runs/no-such-run/claim", { nodeId: "A", token: "t", leaseMs: 10 }),
      404,
      "not_found",
    );
    assertError(await worker.post("/v1/runs/no-such-run/reconcile"), 404, "not_found");
  });

  test("a probe of a missing run stores nothing", async () => {
    await worker.post("/v1/runs/never-started/claim", { nodeId: "A", token: "t", leaseMs: 10 });
    const probe = await worker.probe("never-started");
    assert.equal(await probe.holdsRun(), false);
  });

  test("reconcile accepts an empty body", async () => {
    const reply = await worker.call("POST", `/v1/runs/${RUN}/reconcile`, undefined, { rawBody: "" });
    assert.equal(reply.status, 200);
  });
});
