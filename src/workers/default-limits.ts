// The recycle limits a runner gets for what its settings leave unset. Kept out of the recycle
// policy on purpose (a copy of the defaults beside the decision once hid a 60 s minimum
// lifetime): the policy takes its limits complete, and only the settings → limits conversion
// (limits-from-settings.ts, on its way to src/config) reads these.
import type { RecycleLimits } from "./parent/recycle-policy.js";

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
  };
}
