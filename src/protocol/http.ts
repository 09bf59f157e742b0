// The HTTP half of protocol v1: every request and response body, declared once. Types are
// inferred from the schemas, and both the agent and the reference control plane validate
// with them at the boundary. PROTOCOL.md documents each of these.
import { z } from "zod";
import { jobResultSchema, jobSpecSchema } from "./channel.js";
import {
  attributesSchema,
  deviceIdSchema,
  deviceKindSchema,
  deviceRequirementSchema,
  deviceStateSchema,
} from "./devices.js";

export const API_PREFIX = "/api/v1";

import { labelsSchema, nameSchema as name, runnerIdSchema, withoutNul } from "./common.js";

export { labelsSchema, runnerIdSchema };

/** What a runner tells about its host. The fingerprint binds a credential to one machine. */
export const hostFactsSchema = z.object({
  hostname: z.string().min(1).max(255),
  platform: z.string().min(1).max(32),
  arch: z.string().min(1).max(32),
  fingerprint: z.string().regex(/^[a-f0-9]{64}$/, "a sha256 hex digest"),
});
export type HostFacts = z.infer<typeof hostFactsSchema>;

const versions = {
  protocolVersion: z.number().int().positive(),
  agentVersion: z.string().min(1).max(64),
};

// ---- runner API (Authorization: Bearer <registration token | runner credential>) ----

export const registerRequestSchema = z.object({
  ...versions,
  name,
  labels: labelsSchema.default([]),
  host: hostFactsSchema,
  /** Replace an existing runner of the same name instead of failing with name_taken. */
  replace: z.boolean().default(false),
});
export type RegisterRequest = z.input<typeof registerRequestSchema>;

export const registerResponseSchema = z.object({
  runnerId: runnerIdSchema,
  /** The runner credential. Shown once; the control plane keeps only its hash. */
  credential: z.string().min(20),
  name,
  labels: labelsSchema,
});
export type RegisterResponse = z.infer<typeof registerResponseSchema>;

export const verifyRequestSchema = z.object({
  ...versions,
  runnerId: runnerIdSchema,
  host: hostFactsSchema,
});
export type VerifyRequest = z.infer<typeof verifyRequestSchema>;

export const runnerViewSchema = z.object({
  runnerId: runnerIdSchema,
  name,
  labels: labelsSchema,
  host: hostFactsSchema,
  registeredAt: z.string(),
  lastSeenAt: z.string().nullable(),
  revoked: z.boolean(),
  // Optional (not defaulted) so that the runner's HTTP client, which infers its types from the
  // schemas' input, accepts older control planes unchanged; the reference always sends both.
  /** An admin paused it: it gets no new jobs until resumed. Absent (older control planes): false. */
  paused: z.boolean().optional(),
  /** Why, as the admin said; null when not paused. */
  pauseReason: z.string().nullable().optional(),
});
export type RunnerView = z.infer<typeof runnerViewSchema>;

export const verifyResponseSchema = z.object({ ok: z.literal(true), runner: runnerViewSchema });
export type VerifyResponse = z.infer<typeof verifyResponseSchema>;

/** Re-bind a runner to a changed host. Same body as verify; allowed while the credential is valid. */
export const repairRequestSchema = verifyRequestSchema;
export type RepairRequest = VerifyRequest;
export const repairResponseSchema = z.object({
  ok: z.literal(true),
  runner: runnerViewSchema,
  previousFingerprint: z.string(),
});
export type RepairResponse = z.infer<typeof repairResponseSchema>;

/** The runner removes itself (`runner unregister`). Same auth and errors as verify, except 409. */
export const unregisterRequestSchema = z.object({ ...versions, runnerId: runnerIdSchema });
export type UnregisterRequest = z.infer<typeof unregisterRequestSchema>;
export const unregisterResponseSchema = z.object({ ok: z.literal(true) });

// ---- admin API (Authorization: Bearer <admin token>) ----

export const createRegistrationTokenRequestSchema = z.object({
  /** Seconds until the token expires; default one hour, at most 30 days. */
  expiresInSeconds: z
    .number()
    .int()
    .positive()
    .max(30 * 24 * 3600)
    .default(3600),
});
export type CreateRegistrationTokenRequest = z.input<typeof createRegistrationTokenRequestSchema>;

export const createRegistrationTokenResponseSchema = z.object({
  /** One-time token; the control plane keeps only its hash. */
  token: z.string().min(20),
  tokenId: z.string(),
  expiresAt: z.string(),
});
export type CreateRegistrationTokenResponse = z.infer<typeof createRegistrationTokenResponseSchema>;

/**
 * The cursor of the next page of a list, or null on its last page (PROTOCOL.md, "Pages").
 * Absent (a control plane from before pages, whose answer is the whole list) reads as null.
 */
const nextCursorSchema = z.string().nullable().default(null);

export const listRunnersResponseSchema = z.object({ runners: z.array(runnerViewSchema), nextCursor: nextCursorSchema });
export type ListRunnersResponse = z.infer<typeof listRunnersResponseSchema>;

/** POST /admin/runners/{id}/pause; an empty body is `{}`. */
export const pauseRunnerRequestSchema = z.object({ reason: withoutNul("a pause reason", 1024).optional() });
export type PauseRunnerRequest = z.input<typeof pauseRunnerRequestSchema>;

