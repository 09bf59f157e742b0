// The control plane's storage contract: everything it keeps (settings, registration tokens,
// runners, jobs with their attempts, leases, results and logs, devices) behind one interface
// with two engines, SQLite (sqlite/engine.ts, the embedded default) and PostgreSQL
// (postgres/engine.ts, shared by several replicas). Every method returns a Promise, and every
// state change is ONE atomic store operation (a conditional UPDATE, or a transaction inside
// one method): a caller never reads and then writes across two calls assuming nothing ran in
// between, because another request of this process, or another replica, may have.
// Secrets never reach this layer in plain text: callers pass sha256 hashes.
import type { HostFacts, JobStatus } from "../../protocol/http.js";
import type { JobRef, JobResult, JobSpec } from "../../protocol/channel.js";
import type { Logger } from "../../log/logger.js";
import type { ReplicaBus, ReplicaBusHandlers } from "../queue/replica-bus.js";
import type { AttributeValue, DeviceRequirement, DeviceState, DevicesBatchMessage } from "../../protocol/devices.js";

export type StoreEngineName = "sqlite" | "postgres";

// ---- runners and tokens ----

export interface RunnerRecord {
  id: string;
  name: string;
  labels: string[];
  host: HostFacts;
  credentialHash: string;
  registeredAt: Date;
  lastSeenAt: Date | null;
  revokedAt: Date | null;
  /** Set while an admin has the runner paused. */
  pausedAt: Date | null;
  pauseReason: string | null;
}

export interface NewRunner {
  id: string;
  name: string;
  labels: string[];
  host: HostFacts;
  credentialHash: string;
}

export type RegisterOutcome =
  | { outcome: "registered"; runner: RunnerRecord; replaced: RunnerRecord | null }
  | { outcome: "token_invalid" }
  | { outcome: "name_taken" };

// ---- jobs ----

export interface JobRecord {
  id: string;
  status: JobStatus;
  /** 0 until the first hand-out; +1 at each. */
  attempt: number;
  /** Who holds (or last held) the job; null while queued. */
  runnerId: string | null;
  spec: JobSpec;
  timeoutMs: number;
  cancelGraceMs: number;
  requiredLabels: string[];
  /** Only a runner with a matching device online gets the job. */
  requiredDevices: DeviceRequirement[];
  cancelRequested: boolean;
  submittedAt: Date;
  assignedAt: Date | null;
  startedAt: Date | null;
  finishedAt: Date | null;
  leaseExpiresAt: Date | null;
  result: JobResult | null;
}

export interface NewJob {
  id: string;
  spec: JobSpec;
  timeoutMs: number;
  cancelGraceMs: number;
  requiredLabels: string[];
  requiredDevices?: DeviceRequirement[];
  submittedAt: Date;
}

/** A queued job as the dispatcher scans it: position is the submit order. */
export interface QueuedJob {
  position: number;
  id: string;
  requiredLabels: string[];
  requiredDevices: DeviceRequirement[];
}

/**
 * What a queued job requires, as stored: the dispatcher groups the queue by it, decides per
 * group which runners qualify, and reads only the jobs of groups some runner can take.
 */
export interface QueuedRequirements {
  /** The stored texts, exactly: they are the key the queue is indexed by. */
  key: { labels: string; devices: string };
  requiredLabels: string[];
  requiredDevices: DeviceRequirement[];
}

export interface LogChunk {
  attempt: number;
  seq: number;
  stream: "stdout" | "stderr";
  data: string;
}

export type CancelChange = "cancelled" | "requested" | "unchanged";

/** What one job attempt may store of log: chunks are numbered by `seq` from 0, so `seq < maxChunks`. */
export interface LogLimits {
  /** UTF-8 bytes of `data`, summed over the attempt's stored chunks. */
  maxBytes: number;
  maxChunks: number;
}

/**
 * What became of a log chunk: `stored`; `repeat` (that attempt and seq are already stored);
 * `not_held` (the runner does not hold that attempt: another runner's, or a stale attempt);
 * `finished` (the attempt's result was applied: nothing more is kept); `seq_out_of_range`
 * (seq ≥ maxChunks); `limit_reached` (the attempt's bytes would pass maxBytes).
 */
export type LogInsertOutcome = "stored" | "repeat" | "not_held" | "finished" | "seq_out_of_range" | "limit_reached";

// ---- devices ----

export interface DeviceRecord {
  runnerId: string;
  id: string;
  kind: string;
  name: string;
  /** 'offline' once removed, whatever the runner said last. */
  state: DeviceState;
  attributes: Record<string, AttributeValue>;
  stale: boolean;
  fingerprint: string;
  /** False once the runner removed it or left it out of a full snapshot. */
  present: boolean;
  lastSeenAt: Date;
  updatedAt: Date;
}

export interface AppliedBatch {
  upserted: number;
  removed: number;
  /** Devices a completed full snapshot did not mention, now marked offline. */
  missing: number;
  /**
   * Present only when the batch was NOT applied: the runner would have held this many device
   * rows, over its cap (after the rows of removed devices were deleted to make room).
   */
  refusedRows?: number;
}

