/** Calling a run's Durable Object from the Worker. */

import type { Env } from "./env";
import { Internal } from "./errors";
import type { CallReply, RunCall } from "./protocol";

/** Apply `calls` in order in the run's object; if the object cannot be reached, each answers 500. */
export async function callRun(env: Env, runId: string, calls: readonly RunCall[]): Promise<CallReply[]> {
  const stub = env.RUNS.get(env.RUNS.idFromName(runId));
  try {
    return await stub.execute(runId, [...calls]);
  } catch (error) {
    console.error(`run ${runId}: the Durable Object call failed`, error);
    const body = JSON.stringify(new Internal().body());
    return calls.map(() => ({ status: 500, body }));
  }
}
