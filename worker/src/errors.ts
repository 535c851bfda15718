/** Refusals with the HTTP status and error code of docs/protocol.md §1.1. */

export type ErrorCode =
  "bad_request" | "unauthorized" | "not_found" | "method_not_allowed" | "conflict" | "payload_too_large" | "internal";

export class ApiError extends Error {
  constructor(
    readonly httpStatus: number,
    readonly code: ErrorCode,
    message: string,
    readonly field: string | null = null,
  ) {
    super(message);
    this.name = "ApiError";
  }

  body(): { error: { code: ErrorCode; message: string; field: string | null } } {
    return { error: { code: this.code, message: this.message, field: this.field } };
  }
}

export class BadRequest extends ApiError {
  constructor(message: string, field: string | null = null) {
    super(400, "bad_request", message, field);
  }
}

export class Unauthorized extends ApiError {
  constructor() {
    super(401, "unauthorized", "missing or wrong bearer secret");
  }
}

export class NotFound extends ApiError {
  constructor(message: string) {
    super(404, "not_found", message);
  }
}

export class MethodNotAllowed extends ApiError {
  constructor(readonly allow: readonly string[]) {
    super(405, "method_not_allowed", `this path accepts ${allow.join(", ")}`);
  }
}

export class Conflict extends ApiError {
  constructor(message: string) {
    super(409, "conflict", message);
  }
}

export class PayloadTooLarge extends ApiError {
  constructor(limit: number) {
    super(413, "payload_too_large", `the request body is larger than ${limit} bytes`);
  }
}

export class Internal extends ApiError {
  constructor(message = "internal error") {
    super(500, "internal", message);
  }
}

/** The Worker's configuration is invalid; the message names the variable and how to fix it. */
export class ConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ConfigError";
  }
}
