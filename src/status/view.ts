// The JSON the daemon serves at GET /status, declared once: the daemon builds it
// (snapshot.ts) and `runner status` checks what it reads against it (client.ts).
import { z } from "zod";
import { OUTCOMES } from "../protocol/channel.js";
import { RECONNECT_REASONS } from "./counters.js";
import { RECYCLE_REASONS } from "../workers/parent/recycle-policy.js";

const count = z.number().int().min(0);
const countsOf = <T extends string>(keys: readonly [T, ...T[]]) =>
  z.object(Object.fromEntries(keys.map((k) => [k, count])) as Record<T, typeof count>);

export const statusViewSchema = z.object({
  pid: z.number().int(),
  agentVersion: z.string(),
  protocolVersion: z.number().int(),
  runnerId: z.string(),
  /** When this daemon started (ISO 8601). */
  startedAt: z.string(),
  controlPlaneUrl: z.string(),
  connection: z.object({
    /** The channel's phase: idle | connecting | handshaking | connected | disconnected | stopped. */
    state: z.enum(["idle", "connecting", "handshaking", "connected", "disconnected", "stopped"]),
    since: z.string(),
    /** Consecutive failed connections since one last answered a heartbeat. */
    failures: count,
    reconnects: countsOf(RECONNECT_REASONS),
  }),
  mode: z.enum(["serving", "paused", "draining", "stopping"]),
  ready: z.boolean(),
  /** Why /readyz answers 503; null when it answers 200. */
  notReadyReason: z.string().nullable(),
  capacity: count,
  jobs: z.object({
    running: z.array(
      z.object({
        jobId: z.string(),
        attempt: count,
        /** False while it waits for a worker. */
        started: z.boolean(),
        /** Seconds since the runner accepted it. */
        ageSeconds: z.number().min(0),
      }),
    ),
    byOutcome: countsOf(OUTCOMES),
  }),
  workers: z.array(
    z.object({
      pid: z.number().int(),
      state: z.enum(["starting", "idle", "busy", "retiring", "gone"]),
      jobsRun: count,
      ageSeconds: z.number().min(0),
      /** As the worker last reported (at its start and after each job); null: not known. */
      rssBytes: count.nullable(),
      openFds: count.nullable(),
    }),
  ),
  recycles: countsOf(RECYCLE_REASONS),
  /** Results written to the outbox that the control plane has not acknowledged yet. */
  outbox: z.object({ results: count }),
  devices: z.object({
    phase: z.string(),
    /** Rows of the latest scan; null before the first. */
    inventory: count.nullable(),
    /** Rows the control plane has acknowledged. */
    confirmed: count,
    lastScanAt: z.string().nullable(),
    /** When the control plane last acknowledged a device message. */
    lastAckAt: z.string().nullable(),
    deviceBytesSent: count,
  }),
  lastError: z.object({ at: z.string(), message: z.string() }).nullable(),
});
export type StatusView = z.infer<typeof statusViewSchema>;
