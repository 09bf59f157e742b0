// The worker's view of its own health, sent with every result (and with "ready"): its RSS
// (process.memoryUsage.rss(): the current resident set, not the peak maxRSS and not the V8 heap
// alone) and its open file descriptors. The daemon's own readings from outside, for the hard
// ceiling, are in parent/sample.ts.
import { readdirSync } from "node:fs";
import type { HealthReading } from "../worker-messages.js";

export function readOwnHealth(): HealthReading {
  return { rssBytes: process.memoryUsage.rss(), openFds: countOpenFds() };
}

/** Open file descriptors of this process; null where the OS offers no cheap way (Windows). */
export function countOpenFds(platform: NodeJS.Platform = process.platform): number | null {
  const dir =
    platform === "linux" ? "/proc/self/fd" : platform === "darwin" || platform.endsWith("bsd") ? "/dev/fd" : null;
  if (dir === null) return null;
  try {
    // Listing the directory opens one more fd, which shows up in the list: leave it out.
    return Math.max(0, readdirSync(dir).length - 1);
  } catch {
    return null;
  }
}
