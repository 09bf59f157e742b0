// The WebSocket half of protocol v1: every channel message, declared once as a zod schema
// (the TypeScript types are inferred from them), plus encode/decode with the frame limit.
// Both the agent and the reference control plane decode every frame through `decode*`.
import { z } from "zod";
import { capText } from "../log/cap-text.js";
import { MAX_CAPACITY, handlerNameSchema, labelsSchema, runnerIdSchema, withoutNul } from "./common.js";
import {
  describeRepeatedRow,
  devicesAckSchema,
  devicesBatchSchema,
  devicesResyncSchema,
  devicesSummarySchema,
  repeatedDeviceRows,
} from "./devices.js";

/** The upgrade path. Auth: `Authorization: Bearer <credential>`, `X-Runner-Id`, `X-Runner-Protocol`. */
export const CHANNEL_PATH = "/api/v1/channel";
export const RUNNER_ID_HEADER = "x-runner-id";
export const PROTOCOL_HEADER = "x-runner-protocol";
export const AGENT_VERSION_HEADER = "x-runner-agent-version";

/**
 * The runner accepts no frame larger than this (ws `maxPayload`), and the reference control
 * plane's default limit; a control plane may announce less in `welcome.maxFrameBytes`.
 */
export const DEFAULT_MAX_FRAME_BYTES = 1024 * 1024;
/** The smallest `welcome.maxFrameBytes` a control plane may announce. */
export const MIN_MAX_FRAME_BYTES = 1024;

/** Looked up in the store: no NUL (common.ts). */
export const jobIdSchema = withoutNul("a job id", 128, 1);
const jobId = jobIdSchema;
/** The fencing token: raised each time the job is handed out; a result for an older attempt is stale. */
const attempt = z.number().int().positive();
/**
 * The highest attempt a control plane hands out (2^31 − 1: it fits a 32-bit column). A message
 * naming a higher one still decodes (any integer ≥ 1 does): it is about an attempt the sender
 * does not hold, and is fenced like any other.
 */
export const MAX_ATTEMPT = 2_147_483_647;
const jobRef = { jobId, attempt };
export const jobRefSchema = z.object(jobRef);
export type JobRef = z.infer<typeof jobRefSchema>;

// ---- job specs ----
//
// Every field of a job comes from the network and ends up in a spawn() call, an IPC message or a
// handler: each is bounded here, once, for the control plane (which checks a submitted job with
// these schemas) and the runner alike. A string with a NUL cannot be an argument, a variable or
// a path (the OS would cut it or spawn() would throw); a payload nested past PAYLOAD_MAX_DEPTH
// cannot cross the JSON IPC to a worker. Sizes are bounded further by the frame limit.

/** The longest timeout a Node timer can hold (2^31 − 1 ms, ~24.8 days); a larger one fires at once. */
export const MAX_TIMEOUT_MS = 2_147_483_647;
/** How deeply a module job's payload may nest arrays and objects (the value itself is depth 1). */
export const PAYLOAD_MAX_DEPTH = 64;
export const ARGV_MAX_ITEMS = 4096;
export const ENV_MAX_ENTRIES = 1024;
/** Each argv item and env value, in UTF-16 code units (JSON string length). */
export const JOB_STRING_MAX = 64 * 1024;
export const CWD_MAX = 4096;

export const commandJobSchema = z.object({
  kind: z.literal("command"),
  /** argv[0] is the program; no shell is involved. */
  argv: z
    .array(withoutNul("an argument", JOB_STRING_MAX))
    .min(1)
    .max(ARGV_MAX_ITEMS)
    .refine((argv) => argv[0] !== "", "argv[0] (the program) must not be empty"),
  env: z
    .record(
      z
        .string()
        .regex(
          /^[A-Za-z_][A-Za-z0-9_]{0,255}$/,
          "an environment variable name is a letter or '_', then letters, digits or '_' (at most 256)",
        ),
      withoutNul("an environment value", JOB_STRING_MAX),
    )
    .refine((env) => Object.keys(env).length <= ENV_MAX_ENTRIES, `at most ${ENV_MAX_ENTRIES} environment variables`)
    .default({}),
  cwd: withoutNul("cwd", CWD_MAX, 1).optional(),
  /** Without a cwd the job runs in a fresh directory of its own: kept after the job when true. */
  keepWorkDir: z.boolean().optional(),
});
export type CommandJob = z.infer<typeof commandJobSchema>;

