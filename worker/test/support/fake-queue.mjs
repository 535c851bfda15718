// @ts-check
/**
 * A Cloudflare-compatible queue REST endpoint on 127.0.0.1 for outbox tests: it serves
 * POST /accounts/{account}/queues/{queue}/messages/batch, keeps what it accepted, and can be
 * told to refuse the next sends.
 */

import { createServer } from "node:http";

/**
 * @typedef {{ body: any, content_type: string, delay_seconds: number }} SentMessage
 * @typedef {{ messages: SentMessage[], bytes: number, authorization: string | undefined, accepted: boolean }} SendCall
 */

export class FakeQueue {
  constructor() {
    /** @type {SendCall[]} */
    this.calls = [];
    this.refuse = 0;
    this.server = createServer((request, response) => {
      /** @type {Buffer[]} */
      const chunks = [];
      request.on("data", (chunk) => chunks.push(chunk));
      request.on("end", () => {
        const text = Buffer.concat(chunks).toString("utf8");
        const accepted = this.refuse === 0 && request.url === "/accounts/acc/queues/q1/messages/batch";
        if (this.refuse > 0) {
          this.refuse -= 1;
        }
        const parsed = JSON.parse(text);
        this.calls.push({
          messages: parsed.messages,
          bytes: Buffer.byteLength(text),
          authorization: request.headers.authorization,
          accepted,
        });
        const envelope = accepted
          ? { success: true, errors: [], messages: [], result: {} }
          : { success: false, errors: [{ code: 15000, message: "injected failure" }], messages: [], result: null };
        response.writeHead(accepted ? 200 : 500, { "content-type": "application/json" });
        response.end(JSON.stringify(envelope));
      });
    });
  }

  /** Listen on a free loopback port; returns the QUEUE_REST_URL prefix. */
  async start() {
    await new Promise((resolve) => this.server.listen(0, "127.0.0.1", () => resolve(undefined)));
    const address = this.server.address();
    if (address === null || typeof address === "string") {
      throw new Error("the fake queue has no TCP address");
    }
    return `http://127.0.0.1:${address.port}/accounts/acc/queues/q1`;
  }

  /** Every message accepted so far. */
  accepted() {
    return this.calls.filter((call) => call.accepted).flatMap((call) => call.messages);
  }

  stop() {
    return new Promise((resolve) => this.server.close(() => resolve(undefined)));
  }
}
