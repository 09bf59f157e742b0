// The `command` job kind: argv run with no shell as the leader of its own process group,
// output streamed as log chunks, cancelled and timed out by signalling the whole group.
// `done` resolves only when the leader AND every live member of its group are gone, so no
// process of a job outlives its result (a member that left the group with setsid escapes;
// that takes containment this runner does not have, such as cgroups).
import { promises as fs } from "node:fs";
import type { Readable } from "node:stream";
import { execa, type ResultPromise } from "execa";
import type { Assignment, CommandJob, JobRef, JobResult, Outcome } from "../protocol/channel.js";
import { buildJobEnv } from "./job-env.js";
import { jobMarks } from "./job-marks.js";
import { createLogChunker, type LogChunk } from "./log-chunks.js";
import { isGroupAlive, signalGroup, waitForGroupExit } from "./process-group.js";
import { createJobWorkDir, removeJobWorkDir } from "./work-dir.js";

export interface JobHooks {
  /** Called once the process exists (pid known), before any log chunk. */
  onStarted(info: { pid: number; startedAt: string }): void;
  /** Output as it comes, in order per stream; data is UTF-8 text of at most 64 KiB of output. */
  onLog(chunk: LogChunk): void;
}

export interface RunningJob {
  readonly ref: JobRef;
  readonly pid: number | null;
  /**
   * SIGTERM to the job's whole process group, then SIGKILL to the group after the grace period
   * (assignment.cancelGraceMs unless given). Idempotent: a later call never changes the outcome
   * or reason, but may shorten the grace (a second, impatient cancel).
   */
  cancel(reason: string, graceMs?: number): void;
  /** Resolves (never rejects) with the result once the process AND its whole process group are gone. */
  readonly done: Promise<JobResult>;
}

/** A command job whose output reading can be paused: the pipes fill and the job's writes block. */
export interface RunningCommandJob extends RunningJob {
  /** Stops reading the job's stdout and stderr (no more onLog calls until resumed). */
  pauseOutput(): void;
  resumeOutput(): void;
}

export interface CommandJobOptions {
  /** Where the job's minimal base environment is taken from; defaults to process.env. */
  baseEnv?: NodeJS.ProcessEnv;
  /**
   * The job's own directory (work-dir.ts), for a job without a cwd: created before the spawn,
   * its cwd, and removed once the result is in (unless the job sets keepWorkDir).
   */
  workDir?: string;
  now?: () => Date;
}

/** After SIGKILL, how long to wait for the group to vanish before reporting it and moving on. */
const GROUP_GONE_AFTER_KILL_MS = 5_000;
/** After the group is gone, how long to wait for its pipes to close (a setsid escapee may hold them). */
const OUTPUT_DRAIN_MS = 2_000;

export function startCommandJob(
  assignment: Assignment,
  hooks: JobHooks,
  options: CommandJobOptions = {},
): RunningCommandJob {
  const spec = assignment.job;
  const workDir = spec.kind === "command" && spec.cwd === undefined ? options.workDir : undefined;
  const job = startInDir(assignment, hooks, options, workDir);
  if (workDir === undefined || (spec.kind === "command" && spec.keepWorkDir)) return job;
  // Removed after the result is known, not before it is reported: a big tree takes a while.
  // What a kill cuts short, the next start removes (prepareWorkRoot).
  const done = job.done.then((result) => {
    void removeJobWorkDir(workDir).catch(() => undefined);
    return result;
  });
  return { ...job, done };
}

function startInDir(
  assignment: Assignment,
  hooks: JobHooks,
  options: CommandJobOptions,
  workDir: string | undefined,
): RunningCommandJob {
  const now = options.now ?? (() => new Date());
  const ref = { jobId: assignment.jobId, attempt: assignment.attempt };
  const spec = assignment.job;
  const inert = { cancel: () => undefined, pauseOutput: () => undefined, resumeOutput: () => undefined };
  if (spec.kind !== "command") {
    const done = Promise.resolve(
      finish(ref, "failed", { reason: `not a command job (kind "${spec.kind}")`, startedAt: null, finishedAt: now() }),
    );
    return { ref, pid: null, done, ...inert };
  }
  let subprocess: ResultPromise;
  try {
    if (workDir !== undefined) createJobWorkDir(workDir);
    subprocess = spawnJob(spec, ref, options.baseEnv ?? process.env, workDir);
  } catch (error) {
    // spawn() throws for arguments no process can have (a NUL byte, say): the schema keeps
    // them off the wire, and this keeps any that slip through from taking the worker down.
    const reason = `cannot start: ${error instanceof Error ? error.message : String(error)}`.slice(0, 1000);
    return {
      ref,
      pid: null,
      done: Promise.resolve(finish(ref, "failed", { reason, startedAt: null, finishedAt: now() })),
      ...inert,
    };
  }
  const pid = subprocess.pid ?? null;
  if (pid === null) {
    const done = describeSpawnFailure(subprocess, spec)
      .catch((error: unknown) => `cannot start: ${String(error)}`)
      .then((reason) => finish(ref, "failed", { reason, startedAt: null, finishedAt: now() }));
    return { ref, pid, done, ...inert };
  }
  const startedAt = now().toISOString();
  const job = superviseJob({ assignment, hooks, subprocess, pid, startedAt, now, ref });
  try {
    hooks.onStarted({ pid, startedAt }); // output is read on a later tick, so this still comes first
  } catch (error) {
    job.cancel("the runner failed to record the job's start", 0); // never leave it running unsupervised
    throw error;
  }
  return job;
}

