// From the runner's settings (MB, seconds, 0 = off) to the pool's limits (bytes, ms, null = off).
// Pure: the caller reads RLIMIT_NOFILE (rlimit.ts) and passes it in.
import { defaultLimits } from "./default-limits.js";
import type { RecycleLimits } from "./parent/recycle-policy.js";

export interface WorkerLimitSettings {
  workerMaxRssMb?: number | undefined;
  workerHardRssMb?: number | undefined;
  workerMaxFds?: number | undefined;
  workerMaxAgeS?: number | undefined;
  workerMaxJobs?: number | undefined;
}

const MiB = 1024 * 1024;

export function limitsFromSettings(settings: WorkerLimitSettings, rlimitNofile: number): RecycleLimits {
  const defaults = defaultLimits(rlimitNofile);
  const pick = (value: number | undefined, scale: number, fallback: number | null) =>
    value === undefined ? fallback : value === 0 ? null : value * scale;
  return {
    ...defaults,
    maxRssBytes: pick(settings.workerMaxRssMb, MiB, defaults.maxRssBytes),
    hardRssBytes: pick(settings.workerHardRssMb, MiB, defaults.hardRssBytes),
    maxOpenFds: pick(settings.workerMaxFds, 1, defaults.maxOpenFds),
    maxAgeMs: pick(settings.workerMaxAgeS, 1000, defaults.maxAgeMs),
    maxJobs: pick(settings.workerMaxJobs, 1, defaults.maxJobs),
  };
}