/**
 * A handler the runner's own config maps to a local module (the control plane names it, it
 * cannot name a path): the runner's worker imports that module once and calls it per job.
 */
export const moduleJobSchema = z.object({
  kind: z.literal("module"),
  handler: handlerNameSchema,
  /** Any JSON value nested at most PAYLOAD_MAX_DEPTH deep, handed to the handler as it is. */
  payload: z
    .unknown()
    .refine(
      (payload) => jsonDepth(payload, PAYLOAD_MAX_DEPTH) <= PAYLOAD_MAX_DEPTH,
      `the payload nests deeper than ${PAYLOAD_MAX_DEPTH} levels`,
    ),
});
export type ModuleJob = z.infer<typeof moduleJobSchema>;

export const jobSpecSchema = z.discriminatedUnion("kind", [commandJobSchema, moduleJobSchema]);
export type JobSpec = z.infer<typeof jobSpecSchema>;

/**
 * What the runner makes of an `assign` whose job breaks the rules above: the frame still decodes
 * (its jobId and attempt are good), and the job fails at once with `problem` as its reason,
 * instead of the frame being dropped and the job left waiting for its lease to expire.
 */
const unusableJobSchema = z.object({ kind: z.literal("unusable"), problem: z.string().max(1024) });
export type UnusableJob = z.infer<typeof unusableJobSchema>;

/**
 * The depth of a JSON value (a scalar is 1, `[]` and `{}` are 1, `[[]]` is 2), counted without
 * recursion so a hostile value cannot overflow the stack; stops counting past `stopAfter`.
 */
export function jsonDepth(value: unknown, stopAfter = Infinity): number {
  let deepest = 0;
  const pending: [unknown, number][] = [[value, 1]];
  while (pending.length > 0) {
    const [item, depth] = pending.pop()!;
    deepest = Math.max(deepest, depth);
    if (deepest > stopAfter) return deepest;
    if (typeof item !== "object" || item === null) continue;
    for (const child of Array.isArray(item) ? item : Object.values(item)) pending.push([child, depth + 1]);
  }
  return deepest;
}

/** Why an assignment the runner decoded cannot run (an unusable job, a timeout no timer holds), or null. */
export function assignmentProblem(assignment: Assignment): string | null {
  if (assignment.job.kind === "unusable") return assignment.job.problem;
  if (assignment.timeoutMs > MAX_TIMEOUT_MS)
    return `timeoutMs ${assignment.timeoutMs} is above the longest timeout, ${MAX_TIMEOUT_MS} ms`;
  return null;
}

/** The JobSpec rules a job breaks, field by field (bounded: it becomes a result's reason). */
function describeJobProblems(job: unknown): string {
  const parsed = jobSpecSchema.safeParse(job);
  if (parsed.success) return "invalid job"; // it broke only the shape of an unusable job
  const issues = parsed.error.issues.map((i) => `${["job", ...i.path].join(".")}: ${i.message}`).join("; ");
  return `invalid job: ${issues}`.slice(0, 1000);
}

export const OUTCOMES = ["succeeded", "failed", "cancelled", "timed_out"] as const;
export const outcomeSchema = z.enum(OUTCOMES);
export type Outcome = z.infer<typeof outcomeSchema>;

/** The longest `reason` a result may carry (PROTOCOL.md, JobResult). */
export const MAX_RESULT_REASON_CHARS = 4096;
/**
 * The longest `signal` a result may carry: a signal's name (`SIGKILL`), 1-32 characters
 * (PROTOCOL.md, JobResult). Bounded like every string from the wire that is kept and shown.
 */
