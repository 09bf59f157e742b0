// A worker's RSS read from outside, by the daemon, while the worker is busy (the hard ceiling
// must work even when the worker's event loop is stuck): /proc/<pid>/statm on Linux, a file read
// of a few bytes; pidusage elsewhere, which spawns `ps` per call on macOS, so the pool samples
// only busy workers and only every sampleIntervalMs. The worker's own readings, sent with every
// result, are in child/own-health.ts.
import { readFileSync } from "node:fs";

let pageSize: number | null = null;

/**
 * The kernel's page size, for statm's page counts. Worked out once without native code or a
 * spawn: /proc/self/status gives VmRSS in kB, statm the same resident set in pages.
 */
export function linuxPageSize(): number {
  if (pageSize !== null) return pageSize;
  pageSize = 4096;
  try {
    const pages = Number(readFileSync("/proc/self/statm", "latin1").split(" ")[1]);
    const kb = Number(/VmRSS:\s+(\d+) kB/.exec(readFileSync("/proc/self/status", "latin1"))?.[1]);
    if (pages > 0 && kb > 0) {
      // The two reads are microseconds apart; round the ratio to the nearest power of two.
      pageSize = 2 ** Math.round(Math.log2((kb * 1024) / pages));
    }
  } catch {
    // keep 4096
  }
  return pageSize;
}

/** Linux only: a process's RSS from /proc/<pid>/statm (second field, in pages); null if it is gone. */
export function readRssFromProc(pid: number): number | null {
  try {
    const resident = Number(readFileSync(`/proc/${pid}/statm`, "latin1").split(" ")[1]);
    return Number.isFinite(resident) ? resident * linuxPageSize() : null;
  } catch {
    return null;
  }
}

/** A process's current RSS from outside; null when it cannot be read (gone, not ours). */
export async function sampleRss(pid: number, platform: NodeJS.Platform = process.platform): Promise<number | null> {
  if (platform === "linux") return readRssFromProc(pid);
  try {
    // Default options on purpose: pidusage 4.1's /proc reader (Linux, FreeBSD) loops opening
    // files for ever when told `maxage: 0`. Its history expires by an unref'd timer.
    // Imported here: Linux (above) never needs it, and an idle daemon should not carry it.
    const { default: pidusage } = await import("pidusage");
    return (await pidusage(pid)).memory;
  } catch {
    return null;
  }
}
