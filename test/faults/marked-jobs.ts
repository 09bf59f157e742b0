// Every command job of the fault run is a marked program: its environment carries
// FAULTS_MARK=<run mark>:<job number> (inherited by every process it starts) and its argv[0]
// names the job too. After the run, any process still carrying the run's mark is an orphan:
// a job process that outlived the daemon that should have killed it.
import { readdirSync, readFileSync } from "node:fs";
import type { SubmitJobRequest } from "../../src/protocol/http.js";

export const MARK_VARIABLE = "FAULTS_MARK";

export type JobShape =
  /** Exits at once, with a line of output. */
  | "quick"
  /** Runs `ms` with a background child, prints, exits 0. */
  | "short"
  /** Runs until killed: a background child and a foreground wait. */
  | "endless";

export class MarkedJobs {
  private count = 0;

  constructor(readonly runMark: string) {}

  /** A marked command job; its timeout bounds even an endless one should every kill fail. */
  next(shape: JobShape, ms = 300): { request: SubmitJobRequest; mark: string } {
    const mark = `${this.runMark}:${++this.count}`;
    const seconds = (ms / 1000).toFixed(3);
    const script = {
      quick: `echo "job $${MARK_VARIABLE}"`,
      short: `sleep ${seconds} & echo "job $${MARK_VARIABLE} out"; echo err >&2; wait`,
      endless: `sleep 900 & echo "job $${MARK_VARIABLE} endless"; wait`,
    }[shape];
    return {
      mark,
      request: {
        job: { kind: "command", argv: ["sh", "-c", script, `faultjob-${mark}`], env: { [MARK_VARIABLE]: mark } },
        timeoutMs: shape === "endless" ? 120_000 : 30_000,
        cancelGraceMs: 200,
      },
    };
  }
}

export interface MarkedProcess {
  pid: number;
  mark: string;
  cmdline: string;
}

/**
 * Linux: the live (non-zombie) processes whose environment or argv carries `runMark`.
 * Processes of other users or that vanish mid-scan are skipped.
 */
export function findMarkedProcesses(runMark: string): MarkedProcess[] {
  const found: MarkedProcess[] = [];
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, "utf8");
      const state = stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3);
      if (state === "Z" || state === "X") continue;
      const cmdline = readFileSync(`/proc/${entry}/cmdline`, "utf8").split("\0").join(" ").trim();
      const environ = readFileSync(`/proc/${entry}/environ`, "utf8").split("\0");
      const fromEnv = environ
        .find((v) => v.startsWith(`${MARK_VARIABLE}=${runMark}:`))
        ?.slice(MARK_VARIABLE.length + 1);
      const fromArgv = new RegExp(`faultjob-(${runMark}:\\d+)`).exec(cmdline)?.[1];
      const mark = fromEnv ?? fromArgv;
      if (mark !== undefined) found.push({ pid: Number(entry), mark, cmdline });
    } catch {
      // Gone, or not ours to read.
    }
  }
  return found;
}

/** SIGKILLs what `findMarkedProcesses` found: the run cleans up after counting. */
export function killMarkedProcesses(runMark: string): number {
  let killed = 0;
  for (const { pid } of findMarkedProcesses(runMark)) {
    try {
      process.kill(pid, "SIGKILL");
      killed++;
    } catch {
      // Already gone.
    }
  }
  return killed;
}
