// Handlers of the admin job API: submit, list, get (with logs), cancel.
import { encode, jobIdSchema, type Assignment } from "../../protocol/channel.js";
import {
  cancelJobResponseSchema,
  getJobResponseSchema,
  jobStatusSchema,
  listJobLogsResponseSchema,
  listJobsResponseSchema,
  submitJobRequestSchema,
  submitJobResponseSchema,
  type JobView,
} from "../../protocol/http.js";
import type { RouteContext } from "../context.js";
import { HttpError, parseBody, reply, type Reply, type RouteRequest } from "./router.js";
import type { JobRecord, LogChunk } from "../store/contract.js";
import { CURSOR_KEYS, LIST_PAGE, LOG_PAGE, LOG_PAGE_MAX_BYTES, parsePage, takePage } from "./pagination.js";

/** Longest values an `assign` can carry, to size the frame before the job is accepted. */
const LONGEST_JOB_ID = "job_" + "x".repeat(124);
const LATEST_TIMESTAMP = new Date(8.64e15).toISOString();

export async function submitJob(request: RouteRequest, context: RouteContext): Promise<Reply> {
  const body = parseBody(submitJobRequestSchema, request.body);
  const probe: Assignment = {
    type: "assign",
    jobId: LONGEST_JOB_ID,
    attempt: Number.MAX_SAFE_INTEGER,
    job: body.job,
    timeoutMs: body.timeoutMs,
    cancelGraceMs: body.cancelGraceMs,
    leaseExpiresAt: LATEST_TIMESTAMP,
  };
  const frameBytes = Buffer.byteLength(encode(probe));
  if (frameBytes > context.maxFrameBytes) {
    // Refused now rather than never delivered: no runner could receive the assignment.
    throw new HttpError(
      413,
      "payload_too_large",
      `job: its assign frame would be ${frameBytes} bytes, over the channel's limit of ${context.maxFrameBytes}`,
    );
  }
  const { job, claimedHere } = await context.queue.submit({
    spec: body.job,
    timeoutMs: body.timeoutMs,
    cancelGraceMs: body.cancelGraceMs,
    requiredLabels: body.requiredLabels,
    requiredDevices: body.requiredDevices,
  });
  context.logger.info(
    { jobId: job.id, kind: job.spec.kind, requiredLabels: job.requiredLabels, requiredDevices: job.requiredDevices },
    "job submitted",
  );
  // Dispatch ran inside submit: answer with the job as that pass left it (often assigned); one
  // that no pass here claimed is read back, for another replica may have claimed it meanwhile.
  const current = claimedHere ? job : ((await context.store.jobs.find(job.id)) ?? job);
  return reply(submitJobResponseSchema, 201, { job: toJobView(current) });
}

export async function listJobs(request: RouteRequest, context: RouteContext): Promise<Reply> {
  const raw = request.query.get("status");
  let status;
  if (raw !== null) {
    const parsed = jobStatusSchema.safeParse(raw);
    if (!parsed.success)
      throw new HttpError(400, "bad_request", `status: one of ${jobStatusSchema.options.join(", ")}`);
    status = parsed.data;
  }
  const page = parsePage(request.query, LIST_PAGE, CURSOR_KEYS.job);
  const rows = await context.store.jobs.list(status, { afterId: page.after, limit: page.limit + 1 });
  const { items, nextCursor } = takePage(rows, page.limit, (job) => job.id);
  return reply(listJobsResponseSchema, 200, { jobs: items.map(toJobView), nextCursor });
}

/** The job and the first page of its log (`?limit=` sizes that page, as on /logs). */
export async function getJob(request: RouteRequest, context: RouteContext): Promise<Reply> {
  const job = await findJob(request, context);
  const { logs, nextCursor } = await logPage(job.id, request, context);
  return reply(getJobResponseSchema, 200, { job: toJobView(job), logs, logsNextCursor: nextCursor });
}

/** Log chunks read from the store at a time, while a page is filled (a chunk is at most a frame). */
const LOG_SLICE = 64;

/** A page of the job's log chunks, by attempt then seq. */
export async function listJobLogs(request: RouteRequest, context: RouteContext): Promise<Reply> {
  const job = await findJob(request, context);
  return reply(listJobLogsResponseSchema, 200, await logPage(job.id, request, context));
}

async function logPage(
  jobId: string,
  request: RouteRequest,
  context: RouteContext,
): Promise<{ logs: LogChunk[]; nextCursor: string | null }> {
  const page = parsePage(request.query, LOG_PAGE, CURSOR_KEYS.log);
  const after = page.after && { attempt: page.after[0], seq: page.after[1] };
  // Chunks can be up to a frame each: the page also stops at a byte budget (after one chunk at
  // least). They are read in slices, so that no more than the budget and one slice is ever
  // read from the store (a page of `limit` whole frames could be gigabytes).
  const rows: LogChunk[] = [];
  let read = 0;
  let cursor = after;
  while (rows.length <= page.limit) {
    const wanted = Math.min(LOG_SLICE, page.limit + 1 - rows.length);
    const slice = await context.store.jobs.listLogs(jobId, { after: cursor, limit: wanted });
    rows.push(...slice);
    for (const chunk of slice) read += Buffer.byteLength(chunk.data, "utf8");
    const last = slice[slice.length - 1];
    // Past the budget with a chunk to spare: whether another page follows is known.
    if (slice.length < wanted || last === undefined || (read > LOG_PAGE_MAX_BYTES && rows.length > 1)) break;
    cursor = { attempt: last.attempt, seq: last.seq };
  }
  let bytes = 0;
  let fit = 0;
  for (const chunk of rows.slice(0, page.limit)) {
    bytes += Buffer.byteLength(chunk.data, "utf8");
    if (fit > 0 && bytes > LOG_PAGE_MAX_BYTES) break;
    fit++;
  }
  const { items, nextCursor } = takePage(rows, fit, (chunk) => [chunk.attempt, chunk.seq]);
  return { logs: items, nextCursor };
}

/** A terminal job is returned unchanged. */
export async function cancelJob(request: RouteRequest, context: RouteContext): Promise<Reply> {
  const id = (await findJob(request, context)).id;
  const job = await context.queue.cancel(id);
  if (!job) throw jobNotFound(id);
  return reply(cancelJobResponseSchema, 200, { job: toJobView(job) });
}

async function findJob(request: RouteRequest, context: RouteContext): Promise<JobRecord> {
  const id = request.params.id ?? "";
  // An id no job can have (a NUL, which PostgreSQL could not even look up) is simply not found.
  const job = jobIdSchema.safeParse(id).success ? await context.store.jobs.find(id) : undefined;
  if (!job) throw jobNotFound(id);
  return job;
}

function jobNotFound(id: string): HttpError {
  return new HttpError(404, "not_found", `job ${JSON.stringify(id.slice(0, 140))} does not exist`);
}

export function toJobView(job: JobRecord): JobView {
  const iso = (date: Date | null) => date?.toISOString() ?? null;
  return {
    jobId: job.id,
    status: job.status,
    attempt: job.attempt,
    runnerId: job.runnerId,
    job: job.spec,
    timeoutMs: job.timeoutMs,
    cancelGraceMs: job.cancelGraceMs,
    requiredLabels: job.requiredLabels,
    requiredDevices: job.requiredDevices,
    cancelRequested: job.cancelRequested,
    submittedAt: job.submittedAt.toISOString(),
    assignedAt: iso(job.assignedAt),
    startedAt: iso(job.startedAt),
    finishedAt: iso(job.finishedAt),
    result: job.result,
  };
}
