/** Reading request bodies within the size limit, and JSON responses. */

import { ApiError, BadRequest, MethodNotAllowed, PayloadTooLarge } from "./errors";
import type { Json } from "./json";

const JSON_HEADERS = { "content-type": "application/json" };

export function jsonResponse(status: number, bodyText: string): Response {
  return new Response(bodyText, { status, headers: JSON_HEADERS });
}

export function errorResponse(error: ApiError): Response {
  const headers = new Headers(JSON_HEADERS);
  if (error instanceof MethodNotAllowed) {
    headers.set("allow", error.allow.join(", "));
  }
  return new Response(JSON.stringify(error.body()), { status: error.httpStatus, headers });
}

/**
 * A refused body is still read (and discarded) up to this many bytes, so that the client, which
 * is still sending, gets the 413 instead of a reset connection.
 */
const DRAIN_LIMIT = 32 * 1024 * 1024;

async function refuse(
  reader: ReadableStreamDefaultReader<Uint8Array>,
  alreadyRead: number,
  limit: number,
): Promise<never> {
  let drained = alreadyRead;
  for (let chunk = await reader.read(); !chunk.done && drained <= DRAIN_LIMIT; chunk = await reader.read()) {
    drained += chunk.value.byteLength;
  }
  await reader.cancel();
  throw new PayloadTooLarge(limit);
}

/** The whole body, refused with 413 once it is known to exceed `limit` bytes. */
export async function readBody(request: Request, limit: number): Promise<Uint8Array> {
  if (request.body === null) {
    return new Uint8Array(0);
  }
  const reader = request.body.getReader();
  if (Number(request.headers.get("content-length") ?? "0") > limit) {
    return refuse(reader, 0, limit);
  }
  const chunks: Uint8Array[] = [];
  let total = 0;
  for (let chunk = await reader.read(); !chunk.done; chunk = await reader.read()) {
    total += chunk.value.byteLength;
    if (total > limit) {
      return refuse(reader, total, limit);
    }
    chunks.push(chunk.value);
  }
  const body = new Uint8Array(total);
  let offset = 0;
  for (const chunk of chunks) {
    body.set(chunk, offset);
    offset += chunk.byteLength;
  }
  return body;
}

/** Parse a JSON body; an empty body is `fallback`. */
export function parseJson(body: Uint8Array, fallback: Json): Json {
  if (body.byteLength === 0) {
    return fallback;
  }
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true, ignoreBOM: false }).decode(body);
  } catch {
    throw new BadRequest("the body is not valid UTF-8");
  }
  try {
    return JSON.parse(text) as Json;
  } catch (error) {
    throw new BadRequest(`malformed JSON: ${error instanceof Error ? error.message : String(error)}`);
  }
}
