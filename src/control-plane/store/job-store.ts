// The job queue's SQL (tables from migration 2 in store.ts). Every state change is ONE
// conditional UPDATE whose WHERE clause states the state it starts from (`status = 'queued'`
// to claim; `attempt = ? AND runner_id = ? AND status IN ('assigned','running')` for what a
// runner reports), and the caller learns from the returned row (or its absence) whether it
// happened. So a job is claimed by one runner only, a result applies at most once, and a
// message about an older attempt (the fencing token) changes nothing, even with two control
// planes on one database file.
import type Database from "better-sqlite3";
import { jobResultSchema, jobSpecSchema, type JobRef, type JobResult, type JobSpec } from "../../protocol/channel.js";
import { jobStatusSchema, labelsSchema, type JobStatus } from "../../protocol/http.js";
import { deviceRequirementSchema, type DeviceRequirement } from "../../protocol/devices.js";

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

export interface LogChunk {
  attempt: number;
  seq: number;
  stream: "stdout" | "stderr";
  data: string;
}

export type CancelChange = "cancelled" | "requested" | "unchanged";

interface JobRow {
  id: string;
  status: string;
  attempt: number;
  runner_id: string | null;
  spec: string;
  timeout_ms: number;
  cancel_grace_ms: number;
  required_labels: string;
  required_devices: string;
  cancel_requested: number;
  submitted_at: number;
  assigned_at: number | null;
  started_at: number | null;
  finished_at: number | null;
  lease_expires_at: number | null;
  result: string | null;
}

const ACTIVE = "status IN ('assigned', 'running')";

/**
 * Back to the queue, or to `cancelled` when an admin asked for that meanwhile (a job whose
 * runner is gone cannot confirm a cancel). A re-queued job keeps its attempt; the next
 * hand-out raises it. Parameter: finished_at.
 */
const RELEASE_SET = `
  status           = CASE WHEN cancel_requested = 1 THEN 'cancelled' ELSE 'queued' END,
  runner_id        = CASE WHEN cancel_requested = 1 THEN runner_id ELSE NULL END,
  assigned_at      = CASE WHEN cancel_requested = 1 THEN assigned_at ELSE NULL END,
  started_at       = CASE WHEN cancel_requested = 1 THEN started_at ELSE NULL END,
  finished_at      = CASE WHEN cancel_requested = 1 THEN ? ELSE NULL END,
  lease_expires_at = NULL`;

export class JobStore {
  constructor(
    private readonly db: Database.Database,
    private readonly statement: (sql: string) => Database.Statement,
  ) {}

  insert(job: NewJob): JobRecord {
    const row = this.statement(
      `INSERT INTO jobs (id, queue_position, status, spec, timeout_ms, cancel_grace_ms, required_labels, required_devices, submitted_at)
       VALUES (?, (SELECT COALESCE(MAX(queue_position), 0) + 1 FROM jobs), 'queued', ?, ?, ?, ?, ?, ?) RETURNING *`,
    ).get(
      job.id,
      JSON.stringify(job.spec),
      job.timeoutMs,
      job.cancelGraceMs,
      JSON.stringify(job.requiredLabels),
      JSON.stringify(job.requiredDevices ?? []),
      job.submittedAt.getTime(),
    );
    return toJobRecord(row as JobRow);
  }

  find(id: string): JobRecord | undefined {
    return optionalRecord(this.statement("SELECT * FROM jobs WHERE id = ?").get(id));
  }

  /** All jobs, or those with one status, in submit order. */
  list(status?: JobStatus): JobRecord[] {
    const rows =
      status === undefined
        ? this.statement("SELECT * FROM jobs ORDER BY queue_position").all()
        : this.statement("SELECT * FROM jobs WHERE status = ? ORDER BY queue_position").all(status);
    return (rows as JobRow[]).map(toJobRecord);
  }

  /** Queued jobs after `afterPosition`, in submit order: the dispatcher pages through them. */
  listQueued(afterPosition: number, limit: number): QueuedJob[] {
    const rows = this.statement(
      `SELECT queue_position AS position, id, required_labels, required_devices FROM jobs
       WHERE status = 'queued' AND queue_position > ? ORDER BY queue_position LIMIT ?`,
    ).all(afterPosition, limit) as {
      position: number;
      id: string;
      required_labels: string;
      required_devices: string;
    }[];
    return rows.map((row) => ({
      position: row.position,
      id: row.id,
      requiredLabels: parseLabels(row.required_labels),
      requiredDevices: parseDeviceRequirements(row.required_devices),
    }));
  }

