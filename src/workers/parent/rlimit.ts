// RLIMIT_NOFILE's soft limit, without native code. Node raises its own soft limit to the hard
// limit at start-up, and a forked worker inherits it, so the daemon's value is the workers' too.
import { execFile } from "node:child_process";
import { readFile } from "node:fs/promises";

export const FALLBACK_OPEN_FILE_LIMIT = 1024;

export async function readOpenFileLimit(platform: NodeJS.Platform = process.platform): Promise<number> {
  if (platform === "win32") return FALLBACK_OPEN_FILE_LIMIT; // no such limit; the fd signal is off there anyway
  if (platform === "linux") {
    const fromProc = await readFile("/proc/self/limits", "utf8").then(parseProcLimits, () => null);
    if (fromProc !== null) return fromProc;
  }
  return (await askShell()) ?? FALLBACK_OPEN_FILE_LIMIT;
}

/** The soft "Max open files" from /proc/self/limits; "unlimited" counts as no practical limit. */
export function parseProcLimits(text: string): number | null {
  const line = text.split("\n").find((l) => l.startsWith("Max open files"));
  const soft = line?.slice("Max open files".length).trim().split(/\s+/)[0];
  if (soft === "unlimited") return Number.MAX_SAFE_INTEGER;
  const value = Number(soft);
  return Number.isInteger(value) && value > 0 ? value : null;
}

function askShell(): Promise<number | null> {
  return new Promise((resolve) => {
    execFile("/bin/sh", ["-c", "ulimit -n"], { timeout: 5_000 }, (error, stdout) => {
      const text = String(stdout).trim();
      if (error) resolve(null);
      else if (text === "unlimited") resolve(Number.MAX_SAFE_INTEGER);
      else resolve(/^\d+$/.test(text) && Number(text) > 0 ? Number(text) : null);
    });
  });
}