export const MAX_RESULT_SIGNAL_CHARS = 32;

export const jobResultSchema = z.object({
  ...jobRef,
  outcome: outcomeSchema,
  exitCode: z.number().int().nullable(),
  signal: z.string().min(1).max(MAX_RESULT_SIGNAL_CHARS).nullable(),
  /** Why it failed or was cancelled, in words or a stable code (e.g. "agent restarted"). */
  reason: z.string().max(MAX_RESULT_REASON_CHARS).nullable(),
  startedAt: z.string().nullable(),
  finishedAt: z.string(),
});
export type JobResult = z.infer<typeof jobResultSchema>;

/**
 * `result` within the protocol's bounds: a reason too long cut, with a marker that says how much
 * was cut, and a signal name too long cut to its first 32 characters (an empty one is no
 * signal). A reason can quote the job (`cannot start: ENOENT: <argv[0]>`, up to 64 KiB): uncut,
 * the result could be neither written to the outbox nor applied, and its job would never end.
 * The signals Node reports are short names; the bound holds whatever reports one.
 */
export function withBoundedFields(result: JobResult): JobResult {
  const { reason, signal } = result;
  const boundedSignal = signal === "" ? null : (signal?.slice(0, MAX_RESULT_SIGNAL_CHARS) ?? null);
  if ((reason === null || reason.length <= MAX_RESULT_REASON_CHARS) && boundedSignal === signal) return result;
  // capText appends "… [N more chars]": 32 characters leave room for it.
  const boundedReason =
    reason === null || reason.length <= MAX_RESULT_REASON_CHARS
      ? reason
      : capText(reason, MAX_RESULT_REASON_CHARS - 32);
  return { ...result, reason: boundedReason, signal: boundedSignal };
}

// ---- runner → control plane ----

/**
 * The most job refs `hello.running` and `hello.pendingResults` may each list. A runner runs at
 * most its capacity (≤ MAX_CAPACITY) at once; it may hold more unacknowledged results than that
 * after a long outage, and then lists this many of them (machine.ts).
 */
export const HELLO_MAX_JOB_REFS = MAX_CAPACITY;

export const helloSchema = z.object({
  type: z.literal("hello"),
  protocolVersion: z.number().int().positive(),
  agentVersion: z.string().min(1).max(64),
  runnerId: runnerIdSchema,
  capacity: z.number().int().min(0).max(MAX_CAPACITY),
  /** Jobs this runner is still running (survived a disconnect). */
  running: z.array(jobRefSchema).max(HELLO_MAX_JOB_REFS),
  /** Results this runner holds that the control plane has not acknowledged; they follow as `result` messages. */
  pendingResults: z.array(jobRefSchema).max(HELLO_MAX_JOB_REFS),
  labels: labelsSchema.optional(),
});

/** Credit-based flow control: grants `slots` more job assignments. */
export const readySchema = z.object({ type: z.literal("ready"), slots: z.number().int().min(1).max(1024) });
export const acceptSchema = z.object({ type: z.literal("accept"), ...jobRef });
export const rejectSchema = z.object({ type: z.literal("reject"), ...jobRef, reason: z.string().max(1024) });
export const startedSchema = z.object({ type: z.literal("started"), ...jobRef, startedAt: z.string() });
export const logSchema = z.object({
  type: z.literal("log"),
  ...jobRef,
  /** Per job attempt, from 0, without gaps: a receiver can tell a lost or repeated chunk. */
  seq: z.number().int().min(0),
  stream: z.enum(["stdout", "stderr"]),
  data: z.string(),
});
export const resultSchema = z.object({ type: z.literal("result"), result: jobResultSchema });
/** The runner is going away (drain finished, or shutting down): no more assignments. */
export const goodbyeSchema = z.object({ type: z.literal("goodbye"), reason: z.string().max(1024) });

