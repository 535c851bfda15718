/**
 * RunObject: the Durable Object holding one run (`idFromName(runId)`) on SQLite storage.
 *
 * Every call is one `transactionSync`; the input gate keeps other events out while it runs and
 * the output gate holds the reply until it is durable. Jobs and the status record leave after
 * the transaction: outbox rows are sent, then deleted; whatever failed is retried by the alarm,
 * which also sweeps expired coordination keys and deletes finished runs after their retention.
 */

import { DurableObject } from "cloudflare:workers";
import type { Env, Settings } from "../env";
import { settings } from "../env";
import { ApiError, Conflict, Internal, NotFound } from "../errors";
import { quote, toJsonText, type WireValue } from "../json";
import type { CallReply, RunCall } from "../protocol";
import { STATUS_TTL_SECONDS, statusMetadata, statusRecord } from "../status-record";
import { DeliveryBook } from "./delivery";
import { RunMachine } from "./machine";
import { batches, BindingSender, type JobSender, RestSender } from "./outbox";
import { RunRepo } from "./repo";
import { createSchema, schemaExists } from "./schema";
import { ensureSpillTable } from "./spill";

/** KV metadata is limited to 1024 bytes of JSON. */
const MAX_KV_METADATA_BYTES = 1024;

function errorReply(error: ApiError): CallReply {
  return { status: error.httpStatus, body: JSON.stringify(error.body()) };
}

export class RunObject extends DurableObject<Env> {
  private readonly sql: SqlStorage;
  /** Outbox rows being sent by a call in progress, so that concurrent calls do not send them twice. */
  private readonly sending = new Set<number>();
  /** Status-record writes run one after another, so that an older record never overwrites a newer one. */
  private statusWrites: Promise<void> = Promise.resolve();
  /** Whether this instance made sure the run's storage has the current layout (src/run/spill.ts). */
  private layoutChecked = false;

  constructor(ctx: DurableObjectState, env: Env) {
    super(ctx, env);
    this.sql = ctx.storage.sql;
  }

  /** Apply calls for this run in order, each atomically; then send jobs and the status record. */
  async execute(runId: string, calls: readonly RunCall[]): Promise<CallReply[]> {
    const config = settings(this.env);
    const replies = calls.map((call) => this.apply(runId, call, config));
    await this.deliver(config);
    return replies;
  }

  override async alarm(): Promise<void> {
    if (!this.openRun()) {
      return;
    }
    const config = settings(this.env);
    const now = Date.now();
    const meta = new RunRepo(this.sql).findMeta();
    if (meta !== null && meta.finishedAtMs !== null && now >= meta.finishedAtMs + config.retentionMs) {
      await this.ctx.storage.deleteAlarm();
      await this.ctx.storage.deleteAll();
      return;
    }
    this.ctx.storage.transactionSync(() => new RunRepo(this.sql).sweepCoordination(now));
    await this.deliver(config);
  }

  private apply(runId: string, call: RunCall, config: Settings): CallReply {
    const now = Date.now();
    try {
      const body = this.ctx.storage.transactionSync(() => {
        const repo = new RunRepo(this.sql);
        const [machine, reply] = this.dispatch(repo, runId, call, now);
        repo.flush();
        if (call.op !== "get") {
          new DeliveryBook(this.sql).markStatus(machine.status, now, config.statusIntervalMs);
        }
        return toJsonText(reply);
      });
      return { status: 200, body };
    } catch (error) {
      if (error instanceof ApiError) {
        return errorReply(error);
      }
      console.error(`run ${runId}: ${call.op} failed`, error);
      return errorReply(new Internal());
    }
  }

  private dispatch(repo: RunRepo, runId: string, call: RunCall, now: number): [RunMachine, WireValue] {
    if (call.op === "start") {
      createSchema(this.sql);
      const meta = repo.findMeta();
      if (meta === null) {
        const machine = RunMachine.start(repo, runId, call.request, now);
        new DeliveryBook(this.sql).create();
        return [machine, machine.startReply(true)];
      }
      const machine = new RunMachine(repo, meta, now);
      if (!machine.sameStart(call.request)) {
        throw new Conflict(`run ${quote(runId)} already exists with blueprint ${quote(meta.blueprintId)}`);
      }
      return [machine, machine.startReply(false)];
    }
    const meta = this.openRun() ? repo.findMeta() : null;
    if (meta === null) {
      throw new NotFound(call.op === "hook" ? "no such webhook" : `no run ${quote(runId)}`);
    }
    const machine = new RunMachine(repo, meta, now);
    switch (call.op) {
      case "claim":
        return [machine, machine.claim(call.request)];
      case "commit":
        return [machine, machine.commit(call.request)];
      case "attempts":
        return [machine, machine.attempts(call.request)];
      case "fail":
        return [machine, machine.fail(call.request)];
      case "resume":
        return [machine, machine.resume(call.request)];
      case "cancel":
        return [machine, machine.cancel(call.request)];
      case "reconcile":
        return [machine, machine.reconcile()];
      case "get":
        return [machine, machine.view()];
      case "ops":
        return [machine, machine.ops(call.ops)];
      case "hook":
        return [machine, machine.hook(call.delivery.nodeId, call.delivery.tokenHash, call.delivery.body)];
    }
  }

