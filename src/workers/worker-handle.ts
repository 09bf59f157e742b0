// One worker process as the pool sees it: spawn it, talk to it, kill it, know when it is gone.
//
// Forked with child_process.fork rather than execa: the pool needs the raw IPC channel (the
// send() callback and return value for flow control) and a long-lived process whose lifetime
// it manages itself; execa's value (results, buffering, errors for a finished command) is for
// command jobs, which the worker runs with execa.
//
// The worker is the leader of its own process group (detached), so one group SIGKILL also takes
// any process a module handler started; command jobs run in groups of their own (the pool kills
// those separately). Its environment is the same minimal one a job gets: handlers never see the
// runner's settings or credential.
import { fork, type ChildProcess } from "node:child_process";
import { fileURLToPath } from "node:url";
import type { Logger } from "../log/logger.js";
import { buildJobEnv } from "../jobs/job-env.js";
import { signalGroup } from "../jobs/process-group.js";
import type { PoolJob } from "./pool-job.js";
import type { RecycleLimits } from "./recycle-policy.js";
import type { HealthReading } from "./sample.js";
import type { FromWorker, ToWorker } from "./worker-messages.js";

export const WORKER_ENTRY = fileURLToPath(new URL("./worker-main.js", import.meta.url));

export type WorkerState = "starting" | "idle" | "busy" | "retiring" | "gone";

export interface WorkerExit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export interface WorkerEvents {
  onMessage(worker: WorkerHandle, message: FromWorker): void;
  /** `lastState` is the state it was in when it exited (the handle's own state is "gone" from then). */
  onExit(worker: WorkerHandle, exit: WorkerExit, lastState: WorkerState): void;
}

/** Why the pool killed a worker. */
export type KillKind = "memory_limit" | "cancel_grace" | "unresponsive" | "cleanup_timeout" | "shutdown" | "ipc_failed";

/** Worker stdout/stderr lines longer than this are cut before they reach the daemon's log. */
const MAX_STRAY_LINE = 2_000;

export class WorkerHandle {
  state: WorkerState = "starting";
  jobsRun = 0;
  health: HealthReading = { rssBytes: null, openFds: null };
  /** The job it runs, while busy. */
  job: PoolJob | null = null;
  /** When set, the pool killed it and this is why (it becomes the running job's reason). */
  killedBecause: { kind: KillKind; reason: string } | null = null;
  /** It said "ready" at least once (a worker that dies before that failed to boot). */
  booted = false;
  /** What the worker said before dying of an uncaught exception. */
  fatal: string | null = null;
  readonly exited: Promise<WorkerExit>;

  private constructor(
    private readonly child: ChildProcess,
    readonly pid: number,
    readonly spawnedAt: number,
    /** This worker's own limits (its age limit jittered at spawn). */
    readonly limits: RecycleLimits,
    events: WorkerEvents,
    logger: Logger,
  ) {
    child.on("message", (message: FromWorker) => events.onMessage(this, message));
    this.exited = new Promise((resolve) => {
      const finish = (exit: WorkerExit) => {
        if (this.state === "gone") return;
        const lastState = this.state;
        this.state = "gone";
        events.onExit(this, exit, lastState);
        resolve(exit);
      };
      child.once("exit", (code, signal) => finish({ code, signal }));
      child.on("error", (error) => {
        logger.warn({ err: error, worker: pid }, "worker process error");
        if (pid < 0) setImmediate(() => finish({ code: null, signal: null })); // never started: no exit event comes
      });
    });
    for (const stream of ["stdout", "stderr"] as const)
      forwardLines(child[stream], (line) => logger.info({ worker: pid, stream }, line));
  }

  static spawn(options: {
    spawnedAt: number;
    limits: RecycleLimits;
    events: WorkerEvents;
    logger: Logger;
  }): WorkerHandle {
    const child = fork(WORKER_ENTRY, [], {
      env: buildJobEnv({}, process.env),
      execArgv: [],
      detached: process.platform !== "win32", // on Windows it would open a console window, and there are no groups
      stdio: ["ignore", "pipe", "pipe", "ipc"],
      serialization: "json",
    });
    // A failed spawn has no pid and reports itself asynchronously with 'error'.
    return new WorkerHandle(child, child.pid ?? -1, options.spawnedAt, options.limits, options.events, options.logger);
  }

  /**
   * False when the message could not be sent: the channel is gone (the exit event follows) or
   * the message would not serialize. `onFailed` hears of a write that fails later (without it,
   * such a failure is the child's 'error' event, logged).
   */
  send(message: ToWorker, onFailed?: (error: Error) => void): boolean {
    if (!this.child.connected) return false;
    try {
      if (onFailed === undefined) this.child.send(message);
      else this.child.send(message, undefined, {}, (error: Error | null) => error !== null && onFailed(error));
      return true;
    } catch {
      return false;
    }
  }

  /** SIGKILL to the worker's whole group (the worker and anything a handler started). */
  kill(kind: KillKind, reason: string): void {
    if (this.state === "gone") return;
    this.killedBecause ??= { kind, reason };
    if (this.pid > 0) signalGroup(this.pid, "SIGKILL");
  }
}

function forwardLines(stream: NodeJS.ReadableStream | null, emit: (line: string) => void): void {
  if (stream === null) return;
  let partial = "";
  stream.setEncoding("utf8");
  stream.on("data", (text: string) => {
    const lines = (partial + text).split("\n");
    partial = (lines.pop() ?? "").slice(0, MAX_STRAY_LINE);
    for (const line of lines) if (line.length > 0) emit(line.slice(0, MAX_STRAY_LINE));
  });
  stream.on("end", () => partial.length > 0 && emit(partial));
}
