// When to replace a warm worker: a pure decision over the health the worker reports with each
// result (its own RSS and open file descriptors), its age and how many jobs it has run. The
// pool asks at every job boundary, so a recycled worker finishes its job and its cleanup runs;
// killing mid-job is the hard ceiling's business (the pool's sampler), not this file's.
//
// Priority: memory > file descriptors > age > jobs. A null limit turns its signal off; a
// missing reading (null: e.g. no fd count on Windows) skips its signal.
//
// Limits are limits: a worker at or past its soft RSS or fd limit is retired at its next job
// boundary, whatever its age. There is deliberately no minimum lifetime: a hidden grace let a
// leaking worker grow far past the operator's limit. The one guard against a recycle loop (a
// handler whose fresh worker already starts past the limit) is visible: `noteRecycleStreak`
// counts workers retired after their first job, and the pool warns, naming the handler and the
// limit, once that happens RECYCLE_STREAK_WARN times in a row.
//
// Limits come in complete (the runner's settings are turned into them elsewhere, defaults
// included): this file holds no default, and every question the pool asks of a worker's
// readings and limits has its own function here.

/** The limits a worker is retired for, in the order they are checked. */
export const RECYCLE_REASONS = ["memory", "fds", "age", "jobs"] as const;
export type RecycleReason = (typeof RECYCLE_REASONS)[number];

export interface RecycleLimits {
  /** Soft RSS limit: at or past it the worker is recycled at the next job boundary. */
  maxRssBytes: number | null;
  /** Hard RSS ceiling: at or past it the worker is killed mid-job (enforced by the pool's sampler). */
  hardRssBytes: number | null;
  maxOpenFds: number | null;
  /** Age limit. `limitsForWorker` jitters it per worker; `evaluateRecycle` applies it as given. */
  maxAgeMs: number | null;
  /** 0..1: a worker's age limit is maxAgeMs × (1 − ageJitter × u), u drawn once at spawn. */
  ageJitter: number;
  maxJobs: number | null;
}

export interface WorkerHealth {
  /** The worker's current RSS as it reported it (process.memoryUsage.rss()); null = unknown. */
  rssBytes: number | null;
  /** Its open file descriptors; null = unknown (Windows). */
  openFds: number | null;
  jobsRun: number;
  /** When it was spawned (ms, same clock as `now`). */
  startedAt: number;
}

/** At a job boundary: should this worker be retired, and for which reason first? */
export function evaluateRecycle(health: WorkerHealth, limits: RecycleLimits, now: number): RecycleReason | null {
  for (const reason of RECYCLE_REASONS) {
    const { reading, limit } = recycleFigures(reason, health, limits, now);
    if (reaches(reading, limit)) return reason;
  }
  return null;
}

/**
 * Before an idle worker takes a job: has it outlived its own age limit? Age is the one signal
 * that changes while a worker waits; its readings and job count were judged when its last job
 * ended (judging a fresh worker's start-up readings here would retire it before it ever ran a
 * job, in a loop).
 */
export function isTooOld(startedAt: number, limits: RecycleLimits, now: number): boolean {
  return reaches(now - startedAt, limits.maxAgeMs);
}

/** Does the hard ceiling apply to this worker at all (and so must its RSS be sampled)? */
export function hasHardCeiling(limits: RecycleLimits): boolean {
  return limits.hardRssBytes !== null;
}

/** Mid-job, from the pool's sampler: is this RSS at or past the worker's hard ceiling? */
export function isPastHardCeiling(rssBytes: number | null, limits: RecycleLimits): boolean {
  return reaches(rssBytes, limits.hardRssBytes);
}

/** A reading at or past its limit; a missing reading or a limit that is off never reaches. */
function reaches(reading: number | null, limit: number | null): boolean {
  return reading !== null && limit !== null && reading >= limit;
}

/** The reading a signal is judged on and the limit it is compared with (null: off or unknown). */
export function recycleFigures(
  reason: RecycleReason,
  health: WorkerHealth,
  limits: RecycleLimits,
  now: number,
): { reading: number | null; limit: number | null } {
  switch (reason) {
    case "memory":
      return { reading: health.rssBytes, limit: limits.maxRssBytes };
    case "fds":
      return { reading: health.openFds, limit: limits.maxOpenFds };
    case "age":
      return { reading: now - health.startedAt, limit: limits.maxAgeMs };
    case "jobs":
      return { reading: health.jobsRun, limit: limits.maxJobs };
  }
}

/** The setting an operator changes for each signal, named in the log lines. */
export const RECYCLE_SETTING: Record<RecycleReason, string> = {
  memory: "--worker-max-rss-mb",
  fds: "--worker-max-fds",
  age: "--worker-max-age-s",
  jobs: "--worker-max-jobs",
};

/** After this many workers in a row are recycled for memory or fds right after their first job, the pool warns. */
export const RECYCLE_STREAK_WARN = 3;

/**
 * The count of workers retired for memory or fds after their first job, in a row, for one kind
 * of job (a handler): each such retirement adds one, any other job boundary for that kind of
 * job (the worker kept, or retired after several jobs) starts again from 0. A streak means the
 * handler leaks a whole limit per job, or a fresh worker's baseline is already above the limit.
 */
export function noteRecycleStreak(streak: number, reason: RecycleReason | null, jobsRun: number): number {
  return (reason === "memory" || reason === "fds") && jobsRun <= 1 ? streak + 1 : 0;
}

/** Warn once per streak: when it reaches RECYCLE_STREAK_WARN, not again while it goes on. */
export function isRecycleLoop(streak: number): boolean {
  return streak === RECYCLE_STREAK_WARN;
}

/**
 * One worker's own limits, drawn once at its spawn: the age limit jittered down by up to
 * `ageJitter` (u in [0, 1), from Math.random in production) so workers spawned together do not
 * all recycle together. The result has ageJitter 0: it is already applied.
 */
export function limitsForWorker(limits: RecycleLimits, u: number): RecycleLimits {
  const jitter = clamp(limits.ageJitter, 0, 1) * clamp(u, 0, 1);
  const maxAgeMs = limits.maxAgeMs === null ? null : Math.round(limits.maxAgeMs * (1 - jitter));
  return { ...limits, maxAgeMs, ageJitter: 0 };
}

/** Describes a decision for the log: which reading crossed which limit. */
export function describeRecycle(
  reason: RecycleReason,
  health: WorkerHealth,
  limits: RecycleLimits,
  now: number,
): string {
  switch (reason) {
    case "memory":
      return `RSS ${formatMiB(health.rssBytes)} reached the soft limit ${formatMiB(limits.maxRssBytes)}`;
    case "fds":
      return `${health.openFds} open file descriptors reached the limit ${limits.maxOpenFds}`;
    case "age":
      return `age ${formatSeconds(now - health.startedAt)} reached its limit ${formatSeconds(limits.maxAgeMs)}`;
    case "jobs":
      return `${health.jobsRun} jobs run reached the limit ${limits.maxJobs}`;
  }
}

export function formatMiB(bytes: number | null): string {
  return bytes === null ? "unknown" : `${(bytes / 1024 / 1024).toFixed(1)} MiB`;
}

function formatSeconds(ms: number | null): string {
  return ms === null ? "off" : `${Math.round(ms / 1000)} s`;
}

function clamp(value: number, low: number, high: number): number {
  return Math.min(high, Math.max(low, Number.isFinite(value) ? value : low));
}