// ---- the contract ----

/**
 * The job queue's storage. Every transition is one conditional UPDATE whose WHERE clause
 * states the state it starts from, and the caller learns from the returned row (or its
 * absence) whether it happened: a job is claimed by one runner only, a result applies at most
 * once per attempt, and a message about an older attempt (the fencing token) changes nothing,
 * however many control planes share the database.
 */
export interface JobStoreContract {
  /**
   * Stores the job as `queued`. With `notice` (PostgreSQL only: the bus's `carryDispatch`) the
   * same statement sends that NOTIFY, delivered when the row is committed; an engine without
   * NOTIFY (SQLite) throws on one.
   */
  insert(job: NewJob, notice?: { channel: string; payload: string }): Promise<JobRecord>;
  find(id: string): Promise<JobRecord | undefined>;
  /** All jobs, or those with one status, in submit order; with a page, at most `limit` of those after job `afterId`. */
  list(status?: JobStatus, page?: { afterId?: string; limit: number }): Promise<JobRecord[]>;
  /**
   * Queued jobs after `afterPosition`, in submit order: the dispatcher pages through them.
   * With `only`, just the jobs whose requirements are one of these (read through an index).
   */
  listQueued(afterPosition: number, limit: number, only?: readonly QueuedRequirements["key"][]): Promise<QueuedJob[]>;
  /** The distinct requirements of the queued jobs (read from the index, not the rows). */
  listQueuedRequirements(): Promise<QueuedRequirements[]>;
  /**
   * In one statement, what `listQueuedRequirements()` and `listQueued(0, limit)` (no `only`)
   * would answer: a dispatch pass's first two reads in one round trip.
   */
  listQueuedHead(limit: number): Promise<{ groups: QueuedRequirements[]; head: QueuedJob[] }>;
  /** Jobs the store has handed to this runner and not seen finish. */
  listActiveForRunner(runnerId: string): Promise<JobRecord[]>;
  /** Active jobs whose lease ran out at or before `now`. */
  listExpired(now: Date): Promise<(JobRef & { runnerId: string | null })[]>;
  /** queued → assigned to `runnerId`, attempt + 1. Undefined when the job was not queued any more (or another claimer holds it right now). */
  claim(id: string, runnerId: string, now: Date, leaseExpiresAt: Date): Promise<JobRecord | undefined>;
  /**
   * claim() for a batch, in one statement: each job (at most once in `claims`) queued → assigned
   * to its runner, attempt + 1. Returns the jobs claimed, in no particular order; a job that was
   * not queued any more, or that another claimer holds right now, is left out (its runner did
   * not get it).
   */
  claimMany(
    claims: readonly { jobId: string; runnerId: string }[],
    now: Date,
    leaseExpiresAt: Date,
  ): Promise<JobRecord[]>;
  /** assigned → running for the runner's current attempt. */
  markRunning(ref: JobRef, runnerId: string, now: Date): Promise<JobRecord | undefined>;
  /**
   * markRunning() for a batch, in one statement (each job at most once): returns the jobs that
   * went assigned → running, with `at` as their start.
   */
  markRunningMany(reports: readonly { ref: JobRef; runnerId: string; at: Date }[]): Promise<JobRecord[]>;
  /** Whether `runnerId` holds this attempt of the job, still unfinished. */
  holds(ref: JobRef, runnerId: string): Promise<boolean>;
  /** The runner gave the job back (reject) or lost it: re-queued (or cancelled when a cancel was requested). */
  release(ref: JobRef, runnerId: string, now: Date): Promise<JobRecord | undefined>;
  /** The reaper's release: only while the lease is still expired (a renewal in between wins). */
  releaseExpired(ref: JobRef, now: Date): Promise<JobRecord | undefined>;
  /** Applies a result once: only for the attempt the runner holds, and only while unfinished. */
  applyResult(result: JobResult, runnerId: string, now: Date): Promise<JobRecord | undefined>;
  /**
   * applyResult() for a batch, in one statement (each job at most once): returns the jobs
   * whose result was applied, each under applyResult()'s conditions.
   */
  applyResults(reports: readonly { result: JobResult; runnerId: string; at: Date }[]): Promise<JobRecord[]>;
  /** Extends the lease of every job the runner holds; returns how many. */
  renewLeases(runnerId: string, leaseExpiresAt: Date): Promise<number>;
  /** Moves every active lease that ends earlier to `leaseExpiresAt`; returns how many. */
  extendActiveLeases(leaseExpiresAt: Date): Promise<number>;
  /** Queued → cancelled at once; assigned/running → cancel requested (the runner confirms with a result). */
  requestCancel(id: string, now: Date): Promise<{ job: JobRecord; change: CancelChange } | undefined>;
  /**
   * Stores a log chunk of the unfinished attempt `runnerId` holds, within the limits; a repeat
   * (same attempt and seq), another attempt's chunk, or a chunk after the result is dropped.
   */
  insertLog(
    ref: JobRef,
    runnerId: string,
    chunk: Omit<LogChunk, "attempt">,
    limits: LogLimits,
  ): Promise<LogInsertOutcome>;
  /** The job's chunks by attempt then seq; with a page, at most `limit` of those after (attempt, seq) `after`. */
  listLogs(jobId: string, page?: { after?: { attempt: number; seq: number }; limit: number }): Promise<LogChunk[]>;
}