/** PUT /admin/runners/{id}/labels: the labels that gate jobs (a runner's hello cannot change them). */
export const setRunnerLabelsRequestSchema = z.object({ labels: labelsSchema });

// ---- admin API: jobs ----

export const JOB_STATUSES = ["queued", "assigned", "running", "succeeded", "failed", "cancelled", "timed_out"] as const;
export const jobStatusSchema = z.enum(JOB_STATUSES);
export type JobStatus = z.infer<typeof jobStatusSchema>;

export const submitJobRequestSchema = z.object({
  job: jobSpecSchema,
  /** Whole-job deadline on the runner; default 10 minutes. */
  timeoutMs: z
    .number()
    .int()
    .positive()
    .max(7 * 24 * 3600 * 1000)
    .default(600_000),
  /** Grace between SIGTERM and SIGKILL on cancel or timeout; default 10 s. */
  cancelGraceMs: z.number().int().min(0).max(600_000).default(10_000),
  /** Only a runner having every one of these labels gets the job. */
  requiredLabels: labelsSchema.default([]),
  /** Only a runner with an online device matching each of these ({kind}, {id} or both) gets the job. */
  requiredDevices: z.array(deviceRequirementSchema).max(16).default([]),
});
export type SubmitJobRequest = z.input<typeof submitJobRequestSchema>;

export const jobLogChunkSchema = z.object({
  attempt: z.number().int(),
  seq: z.number().int(),
  stream: z.enum(["stdout", "stderr"]),
  data: z.string(),
});
export type JobLogChunk = z.infer<typeof jobLogChunkSchema>;

export const jobViewSchema = z.object({
  jobId: z.string(),
  status: jobStatusSchema,
  /** 0 until first handed out; raised on each hand-out. */
  attempt: z.number().int().min(0),
  runnerId: runnerIdSchema.nullable(),
  job: jobSpecSchema,
  timeoutMs: z.number().int(),
  cancelGraceMs: z.number().int(),
  requiredLabels: labelsSchema,
  cancelRequested: z.boolean(),
  submittedAt: z.string(),
  assignedAt: z.string().nullable(),
  startedAt: z.string().nullable(),
  finishedAt: z.string().nullable(),
  result: jobResultSchema.nullable(),
  requiredDevices: z.array(deviceRequirementSchema).default([]),
});
export type JobView = z.infer<typeof jobViewSchema>;

export const submitJobResponseSchema = z.object({ job: jobViewSchema });
/** The job with the first page of its log; `logsNextCursor` continues at GET /admin/jobs/{id}/logs. */
export const getJobResponseSchema = z.object({
  job: jobViewSchema,
  logs: z.array(jobLogChunkSchema),
  logsNextCursor: nextCursorSchema,
});
export const listJobLogsResponseSchema = z.object({ logs: z.array(jobLogChunkSchema), nextCursor: nextCursorSchema });
export const listJobsResponseSchema = z.object({ jobs: z.array(jobViewSchema), nextCursor: nextCursorSchema });
export const cancelJobResponseSchema = z.object({ job: jobViewSchema });

export const healthResponseSchema = z.object({
  ok: z.literal(true),
  protocolVersions: z.array(z.number().int()),
  minAgentVersion: z.string(),
});
export type HealthResponse = z.infer<typeof healthResponseSchema>;

// ---- errors: every non-2xx answer has this body ----

export const ERROR_CODES = [
  "bad_request", //             400: the body or a parameter failed validation
  "unauthorized", //            401: no or unknown bearer token
  "registration_token_invalid", // 401: unknown, used or expired registration token
  "credential_revoked", //      401: the runner credential was revoked by an admin
  "runner_not_found", //        404: the runner was deleted (or never existed)
  "not_found", //               404: no such route or object
  "name_taken", //              409: another runner has this name (use replace)
  "host_fingerprint_mismatch", // 409: the credential is bound to another host; call repair
  "payload_too_large", //       413
  "upgrade_required", //        426: protocol or agent version not supported
  "internal", //                500
] as const;
export type ApiErrorCode = (typeof ERROR_CODES)[number];

export const errorBodySchema = z.object({
  error: z.object({
    code: z.string(),
    message: z.string(),
  }),
});
export type ErrorBody = { error: { code: ApiErrorCode; message: string } };

// ---- admin API: devices ----

/** A runner's device as the control plane stores it. */
export const deviceViewSchema = z.object({
  runnerId: runnerIdSchema,
  id: deviceIdSchema,
  kind: deviceKindSchema,
  name: z.string(),
  /** "offline" once the runner removed it (then `present` is false). */
  state: deviceStateSchema,
  attributes: attributesSchema,
  /** Its provider failed the runner's last scan: this is the last good row. */
  stale: z.boolean(),
  /** False once the runner reported it gone, or left it out of a full snapshot. */
  present: z.boolean(),
  fingerprint: z.string(),
  /** When the runner last confirmed it (an upsert, or a summary that matched). */
  lastSeenAt: z.string(),
  /** When its content or presence last changed. */
  updatedAt: z.string(),
  /** Whether its runner's channel is up now (its rows are kept while it is away). */
  runnerConnected: z.boolean(),
});
export type DeviceView = z.infer<typeof deviceViewSchema>;
export const listDevicesResponseSchema = z.object({ devices: z.array(deviceViewSchema), nextCursor: nextCursorSchema });