  /**
   * Whether this object holds a run; the first time it does, add the `spill` table that runs
   * stored by an earlier version lack (their inline texts are read as they are).
   */
  private openRun(): boolean {
    if (!schemaExists(this.sql)) {
      return false;
    }
    if (!this.layoutChecked) {
      ensureSpillTable(this.sql);
      this.layoutChecked = true;
    }
    return true;
  }

  // ---- delivery ----------------------------------------------------------------------------

  /** Send the outbox and the status record; record failures for the alarm; re-arm the alarm. */
  private async deliver(config: Settings): Promise<void> {
    if (!schemaExists(this.sql)) {
      return;
    }
    const book = new DeliveryBook(this.sql);
    const sent = await this.sendOutbox(config);
    const written = await this.writeStatus(config);
    if (sent && written) {
      book.succeeded();
    } else {
      book.failed(Date.now(), config.outboxRetryMs);
    }
    await this.scheduleAlarm(config);
  }

  private sender(config: Settings): JobSender {
    return config.queueRestUrl !== null
      ? new RestSender(config.queueRestUrl, config.queueRestToken)
      : new BindingSender(this.env.JOBS);
  }

  /** Send every unsent outbox row not already being sent; true unless a send failed. */
  private async sendOutbox(config: Settings): Promise<boolean> {
    const rows = new RunRepo(this.sql).outboxRows().filter((row) => !this.sending.has(row.id));
    if (rows.length === 0) {
      return true;
    }
    await this.armAlarmBy(Date.now() + config.outboxRetryMs);
    for (const row of rows) {
      this.sending.add(row.id);
    }
    const sender = this.sender(config);
    try {
      for (const batch of batches(rows)) {
        await sender.send(batch);
        new RunRepo(this.sql).deleteOutbox(batch.map((row) => row.id));
      }
      return true;
    } catch (error) {
      console.error("sending the outbox failed; the alarm will retry", error);
      return false;
    } finally {
      for (const row of rows) {
        this.sending.delete(row.id);
      }
    }
  }

  /** Write the status record if one is due; queued behind any write in progress. */
  private writeStatus(config: Settings): Promise<boolean> {
    const write = this.statusWrites.then(() => this.writeStatusNow(config));
    this.statusWrites = write.then(
      () => undefined,
      () => undefined,
    );
    return write;
  }

  private async writeStatusNow(config: Settings): Promise<boolean> {
    if (!schemaExists(this.sql)) {
      return true;
    }
    const book = new DeliveryBook(this.sql);
    const seq = book.statusDue();
    const repo = new RunRepo(this.sql);
    const meta = repo.findMeta();
    if (seq === null || meta === null) {
      return true;
    }
    const now = Date.now();
    const record = statusRecord(meta, repo.contextJson(), now);
    const metadata = statusMetadata(meta, now);
    const fits = JSON.stringify(metadata).length <= MAX_KV_METADATA_BYTES;
    try {
      await this.env.STATUS.put(`${config.statusKeyPrefix}${meta.runId}`, toJsonText(record), {
        expirationTtl: STATUS_TTL_SECONDS,
        metadata: fits ? metadata : { status: metadata.status, lastUpdated: metadata.lastUpdated },
      });
    } catch (error) {
      console.error("writing the status record failed; the alarm will retry", error);
      return false;
    }
    if (schemaExists(this.sql)) {
      book.statusWritten(meta.status, now, seq);
    }
    return true;
  }

  /** Make sure the alarm fires no later than `atMs` (a safety net while a send is in flight). */
  private async armAlarmBy(atMs: number): Promise<void> {
    const current = await this.ctx.storage.getAlarm();
    if (current === null || current > atMs) {
      await this.ctx.storage.setAlarm(atMs);
    }
  }

  /** Set the alarm to the earliest of: a key's expiry, a retry, the end of retention; or clear it. */
  private async scheduleAlarm(config: Settings): Promise<void> {
    if (!schemaExists(this.sql)) {
      return;
    }
    const repo = new RunRepo(this.sql);
    const book = new DeliveryBook(this.sql);
    const meta = repo.findMeta();
    const candidates: number[] = [];
    const expiry = repo.nextExpiryMs();
    if (expiry !== null) {
      candidates.push(expiry);
    }
    if (repo.hasOutbox() || book.statusDue() !== null) {
      candidates.push(book.retryAtMs() ?? Date.now() + config.outboxRetryMs);
    }
    if (meta?.finishedAtMs != null) {
      candidates.push(meta.finishedAtMs + config.retentionMs);
    }
    const target = candidates.length > 0 ? Math.min(...candidates) : null;
    const current = await this.ctx.storage.getAlarm();
    if (target === null) {
      if (current !== null) {
        await this.ctx.storage.deleteAlarm();
      }
    } else if (current !== target) {
      await this.ctx.storage.setAlarm(target);
    }
  }
}
