/** flowcraft-coordinator: the run store of flowcraft-puller (docs/protocol.md) on Workers and Durable Objects. */

import type { Env } from "./env";
import { handleRequest } from "./worker";

export { RunObject } from "./run/object";

export default {
  fetch: handleRequest,
} satisfies ExportedHandler<Env>;
