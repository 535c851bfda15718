/**
 * The Worker's fetch handler. Checks run in the order of docs/protocol.md §1.1: size (413) →
 * route and auth (401, then 404/405) → JSON and schema (400) → the run's object (404/409).
 */

import { runBatch } from "./batch";
import { buildCall } from "./calls";
import { type Env, settings } from "./env";
import { ApiError, BadRequest, ConfigError, Internal, MethodNotAllowed, NotFound, Unauthorized } from "./errors";
import { isRunId } from "./fields";
import { errorResponse, jsonResponse, parseJson, readBody } from "./http";
import { type Json, toJsonText } from "./json";
import { listRuns, parseListQuery } from "./listing";
import { MAX_BODY_BYTES, MAX_NODE_ID_CHARS } from "./protocol";
import { matchRoute, type Route } from "./routes";
import { callRun } from "./runs";
import { sameSecret, sha256Hex } from "./secrets";
import { VERSION } from "./version";

const BEARER = /^Bearer +(\S+) *$/i;

async function authorized(request: Request, env: Env): Promise<boolean> {
  const match = BEARER.exec(request.headers.get("authorization") ?? "");
  const secret = env.SECRET ?? "";
  if (secret === "") {
    console.error("the Worker has no SECRET: set it with `wrangler secret put SECRET` (or .dev.vars locally)");
  }
  return match?.[1] !== undefined && (await sameSecret(match[1], secret));
}

function replyResponse(reply: { status: number; body: string }): Response {
  return jsonResponse(reply.status, reply.body);
}

async function runRoute(
  env: Env,
  runId: string | null,
  verb: Extract<Route, { name: "run" }>["verb"],
  body: Uint8Array,
): Promise<Response> {
  if (runId === null || !isRunId(runId)) {
    throw new BadRequest("the run id in the path is malformed", "runId");
  }
  const call = await buildCall(verb, verb === "get" ? {} : parseJson(body, {}));
  const [reply] = await callRun(env, runId, [call]);
  if (reply === undefined) {
    throw new Internal("the run gave no answer");
  }
  return replyResponse(reply);
}

async function hookRoute(env: Env, route: Extract<Route, { name: "hook" }>, body: Uint8Array): Promise<Response> {
  const payload: Json = parseJson(body, null);
  const { runId, nodeId, token } = route;
  if (
    runId === null ||
    nodeId === null ||
    token === null ||
    !isRunId(runId) ||
    [...nodeId].length > MAX_NODE_ID_CHARS
  ) {
    throw new NotFound("no such webhook");
  }
  const tokenHash = await sha256Hex(token);
  const [reply] = await callRun(env, runId, [{ op: "hook", delivery: { nodeId, tokenHash, body: payload } }]);
  if (reply === undefined) {
    throw new Internal("the run gave no answer");
  }
  return replyResponse(reply);
}

async function dispatch(request: Request, env: Env, route: Route, body: Uint8Array): Promise<Response> {
  const config = settings(env);
  switch (route.name) {
    case "health":
      return jsonResponse(200, toJsonText({ ok: true, version: VERSION, store: "worker" }));
    case "list": {
      const query = parseListQuery(new URL(request.url).searchParams);
      return jsonResponse(200, await listRuns(env.STATUS, config.statusKeyPrefix, query, Date.now()));
    }
    case "batch":
      return jsonResponse(200, await runBatch(env, parseJson(body, {})));
    case "run":
      return runRoute(env, route.runId, route.verb, body);
    case "hook":
      return hookRoute(env, route, body);
  }
}

export async function handleRequest(request: Request, env: Env): Promise<Response> {
  try {
    const body = await readBody(request, MAX_BODY_BYTES);
    const match = matchRoute(new URL(request.url).pathname);
    if ((match === null || match.bearer) && !(await authorized(request, env))) {
      throw new Unauthorized();
    }
    if (match === null) {
      throw new NotFound("no such path");
    }
    if (!match.methods.includes(request.method)) {
      throw new MethodNotAllowed(match.methods);
    }
    return await dispatch(request, env, match.route, body);
  } catch (error) {
    if (error instanceof ApiError) {
      return errorResponse(error);
    }
    if (error instanceof ConfigError) {
      console.error(error.message);
      return errorResponse(new Internal(`the Worker is misconfigured: ${error.message}`));
    }
    console.error("unexpected error", error);
    return errorResponse(new Internal());
  }
}