function spawnJob(spec: CommandJob, ref: JobRef, baseEnv: NodeJS.ProcessEnv, workDir?: string): ResultPromise {
  const [file, ...args] = spec.argv as [string, ...string[]];
  return execa(file, args, {
    cwd: spec.cwd ?? workDir,
    // The marks come last: a job cannot hide its processes from recovery by setting them.
    env: { ...buildJobEnv(spec.env, baseEnv), ...jobMarks(ref) },
    extendEnv: false,
    detached: true, // its own process group, so the whole tree can be signalled at once
    stdin: "ignore",
    stdout: "pipe",
    stderr: "pipe",
    buffer: false, // streamed to onLog, never held in memory
    reject: false,
    stripFinalNewline: false,
  });
}

async function describeSpawnFailure(subprocess: ResultPromise, spec: CommandJob): Promise<string> {
  const result = await subprocess;
  const code = result.code ?? "error";
  const cwd = spec.cwd;
  // A missing cwd also fails with ENOENT, naming the program: say which it was.
  if (cwd !== undefined) {
    const stat = await fs.stat(cwd).catch(() => null);
    if (stat === null) return `cannot start: cwd ${cwd} does not exist`;
    if (!stat.isDirectory()) return `cannot start: cwd ${cwd} is not a directory`;
  }
  return `cannot start: ${code}: ${spec.argv[0]}`;
}

interface Supervised {
  assignment: Assignment;
  hooks: JobHooks;
  subprocess: ResultPromise;
  pid: number;
  startedAt: string;
  now: () => Date;
  ref: JobRef;
}

function superviseJob(job: Supervised): RunningCommandJob {
  const { assignment, pid, subprocess } = job;
  let stopRequest: { outcome: "cancelled" | "timed_out"; reason: string } | null = null;
  let leaderExited = false;
  let groupGone = false;
  let killTimer: NodeJS.Timeout | null = null;
  let killDeadline = Infinity;
  let killSentAt: number | null = null;

  const sendKill = () => {
    clearKillTimer();
    if (groupGone) return;
    killSentAt = Date.now();
    signalGroup(pid, "SIGKILL");
  };
  const clearKillTimer = () => {
    if (killTimer !== null) clearTimeout(killTimer);
    killTimer = null;
  };
  /** SIGKILL the group at now + graceMs, unless a kill is already due sooner. */
  const scheduleKill = (graceMs: number) => {
    const deadline = Date.now() + graceMs;
    if (groupGone || killSentAt !== null || deadline >= killDeadline) return;
    killDeadline = deadline;
    clearKillTimer();
    if (graceMs <= 0) sendKill();
    else killTimer = setTimeout(sendKill, graceMs);
  };
  const terminateGroup = (graceMs: number) => {
    if (killSentAt === null && killDeadline === Infinity) signalGroup(pid, "SIGTERM");
    scheduleKill(graceMs);
  };
  const cancel = (reason: string, graceMs = assignment.cancelGraceMs) => {
    if (groupGone) return;
    // Once the leader has exited on its own the outcome is settled; only the clean-up remains.
    if (stopRequest === null && !leaderExited) stopRequest = { outcome: "cancelled", reason };
    terminateGroup(graceMs);
  };
  const timeoutTimer = setTimeout(() => {
    if (stopRequest !== null || leaderExited) return;
    stopRequest = { outcome: "timed_out", reason: `timed out after ${assignment.timeoutMs} ms` };
    terminateGroup(assignment.cancelGraceMs);
  }, assignment.timeoutMs);

  const output = streamOutput(subprocess, job.hooks.onLog);
  const leaderExit = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    subprocess.once("exit", (code, signal) => resolve({ code, signal }));
  });
  subprocess.catch(() => undefined); // reject: false, but never leave a rejection unhandled

  const run = async (): Promise<JobResult> => {
    const exit = await leaderExit;
    leaderExited = true;
    clearTimeout(timeoutTimer);
    // Members left behind by a leader that exited on its own (a background child, a daemon
    // that did not setsid) get the same treatment as a cancel: SIGTERM, grace, SIGKILL.
    if (stopRequest === null && isGroupAlive(pid)) terminateGroup(assignment.cancelGraceMs);
    let problem: string | null = null;
    // Polled in slices: the SIGKILL timer fires on its own, and only from then is the wait bounded.
    while (!(await waitForGroupExit(pid, 1_000))) {
      if (killSentAt !== null && Date.now() - killSentAt >= GROUP_GONE_AFTER_KILL_MS) {
        problem = `process group ${pid} still had live members ${GROUP_GONE_AFTER_KILL_MS} ms after SIGKILL`;
        break;
      }
    }
    groupGone = true;
    clearKillTimer(); // the pgid may be reused from now on: never signal it again
    await output.drain(OUTPUT_DRAIN_MS);
    return describeExit(job, exit, stopRequest, problem);
  };

  const done = run().catch((error: unknown) =>
    finish(job.ref, "failed", {
      reason: `internal error: ${String(error)}`,
      startedAt: job.startedAt,
      finishedAt: job.now(),
    }),
  );
  return { ref: job.ref, pid, cancel, done, pauseOutput: output.pause, resumeOutput: output.resume };
}

