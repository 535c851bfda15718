/** Reading typed fields out of a JSON object, with the JSON path of every violation. */

import { BadRequest } from "./errors";
import { isJsonObject, type Json, type JsonObject } from "./json";
import { MAX_NODE_ID_CHARS, MAX_TEXT_CHARS, RUN_ID_PATTERN } from "./protocol";

function childPath(path: string, key: string): string {
  return path === "" ? key : `${path}.${key}`;
}

function indexPath(path: string, index: number): string {
  return `${path}[${index}]`;
}

function describe(value: Json): string {
  if (value === null) {
    return "null";
  }
  return Array.isArray(value) ? "an array" : `a ${typeof value}`;
}

export function requireObject(value: Json | undefined, path: string): JsonObject {
  if (!isJsonObject(value)) {
    throw new BadRequest(`${path || "the body"} must be a JSON object, not ${describe(value ?? null)}`, path || null);
  }
  return value;
}

export function requireString(value: Json | undefined, path: string, min = 0, max = Infinity): string {
  if (typeof value !== "string") {
    throw new BadRequest(`${path} must be a string, not ${describe(value ?? null)}`, path);
  }
  const length = [...value].length;
  if (length < min || length > max) {
    const range = max === Infinity ? `at least ${min}` : `${min} to ${max}`;
    throw new BadRequest(`${path} must have ${range} characters`, path);
  }
  return value;
}

/**
 * A failure's reason or error message, cut to {@link MAX_TEXT_CHARS} characters (code points, as
 * the reference counts them): it comes from user code, and refusing it would fail the failure path.
 */
export function clipText(text: string): string {
  const characters = [...text];
  return characters.length > MAX_TEXT_CHARS ? characters.slice(0, MAX_TEXT_CHARS).join("") : text;
}

export function requireInt(value: Json | undefined, path: string, min: number, max = Number.MAX_SAFE_INTEGER): number {
  if (typeof value !== "number" || !Number.isSafeInteger(value)) {
    throw new BadRequest(`${path} must be an integer, not ${describe(value ?? null)}`, path);
  }
  if (value < min || value > max) {
    throw new BadRequest(`${path} must be between ${min} and ${max}`, path);
  }
  return value;
}

export function requireNodeId(value: Json | undefined, path: string): string {
  return requireString(value, path, 1, MAX_NODE_ID_CHARS);
}

export function isRunId(value: string): boolean {
  return RUN_ID_PATTERN.test(value);
}

export function requireRunId(value: Json | undefined, path: string): string {
  const text = requireString(value, path);
  if (!isRunId(text)) {
    throw new BadRequest(`${path} must match ${RUN_ID_PATTERN.source}`, path);
  }
  return text;
}

/**
 * Read a JSON object with a closed set of keys: `build` reads the fields in declaration order,
 * then any key outside `allowed` is refused (the order in which pydantic reports errors).
 */
export function readShape<T>(
  value: Json | undefined,
  path: string,
  allowed: readonly string[],
  build: (fields: Fields) => T,
): T {
  const object = requireObject(value, path);
  const result = build(new Fields(object, path));
  for (const key of Object.keys(object)) {
    if (!allowed.includes(key)) {
      const field = childPath(path, key);
      throw new BadRequest(`unknown field ${field}`, field);
    }
  }
  return result;
}

/** The fields of one JSON object, read by name with their JSON path. */
export class Fields {
  constructor(
    private readonly values: JsonObject,
    private readonly path: string,
  ) {}

  at(key: string): string {
    return childPath(this.path, key);
  }

  has(key: string): boolean {
    return Object.hasOwn(this.values, key);
  }

  /** The raw value, or undefined when the key is absent. */
  raw(key: string): Json | undefined {
    return this.has(key) ? this.values[key] : undefined;
  }

  /** The raw value of a field that must be present (any JSON, null included). */
  present(key: string): Json {
    const value = this.raw(key);
    if (value === undefined) {
      throw new BadRequest(`${this.at(key)} is required`, this.at(key));
    }
    return value;
  }

  /** An optional field: absent or null gives null, anything else goes through `read`. */
  nullable<T>(key: string, read: (value: Json, path: string) => T): T | null {
    const value = this.raw(key);
    return value === undefined || value === null ? null : read(value, this.at(key));
  }

  required<T>(key: string, read: (value: Json, path: string) => T): T {
    return read(this.present(key), this.at(key));
  }

  /** An optional non-null field with a default (null is refused, as for a typed field). */
  optional<T>(key: string, fallback: T, read: (value: Json, path: string) => T): T {
    const value = this.raw(key);
    return value === undefined ? fallback : read(value, this.at(key));
  }

  string(key: string, min = 0, max = Infinity): string {
    return this.required(key, (value, path) => requireString(value, path, min, max));
  }

  nullableString(key: string, min = 0, max = Infinity): string | null {
    return this.nullable(key, (value, path) => requireString(value, path, min, max));
  }

  boolean(key: string, fallback: boolean): boolean {
    return this.optional(key, fallback, (value, path) => {
      if (typeof value !== "boolean") {
        throw new BadRequest(`${path} must be a boolean, not ${describe(value)}`, path);
      }
      return value;
    });
  }

  object(key: string): JsonObject {
    return this.optional(key, {}, requireObject);
  }

  list<T>(key: string, item: (value: Json, path: string) => T, maxItems = Infinity): T[] {
    return this.optional(key, [], (value, path) => readList(value, path, item, maxItems));
  }
}

/** A JSON array read item by item; its length is checked first, as pydantic checks a list's. */
export function readList<T>(
  value: Json,
  path: string,
  item: (value: Json, path: string) => T,
  maxItems = Infinity,
): T[] {
  if (!Array.isArray(value)) {
    throw new BadRequest(`${path} must be an array, not ${describe(value)}`, path);
  }
  if (value.length > maxItems) {
    throw new BadRequest(`${path} must hold at most ${maxItems} items, not ${value.length}`, path);
  }
  return value.map((element, index) => item(element, indexPath(path, index)));
}

export function readEnum<T extends string>(value: Json, path: string, choices: readonly T[]): T {
  if (typeof value !== "string" || !(choices as readonly string[]).includes(value)) {
    throw new BadRequest(`${path} must be one of ${choices.join(", ")}`, path);
  }
  return value as T;
}