/** Devices per runner. A batch is applied atomically and idempotently. */
export interface DeviceStoreContract {
  /** The count and digest (protocol/devices.ts digestOf) of the runner's present devices. */
  summarize(runnerId: string): Promise<{ count: number; digest: string }>;
  /** A summary that matched confirms every present device as seen now. */
  touchPresent(runnerId: string, now: Date): Promise<void>;
  /**
   * Applies the batch unless the runner would then hold more than `maxRows` device rows: rows
   * of removed devices are deleted first to make room, and if that is not enough nothing is
   * applied (`refusedRows`). A completed full snapshot that leaves no device present deletes
   * all of the runner's rows: an empty inventory keeps nothing.
   */
  applyBatch(runnerId: string, batch: DevicesBatchMessage, now: Date, maxRows: number): Promise<AppliedBatch>;
  /**
   * Devices of one runner, or of all runners, optionally of one kind or state; ordered by
   * runner then device id; with a page, at most `limit` of those after (runnerId, deviceId) `after`.
   */
  list(
    filter?: { runnerId?: string; kind?: string; state?: DeviceState },
    page?: { after?: { runnerId: string; deviceId: string }; limit: number },
  ): Promise<DeviceRecord[]>;
  /** Whether the runner has a present, not stale device matching the requirement that its last scan saw online. */
  hasOnlineDevice(runnerId: string, requirement: DeviceRequirement): Promise<boolean>;
}

export interface ControlPlaneStore {
  readonly engine: StoreEngineName;
  /** The job queue's tables. */
  readonly jobs: JobStoreContract;
  /** Devices per runner. */
  readonly devices: DeviceStoreContract;
  /** The schema version of the open database. */
  schemaVersion(): Promise<number>;
  /**
   * Opens this process's end of the replicas' bus (queue/replica-bus.ts): on PostgreSQL it
   * LISTENs (resolved once listening) and publishes with NOTIFY; on SQLite there is no one to tell.
   */
  openBus(replicaId: string, handlers: ReplicaBusHandlers, logger: Logger): Promise<ReplicaBus>;
  close(): Promise<void>;

  getSetting(key: string): Promise<string | undefined>;
  setSetting(key: string, value: string): Promise<void>;
  /** Stores the value only when the key has none; returns whether it did (replicas starting at once: one wins). */
  insertSettingIfAbsent(key: string, value: string): Promise<boolean>;

  insertRegistrationToken(token: { id: string; tokenHash: string; createdAt: Date; expiresAt: Date }): Promise<void>;
  /**
   * Consumes the one-time token `tokenHash` and creates the runner, atomically. The token is
   * checked before the name so that a caller without a valid token learns nothing about which
   * names exist; on `name_taken` the token stays usable. Two requests with one token register
   * exactly one runner.
   */
  registerRunner(input: {
    tokenHash: string;
    runner: NewRunner;
    replace: boolean;
    now: Date;
  }): Promise<RegisterOutcome>;

  /** Whether `tokenHash` is a registration token that is unused and unexpired at `now` (nothing is consumed). */
  registrationTokenUsable(tokenHash: string, now: Date): Promise<boolean>;

  findRunner(id: string): Promise<RunnerRecord | undefined>;
  /** Runners by name; with a page, at most `limit` of those named after `afterName`. */
  listRunners(page?: { afterName?: string; limit: number }): Promise<RunnerRecord[]>;
  /**
   * A new channel of the runner: raises its connection generation (one conditional UPDATE,
   * so of two connections made at once on two replicas each gets its own number and the
   * higher is the newer) and marks it seen. Undefined if the runner is gone.
   */
  openChannelGeneration(id: string, now: Date): Promise<number | undefined>;
  /** The runner's current connection generation (0 before any); undefined if it is gone. */
  channelGeneration(id: string): Promise<number | undefined>;
  /** Records that the runner was seen; returns the updated runner, undefined if it is gone. */
  touchRunner(id: string, now: Date): Promise<RunnerRecord | undefined>;
  /** Binds the runner to new host facts (and marks it seen); undefined if it is gone. */
  rebindRunnerHost(id: string, host: HostFacts, now: Date): Promise<RunnerRecord | undefined>;
  /** Revokes the runner's credential; revoking twice keeps the first time. */
  revokeRunner(id: string, now: Date): Promise<RunnerRecord | undefined>;
  /** Pauses the runner (keeping the first pause time; the reason is the latest), or resumes it with `null`. */
  setRunnerPaused(id: string, pause: { reason: string; at: Date } | null): Promise<RunnerRecord | undefined>;
  /** Replaces the runner's registered labels (those that gate jobs). */
  setRunnerLabels(id: string, labels: readonly string[]): Promise<RunnerRecord | undefined>;
  /** Deletes the runner (and its devices); false if there was none. */
  deleteRunner(id: string): Promise<boolean>;
}
