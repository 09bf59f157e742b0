// The job queue's SQL, shared by both engines (see sql.ts for the dialect rules). Every state
// change is ONE conditional UPDATE whose WHERE clause states the state it starts from
// (`status = 'queued'` to claim; `attempt = ? AND runner_id = ? AND status IN
// ('assigned','running')` for what a runner reports), and the caller learns from the returned
// row (or its absence) whether it happened. So a job is claimed by one runner only, a result
// applies at most once, and a message about an older attempt (the fencing token) changes
// nothing, however many control planes share the database.
import { MAX_ATTEMPT, jobResultSchema, jobSpecSchema, type JobRef, type JobResult } from "../../protocol/channel.js";
import { jobStatusSchema, labelsSchema, type JobStatus } from "../../protocol/http.js";
import { deviceRequirementSchema, type DeviceRequirement } from "../../protocol/devices.js";
import { RunnerError } from "../../errors.js";
import type {
  CancelChange,
  JobRecord,
  JobStoreContract,
  LogChunk,
  LogInsertOutcome,
  LogLimits,
  NewJob,
  QueuedJob,
  QueuedRequirements,
} from "./contract.js";
import type { SqlEngine, SqlValue } from "./sql.js";

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

/** The columns of a JobRow, for a RETURNING that may not say `*`. */
const JOB_COLUMNS = [
  "id",
  "status",
  "attempt",
  "runner_id",
  "spec",
  "timeout_ms",
  "cancel_grace_ms",
  "required_labels",
  "required_devices",
  "cancel_requested",
  "submitted_at",
  "assigned_at",
  "started_at",
  "finished_at",
  "lease_expires_at",
  "result",
].join(", ");

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
  finished_at      = CASE WHEN cancel_requested = 1 THEN CAST(? AS BIGINT) ELSE NULL END,
  lease_expires_at = NULL`;

export class SqlJobStore implements JobStoreContract {
  constructor(private readonly db: SqlEngine) {}

  async insert(job: NewJob, notice?: { channel: string; payload: string }): Promise<JobRecord> {
    if (notice && !this.db.dialect.notifies) throw new Error(`the ${this.db.name} store cannot send a NOTIFY`);
    const insert = `INSERT INTO jobs (id, queue_position, status, spec, timeout_ms, cancel_grace_ms, required_labels, required_devices, submitted_at)
       VALUES (?, ${this.db.dialect.nextQueuePosition}, 'queued', ?, ?, ?, ?, ?, ?) RETURNING *`;
    const params: SqlValue[] = [
      job.id,
      JSON.stringify(job.spec),
      job.timeoutMs,
      job.cancelGraceMs,
      JSON.stringify(job.requiredLabels),
      JSON.stringify(job.requiredDevices ?? []),
      job.submittedAt.getTime(),
    ];
    // With a notice, the NOTIFY rides in the INSERT's own statement (one round trip, not two);
    // PostgreSQL delivers it at commit, so no listener hears it before it can read the row.
    const row = notice
      ? await this.db.get<JobRow>(
          `WITH inserted AS (${insert}) SELECT inserted.*, pg_notify(?, ?) AS notified FROM inserted`,
          [...params, notice.channel, notice.payload],
        )
      : await this.db.get<JobRow>(insert, params);
    return toJobRecord(row!);
  }

  async find(id: string): Promise<JobRecord | undefined> {
    return optionalRecord(await this.db.get<JobRow>("SELECT * FROM jobs WHERE id = ?", [id]));
  }

  async list(status?: JobStatus, page?: { afterId?: string; limit: number }): Promise<JobRecord[]> {
    // Conditions are added only when given, so that each page is an index range (by status
    // and position, or by position), not a scan from the start. A cursor's job is found by id
    // (jobs are never deleted); from it on, the submit order.
    const where: string[] = [];
    const params: SqlValue[] = [];
    if (status !== undefined) {
      where.push("status = ?");
      params.push(status);
    }
    if (page?.afterId !== undefined) {
      where.push("queue_position > (SELECT queue_position FROM jobs WHERE id = ?)");
      params.push(page.afterId);
    }
    if (page) params.push(page.limit);
    const rows = await this.db.all<JobRow>(
      `SELECT * FROM jobs${where.length > 0 ? ` WHERE ${where.join(" AND ")}` : ""}
       ORDER BY queue_position${page ? " LIMIT ?" : ""}`,
      params,
    );
    return rows.map(toJobRecord);
  }

  async listQueued(
    afterPosition: number,
    limit: number,
    only?: readonly QueuedRequirements["key"][],
  ): Promise<QueuedJob[]> {
    if (only?.length === 0) return [];
    // One equality pair per group: each is a range of the jobs_queued_by_requirements index.
    const groups = only?.map(() => "(required_labels = ? AND required_devices = ?)").join(" OR ");
    const rows = await this.db.all<{
      position: number;
      id: string;
      required_labels: string;
      required_devices: string;
    }>(
      `SELECT queue_position AS position, id, required_labels, required_devices FROM jobs
       WHERE status = 'queued' AND queue_position > ?${groups === undefined ? "" : ` AND (${groups})`}
       ORDER BY queue_position LIMIT ?`,
      [afterPosition, ...(only?.flatMap((key) => [key.labels, key.devices]) ?? []), limit],
    );
    return rows.map((row) => ({
      position: row.position,
      id: row.id,
      requiredLabels: parseLabels(row.required_labels),
      requiredDevices: parseDeviceRequirements(row.required_devices),
    }));
  }

  async listQueuedRequirements(): Promise<QueuedRequirements[]> {
    return (await this.listQueuedHead(0)).groups;
  }

  async listQueuedHead(limit: number): Promise<{ groups: QueuedRequirements[]; head: QueuedJob[] }> {
    // The queue's distinct requirement groups and listQueued(0, limit) as the two halves of
    // one UNION ALL (each half the same index read as alone), told apart by `kind`.
    const rows = await this.db.all<{
      kind: "group" | "job";
      required_labels: string;
      required_devices: string;
      position: number | null;
      id: string | null;
    }>(
      `SELECT 'group' AS kind, required_labels, required_devices, CAST(NULL AS BIGINT) AS position, CAST(NULL AS TEXT) AS id
         FROM (SELECT DISTINCT required_labels, required_devices FROM jobs WHERE status = 'queued') AS queued_groups
       UNION ALL
       SELECT 'job', required_labels, required_devices, queue_position, id
         FROM (SELECT queue_position, id, required_labels, required_devices FROM jobs
               WHERE status = 'queued' ORDER BY queue_position LIMIT ?) AS queued_head`,
      [limit],
    );
    const groups: QueuedRequirements[] = [];
    const head: QueuedJob[] = [];
    for (const row of rows) {
      const requiredLabels = parseLabels(row.required_labels);
      const requiredDevices = parseDeviceRequirements(row.required_devices);
      if (row.kind === "group")
        groups.push({
          key: { labels: row.required_labels, devices: row.required_devices },
          requiredLabels,
          requiredDevices,
        });
      else head.push({ position: row.position!, id: row.id!, requiredLabels, requiredDevices });
    }
    // A UNION ALL promises no order across its halves: the head is put back in submit order.
    head.sort((a, b) => a.position - b.position);
    return { groups, head };
  }

  async listActiveForRunner(runnerId: string): Promise<JobRecord[]> {
    const rows = await this.db.all<JobRow>(
      `SELECT * FROM jobs WHERE runner_id = ? AND ${ACTIVE} ORDER BY queue_position`,
      [runnerId],
    );
    return rows.map(toJobRecord);
  }

  async listExpired(now: Date): Promise<(JobRef & { runnerId: string | null })[]> {
    const rows = await this.db.all<{ id: string; attempt: number; runner_id: string | null }>(
      `SELECT id, attempt, runner_id FROM jobs WHERE lease_expires_at <= ? AND ${ACTIVE} ORDER BY lease_expires_at`,
      [now.getTime()],
    );
    return rows.map((row) => ({ jobId: row.id, attempt: row.attempt, runnerId: row.runner_id }));
  }

  /** claimMany() of one: the same statement, so one rule for both. */
  async claim(id: string, runnerId: string, now: Date, leaseExpiresAt: Date): Promise<JobRecord | undefined> {
    return (await this.claimMany([{ jobId: id, runnerId }], now, leaseExpiresAt))[0];
  }

  async claimMany(
    claims: readonly { jobId: string; runnerId: string }[],
    now: Date,
    leaseExpiresAt: Date,
  ): Promise<JobRecord[]> {
    if (claims.length === 0) return [];
    onePerJob(claims.map((claim) => claim.jobId));
    // One statement for the batch, with this rule per row: the rows still queued are
    // locked (those another claimer has locked right now are skipped, not waited for), and
    // only those change, each to its own runner. The pairs come as a CTE of VALUES, which
    // both engines read the same way (SQLite 3.33+ and PostgreSQL both speak UPDATE … FROM).
    // RETURNING names the job's columns: SQLite refuses `jobs.*` there, and PostgreSQL's `*`
    // would add the CTE's.
    const values = claims.map(() => "(CAST(? AS TEXT), CAST(? AS TEXT))").join(", ");
    const rows = await this.db.all<JobRow>(
      `WITH wanted (claimed_id, claimer_id) AS (VALUES ${values})
       UPDATE jobs SET status = 'assigned', attempt = attempt + 1, runner_id = wanted.claimer_id, assigned_at = ?,
                       started_at = NULL, lease_expires_at = ?
       FROM wanted
       WHERE jobs.id = wanted.claimed_id AND jobs.status = 'queued'
         AND jobs.id IN (SELECT id FROM jobs WHERE id IN (SELECT claimed_id FROM wanted) AND status = 'queued'${this.db.dialect.lockSkipLocked})
       RETURNING ${JOB_COLUMNS}`,
      [...claims.flatMap((c) => [c.jobId, c.runnerId]), now.getTime(), leaseExpiresAt.getTime()],
    );
    return rows.map(toJobRecord);
  }

  /** markRunningMany() of one. */
  async markRunning(ref: JobRef, runnerId: string, now: Date): Promise<JobRecord | undefined> {
    return (await this.markRunningMany([{ ref, runnerId, at: now }]))[0];
  }

  async markRunningMany(reported: readonly { ref: JobRef; runnerId: string; at: Date }[]): Promise<JobRecord[]> {
    const reports = reported.filter((report) => storable(report.ref));
    if (reports.length === 0) return [];
    onePerJob(reports.map((report) => report.ref.jobId));
    // Per row: only the runner that holds this attempt, and only once (from assigned).
    const values = reports
      .map(() => "(CAST(? AS TEXT), CAST(? AS INTEGER), CAST(? AS TEXT), CAST(? AS BIGINT))")
      .join(", ");
    const rows = await this.db.all<JobRow>(
      `WITH reported (job_id, job_attempt, holder_id, started) AS (VALUES ${values})
       UPDATE jobs SET status = 'running', started_at = reported.started
       FROM reported
       WHERE jobs.id = reported.job_id AND jobs.attempt = reported.job_attempt
         AND jobs.runner_id = reported.holder_id AND jobs.status = 'assigned'
       RETURNING ${JOB_COLUMNS}`,
      reports.flatMap(({ ref, runnerId, at }) => [ref.jobId, ref.attempt, runnerId, at.getTime()]),
    );
    return rows.map(toJobRecord);
  }

  async holds(ref: JobRef, runnerId: string): Promise<boolean> {
    if (!storable(ref)) return false;
    const row = await this.db.get<{ held: number }>(
      `SELECT 1 AS held FROM jobs WHERE id = ? AND attempt = ? AND runner_id = ? AND ${ACTIVE}`,
      [ref.jobId, ref.attempt, runnerId],
    );
    return row !== undefined;
  }

  async release(ref: JobRef, runnerId: string, now: Date): Promise<JobRecord | undefined> {
    if (!storable(ref)) return undefined;
    return optionalRecord(
      await this.db.get<JobRow>(
        `UPDATE jobs SET ${RELEASE_SET} WHERE id = ? AND attempt = ? AND runner_id = ? AND ${ACTIVE} RETURNING *`,
        [now.getTime(), ref.jobId, ref.attempt, runnerId],
      ),
    );
  }

  async releaseExpired(ref: JobRef, now: Date): Promise<JobRecord | undefined> {
    const at = now.getTime();
    return optionalRecord(
      await this.db.get<JobRow>(
        `UPDATE jobs SET ${RELEASE_SET} WHERE id = ? AND attempt = ? AND lease_expires_at <= ? AND ${ACTIVE} RETURNING *`,
        [at, ref.jobId, ref.attempt, at],
      ),
    );
  }

  /** applyResults() of one. */
  async applyResult(result: JobResult, runnerId: string, now: Date): Promise<JobRecord | undefined> {
    return (await this.applyResults([{ result, runnerId, at: now }]))[0];
  }

  async applyResults(reported: readonly { result: JobResult; runnerId: string; at: Date }[]): Promise<JobRecord[]> {
    const reports = reported.filter((report) => storable(report.result));
    if (reports.length === 0) return [];
    onePerJob(reports.map((report) => report.result.jobId));
    // Per row: only the runner that holds this attempt, and only while it is active (once).
    const values = reports
      .map(
        () =>
          "(CAST(? AS TEXT), CAST(? AS INTEGER), CAST(? AS TEXT), CAST(? AS TEXT), CAST(? AS TEXT), CAST(? AS BIGINT))",
      )
      .join(", ");
    const rows = await this.db.all<JobRow>(
      `WITH reported (job_id, job_attempt, holder_id, outcome, result_json, finished) AS (VALUES ${values})
       UPDATE jobs SET status = reported.outcome, result = reported.result_json, finished_at = reported.finished,
                       lease_expires_at = NULL
       FROM reported
       WHERE jobs.id = reported.job_id AND jobs.attempt = reported.job_attempt
         AND jobs.runner_id = reported.holder_id AND jobs.${ACTIVE}
       RETURNING ${JOB_COLUMNS}`,
      reports.flatMap(({ result, runnerId, at }) => [
        result.jobId,
        result.attempt,
        runnerId,
        result.outcome,
        JSON.stringify(result),
        at.getTime(),
      ]),
    );
    return rows.map(toJobRecord);
  }

  renewLeases(runnerId: string, leaseExpiresAt: Date): Promise<number> {
    return this.db.run(`UPDATE jobs SET lease_expires_at = ? WHERE runner_id = ? AND ${ACTIVE}`, [
      leaseExpiresAt.getTime(),
      runnerId,
    ]);
  }

  extendActiveLeases(leaseExpiresAt: Date): Promise<number> {
    return this.db.run(`UPDATE jobs SET lease_expires_at = ? WHERE lease_expires_at < ? AND ${ACTIVE}`, [
      leaseExpiresAt.getTime(),
      leaseExpiresAt.getTime(),
    ]);
  }

  requestCancel(id: string, now: Date): Promise<{ job: JobRecord; change: CancelChange } | undefined> {
    return this.db.transaction(async (tx) => {
      let change: CancelChange = "unchanged";
      if (
        (await tx.run("UPDATE jobs SET status = 'cancelled', finished_at = ? WHERE id = ? AND status = 'queued'", [
          now.getTime(),
          id,
        ])) === 1
      ) {
        change = "cancelled";
      } else if (
        (await tx.run(`UPDATE jobs SET cancel_requested = 1 WHERE id = ? AND cancel_requested = 0 AND ${ACTIVE}`, [
          id,
        ])) === 1
      ) {
        change = "requested";
      }
      const job = optionalRecord(await tx.get<JobRow>("SELECT * FROM jobs WHERE id = ?", [id]));
      return job && { job, change };
    });
  }

  /**
   * One transaction: the job row says whether the runner holds the attempt and whether it is
   * still unfinished; the attempt's totals are raised by a conditional upsert that is the cap
   * (two chunks racing on two replicas cannot both pass it); then the chunk is inserted.
   */
  async insertLog(
    ref: JobRef,
    runnerId: string,
    chunk: Omit<LogChunk, "attempt">,
    limits: LogLimits,
  ): Promise<LogInsertOutcome> {
    if (chunk.seq >= limits.maxChunks) return "seq_out_of_range";
    if (!storable(ref)) return "not_held";
    const bytes = Buffer.byteLength(chunk.data, "utf8");
    return this.db.transaction(async (tx): Promise<LogInsertOutcome> => {
      const job = await tx.get<{ status: string }>(
        "SELECT status FROM jobs WHERE id = ? AND attempt = ? AND runner_id = ?",
        [ref.jobId, ref.attempt, runnerId],
      );
      if (job === undefined) return "not_held";
      if (job.status !== "assigned" && job.status !== "running") return "finished";
      const repeat = await tx.get<{ seq: number }>(
        "SELECT seq FROM job_logs WHERE job_id = ? AND attempt = ? AND seq = ?",
        [ref.jobId, ref.attempt, chunk.seq],
      );
      if (repeat !== undefined) return "repeat";
      const counted = await tx.run(
        `INSERT INTO job_log_totals (job_id, attempt, bytes, chunks)
         SELECT ?, CAST(? AS BIGINT), CAST(? AS BIGINT), 1 WHERE CAST(? AS BIGINT) <= CAST(? AS BIGINT)
         ON CONFLICT (job_id, attempt) DO UPDATE SET bytes = job_log_totals.bytes + excluded.bytes, chunks = job_log_totals.chunks + 1
         WHERE job_log_totals.bytes + excluded.bytes <= CAST(? AS BIGINT)`,
        [ref.jobId, ref.attempt, bytes, bytes, limits.maxBytes, limits.maxBytes],
      );
      if (counted !== 1) return "limit_reached";
      const inserted = await tx.run(
        `INSERT INTO job_logs (job_id, attempt, seq, stream, data)
         VALUES (?, CAST(? AS BIGINT), CAST(? AS BIGINT), CAST(? AS TEXT), ${this.db.dialect.logData.param})
         ON CONFLICT (job_id, attempt, seq) DO NOTHING`,
        [ref.jobId, ref.attempt, chunk.seq, chunk.stream, this.db.dialect.logData.encode(chunk.data)],
      );
      if (inserted === 1) return "stored";
      // The same chunk stored meanwhile by another connection: give its bytes back.
      await tx.run(
        "UPDATE job_log_totals SET bytes = bytes - CAST(? AS BIGINT), chunks = chunks - 1 WHERE job_id = ? AND attempt = ?",
        [bytes, ref.jobId, ref.attempt],
      );
      return "repeat";
    });
  }

  async listLogs(
    jobId: string,
    page?: { after?: { attempt: number; seq: number }; limit: number },
  ): Promise<LogChunk[]> {
    const after = page?.after ?? { attempt: 0, seq: -1 };
    const rows = await this.db.all<Omit<LogChunk, "data"> & { data: unknown }>(
      `SELECT attempt, seq, stream, data FROM job_logs
       WHERE job_id = ? AND (attempt, seq) > (CAST(? AS BIGINT), CAST(? AS BIGINT))
       ORDER BY attempt, seq${page ? " LIMIT ?" : ""}`,
      [jobId, after.attempt, after.seq, ...(page ? [page.limit] : [])],
    );
    const { decode } = this.db.dialect.logData;
    return rows.map((row) => ({ attempt: row.attempt, seq: row.seq, stream: row.stream, data: decode(row.data) }));
  }
}

/**
 * Whether an attempt can be one the store handed out: attempts are stored as 32-bit integers
 * (PostgreSQL's INTEGER), and a control plane never counts that high. A runner naming a higher
 * one does not hold it; asking the database would fail the statement (and with it every report
 * batched alongside).
 */
function storable(ref: JobRef): boolean {
  return ref.attempt <= MAX_ATTEMPT;
}

/** A batch names each job once: two rows of one job would make its outcome ambiguous. */
function onePerJob(jobIds: readonly string[]): void {
  if (new Set(jobIds).size !== jobIds.length)
    throw new RunnerError("internal", "a batch of job transitions names a job more than once");
}

function optionalRecord(row: JobRow | undefined): JobRecord | undefined {
  return row === undefined ? undefined : toJobRecord(row);
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
