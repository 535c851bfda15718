/**
 * The per-run state machine: a port of flowcraft_puller/runstore/state.py, operating on the
 * run's SQLite rows through {@link RunRepo}. It evaluates no workflow logic. Every method runs
 * inside one `transactionSync`; `now` is fixed for the call.
 */

import { BadRequest, Conflict, NotFound } from "../errors";
import { type Json, type JsonObject, quote, RawJson, utf8Length, type WireValue } from "../json";
import {
  type AttemptsRequest,
  type AwaitingSpec,
  type CancelRequest,
  type ClaimRequest,
  type CommitRequest,
  type FailRequest,
  MAX_DELAY_MS,
  MAX_VALUE_BYTES,
  type NodeRef,
  type Op,
  type ResumeRequest,
  type RunStatus,
  type StartRequest,
  TERMINAL_STATUSES,
} from "../protocol";
import { sameDigest } from "../secrets";
import type { Awaiting, GenRecord, JobBody, Meta, TopologyRow } from "./model";
import type { RunRepo } from "./repo";

const RESUMABLE: ReadonlySet<string> = new Set(["external_event", "webhook"]);

type Reply = { readonly [key: string]: WireValue };

function ref(node: string, gen: number): NodeRef {
  return { nodeId: node, gen };
}

/** Refuse a value over the §8 limit (a Durable Object SQLite row holds at most 2 MB), naming its JSON path. */
function checkValueSize(value: Json, field: string, what: string = field): void {
  const size = utf8Length(JSON.stringify(value));
  if (size > MAX_VALUE_BYTES) {
    throw new BadRequest(`${what} is ${size} bytes once serialized, over the ${MAX_VALUE_BYTES}-byte limit`, field);
  }
}

function checkTopology(request: StartRequest): void {
  const nodes = request.topology;
  for (const [node, spec] of nodes) {
    spec.succs.forEach((succ, index) => {
      if (!nodes.has(succ)) {
        throw new BadRequest(
          `topology node ${quote(node)} names unknown successor ${quote(succ)}`,
          `topology.${node}.succs[${index}]`,
        );
      }
    });
  }
  request.startNodes.forEach((node, index) => {
    if (!nodes.has(node)) {
      throw new BadRequest(`start node ${quote(node)} is not in the topology`, `startNodes[${index}]`);
    }
  });
  for (const [node, spec] of nodes) {
    for (const back of spec.backPreds) {
      if (!(nodes.get(back)?.succs ?? []).includes(node)) {
        throw new BadRequest(
          `back predecessor ${quote(back)} of ${quote(node)} has no edge to it`,
          `topology.${node}.backPreds`,
        );
      }
    }
  }
}

export class RunMachine {
  constructor(
    private readonly repo: RunRepo,
    private readonly meta: Meta,
    private readonly now: number,
  ) {}

  get status(): RunStatus {
    return this.meta.status;
  }

  get finished(): boolean {
    return TERMINAL_STATUSES.has(this.meta.status);
  }

  // ---- construction ------------------------------------------------------------------------

  /** Create a new run with its start nodes released (the repo holds no run yet). */
  static start(repo: RunRepo, runId: string, request: StartRequest, now: number): RunMachine {
    checkTopology(request);
    const preds = new Map<string, string[]>([...request.topology.keys()].map((node) => [node, []]));
    for (const [node, spec] of request.topology) {
      for (const succ of spec.succs) {
        preds.get(succ)?.push(node);
      }
    }
    const rows: TopologyRow[] = [...request.topology].map(([node, spec]) => ({
      node,
      succs: spec.succs,
      join: spec.join,
      backPreds: spec.backPreds,
      preds: preds.get(node) ?? [],
      gen: 0,
    }));
    const meta: Meta = {
      runId,
      blueprintId: request.blueprintId,
      blueprintVersion: request.blueprintVersion,
      parent: request.parent,
      status: "running",
      reason: null,
      createdAtMs: now,
      updatedAtMs: now,
      finishedAtMs: null,
    };
    repo.insertMeta(meta);
    repo.insertTopology(rows);
    for (const [key, value] of Object.entries(request.context)) {
      checkValueSize(value, `context.${key}`);
      repo.contextSet(key, value);
    }
    repo.contextSet("blueprintId", request.blueprintId);
    repo.contextSet("blueprintVersion", request.blueprintVersion);
    const machine = new RunMachine(repo, meta, now);
    for (const node of request.startNodes) {
      machine.release(node, 0);
    }
    machine.settle();
    return machine;
  }

