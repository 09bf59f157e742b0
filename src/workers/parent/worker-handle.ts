// One worker process as the pool sees it: spawn it, talk to it, kill it, know when it is gone.
// A thin driver: what the pool knows of the worker (its state, its job, why it was killed) is
// in the pool's own record of it (lifecycle.ts), not here.
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
import type { Logger } from "../../log/logger.js";
import { buildJobEnv } from "../../jobs/job-env.js";
import { signalGroup } from "../../jobs/process-group.js";
import type { FromWorker, ToWorker } from "../worker-messages.js";

/** The worker process's entry point, forked for every worker (the compiled child/worker-main.js). */
export const WORKER_ENTRY = fileURLToPath(new URL("../child/worker-main.js", import.meta.url));

export interface WorkerExit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export interface WorkerEvents {
  onMessage(worker: WorkerHandle, message: FromWorker): void;
  /** Called once, when the process is gone (or never started). */
  onExit(worker: WorkerHandle, exit: WorkerExit): void;
}

/** Worker stdout/stderr lines longer than this are cut before they reach the daemon's log. */
const MAX_STRAY_LINE = 2_000;

export class WorkerHandle {
  readonly exited: Promise<WorkerExit>;
  private gone = false;

  private constructor(
    private readonly child: ChildProcess,
    readonly pid: number,
    events: WorkerEvents,
    logger: Logger,
  ) {
    child.on("message", (message: FromWorker) => events.onMessage(this, message));
    this.exited = new Promise((resolve) => {
      const finish = (exit: WorkerExit) => {
        if (this.gone) return;
        this.gone = true;
        events.onExit(this, exit);
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

  static spawn(events: WorkerEvents, logger: Logger): WorkerHandle {
    const child = fork(WORKER_ENTRY, [], {
      env: buildJobEnv({}, process.env),
      execArgv: [],
      detached: process.platform !== "win32", // on Windows it would open a console window, and there are no groups
      stdio: ["ignore", "pipe", "pipe", "ipc"],
      serialization: "json",
    });
    // A failed spawn has no pid and reports itself asynchronously with 'error'.
    return new WorkerHandle(child, child.pid ?? -1, events, logger);
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
  kill(): void {
    if (!this.gone && this.pid > 0) signalGroup(this.pid, "SIGKILL");
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