  /** Jobs the store has handed to this runner and not seen finish. */
  listActiveForRunner(runnerId: string): JobRecord[] {
    const rows = this.statement(`SELECT * FROM jobs WHERE runner_id = ? AND ${ACTIVE} ORDER BY queue_position`).all(
      runnerId,
    );
    return (rows as JobRow[]).map(toJobRecord);
  }

  /** Active jobs whose lease ran out at or before `now`. */
  listExpired(now: Date): (JobRef & { runnerId: string | null })[] {
    const rows = this.statement(
      `SELECT id, attempt, runner_id FROM jobs WHERE lease_expires_at <= ? AND ${ACTIVE} ORDER BY lease_expires_at`,
    ).all(now.getTime()) as { id: string; attempt: number; runner_id: string | null }[];
    return rows.map((row) => ({ jobId: row.id, attempt: row.attempt, runnerId: row.runner_id }));
  }

  /** queued → assigned to `runnerId`, attempt + 1. Undefined when the job was not queued any more. */
  claim(id: string, runnerId: string, now: Date, leaseExpiresAt: Date): JobRecord | undefined {
    return optionalRecord(
      this.statement(
        `UPDATE jobs SET status = 'assigned', attempt = attempt + 1, runner_id = ?, assigned_at = ?,
                         started_at = NULL, lease_expires_at = ?
         WHERE id = ? AND status = 'queued' RETURNING *`,
      ).get(runnerId, now.getTime(), leaseExpiresAt.getTime(), id),
    );
  }

  /** assigned → running for the runner's current attempt. */
  markRunning(ref: JobRef, runnerId: string, now: Date): JobRecord | undefined {
    return optionalRecord(
      this.statement(
        `UPDATE jobs SET status = 'running', started_at = ?
         WHERE id = ? AND attempt = ? AND runner_id = ? AND status = 'assigned' RETURNING *`,
      ).get(now.getTime(), ref.jobId, ref.attempt, runnerId),
    );
  }

  /** Whether `runnerId` holds this attempt of the job, still unfinished. */
  holds(ref: JobRef, runnerId: string): boolean {
    const row = this.statement(`SELECT 1 FROM jobs WHERE id = ? AND attempt = ? AND runner_id = ? AND ${ACTIVE}`).get(
      ref.jobId,
      ref.attempt,
      runnerId,
    );
    return row !== undefined;
  }

  /** The runner gave the job back (reject) or lost it: re-queue it (or cancel it, see RELEASE_SET). */
  release(ref: JobRef, runnerId: string, now: Date): JobRecord | undefined {
    return optionalRecord(
      this.statement(
        `UPDATE jobs SET ${RELEASE_SET} WHERE id = ? AND attempt = ? AND runner_id = ? AND ${ACTIVE} RETURNING *`,
      ).get(now.getTime(), ref.jobId, ref.attempt, runnerId),
    );
  }

  /** The reaper's release: only while the lease is still expired (a renewal in between wins). */
  releaseExpired(ref: JobRef, now: Date): JobRecord | undefined {
    const at = now.getTime();
    return optionalRecord(
      this.statement(
        `UPDATE jobs SET ${RELEASE_SET} WHERE id = ? AND attempt = ? AND lease_expires_at <= ? AND ${ACTIVE} RETURNING *`,
      ).get(at, ref.jobId, ref.attempt, at),
    );
  }

  /** Applies a result once: only for the attempt the runner holds, and only while unfinished. */
  applyResult(result: JobResult, runnerId: string, now: Date): JobRecord | undefined {
    return optionalRecord(
      this.statement(
        `UPDATE jobs SET status = ?, result = ?, finished_at = ?, lease_expires_at = NULL
         WHERE id = ? AND attempt = ? AND runner_id = ? AND ${ACTIVE} RETURNING *`,
      ).get(result.outcome, JSON.stringify(result), now.getTime(), result.jobId, result.attempt, runnerId),
    );
  }