  sameStart(request: StartRequest): boolean {
    return request.blueprintId === this.meta.blueprintId && request.blueprintVersion === this.meta.blueprintVersion;
  }

  // ---- helpers -------------------------------------------------------------------------------

  private known(node: string): boolean {
    return this.repo.topology(node) !== undefined || this.repo.dynamic(node) !== undefined;
  }

  /** The node's current generation (dynamic nodes are always at 0). */
  private currentGen(node: string): number {
    return this.repo.topology(node)?.gen ?? 0;
  }

  private topologyRow(node: string): TopologyRow {
    const row = this.repo.topology(node);
    if (row === undefined) {
      throw new Error(`node ${quote(node)} is not in the topology`);
    }
    return row;
  }

  private succs(node: string): string[] {
    const dynamic = this.repo.dynamic(node);
    return dynamic !== undefined ? [dynamic.spec.gather] : this.topologyRow(node).succs;
  }

  private expected(node: string, gen: number, record: GenRecord): string[] {
    const row = this.repo.topology(node);
    const back = row?.backPreds ?? [];
    let preds = row?.preds ?? [];
    if (back.length > 0) {
      preds = gen > 0 ? [...back] : preds.filter((pred) => !back.includes(pred));
    }
    return [...preds, ...record.dynamicPreds];
  }

  private job(node: string, gen: number, delayMs = 0): void {
    const body: JobBody = { runId: this.meta.runId, blueprintId: this.meta.blueprintId, nodeId: node, gen };
    const dynamic = this.repo.dynamic(node);
    if (dynamic !== undefined) {
      body["dynamic"] = { uses: dynamic.spec.uses, inputs: dynamic.spec.inputs, gather: dynamic.spec.gather };
    }
    this.repo.appendOutbox(body, Math.max(0, Math.min(delayMs, MAX_DELAY_MS)));
  }

  private release(node: string, gen: number): void {
    const record = this.repo.ensureRecord(node, gen);
    record.state = "released";
    record.pending = true;
    this.job(node, gen);
  }

  /** Record an arrival or skip at `target`'s current generation and propagate (§2.1). */
  private resolve(target: string, source: string, arrived: boolean, released: NodeRef[]): void {
    const work: [string, string, boolean][] = [[target, source, arrived]];
    for (let next = work.shift(); next !== undefined; next = work.shift()) {
      const [node, src, came] = next;
      const row = this.topologyRow(node);
      const gen = row.gen;
      const record = this.repo.ensureRecord(node, gen);
      if (!record.arrivals.has(src)) {
        record.arrivals.set(src, came);
      }
      if (came) {
        record.arrivals.set(src, true);
      }
      if (record.state !== "idle") {
        continue;
      }
      const expected = this.expected(node, gen, record);
      const resolved = expected.every((pred) => record.arrivals.has(pred));
      const anyArrived = expected.some((pred) => record.arrivals.get(pred) === true);
      if (anyArrived && (row.join === "any" || resolved)) {
        this.release(node, gen);
        released.push(ref(node, gen));
      } else if (resolved && !anyArrived) {
        record.state = "skipped";
        for (const succ of this.succs(node)) {
          work.push([succ, node, false]);
        }
      }
    }
  }

  private rearm(nodes: readonly string[]): void {
    const members = new Set(nodes);
    for (const node of members) {
      const row = this.topologyRow(node);
      const oldGen = row.gen;
      const old = this.repo.ensureRecord(node, oldGen);
      this.repo.setGen(row, oldGen + 1);
      const fresh = this.repo.ensureRecord(node, oldGen + 1);
      fresh.arrivals = new Map([...old.arrivals].filter(([source]) => !members.has(source)));
      const older = this.repo.record(node, oldGen - 1);
      if (older !== undefined && !older.pending && !older.waiting) {
        this.repo.deleteRecord(node, oldGen - 1);
      }
    }
  }

