// When to replace a warm worker: a pure decision over the health the worker reports with each
// result (its own RSS and open file descriptors), its age and how many jobs it has run. The
// pool asks at every job boundary, so a recycled worker finishes its job and its cleanup runs;
// killing mid-job is the hard ceiling's business (the pool's sampler), not this file's.
//
// Priority: memory > file descriptors > age > jobs. A null limit turns its signal off; a
// missing reading (null: e.g. no fd count on Windows) skips its signal.

export type RecycleReason = "memory" | "fds" | "age" | "jobs";

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
  /**
   * A younger worker is not recycled for memory, fds or age: a fresh worker that already starts
   * near a limit (a big module import, a low limit) would otherwise be replaced after every job,
   * forever (Celery #4125). Exception: RSS at or past `urgentRssBytes` still recycles, because
   * the next job would likely hit the hard ceiling and be killed half-way, which costs more than
   * a cold start. The jobs count is exempt: it cannot loop on a baseline, and a limit of 1 is a
   * deliberate "fresh worker per job".
   */
  minLifetimeMs: number;
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

export function evaluateRecycle(health: WorkerHealth, limits: RecycleLimits, now: number): RecycleReason | null {
  const age = now - health.startedAt;
  const young = age < limits.minLifetimeMs;
  const rss = health.rssBytes;
  if (limits.maxRssBytes !== null && rss !== null && rss >= limits.maxRssBytes) {
    if (!young || rss >= urgentRssBytes(limits)) return "memory";
  }
  if (!young) {
    if (limits.maxOpenFds !== null && health.openFds !== null && health.openFds >= limits.maxOpenFds) return "fds";
    if (limits.maxAgeMs !== null && age >= limits.maxAgeMs) return "age";
  }
  if (limits.maxJobs !== null && health.jobsRun >= limits.maxJobs) return "jobs";
  return null;
}

/**
 * The RSS past which the minimum lifetime no longer protects a worker: halfway between the soft
 * limit and the hard ceiling. Without both limits there is no such point and the guard holds.
 */
export function urgentRssBytes(limits: Pick<RecycleLimits, "maxRssBytes" | "hardRssBytes">): number {
  const { maxRssBytes: soft, hardRssBytes: hard } = limits;
  if (soft === null || hard === null || hard <= soft) return hard ?? Infinity;
  return soft + (hard - soft) / 2;
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

const GIB = 1024 ** 3;
/** No fd limit by default above this, however high RLIMIT_NOFILE is (containers often allow 1M). */
export const MAX_DEFAULT_OPEN_FDS = 65_536;

/**
 * Generous defaults. tryke started with 1 GiB, 200 fds and 10 minutes and later turned its caps
 * off because they caused churn and threw warm caches away; so the soft memory limit stays at
 * 1 GiB (a Node worker idles near 50 MB: only a real leak gets there), the hard ceiling is twice
 * that, fds are half the process's RLIMIT_NOFILE (a leak is caught with room to spare before
 * EMFILE, and a job that legitimately opens many files is not), age is an hour jittered by 10%
 * (a slow leak that no reading shows still gets cleared), and the jobs count is off.
 */
export function defaultLimits(rlimitNofile: number): RecycleLimits {
  return {
    maxRssBytes: 1 * GIB,
    hardRssBytes: 2 * GIB,
    maxOpenFds: Math.max(1, Math.min(Math.floor(rlimitNofile / 2), MAX_DEFAULT_OPEN_FDS)),
    maxAgeMs: 3600_000,
    ageJitter: 0.1,
    maxJobs: null,
    minLifetimeMs: 60_000,
  };
}

/** Describes a decision for the log: which reading crossed which limit. */
export function describeRecycle(reason: RecycleReason, health: WorkerHealth, limits: RecycleLimits, now: number): string {
  switch (reason) {
    case "memory":
      return `RSS ${formatMiB(health.rssBytes)} reached the soft limit ${formatMiB(limits.maxRssBytes)}`;
    case "fds":
      return `${health.openFds} open file descriptors reached the limit ${limits.maxOpenFds}`;
    case "age":
      return `age ${Math.round((now - health.startedAt) / 1000)} s reached its limit ${Math.round((limits.maxAgeMs ?? 0) / 1000)} s`;
    case "jobs":
      return `${health.jobsRun} jobs run reached the limit ${limits.maxJobs}`;
  }
}

export function formatMiB(bytes: number | null): string {
  return bytes === null ? "unknown" : `${(bytes / 1024 / 1024).toFixed(1)} MiB`;
}

function clamp(value: number, low: number, high: number): number {
  return Math.min(high, Math.max(low, Number.isFinite(value) ? value : low));
}
