// Handlers of the admin job API: submit, list, get (with logs), cancel.
import { encode, type Assignment } from "../../protocol/channel.js";
import {
  cancelJobResponseSchema,
  getJobResponseSchema,
  jobStatusSchema,
  listJobsResponseSchema,
  submitJobRequestSchema,
  submitJobResponseSchema,
  type JobView,
} from "../../protocol/http.js";
import type { RouteContext } from "../context.js";
import { HttpError, parseBody, reply, type Reply, type RouteRequest } from "./router.js";
import type { JobRecord } from "../store/contract.js";

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
  const job = await context.queue.submit({
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
  // Dispatch ran inside submit: answer with the job as it is now (often already assigned).
  return reply(submitJobResponseSchema, 201, { job: toJobView((await context.store.jobs.find(job.id)) ?? job) });
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
  return reply(listJobsResponseSchema, 200, { jobs: (await context.store.jobs.list(status)).map(toJobView) });
}

export async function getJob(request: RouteRequest, context: RouteContext): Promise<Reply> {
  const job = await findJob(request, context);
  return reply(getJobResponseSchema, 200, { job: toJobView(job), logs: await context.store.jobs.listLogs(job.id) });
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
  const job = await context.store.jobs.find(id);
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
