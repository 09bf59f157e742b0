// One job as the pool runs it: the RunningJob the daemon holds (same contract as
// startCommandJob's), fed by its worker's messages. It owns the deadlines the worker cannot be
// trusted to keep: a module handler can block its worker's event loop, so a module job's
// timeout and cancel grace are enforced here, from outside, by killing the worker. A command
// job's own timeout and grace run inside the worker (startCommandJob); here there is only a
// backstop in case the worker itself stops answering.
//
// It knows its worker only as a port (send a message, ask the pool to kill it): the pool owns
// the worker, its record and its handle.
import type { JobHooks, RunningJob } from "../../jobs/command.js";
import type { LogChunk } from "../../jobs/log-chunks.js";
import { signalGroup, waitForGroupExit } from "../../jobs/process-group.js";
import { killMarkedProcesses } from "../../jobs/job-marks.js";
import type { Assignment, JobRef, JobResult, Outcome } from "../../protocol/channel.js";
import type { Logger } from "../../log/logger.js";
import type { KillCause, KillKind } from "./lifecycle.js";
import type { WorkerExit } from "./worker-handle.js";
import type { StopOutcome, ToWorker } from "../worker-messages.js";

/** Past a command job's own deadline (its timeout or grace), how long its worker gets before it is killed. */
export const COMMAND_BACKSTOP_MS = 10_000;
/** After SIGKILLing an orphaned command group, how long to wait for it to vanish. */
const GROUP_GONE_MS = 5_000;

/** The job's line to the worker the pool gave it. */
export interface WorkerPort {
  /** False when the message could not be sent; `onFailed` hears of a write that fails later. */
  send(message: ToWorker, onFailed?: (error: Error) => void): boolean;
  /** Asks the pool to kill the worker (with the job's command group), saying why. */
  kill(kind: KillKind, reason: string): void;
}

export class PoolJob implements RunningJob {
  readonly ref: JobRef;
  readonly done: Promise<JobResult>;
  finished = false;
  private resolveDone!: (result: JobResult) => void;
  private worker: WorkerPort | null = null;
  private startedPid: number | null = null;
  private startedAt: string | null = null;
  private stopRequest: { outcome: StopOutcome; reason: string } | null = null;
  private killTimer: NodeJS.Timeout | null = null;
  private killDeadline = Infinity;
  private timeoutTimer: NodeJS.Timeout | null = null;

  constructor(
    readonly assignment: Assignment,
    private readonly hooks: JobHooks,
    /** For a module job: the module the runner's config maps its handler name to. */
    readonly handlerPath: string | null,
    private readonly logger: Logger,
    /** For a command job: the journal entry its worker records the process in (see StartOptions). */
    private readonly journalFile: string | null = null,
  ) {
    this.ref = { jobId: assignment.jobId, attempt: assignment.attempt };
    this.done = new Promise((resolve) => (this.resolveDone = resolve));
  }

  get kind(): Assignment["job"]["kind"] {
    return this.assignment.job.kind;
  }

  /** The job's process: a command job's group leader, or a module job's worker. Null until started. */
  get pid(): number | null {
    return this.startedPid;
  }

  cancel(reason: string, graceMs = this.assignment.cancelGraceMs): void {
    this.requestStop("cancelled", reason, graceMs);
  }

  /** Fails at once, never having run (unknown handler, closed pool). */
  reject(reason: string): void {
    this.finish(this.resultWith("failed", reason));
  }

  /** Not yet on a worker, and not finished: it waits in the pool's queue. */
  get waiting(): boolean {
    return this.worker === null && !this.finished;
  }

  /** The pool hands the job to a worker. */
  attach(worker: WorkerPort, outputPaused: boolean): void {
    this.worker = worker;
    const journalFile = this.kind === "command" ? this.journalFile : null;
    const run = {
      type: "run" as const,
      assignment: this.assignment,
      handlerPath: this.handlerPath,
      outputPaused,
      journalFile,
    };
    if (!worker.send(run, (error) => this.handOverFailed(error.message)))
      return this.handOverFailed("the message could not be sent");
    const { timeoutMs, cancelGraceMs } = this.assignment;
    if (this.kind === "module") {
      this.timeoutTimer = setTimeout(
        () => this.requestStop("timed_out", `timed out after ${timeoutMs} ms`, cancelGraceMs),
        timeoutMs,
      );
    } else {
      this.timeoutTimer = setTimeout(
        () => {
          this.stopRequest ??= { outcome: "timed_out", reason: `timed out after ${timeoutMs} ms` };
          this.killWorker(
            "unresponsive",
            `its worker did not end the command within ${COMMAND_BACKSTOP_MS} ms of its timeout and grace`,
          );
        },
        timeoutMs + cancelGraceMs + COMMAND_BACKSTOP_MS,
      );
    }
  }