  private setAwaitingKeys(): void {
    const waiting = this.repo.waitingRecords();
    if (waiting.length === 0) {
      this.repo.contextDelete("_awaitingNodeIds");
      this.repo.contextDelete("_awaitingDetails");
      return;
    }
    this.repo.contextSet(
      "_awaitingNodeIds",
      waiting.map((record) => record.node),
    );
    this.repo.contextSet(
      "_awaitingDetails",
      Object.fromEntries(waiting.map((record) => [record.node, record.awaiting?.spec.details ?? {}])),
    );
  }

  /**
   * `_awaitingDetails` once `(node, gen)` awaits with `details`: every awaiting node's details, a
   * later generation of a node winning. Its key order may differ from the stored one's, which
   * leaves its size alone: this value is only measured.
   */
  private awaitingDetailsOnceAwaiting(node: string, gen: number, details: JsonObject): JsonObject {
    const entries: [string, number, JsonObject][] = this.repo
      .waitingRecords()
      .filter((record) => record.node !== node || record.gen !== gen)
      .map((record) => [record.node, record.gen, record.awaiting?.spec.details ?? {}]);
    entries.push([node, gen, details]);
    entries.sort(([, first], [, second]) => first - second);
    return Object.fromEntries(entries.map(([key, , value]) => [key, value]));
  }

  private notifyParent(): void {
    const parent = this.meta.parent;
    if (parent === null) {
      return;
    }
    const body: JobBody = {
      runId: parent.runId,
      blueprintId: parent.blueprintId,
      nodeId: parent.nodeId,
      gen: parent.gen,
    };
    this.repo.appendOutbox(body, 0);
  }

  /** Recompute the run status after a change; latch `completed` when nothing is left (§2.2). */
  private settle(): void {
    this.meta.updatedAtMs = this.now;
    if (this.finished) {
      return;
    }
    const before = this.meta.status;
    const waiting = this.repo.waitingRecords();
    if (this.repo.hasPending() || waiting.some((record) => record.awaiting?.resolution != null)) {
      this.meta.status = "running";
    } else if (waiting.some((record) => record.awaiting?.spec.external === true)) {
      this.meta.status = "awaiting";
    } else if (waiting.length > 0) {
      this.meta.status = "running";
    } else {
      this.meta.status = "completed";
      this.meta.finishedAtMs = this.now;
    }
    if (this.meta.status !== before && (this.meta.status === "awaiting" || this.meta.status === "completed")) {
      this.notifyParent();
    }
  }

  private terminate(status: RunStatus, reason: string | null): void {
    this.meta.status = status;
    this.meta.reason = reason;
    this.meta.finishedAtMs = this.now;
    this.meta.updatedAtMs = this.now;
    this.notifyParent();
  }

  private applyWrites(writes: ReadonlyMap<string, Json>, deletes: readonly string[]): void {
    for (const key of deletes) {
      this.repo.contextDelete(key);
    }
    for (const [key, value] of writes) {
      this.repo.contextSet(key, value);
    }
  }

  // ---- protocol --------------------------------------------------------------------------

  startReply(created: boolean): Reply {
    return { runId: this.meta.runId, created, status: this.meta.status };
  }

  private claimReply(state: string, fields: Reply): Reply {
    return {
      state,
      status: this.meta.status,
      gen: 0,
      attempts: 0,
      lastError: null,
      context: null,
      result: null,
      awaiting: null,
      retryAfterMs: null,
      reason: null,
      blueprintVersion: this.meta.blueprintVersion,
      ...fields,
    };
  }