  /** Extends the lease of every job the runner holds; returns how many. */
  renewLeases(runnerId: string, leaseExpiresAt: Date): number {
    return this.statement(`UPDATE jobs SET lease_expires_at = ? WHERE runner_id = ? AND ${ACTIVE}`).run(
      leaseExpiresAt.getTime(),
      runnerId,
    ).changes;
  }

  /** Moves every active lease that ends earlier to `leaseExpiresAt`; returns how many. */
  extendActiveLeases(leaseExpiresAt: Date): number {
    return this.statement(`UPDATE jobs SET lease_expires_at = ? WHERE lease_expires_at < ? AND ${ACTIVE}`).run(
      leaseExpiresAt.getTime(),
      leaseExpiresAt.getTime(),
    ).changes;
  }

  /** Queued → cancelled at once; assigned/running → cancel requested (the runner confirms with a result). */
  requestCancel(id: string, now: Date): { job: JobRecord; change: CancelChange } | undefined {
    const cancel = this.db.transaction(() => {
      let change: CancelChange = "unchanged";
      if (
        this.statement("UPDATE jobs SET status = 'cancelled', finished_at = ? WHERE id = ? AND status = 'queued'").run(
          now.getTime(),
          id,
        ).changes === 1
      ) {
        change = "cancelled";
      } else if (
        this.statement(`UPDATE jobs SET cancel_requested = 1 WHERE id = ? AND cancel_requested = 0 AND ${ACTIVE}`).run(
          id,
        ).changes === 1
      ) {
        change = "requested";
      }
      const job = this.find(id);
      return job && { job, change };
    });
    return cancel.immediate();
  }

  /**
   * Stores a log chunk of the job's current attempt, held by `runnerId`. A repeated chunk
   * (same attempt and seq) or one of another attempt is dropped; returns whether it was stored.
   */
  insertLog(ref: JobRef, runnerId: string, chunk: Omit<LogChunk, "attempt">): boolean {
    return (
      this.statement(
        `INSERT OR IGNORE INTO job_logs (job_id, attempt, seq, stream, data)
         SELECT id, attempt, ?, ?, ? FROM jobs WHERE id = ? AND attempt = ? AND runner_id = ?`,
      ).run(chunk.seq, chunk.stream, chunk.data, ref.jobId, ref.attempt, runnerId).changes === 1
    );
  }

  listLogs(jobId: string): LogChunk[] {
    return this.statement("SELECT attempt, seq, stream, data FROM job_logs WHERE job_id = ? ORDER BY attempt, seq").all(
      jobId,
    ) as LogChunk[];
  }
}

function optionalRecord(row: unknown): JobRecord | undefined {
  return row === undefined ? undefined : toJobRecord(row as JobRow);
}

function parseLabels(json: string): string[] {
  return labelsSchema.parse(JSON.parse(json));
}

function parseDeviceRequirements(json: string): DeviceRequirement[] {
  // Most jobs require no device: skip the parse on the dispatcher's hot path.
  return json === "[]" ? [] : deviceRequirementSchema.array().parse(JSON.parse(json));
}

const toDate = (ms: number | null): Date | null => (ms === null ? null : new Date(ms));

/** Rows come from disk: status and JSON columns are validated, not trusted. */
function toJobRecord(row: JobRow): JobRecord {
  return {
    id: row.id,
    status: jobStatusSchema.parse(row.status),
    attempt: row.attempt,
    runnerId: row.runner_id,
    spec: jobSpecSchema.parse(JSON.parse(row.spec)),
    timeoutMs: row.timeout_ms,
    cancelGraceMs: row.cancel_grace_ms,
    requiredLabels: parseLabels(row.required_labels),
    requiredDevices: parseDeviceRequirements(row.required_devices),
    cancelRequested: row.cancel_requested === 1,
    submittedAt: new Date(row.submitted_at),
    assignedAt: toDate(row.assigned_at),
    startedAt: toDate(row.started_at),
    finishedAt: toDate(row.finished_at),
    leaseExpiresAt: toDate(row.lease_expires_at),
    result: row.result === null ? null : jobResultSchema.parse(JSON.parse(row.result)),
  };
}