const runnerMessageUnion = z.discriminatedUnion("type", [
  helloSchema,
  readySchema,
  acceptSchema,
  rejectSchema,
  startedSchema,
  logSchema,
  resultSchema,
  goodbyeSchema,
  devicesSummarySchema,
  devicesBatchSchema,
]);
/**
 * Every runner message; a `devices` batch also names each device at most once (a rule across
 * its two lists, checked here because a discriminated union holds only plain objects).
 */
export const runnerMessageSchema = runnerMessageUnion.superRefine((message, ctx) => {
  if (message.type !== "devices") return;
  const upsertIds = message.upserts.map((device) => device.id);
  for (const row of repeatedDeviceRows(upsertIds, message.removals))
    ctx.addIssue({ code: z.ZodIssueCode.custom, path: [row.list, row.index], message: describeRepeatedRow(row) });
});
export type RunnerMessage = z.infer<typeof runnerMessageSchema>;

// ---- control plane → runner ----

export const welcomeSchema = z.object({
  type: z.literal("welcome"),
  protocolVersion: z.number().int().positive(),
  /** The runner pings this often; no pong within the same interval means the connection is dead. */
  heartbeatIntervalMs: z.number().int().min(100).max(600_000),
  /** How long a job's lease lasts without the runner being heard from. */
  leaseMs: z.number().int().min(1000),
  /** The largest frame the runner may send, counted as UTF-8 bytes of the JSON text (escapes included). */
  maxFrameBytes: z.number().int().min(MIN_MAX_FRAME_BYTES),
  /** Of the jobs the runner reported running, those the control plane no longer gives it (they come with `cancel`). */
  fenced: z.array(jobRefSchema).default([]),
  /** Device inventory cadence (optional; the runner has local defaults): scan this often... */
  deviceScanIntervalMs: z
    .number()
    .int()
    .min(1000)
    .max(24 * 3600 * 1000)
    .optional(),
  /** ...and re-send an unchanged device once its last confirmed sync is this old. */
  deviceRefreshMs: z
    .number()
    .int()
    .min(1000)
    .max(7 * 24 * 3600 * 1000)
    .optional(),
  /** An admin paused this runner: it takes no new jobs until `resume` (absent from older control planes: false). */
  paused: z.boolean().default(false),
});

/** The longest grace an assignment may give a job between SIGTERM and SIGKILL. */
export const MAX_CANCEL_GRACE_MS = 600_000;

export const assignSchema = z.object({
  type: z.literal("assign"),
  ...jobRef,
  /** A job breaking the JobSpec rules decodes as an unusable one, which the runner fails with the problem. */
  job: z
    .union([jobSpecSchema, unusableJobSchema])
    .catch((ctx) => ({ kind: "unusable" as const, problem: describeJobProblems(ctx.input) })),
  /** Above MAX_TIMEOUT_MS the runner fails the job at once (assignmentProblem): no timer holds it. */
  timeoutMs: z.number().int().positive(),
  /** Grace between SIGTERM and SIGKILL when the job is cancelled or times out. */
  cancelGraceMs: z.number().int().min(0).max(MAX_CANCEL_GRACE_MS).default(10_000),
  leaseExpiresAt: z.string(),
});
export type Assignment = z.infer<typeof assignSchema>;

export const resultAckSchema = z.object({ type: z.literal("result_ack"), ...jobRef, applied: z.boolean() });
export const cancelSchema = z.object({ type: z.literal("cancel"), ...jobRef, reason: z.string().max(1024) });
/**
 * The control plane asks the runner to take no new jobs (it rejects any `assign` with reason
 * "paused") while its running jobs go on; the connection stays up and the runner does not exit.
 */
export const pauseSchema = z.object({ type: z.literal("pause"), reason: z.string().max(1024) });
/** The end of a pause: the runner takes jobs again and grants its free slots with `ready`. */
export const resumeSchema = z.object({ type: z.literal("resume") });
/** The old name of `pause`, with the same meaning (it once made the runner exit). */
export const drainSchema = z.object({ type: z.literal("drain"), reason: z.string().max(1024) });
/** A frame the control plane could not use; informational, the connection stays up. */
export const protocolErrorSchema = z.object({ type: z.literal("error"), code: z.string(), message: z.string() });