  /** Take an execution lease for one node, or say why it must not run now (§4.3). */
  claim(request: ClaimRequest): Reply {
    const node = request.nodeId;
    if (this.finished) {
      return this.claimReply("terminal", { reason: this.meta.reason });
    }
    if (request.blueprintVersion !== this.meta.blueprintVersion) {
      return this.claimReply("version_mismatch", {});
    }
    if (!this.known(node)) {
      return this.claimReply("not_ready", { reason: `unknown node ${quote(node)}` });
    }
    const current = this.currentGen(node);
    const gen = request.gen ?? current;
    const record = this.repo.record(node, gen);
    if (record === undefined || gen > current) {
      return this.claimReply("not_ready", { gen, reason: "not released" });
    }
    if (record.result !== null) {
      return this.claimReply("completed", { gen, result: record.result });
    }
    if (record.state === "awaiting" && record.awaiting !== null) {
      return this.claimAwaiting(record, record.awaiting);
    }
    if (record.state !== "released") {
      return this.claimReply("not_ready", { gen, reason: record.state });
    }
    if (this.now < record.notBeforeMs) {
      return this.claimReply("busy", { gen, retryAfterMs: record.notBeforeMs - this.now });
    }
    if (record.leaseToken !== null && record.leaseToken !== request.token && record.leaseUntilMs > this.now) {
      return this.claimReply("busy", { gen, retryAfterMs: record.leaseUntilMs - this.now });
    }
    record.leaseToken = request.token;
    record.leaseUntilMs = this.now + request.leaseMs;
    return this.claimReply("run", {
      gen,
      attempts: record.attempts,
      lastError: record.lastError,
      context: this.repo.contextJson(),
    });
  }

  private claimAwaiting(record: GenRecord, awaiting: Awaiting): Reply {
    const spec = awaiting.spec;
    let resolution = awaiting.resolution;
    if (resolution === null && spec.wakeAtMs !== null) {
      if (this.now >= spec.wakeAtMs) {
        resolution = spec.result ?? { output: null, action: null };
      } else if (awaiting.nextTimerMs === null || this.now >= awaiting.nextTimerMs - 1000) {
        this.scheduleTimer(record, awaiting);
      }
    }
    return this.claimReply("awaiting", {
      gen: record.gen,
      awaiting: { ...awaitingView(awaiting), resolution },
      context: this.repo.contextJson(),
    });
  }

  private scheduleTimer(record: GenRecord, awaiting: Awaiting): void {
    const wake = awaiting.spec.wakeAtMs ?? this.now;
    const delay = Math.min(Math.max(0, wake - this.now), MAX_DELAY_MS);
    awaiting.nextTimerMs = this.now + delay;
    this.job(record.node, record.gen, delay);
  }

  private commitReply(released: NodeRef[], duplicate = false, stale = false): Reply {
    return { status: this.meta.status, released, duplicate, stale };
  }

  /** Record a node's completion (or its entering the awaiting state) atomically (§4.4). */
  commit(request: CommitRequest): Reply {
    const { nodeId: node, gen } = request;
    if (!this.known(node)) {
      throw new BadRequest(`unknown node ${quote(node)}`, "nodeId");
    }
    const record = this.repo.record(node, gen);
    if (record !== undefined && record.result !== null) {
      return this.commitReply(record.released ?? [], true);
    }
    if (record === undefined || (record.state !== "released" && record.state !== "awaiting")) {
      const state = record === undefined ? "never released" : record.state;
      throw new Conflict(`node ${quote(node)} generation ${gen} is ${state}; it cannot be committed`);
    }
    this.validateCommit(node, request);
    this.applyWrites(request.writes, request.deletes);
    record.leaseToken = null;
    record.pending = false;
    if (request.awaiting !== null) {
      this.enterAwaiting(record, request.awaiting);
      this.settle();
      return this.commitReply([]);
    }
    record.state = "completed";
    record.result = request.result ?? { output: null, action: null };
    record.released = [];
    if (record.awaiting !== null) {
      record.waiting = false;
      this.setAwaitingKeys();
    }
    const stale = gen < this.currentGen(node);
    if (this.finished || stale) {
      this.meta.updatedAtMs = this.now;
      return this.commitReply([], false, stale);
    }
    const released: NodeRef[] = [];
    this.rearm(request.rearm);
    for (const spec of request.dynamic) {
      this.repo.putDynamic({ node: spec.nodeId, source: node, spec });
      const gather = this.repo.ensureRecord(spec.gather, this.currentGen(spec.gather));
      if (!gather.dynamicPreds.includes(spec.nodeId)) {
        gather.dynamicPreds.push(spec.nodeId);
      }
      this.release(spec.nodeId, 0);
      released.push(ref(spec.nodeId, 0));
    }
    for (const target of request.arrivals) {
      this.resolve(target, node, true, released);
    }
    for (const target of request.skips) {
      this.resolve(target, node, false, released);
    }
    record.released = released;
    this.settle();
    return this.commitReply(released);
  }

