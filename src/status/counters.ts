// What the daemon counts for its status and metrics endpoints, and how each count moves. A
// pure core: the channel driver's observer hands it every step (the input, the machine's state
// before and after, the effects) and every frame sent, with the time (epoch ms of the
// driver's clock); it does no I/O. The counts live in one plain object the daemon updates in
// place, so counting costs a few fields and no library: prom-client is loaded only when
// /metrics is first scraped (exposition.ts).
import type { ObservedStep } from "../channel/driver.js";
import { CLOSE_REPLACED, keyOf, type Input } from "../channel/machine.js";
import { OUTCOMES, type Outcome, type RunnerMessage } from "../protocol/channel.js";

/**
 * Why the channel left a connection (or an attempt at one) to reconnect later:
 * `network` the attempt failed before any HTTP answer; `http_error` the upgrade was answered
 * with an HTTP error; `closed` the control plane or the network closed the socket;
 * `replaced` another connection with this runner's credential took its place (close 4000);
 * `handshake_timeout` no welcome in time; `heartbeat_timeout` no pong in time.
 */
export const RECONNECT_REASONS = [
  "network",
  "http_error",
  "closed",
  "replaced",
  "handshake_timeout",
  "heartbeat_timeout",
] as const;
export type ReconnectReason = (typeof RECONNECT_REASONS)[number];

/** The upper bounds, in seconds, of the dispatch-to-start histogram's buckets (+Inf is implied). */
export const DISPATCH_BUCKETS: readonly number[] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];

/** The channel message types whose frames count as device sync bytes. */
const DEVICE_MESSAGES: ReadonlySet<RunnerMessage["type"]> = new Set(["devices", "devices_summary"]);

export interface HistogramCounts {
  /** Upper bounds, ascending. */
  bounds: readonly number[];
  /** Observations per bucket, not cumulative: `counts[i]` for bucket i, the last one for above every bound. */
  counts: number[];
  sum: number;
  count: number;
}

export interface HeldJob {
  /** When the machine accepted its assignment (epoch ms). */
  acceptedAt: number;
  /** When its worker reported it started; null until then. */
  startedAt: number | null;
}

export interface DaemonCounters {
  /** Job results produced by this daemon, by outcome. */
  jobsByOutcome: Record<Outcome, number>;
  /** Seconds from the runner accepting an `assign` to the job's worker reporting it started. */
  dispatchToStart: HistogramCounts;
  reconnects: Record<ReconnectReason, number>;
  /** Bytes of device sync frames (`devices`, `devices_summary`) handed to the socket. */
  deviceBytesSent: number;
  /** The jobs the machine holds as running, by `keyOf`: when each was accepted and started. */
  jobs: Record<string, HeldJob>;
  /** Since when the connection has been in its current phase (epoch ms). */
  phaseSince: number;
  /** The channel's last warning or error, as it logged it. */
  lastError: { at: number; message: string } | null;
}

export function newCounters(now: number): DaemonCounters {
  return {
    jobsByOutcome: Object.fromEntries(OUTCOMES.map((o) => [o, 0])) as Record<Outcome, number>,
    dispatchToStart: newHistogram(DISPATCH_BUCKETS),
    reconnects: Object.fromEntries(RECONNECT_REASONS.map((r) => [r, 0])) as Record<ReconnectReason, number>,
    deviceBytesSent: 0,
    jobs: {},
    phaseSince: now,
    lastError: null,
  };
}

export function newHistogram(bounds: readonly number[]): HistogramCounts {
  return { bounds, counts: new Array<number>(bounds.length + 1).fill(0), sum: 0, count: 0 };
}

export function observe(histogram: HistogramCounts, value: number): void {
  const index = histogram.bounds.findIndex((bound) => value <= bound);
  histogram.counts[index === -1 ? histogram.bounds.length : index]!++;
  histogram.sum += value;
  histogram.count++;
}

/** Updates the counts for one step of the channel machine, taken at `now` (epoch ms). */
export function countStep(
  counters: DaemonCounters,
  { input, before, after, effects }: ObservedStep,
  now: number,
): void {
  if (before.connection.phase !== after.connection.phase) {
    counters.phaseSince = now;
    if (after.connection.phase === "disconnected") counters.reconnects[reconnectReason(input)]++;
  }
  switch (input.type) {
    case "message":
      if (input.message.type === "assign") {
        const key = keyOf(input.message);
        if (after.running[key] && !before.running[key]) counters.jobs[key] = { acceptedAt: now, startedAt: null };
      }
      break;
    case "job_started": {
      const held = counters.jobs[keyOf(input.ref)];
      if (held && held.startedAt === null) {
        held.startedAt = now;
        observe(counters.dispatchToStart, Math.max(0, now - held.acceptedAt) / 1000);
      }
      break;
    }
    case "job_finished": {
      // Counted once the machine holds the result (not when it ignores one, once stopped, say).
      const key = keyOf(input.result);
      if (after.pending[key] && !before.pending[key]) counters.jobsByOutcome[input.result.outcome]++;
      break;
    }
    default:
      break;
  }
  // Whatever way a job leaves the machine's running set (finished, or dropped at a stop), it leaves this one.
  // (Only inputs that can remove a job look: the machine builds a new running set for every
  // chunk of output, and this is on that path.)
  if (before.running !== after.running && input.type !== "job_output")
    for (const key of Object.keys(counters.jobs)) if (!after.running[key]) delete counters.jobs[key];
  for (const effect of effects)
    if (effect.type === "log" && (effect.level === "warn" || effect.level === "error"))
      counters.lastError = { at: now, message: effect.message };
}

/** Counts a frame handed to the socket. */
export function countSent(counters: DaemonCounters, type: RunnerMessage["type"], bytes: number): void {
  if (DEVICE_MESSAGES.has(type)) counters.deviceBytesSent += bytes;
}

/** The input that took the connection to `disconnected`, as one of a few reasons (a bounded label set). */
export function reconnectReason(input: Input): ReconnectReason {
  switch (input.type) {
    case "connect_failed":
      return input.status === null ? "network" : "http_error";
    case "socket_closed":
      return input.code === CLOSE_REPLACED ? "replaced" : "closed";
    case "timer":
      return input.timer === "pong" ? "heartbeat_timeout" : "handshake_timeout";
    default:
      return "closed";
  }
}