export const controlMessageSchema = z.discriminatedUnion("type", [
  welcomeSchema,
  assignSchema,
  resultAckSchema,
  cancelSchema,
  pauseSchema,
  resumeSchema,
  drainSchema,
  protocolErrorSchema,
  devicesAckSchema,
  devicesResyncSchema,
]);
export type ControlMessage = z.infer<typeof controlMessageSchema>;

// ---- encode / decode ----

export type Decoded<T> =
  { ok: true; message: T } | { ok: false; problem: "not_json" | "unknown_type" | "invalid"; detail: string };

function decodeWith<T>(
  schema: z.ZodType<T, z.ZodTypeDef, unknown>,
  knownTypes: ReadonlySet<string>,
  data: string,
): Decoded<T> {
  let parsed: unknown;
  try {
    parsed = JSON.parse(data);
  } catch {
    return { ok: false, problem: "not_json", detail: `not JSON: ${JSON.stringify(data.slice(0, 80))}` };
  }
  const type = typeof parsed === "object" && parsed !== null ? (parsed as { type?: unknown }).type : undefined;
  if (typeof type !== "string" || !knownTypes.has(type)) {
    // Capped: the type is the peer's text, and the detail is logged (and echoed in `error`). A
    // type that is not a string is named by its kind only: serializing it could recurse as
    // deep as the peer nested it and overflow the stack.
    const named =
      typeof type === "string"
        ? capText(JSON.stringify(type))
        : `(${type === null ? "null" : Array.isArray(type) ? "an array" : typeof type})`;
    return { ok: false, problem: "unknown_type", detail: `unknown message type ${named}` };
  }
  const result = schema.safeParse(parsed);
  if (!result.success) {
    const issues = result.error.issues.map((i) => `${i.path.join(".") || "(root)"}: ${i.message}`).join("; ");
    // zod quotes received values in some issues (an enum's, say): cap the whole detail.
    return { ok: false, problem: "invalid", detail: capText(`${type}: ${issues}`) };
  }
  return { ok: true, message: result.data };
}

const runnerTypes = new Set(runnerMessageUnion.options.map((o) => o.shape.type.value));
const controlTypes = new Set(controlMessageSchema.options.map((o) => o.shape.type.value));

export function decodeRunnerMessage(data: string): Decoded<RunnerMessage> {
  return decodeWith(runnerMessageSchema, runnerTypes, data);
}

export function decodeControlMessage(data: string): Decoded<ControlMessage> {
  const decoded = decodeWith(controlMessageSchema, controlTypes, data);
  return decoded.ok || decoded.problem !== "invalid" ? decoded : (unusableAssignment(data, decoded.detail) ?? decoded);
}

/**
 * An `assign` that breaks the schema outside its job (a timeoutMs that is not a positive
 * integer, a cancelGraceMs out of range, no leaseExpiresAt...) but names a job reference: it
 * becomes an assignment of an unusable job, which the runner fails at once with `detail` as
 * the reason. Dropped instead, it would hold the job until its lease expired, and then again
 * at every hand-out. Without a usable job reference there is nothing to answer.
 */
function unusableAssignment(data: string, detail: string): Decoded<ControlMessage> | null {
  const ref = z.object({ type: z.literal("assign"), ...jobRef }).safeParse(JSON.parse(data));
  if (!ref.success) return null;
  const { jobId, attempt } = ref.data;
  const job = { kind: "unusable" as const, problem: `invalid assignment: ${detail}`.slice(0, 1000) };
  return {
    ok: true,
    message: { type: "assign", jobId, attempt, job, timeoutMs: 1, cancelGraceMs: 0, leaseExpiresAt: "" },
  };
}

export function encode(message: RunnerMessage | ControlMessage): string {
  return JSON.stringify(message);
}