  private validateCommit(node: string, request: CommitRequest): void {
    const succs = new Set(this.succs(node));
    for (const name of ["arrivals", "skips"] as const) {
      request[name].forEach((target, index) => {
        if (!succs.has(target)) {
          throw new BadRequest(`${quote(target)} is not a successor of ${quote(node)}`, `${name}[${index}]`);
        }
      });
    }
    request.rearm.forEach((target, index) => {
      if (this.repo.topology(target) === undefined) {
        throw new BadRequest(`cannot re-arm unknown node ${quote(target)}`, `rearm[${index}]`);
      }
    });
    request.dynamic.forEach((spec, index) => {
      if (this.repo.topology(spec.gather) === undefined) {
        throw new BadRequest(`unknown gather node ${quote(spec.gather)}`, `dynamic[${index}].gather`);
      }
      if (this.repo.topology(spec.nodeId) !== undefined) {
        throw new BadRequest(
          `dynamic node id ${quote(spec.nodeId)} clashes with a blueprint node`,
          `dynamic[${index}].nodeId`,
        );
      }
    });
    if (request.awaiting === null && request.result === null) {
      throw new BadRequest("a commit needs a result or an awaiting state", "result");
    }
    for (const [key, value] of request.writes) {
      checkValueSize(value, `writes.${key}`);
    }
    if (request.result !== null) {
      checkValueSize(request.result.output, "result.output");
    }
    if (request.awaiting !== null && request.awaiting.result !== null) {
      checkValueSize(request.awaiting.result.output, "awaiting.result.output");
    }
    if (request.awaiting !== null) {
      checkValueSize(
        this.awaitingDetailsOnceAwaiting(node, request.gen, request.awaiting.details),
        "awaiting.details",
        "_awaitingDetails (the details of every awaiting node together)",
      );
    }
  }

  private enterAwaiting(record: GenRecord, spec: AwaitingSpec): void {
    const previous = record.awaiting;
    record.state = "awaiting";
    const awaiting: Awaiting = {
      spec: {
        reason: spec.reason,
        details: spec.details,
        external: spec.external,
        wakeAtMs: spec.wakeAtMs,
        result: spec.result,
      },
      resolution: previous?.resolution ?? null,
      nextTimerMs: null,
    };
    record.awaiting = awaiting;
    if (spec.hookTokenHash !== null) {
      record.hookHash = spec.hookTokenHash;
    }
    record.waiting = true;
    this.setAwaitingKeys();
    if (spec.wakeAtMs !== null && (previous === null || previous.spec.wakeAtMs !== spec.wakeAtMs)) {
      this.scheduleTimer(record, awaiting);
    }
  }

  private statusReply(): Reply {
    return { status: this.meta.status, reason: this.meta.reason };
  }

  /** Record used attempts; optionally drop the lease and schedule a delayed retry (§4.5). */
  attempts(request: AttemptsRequest): Reply {
    const record = this.repo.record(request.nodeId, request.gen);
    if (record === undefined || record.state !== "released") {
      return this.statusReply();
    }
    record.attempts = Math.max(record.attempts, request.attempts);
    record.lastError = request.error;
    if (request.release && record.leaseToken === request.token) {
      record.leaseToken = null;
      record.leaseUntilMs = 0;
    }
    if (request.retryAfterMs !== null) {
      record.notBeforeMs = this.now + request.retryAfterMs;
      this.job(request.nodeId, request.gen, request.retryAfterMs);
    }
    this.meta.updatedAtMs = this.now;
    return this.statusReply();
  }

