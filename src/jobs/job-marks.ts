// Every process a command job starts carries its job reference in its environment
// (RUNNER_JOB_ID, RUNNER_JOB_ATTEMPT, inherited by its descendants). The journal names a job's
// process group once the worker has recorded its pid, but between the spawn and that record
// the process exists and nothing on disk says so: a crash of the daemon and the worker in that
// gap would leave it unsupervised. The marks close the gap: recovery (and the pool, when a
// worker dies before reporting its job's pid) finds the job's processes by their environment.
// Linux reads /proc/<pid>/environ, which is readable for the runner's own processes only;
// elsewhere this finds nothing and the journal's pid is all there is.
import { readdirSync, readFileSync } from "node:fs";
import type { JobRef } from "../protocol/channel.js";
import { signalGroup } from "./process-group.js";

export const JOB_ID_VAR = "RUNNER_JOB_ID";
export const JOB_ATTEMPT_VAR = "RUNNER_JOB_ATTEMPT";

/** The variables that mark a job's processes; they override any of the same name in the job's env. */
export function jobMarks(ref: JobRef): Record<string, string> {
  return { [JOB_ID_VAR]: ref.jobId, [JOB_ATTEMPT_VAR]: String(ref.attempt) };
}

export interface MarkedProcess {
  pid: number;
  pgid: number;
}

/** The live processes carrying this job's marks (Linux; elsewhere none). */
export function findMarkedProcesses(ref: JobRef): MarkedProcess[] {
  if (process.platform !== "linux") return [];
  const wanted = Object.entries(jobMarks(ref)).map(([name, value]) => `\0${name}=${value}\0`);
  const found: MarkedProcess[] = [];
  let entries: string[];
  try {
    entries = readdirSync("/proc");
  } catch {
    return found;
  }
  for (const entry of entries) {
    if (!/^\d+$/.test(entry) || Number(entry) === process.pid) continue;
    try {
      // A leading NUL lets the first variable match like the others.
      const environ = "\0" + readFileSync(`/proc/${entry}/environ`, "latin1");
      if (!wanted.every((mark) => environ.includes(mark))) continue;
      const stat = readFileSync(`/proc/${entry}/stat`, "utf8");
      const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      if (fields[0] === "Z" || fields[0] === "X") continue;
      found.push({ pid: Number(entry), pgid: Number(fields[2]) });
    } catch {
      continue; // gone meanwhile, or not ours to read
    }
  }
  return found;
}

/** SIGKILLs every marked process of the job and its process group. Returns the pids found. */
export function killMarkedProcesses(ref: JobRef): number[] {
  const found = findMarkedProcesses(ref);
  for (const { pid, pgid } of found) {
    // The group first (a job's tree shares it), then the process itself, in case it left the group.
    if (pgid > 1 && pgid !== process.pid) signalGroup(pgid, "SIGKILL");
    try {
      process.kill(pid, "SIGKILL");
    } catch {
      // already gone
    }
  }
  return found.map((p) => p.pid);
}