  /**
   * The job never reached its worker: it fails now, saying so, rather than holding its slot until
   * its timeout; the worker, whose channel is in doubt, is replaced.
   */
  private handOverFailed(detail: string): void {
    const worker = this.worker;
    const reason = `could not hand the job to its worker: ${detail}`;
    this.finish(this.resultWith("failed", reason));
    worker?.kill("ipc_failed", reason);
  }

  handleStarted(pid: number, startedAt: string): void {
    if (this.finished) return;
    this.startedPid = pid;
    this.startedAt = startedAt;
    try {
      this.hooks.onStarted({ pid, startedAt });
    } catch (error) {
      this.logger.error({ err: error, jobId: this.ref.jobId }, "recording a job's start failed; cancelling it");
      this.cancel("the runner failed to record the job's start", 0); // never leave it running unsupervised
    }
  }

  handleLog(chunk: LogChunk): void {
    if (!this.finished) this.hooks.onLog(chunk);
  }

  handleResult(result: JobResult): void {
    this.finish(result);
  }

  /** The worker died with the job on it: clean up what it leaves behind and say why. */
  async handleWorkerGone(exit: WorkerExit, killed: KillCause | null, fatal: string | null): Promise<void> {
    if (this.finished) return;
    if (this.kind === "command") {
      // Its supervisor is gone: the job's group would run on unwatched. It goes too, and so does
      // any process of the job the worker spawned but died before reporting (found by its marks).
      if (this.startedPid !== null) signalGroup(this.startedPid, "SIGKILL");
      killMarkedProcesses(this.ref);
      if (this.startedPid !== null) await waitForGroupExit(this.startedPid, GROUP_GONE_MS);
    }
    const observed = { exitCode: exit.code, signal: exit.signal };
    if (killed?.kind === "memory_limit") return this.finish(this.resultWith("failed", killed.reason, observed));
    if (this.stopRequest !== null) {
      const why = killed?.reason ?? describeExit(exit, fatal);
      return this.finish(this.resultWith(this.stopRequest.outcome, `${this.stopRequest.reason} (${why})`, observed));
    }
    this.finish(this.resultWith("failed", killed?.reason ?? describeExit(exit, fatal), observed));
  }

  /** SIGKILL a command job's group now (its worker is about to be killed). */
  killCommandGroup(): void {
    if (this.kind === "command" && this.startedPid !== null && !this.finished) signalGroup(this.startedPid, "SIGKILL");
  }

  private requestStop(outcome: StopOutcome, reason: string, graceMs: number): void {
    if (this.finished) return;
    if (this.worker === null) return this.finish(this.resultWith(outcome, reason)); // still queued: it never ran
    this.stopRequest ??= { outcome, reason };
    const stop = this.stopRequest;
    this.worker.send({ type: "stop", jobId: this.ref.jobId, outcome: stop.outcome, reason: stop.reason, graceMs });
    if (this.kind === "module") {
      this.scheduleKill(
        graceMs,
        "cancel_grace",
        `the handler did not stop within ${graceMs} ms of its abort signal; its worker was killed`,
      );
    } else {
      this.scheduleKill(
        graceMs + COMMAND_BACKSTOP_MS,
        "unresponsive",
        `its worker did not end the command within ${COMMAND_BACKSTOP_MS} ms of the grace period`,
      );
    }
  }

  /** Kill the worker at now + afterMs, unless a kill is already due sooner (a second cancel may shorten the grace). */
  private scheduleKill(afterMs: number, kind: KillKind, reason: string): void {
    const deadline = Date.now() + afterMs;
    if (deadline >= this.killDeadline) return;
    this.killDeadline = deadline;
    if (this.killTimer !== null) clearTimeout(this.killTimer);
    this.killTimer = setTimeout(() => this.killWorker(kind, reason), Math.max(0, afterMs));
  }

  private killWorker(kind: KillKind, reason: string): void {
    if (!this.finished) this.worker?.kill(kind, reason);
  }

  private resultWith(
    outcome: Outcome,
    reason: string,
    observed: { exitCode: number | null; signal: string | null } = { exitCode: null, signal: null },
  ): JobResult {
    return {
      ...this.ref,
      outcome,
      ...observed,
      reason,
      startedAt: this.startedAt,
      finishedAt: new Date().toISOString(),
    };
  }

  private finish(result: JobResult): void {
    if (this.finished) return;
    this.finished = true;
    if (this.timeoutTimer !== null) clearTimeout(this.timeoutTimer);
    if (this.killTimer !== null) clearTimeout(this.killTimer);
    this.resolveDone(result);
  }
}

function describeExit(exit: WorkerExit, fatal: string | null): string {
  if (fatal !== null) return `worker crashed: ${fatal}`;
  return exit.signal !== null ? `worker exited with signal ${exit.signal}` : `worker exited with code ${exit.code}`;
}