  /** Latch `failed` (the first terminal state wins) (§4.6). */
  fail(request: FailRequest): Reply {
    if (request.nodeId !== null && request.gen !== null) {
      const record = this.repo.record(request.nodeId, request.gen);
      if (record !== undefined && record.result === null) {
        record.state = "failed";
        record.lastError = request.reason;
        record.pending = false;
        if (record.waiting) {
          record.waiting = false;
          this.setAwaitingKeys();
        }
      }
    }
    if (!this.finished) {
      this.terminate("failed", request.reason);
    }
    return this.statusReply();
  }

  /** Latch `cancelled` unless the run already ended (§4.8). */
  cancel(request: CancelRequest): Reply {
    if (!this.finished) {
      this.terminate("cancelled", request.reason ?? "cancelled");
    }
    return this.statusReply();
  }

  /** Give awaiting `wait` nodes (or the named node) a result and queue their jobs (§4.7). */
  resume(request: ResumeRequest): Reply {
    if (this.finished) {
      throw new Conflict(`run ${quote(this.meta.runId)} is ${this.meta.status}; it cannot be resumed`);
    }
    const targets: [GenRecord, Awaiting][] = [];
    for (const record of this.repo.waitingRecords()) {
      const awaiting = record.awaiting;
      if (awaiting === null || awaiting.resolution !== null) {
        continue;
      }
      const wanted =
        request.nodeId === null
          ? awaiting.spec.reason === "external_event"
          : request.nodeId === record.node && RESUMABLE.has(awaiting.spec.reason);
      if (wanted) {
        targets.push([record, awaiting]);
      }
    }
    if (targets.length === 0) {
      const which = request.nodeId !== null ? `node ${quote(request.nodeId)}` : "a wait node";
      throw new Conflict(`run ${quote(this.meta.runId)} has no ${which} awaiting a resume`);
    }
    checkValueSize(request.output, "output");
    this.repo.contextSet("_resume.action", request.action);
    if (request.hasOutput) {
      this.repo.contextSet("_resume.output", request.output);
    }
    for (const [record, awaiting] of targets) {
      awaiting.resolution = { output: request.output, action: request.action };
      this.job(record.node, record.gen);
    }
    this.settle();
    return { status: this.meta.status, resumed: targets.map(([record]) => ref(record.node, record.gen)) };
  }

  /** Complete an awaiting webhook node with the delivered body; replays are conflicts (§4.13). */
  hook(node: string, tokenHash: string, body: Json): Reply {
    const row = this.repo.topology(node);
    const record = row === undefined ? undefined : this.repo.record(node, row.gen);
    const known = record?.hookHash ?? null;
    if (record === undefined || known === null || !sameDigest(known, tokenHash)) {
      throw new NotFound("no such webhook");
    }
    const awaiting = record.awaiting;
    if (record.result !== null || awaiting === null || awaiting.resolution !== null) {
      throw new Conflict("this webhook was already delivered");
    }
    if (this.finished) {
      throw new Conflict(`run is ${this.meta.status}`);
    }
    checkValueSize(body, "body", "the webhook body");
    awaiting.resolution = { output: body, action: null };
    this.job(node, record.gen);
    this.settle();
    return { status: this.meta.status, nodeId: node };
  }

  /** Re-queue every released node without a live lease and every resolvable awaiting node (§4.9). */
  reconcile(): Reply {
    const requeued: NodeRef[] = [];
    if (!this.finished) {
      for (const record of this.repo.pendingRecords()) {
        if (record.leaseToken === null || record.leaseUntilMs <= this.now) {
          this.job(record.node, record.gen, Math.max(0, record.notBeforeMs - this.now));
          requeued.push(ref(record.node, record.gen));
        }
      }
      for (const record of this.repo.waitingRecords()) {
        const awaiting = record.awaiting;
        if (awaiting === null) {
          continue;
        }
        const due = awaiting.spec.wakeAtMs !== null;
        if (awaiting.resolution !== null || due || awaiting.spec.reason === "subflow") {
          this.job(record.node, record.gen, 0);
          requeued.push(ref(record.node, record.gen));
        }
      }
    }
    this.settle();
    return { status: this.meta.status, requeued };
  }

