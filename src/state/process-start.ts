// A process's start time, recorded beside its pid (the lock, the job journal) so that a later
// reader can tell the process that wrote the record from another one the OS has since given
// the same pid. The value is opaque; only `compareStarts` looks inside it.
import { readFileSync, promises as fs } from "node:fs";
import { execFile } from "node:child_process";
import { promisify } from "node:util";

const execFileAsync = promisify(execFile);

/**
 * macOS: `ps -o lstart=` as the C locale prints it in UTC, marked with this prefix. BSD ps
 * formats lstart in the caller's locale and time zone, so a daemon under launchd (no LANG) and
 * a shell in de_DE would read different strings for one live process; with the locale and the
 * zone fixed, every reader gets the same one. Values written before the prefix existed (in
 * whatever locale) are not comparable with it and count as unknown.
 */
const DARWIN_PREFIX = "lstart-utc:";
/** By absolute path: the PATH of a service, or of a job that set one, must not decide which `ps` runs. */
export const DARWIN_PS = "/bin/ps";

/** Field 22 of /proc/<pid>/stat (clock ticks since boot); the command name (field 2) may hold spaces. */
export function startTimeFromProcStat(stat: string): string | null {
  return stat.slice(stat.lastIndexOf(")") + 2).split(" ")[19] ?? null;
}

export function startTimeFromLstart(stdout: string): string | null {
  const text = stdout.trim();
  return text === "" ? null : `${DARWIN_PREFIX}${text}`;
}

/** The start time of `pid`, or null when it cannot be read (gone, or an unsupported platform). */
export async function processStartTime(
  pid: number,
  platform: NodeJS.Platform = process.platform,
  ps: string = DARWIN_PS,
): Promise<string | null> {
  try {
    if (platform === "linux") return startTimeFromProcStat(await fs.readFile(`/proc/${pid}/stat`, "utf8"));
    if (platform === "darwin") {
      const { stdout } = await execFileAsync(ps, ["-o", "lstart=", "-p", String(pid)], {
        env: { LC_ALL: "C", TZ: "UTC" },
        timeout: 5_000,
      });
      return startTimeFromLstart(stdout);
    }
  } catch {
    return null;
  }
  return null;
}

/**
 * Linux only, synchronously (~15 µs, for the spawn path of a job): the same value
 * processStartTime reads there. Elsewhere, or when the process is already gone: null (the
 * daemon adds it asynchronously on other systems).
 */
export function processStartTimeSync(pid: number): string | null {
  if (process.platform !== "linux") return null;
  try {
    return startTimeFromProcStat(readFileSync(`/proc/${pid}/stat`, "utf8"));
  } catch {
    return null;
  }
}

/**
 * Whether a recorded start time and a current one name the same process. "unknown" when
 * either is missing or they were read in different forms (a record from before the macOS
 * prefix): that cannot prove a reuse, and each caller decides what unknown means for it.
 */
export function compareStarts(recorded: string | null, current: string | null): "same" | "different" | "unknown" {
  if (recorded === null || current === null) return "unknown";
  if (recorded.startsWith(DARWIN_PREFIX) !== current.startsWith(DARWIN_PREFIX)) return "unknown";
  return recorded === current ? "same" : "different";
}
