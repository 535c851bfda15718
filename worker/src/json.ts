/** JSON values, and response values that may embed pre-serialized JSON text. */

export type Json = null | boolean | number | string | Json[] | JsonObject;

export interface JsonObject {
  [key: string]: Json;
}

/** JSON text that is already serialized (a stored context value, say): inserted verbatim. */
export class RawJson {
  constructor(readonly text: string) {}
}

/** A response value: JSON, raw JSON text, arrays, records with fixed keys, or maps with arbitrary keys. */
export type WireValue =
  | Json
  | RawJson
  | undefined
  | readonly WireValue[]
  | ReadonlyMap<string, WireValue>
  | { readonly [key: string]: WireValue };

export function isJsonObject(value: Json | undefined): value is JsonObject {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/** Serialize a response value; `undefined` members of records are left out, as in JSON.stringify. */
export function toJsonText(value: WireValue): string {
  if (value instanceof RawJson) {
    return value.text;
  }
  if (value instanceof Map) {
    const parts: string[] = [];
    for (const [key, item] of value as ReadonlyMap<string, WireValue>) {
      parts.push(`${JSON.stringify(key)}:${toJsonText(item ?? null)}`);
    }
    return `{${parts.join(",")}}`;
  }
  if (Array.isArray(value)) {
    return `[${(value as readonly WireValue[]).map((item) => toJsonText(item ?? null)).join(",")}]`;
  }
  if (typeof value === "object" && value !== null) {
    const parts: string[] = [];
    for (const key of Object.keys(value)) {
      const item = (value as { readonly [key: string]: WireValue })[key];
      if (item !== undefined) {
        parts.push(`${JSON.stringify(key)}:${toJsonText(item)}`);
      }
    }
    return `{${parts.join(",")}}`;
  }
  return JSON.stringify(value ?? null);
}

/** The number of UTF-8 bytes of a string. */
export function utf8Length(text: string): number {
  return new TextEncoder().encode(text).byteLength;
}

/** A string as Python's repr() would quote it, for messages that match the reference store. */
export function quote(text: string): string {
  if (!text.includes("'")) {
    return `'${text}'`;
  }
  if (!text.includes('"')) {
    return `"${text}"`;
  }
  return `'${text.replaceAll("'", "\\'")}'`;
}