  /** The run as `GET /runs/{runId}` shows it (§4.10). */
  view(): Reply {
    const nodes = new Map<string, WireValue>();
    const show = (node: string, gen: number): void => {
      const record = this.repo.record(node, gen);
      nodes.set(node, { gen, state: record?.state ?? "idle", attempts: record?.attempts ?? 0 });
    };
    for (const row of this.repo.topologyNodes()) {
      show(row.node, row.gen);
    }
    for (const row of this.repo.dynamicNodes()) {
      show(row.node, 0);
    }
    const awaiting = new Map<string, WireValue>();
    for (const record of this.repo.waitingRecords()) {
      if (record.awaiting !== null) {
        awaiting.set(record.node, awaitingView(record.awaiting));
      }
    }
    return {
      runId: this.meta.runId,
      blueprintId: this.meta.blueprintId,
      blueprintVersion: this.meta.blueprintVersion,
      status: this.meta.status,
      reason: this.meta.reason,
      context: this.repo.contextJson(),
      nodes,
      awaiting,
      parent: this.meta.parent === null ? null : { ...this.meta.parent },
      createdAtMs: this.meta.createdAtMs,
      updatedAtMs: this.meta.updatedAtMs,
    };
  }

  // ---- coordination store --------------------------------------------------------------

  /**
   * The generic coordination store and context access, applied in order (§4.11). Each op's
   * value is checked just before the op applies, as the reference does, so that the first
   * failing op names the error; a failure rolls back the whole call with the transaction.
   */
  ops(ops: readonly Op[]): Reply {
    this.repo.sweepCoordination(this.now);
    const results = ops.map((op, index) => {
      checkValueSize(op.value, `ops[${index}].value`);
      return this.op(op);
    });
    this.meta.updatedAtMs = this.now;
    return { results };
  }

  private op(op: Op): WireValue {
    const { op: name, key } = op;
    if (name === "context.toJSON") {
      return this.repo.contextJson();
    }
    if (key === null) {
      throw new BadRequest(`operation ${quote(name)} needs a key`, "key");
    }
    const expires = op.ttlSeconds !== null ? this.now + op.ttlSeconds * 1000 : null;
    const entry = this.repo.coordinationGet(key);
    switch (name) {
      case "get":
        return entry === undefined ? null : new RawJson(entry.valueText);
      case "setIfNotExist":
        if (entry !== undefined) {
          return false;
        }
        this.repo.coordinationPut(key, op.value, expires);
        return true;
      case "increment": {
        const current: Json = entry === undefined ? 0 : (JSON.parse(entry.valueText) as Json);
        if (typeof current !== "number" || !Number.isInteger(current)) {
          throw new BadRequest(`key ${quote(key)} does not hold an integer`, "key");
        }
        this.repo.coordinationPut(key, current + 1, expires);
        return current + 1;
      }
      case "extendTTL":
        if (entry === undefined) {
          return false;
        }
        this.repo.coordinationExpire(key, expires);
        return true;
      case "delete":
        return this.repo.coordinationDelete(key);
      case "context.get":
        return this.repo.contextGet(key) ?? null;
      case "context.has":
        return this.repo.contextHas(key);
      case "context.set":
        this.repo.contextSet(key, op.value);
        return true;
      case "context.delete":
        this.repo.contextDelete(key);
        return true;
    }
  }
}

function awaitingView(awaiting: Awaiting): { readonly [key: string]: WireValue } {
  return {
    reason: awaiting.spec.reason,
    details: awaiting.spec.details,
    external: awaiting.spec.external,
    wakeAtMs: awaiting.spec.wakeAtMs,
    resolution: awaiting.resolution,
  };
}
