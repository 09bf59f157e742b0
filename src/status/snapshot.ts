// What the daemon's status endpoints say, built from where each fact already lives: the channel
// machine's state, the counts (counters.ts), the pool's worker records and the device sync.
// Pure: the caller passes every part and the time (epoch ms).
import type { State } from "../channel/machine.js";
import type { DeviceSyncStatus } from "../devices/sync-host.js";
import type { PoolStats } from "../workers/parent/pool.js";
import type { DaemonCounters } from "./counters.js";
import type { StatusView } from "./view.js";

export interface StatusParts {
  state: Readonly<State>;
  counters: Readonly<DaemonCounters>;
  pool: PoolStats;
  devices: DeviceSyncStatus;
  pid: number;
  /** When the daemon started (epoch ms). */
  startedAt: number;
  /** The control plane's base URL as registered. */
  controlPlaneUrl: string;
}

export interface Readiness {
  ready: boolean;
  /** Why not, in words; null when ready. */
  reason: string | null;
}

/** Ready = would take a job now: connected, serving (not paused, draining or stopping), and fit. */
export function readiness(state: Readonly<State>): Readiness {
  const not = (reason: string): Readiness => ({ ready: false, reason });
  if (state.connection.phase !== "connected") return not(`not connected (${state.connection.phase})`);
  if (state.mode === "paused") return not("paused by the control plane");
  if (state.mode !== "serving") return not(state.mode);
  if (state.unfit !== null) return not(`unfit: ${state.unfit}`);
  if (state.config.once && state.jobsTaken > 0) return not("once: its one job is taken");
  return { ready: true, reason: null };
}

export function statusView(parts: StatusParts, now: number): StatusView {
  const { state, counters, pool, devices } = parts;
  const seconds = (since: number) => Math.max(0, now - since) / 1000;
  const iso = (ms: number) => new Date(ms).toISOString();
  const ready = readiness(state);
  return {
    pid: parts.pid,
    agentVersion: state.config.agentVersion,
    protocolVersion: state.config.protocolVersion,
    runnerId: state.config.runnerId,
    startedAt: iso(parts.startedAt),
    controlPlaneUrl: withoutUserinfo(parts.controlPlaneUrl),
    connection: {
      state: state.connection.phase,
      since: iso(counters.phaseSince),
      failures: state.failures,
      reconnects: { ...counters.reconnects },
    },
    mode: state.mode,
    ready: ready.ready,
    notReadyReason: ready.reason,
    capacity: state.config.capacity,
    jobs: {
      running: Object.entries(state.running).map(([key, entry]) => ({
        jobId: entry.ref.jobId,
        attempt: entry.ref.attempt,
        started: entry.started,
        ageSeconds: round(seconds(counters.jobs[key]?.acceptedAt ?? now)),
      })),
      byOutcome: { ...counters.jobsByOutcome },
    },
    workers: pool.workers.map((w) => ({
      pid: w.pid,
      state: w.state,
      jobsRun: w.jobsRun,
      ageSeconds: round(w.ageMs / 1000),
      rssBytes: w.rssBytes,
      openFds: w.openFds,
    })),
    recycles: { ...pool.recycled },
    outbox: { results: Object.keys(state.pending).length },
    devices: {
      phase: devices.phase,
      inventory: devices.inventory,
      confirmed: devices.confirmed,
      lastScanAt: devices.lastScan?.at ?? null,
      lastAckAt: devices.lastAckAt,
      deviceBytesSent: counters.deviceBytesSent,
    },
    lastError: counters.lastError ? { at: iso(counters.lastError.at), message: counters.lastError.message } : null,
  };
}

/** A URL's user and password, if it had any, never leave the daemon. */
export function withoutUserinfo(url: string): string {
  try {
    const parsed = new URL(url);
    if (!parsed.username && !parsed.password) return url;
    parsed.username = "";
    parsed.password = "";
    return parsed.toString();
  } catch {
    return "(not a URL)";
  }
}

function round(value: number): number {
  return Math.round(value * 1000) / 1000;
}