function describeExit(
  job: Supervised,
  exit: { code: number | null; signal: NodeJS.Signals | null },
  stopRequest: { outcome: Outcome; reason: string } | null,
  problem: string | null,
): JobResult {
  const times = { startedAt: job.startedAt, finishedAt: job.now() };
  const observed = { exitCode: exit.code, signal: exit.signal };
  const withProblem = (reason: string | null) =>
    problem === null ? reason : reason === null ? problem : `${reason}; ${problem}`;
  if (stopRequest !== null)
    return finish(job.ref, stopRequest.outcome, { ...observed, ...times, reason: withProblem(stopRequest.reason) });
  if (exit.code === 0) return finish(job.ref, "succeeded", { ...observed, ...times, reason: withProblem(null) });
  const reason =
    exit.code !== null ? `exited with code ${exit.code}` : `killed by ${exit.signal ?? "an unknown signal"}`;
  return finish(job.ref, "failed", { ...observed, ...times, reason: withProblem(reason) });
}

function finish(
  ref: JobRef,
  outcome: Outcome,
  fields: {
    reason: string | null;
    startedAt: string | null;
    finishedAt: Date;
    exitCode?: number | null;
    signal?: string | null;
  },
): JobResult {
  return {
    ...ref,
    outcome,
    exitCode: fields.exitCode ?? null,
    signal: fields.signal ?? null,
    reason: fields.reason,
    startedAt: fields.startedAt,
    finishedAt: fields.finishedAt.toISOString(),
  };
}

/**
 * Feeds both pipes to onLog; `pause` stops reading them (the kernel's pipe buffer fills and the
 * job's writes block: that is the backpressure); `drain` waits (bounded) for them to close and
 * flushes held bytes.
 */
function streamOutput(subprocess: ResultPromise, onLog: (chunk: LogChunk) => void) {
  const pipes = (["stdout", "stderr"] as const).map((name) => {
    const stream = subprocess[name] as Readable;
    const chunker = createLogChunker(name, onLog);
    const closed = new Promise<void>((resolve) => stream.once("close", resolve));
    stream.on("data", (bytes: Buffer) => chunker.write(bytes));
    stream.on("error", () => undefined); // a read error ends the output; the exit still decides
    return { stream, chunker, closed };
  });
  return {
    pause: () => pipes.forEach((p) => p.stream.pause()),
    resume: () => pipes.forEach((p) => p.stream.resume()),
    async drain(timeoutMs: number): Promise<void> {
      // The group is gone: what is left in the pipes is bounded, so read it even if paused.
      for (const pipe of pipes) pipe.stream.resume();
      let timer: NodeJS.Timeout | undefined;
      const timedOut = new Promise<void>((resolve) => (timer = setTimeout(resolve, timeoutMs)));
      await Promise.race([Promise.all(pipes.map((p) => p.closed)), timedOut]);
      clearTimeout(timer);
      for (const pipe of pipes) {
        pipe.stream.destroy();
        pipe.chunker.end();
      }
    },
  };
}
