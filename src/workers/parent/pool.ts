// The worker pool: warm worker processes that run jobs one at a time and are reused from job to
// job. It grows on demand up to `size` and keeps that many warm afterwards: a worker that dies
// or is recycled is replaced straight away, so the next job does not pay for a cold start.
//
// - Recycling happens at the job boundary: after each result the worker's reported health goes
//   through evaluateRecycle; a worker due for recycling is retired (its handlers' cleanup runs,
//   then it exits) and a fresh one is spawned, whatever its age. When a handler's workers are
//   recycled after every job (RECYCLE_STREAK_WARN in a row) the pool warns, naming it. An idle worker that aged past its limit is
//   retired when a job would have gone to it.
// - The hard ceiling: while any worker is busy, each busy worker's RSS is sampled from outside
//   every sampleIntervalMs; one at or past hardRssBytes is SIGKILLed with its job's process
//   group, and the job fails with reason `worker_memory_limit: ...`.
// - A worker that dies mid-job fails that job with the cause; nothing else is disturbed.
// - Output flow: pauseOutput()/resumeOutput() tell every worker to stop/restart sending log
//   chunks (and so to stop reading its command's pipes), for a daemon whose socket is slow.
//
// Every recycle and kill is logged with its reason and counted in stats().
//
// The pool is the one registry of jobs: every job it was given, from start() until its result
// has been handed over (queued, on a worker, or being cleaned up after its worker died), is in
// `jobs`, so its caller cancels by reference (cancel, cancelAll) and keeps no list of its own.
// Each worker is a handle (the process) and the pool's record of it (lifecycle.ts), which only
// stepWorker changes.
import path from "node:path";
import { RunnerError } from "../../errors.js";
import type { JobHooks, RunningJob } from "../../jobs/command.js";
import type { Logger } from "../../log/logger.js";
import { assignmentProblem, type Assignment, type JobRef, type JobResult } from "../../protocol/channel.js";
import { PoolJob, type StartOptions, type WorkerPort } from "./pool-job.js";
import {
  RECYCLE_SETTING,
  describeRecycle,
  formatMiB,
  isRecycleLoop,
  limitsForWorker,
  noteRecycleStreak,
  recycleFigures,
  type RecycleLimits,
  type RecycleReason,
} from "./recycle-policy.js";
import {
  healthOf,
  newWorkerRecord,
  stepWorker,
  type KillKind,
  type WorkerAction,
  type WorkerEvent,
  type WorkerRecord,
  type WorkerState,
} from "./lifecycle.js";
import { MemoryCeiling } from "./memory-ceiling.js";
import { WorkerHandle, type WorkerExit } from "./worker-handle.js";
import type { FromWorker } from "../worker-messages.js";

/** A busy worker's RSS is read this often, for the hard ceiling. */
const SAMPLE_INTERVAL_MS = 1_000;
/** A retired worker's handlers get this long for their cleanup before it is killed. */
const RETIRE_TIMEOUT_MS = 5_000;

export interface WorkerPoolOptions {
  /** Worker processes at most (the runner's capacity: the daemon never runs more jobs at once). */
  size: number;
  limits: RecycleLimits;
  /** Handler name → absolute path of its module, from the runner's own config. */
  handlers: Record<string, string>;
  logger: Logger;
  /** How often a busy worker's RSS is sampled for the hard ceiling (not a setting; tests shorten it). */
  sampleIntervalMs?: number;
  /** How long a retired worker's cleanup may take before it is killed (not a setting; tests shorten it). */
  retireTimeoutMs?: number;
  /** The clock for ages (ms). Default Date.now. */
  now?: () => number;
  /** Draws each worker's age jitter, in [0, 1). Default Math.random. */
  random?: () => number;
}

export interface PoolJobHooks extends JobHooks {
  /**
   * The job's result, handed over once, always on a later turn than start() (a job refused at
   * once must not report before its caller has finished starting it). Until then the job is
   * still the pool's: cancelAll returns it, so a result is never between two owners.
   */
  onFinished?(result: JobResult): void;
}

export interface WorkerStats {
  pid: number;
  state: WorkerState;
  jobsRun: number;
  ageMs: number;
  /** This worker's own (jittered) age limit. */
  maxAgeMs: number | null;
  rssBytes: number | null;
  openFds: number | null;
}

export interface PoolStats {
  size: number;
  outputPaused: boolean;
  workers: WorkerStats[];
  /** Worker processes started, ever. */
  spawned: number;
  /** Workers retired at a job boundary, by reason. */
  recycled: Record<RecycleReason, number>;
  /** Workers the pool killed, by cause. */
  killed: Record<KillKind, number>;
  /** Workers that died on their own (crash, signal, OOM killer, exit). */
  crashed: number;
  /** Jobs handed to a worker / failed before reaching one (unknown handler, pool closed). */
  jobs: { dispatched: number; rejected: number };
}

/** After this many workers in a row die before saying "ready", queued jobs fail instead of waiting. */
const MAX_BOOT_FAILURES = 3;

type PoolRecord = WorkerRecord<PoolJob>;

export class WorkerPool {
  /** Every live worker process, with the pool's record of it. */
  private readonly workers = new Map<WorkerHandle, PoolRecord>();
  /** Every job not yet handed back (see PoolJobHooks.onFinished), in the order it came: the queue is its waiting ones. */
  private readonly jobs = new Set<PoolJob>();
  private readonly handlers: Map<string, string>;
  private readonly now: () => number;
  private readonly random: () => number;
  private readonly retireTimeoutMs: number;
  private outputPaused = false;
  private closing: Promise<void> | null = null;
  /** How many workers to keep warm: the most the pool has needed so far (at most `size`). */
  private warmTarget = 0;
  private bootFailures = 0;
  /** Per kind of job (handler name, or "command"): workers recycled after their first job, in a row. */
  private readonly recycleStreaks = new Map<string, number>();
  private readonly ceiling: MemoryCeiling<WorkerHandle>;
  private readonly counters: Omit<PoolStats, "size" | "outputPaused" | "workers">;
  private readonly events = {
    onMessage: (worker: WorkerHandle, message: FromWorker) => this.handleMessage(worker, message),
    onExit: (worker: WorkerHandle, exit: WorkerExit) => this.handleExit(worker, exit),
  };

  constructor(private readonly options: WorkerPoolOptions) {
    if (!Number.isInteger(options.size) || options.size < 1)
      throw new RunnerError("config_invalid", `pool size must be a positive integer, not ${options.size}`);
    this.handlers = new Map(Object.entries(options.handlers));
    for (const [name, file] of this.handlers) {
      if (!path.isAbsolute(file))
        throw new RunnerError(
          "config_invalid",
          `handler "${name}": module path must be absolute, not ${JSON.stringify(file)}`,
        );
    }
    this.now = options.now ?? Date.now;
    this.random = options.random ?? Math.random;
    this.ceiling = new MemoryCeiling(
      options.sampleIntervalMs ?? SAMPLE_INTERVAL_MS,
      () => this.busyWorkers().map(([worker, record]) => ({ worker, pid: worker.pid, limits: record.limits })),
      (worker, rss, hard) => {
        // Still busy after the sample's await? A job that just ended is judged at its boundary instead.
        if (this.workers.get(worker)?.state !== "busy") return;
        this.killWorker(
          worker,
          "memory_limit",
          `worker_memory_limit: RSS ${formatMiB(rss)} reached the hard limit ${formatMiB(hard)}`,
        );
      },
    );
    this.retireTimeoutMs = options.retireTimeoutMs ?? RETIRE_TIMEOUT_MS;
    this.counters = {
      spawned: 0,
      recycled: { memory: 0, fds: 0, age: 0, jobs: 0 },
      killed: { memory_limit: 0, cancel_grace: 0, unresponsive: 0, cleanup_timeout: 0, shutdown: 0, ipc_failed: 0 },
      crashed: 0,
      jobs: { dispatched: 0, rejected: 0 },
    };
  }

  /** Runs a job on a warm worker (same contract as startCommandJob). Never throws for a bad job: `done` says why. */
  start(assignment: Assignment, hooks: PoolJobHooks, options: StartOptions = {}): RunningJob {
    const spec = assignment.job;
    const handlerPath = spec.kind === "module" ? (this.handlers.get(spec.handler) ?? null) : null;
    const job = new PoolJob(assignment, hooks, handlerPath, this.options.logger, options);
    this.jobs.add(job);
    void job.done.then((result) =>
      setImmediate(() => {
        this.jobs.delete(job);
        hooks.onFinished?.(result);
      }),
    );
    const problem = assignmentProblem(assignment);
    if (problem !== null) {
      // Fails at once, never reaching a worker (which it could strand or crash).
      this.counters.jobs.rejected++;
      job.reject(problem);
    } else if (this.closing !== null) {
      this.counters.jobs.rejected++;
      job.reject("the worker pool is closed");
    } else if (spec.kind === "module" && handlerPath === null) {
      this.counters.jobs.rejected++;
      const known = [...this.handlers.keys()];
      job.reject(
        `unknown handler "${spec.handler}": this runner's config maps no module to it (known: ${known.length > 0 ? known.join(", ") : "none"})`,
      );
    } else {
      this.dispatch();
    }
    return job;
  }

  /** Cancels the job with this reference, wherever it is (queued or running); unknown or finished: nothing. */
  cancel(ref: JobRef, reason: string): void {
    for (const job of this.jobs) if (job.ref.jobId === ref.jobId && job.ref.attempt === ref.attempt) job.cancel(reason);
  }

  /**
   * Cancels every job the pool still holds (each running one with its own grace) and returns
   * their results to come, including those of jobs that ended but are not yet handed over.
   */
  cancelAll(reason: string): Promise<JobResult>[] {
    const jobs = [...this.jobs];
    for (const job of jobs) job.cancel(reason);
    return jobs.map((job) => job.done);
  }

  /** The daemon's log consumer is slow: workers stop sending output (and reading their command's pipes). */
  pauseOutput(): void {
    if (this.outputPaused) return;
    this.outputPaused = true;
    this.broadcastFlow();
  }

  resumeOutput(): void {
    if (!this.outputPaused) return;
    this.outputPaused = false;
    this.broadcastFlow();
  }

  /**
   * Stops taking jobs; cancels queued and running ones (running ones with their own grace), lets
   * every worker's cleanup run, and resolves once every worker process is gone.
   */
  close(): Promise<void> {
    if (this.closing !== null) return this.closing;
    for (const job of this.waitingJobs()) job.cancel("the worker pool is closing");
    for (const worker of [...this.workers.keys()]) {
      this.workers.get(worker)?.job?.cancel("the worker pool is closing");
      this.apply(worker, { type: "close" });
    }
    this.closing = Promise.all([...this.workers.keys()].map((w) => w.exited)).then(() => this.ceiling.update());
    return this.closing;
  }

  stats(): PoolStats {
    const now = this.now();
    const workers = [...this.workers].map(([worker, record]) => ({
      pid: worker.pid,
      state: record.state,
      jobsRun: record.jobsRun,
      ageMs: now - record.spawnedAt,
      maxAgeMs: record.limits.maxAgeMs,
      rssBytes: record.health.rssBytes,
      openFds: record.health.openFds,
    }));
    const c = this.counters;
    return {
      size: this.options.size,
      outputPaused: this.outputPaused,
      workers,
      spawned: c.spawned,
      recycled: { ...c.recycled },
      killed: { ...c.killed },
      crashed: c.crashed,
      jobs: { ...c.jobs },
    };
  }

  // ---- dispatch ----

  private dispatch(): void {
    for (const job of this.waitingJobs()) {
      const worker = this.takeIdleWorker();
      if (worker === undefined) break;
      this.assign(worker, job);
    }
    const starting = this.countWorkers("starting");
    for (
      let missing = this.waitingJobs().length - starting;
      missing > 0 && this.countLive() < this.options.size;
      missing--
    ) {
      this.spawnWorker();
      this.warmTarget = Math.max(this.warmTarget, this.countLive());
    }
  }

  /** An idle worker fit to take a job, retiring on the way any that got too old while idle. */
  private takeIdleWorker(): WorkerHandle | undefined {
    for (const [worker, record] of this.workers) {
      if (record.state !== "idle") continue;
      if (this.apply(worker, { type: "offer" }).type === "keep") return worker;
    }
    return undefined;
  }

  private assign(worker: WorkerHandle, job: PoolJob): void {
    this.apply(worker, { type: "assign", job });
    this.counters.jobs.dispatched++;
    job.attach(this.portTo(worker), this.outputPaused);
    this.ceiling.update();
  }

  /** A job's line to its worker: messages go to the process, kills go through the pool. */
  private portTo(worker: WorkerHandle): WorkerPort {
    return {
      send: (message, onFailed) => worker.send(message, onFailed),
      kill: (kind, reason) => this.killWorker(worker, kind, reason),
    };
  }

  /** Keeps `warmTarget` workers alive, unless workers are failing to boot. */
  private replenish(): void {
    if (this.closing !== null || this.bootFailures > 0) return;
    while (this.countLive() < Math.min(this.warmTarget, this.options.size)) this.spawnWorker();
  }

  private spawnWorker(): void {
    const worker = WorkerHandle.spawn(this.events, this.options.logger);
    this.workers.set(worker, newWorkerRecord(limitsForWorker(this.options.limits, this.random()), this.now()));
    this.counters.spawned++;
  }

  // ---- worker events ----

  private handleMessage(worker: WorkerHandle, message: FromWorker): void {
    const job = this.workers.get(worker)?.job ?? null;
    switch (message.type) {
      case "ready": {
        this.bootFailures = 0;
        const action = this.apply(worker, { type: "ready", health: message.health, closing: this.closing !== null });
        if (action.type !== "keep") return;
        if (this.outputPaused) worker.send({ type: "flow", paused: true });
        this.dispatch();
        return;
      }
      case "started":
        if (job?.ref.jobId === message.jobId) job.handleStarted(message.pid, message.startedAt);
        return;
      case "log":
        job?.handleLog({ stream: message.stream, data: message.data });
        return;
      case "result":
        return this.handleResult(worker, message);
      case "fatal":
        this.apply(worker, { type: "fatal", message: message.message });
        return;
    }
  }

  private handleResult(worker: WorkerHandle, message: Extract<FromWorker, { type: "result" }>): void {
    const job = this.workers.get(worker)?.job ?? null;
    const event = { type: "result", health: message.health, closing: this.closing !== null } as const;
    const action = this.apply(worker, event);
    if (job?.ref.jobId === message.result.jobId) job.handleResult(message.result);
    if (action.type === "none") return; // being killed: the exit handler takes it from here
    this.ceiling.update();
    if (action.type === "retire") return; // the pool is closing
    if (job !== null) this.noteStreak(job, worker, action.type === "recycle" ? action.reason : null);
    this.dispatch();
    this.replenish();
  }

  private handleExit(worker: WorkerHandle, exit: WorkerExit): void {
    const before = this.workers.get(worker);
    if (before === undefined) return;
    const { action } = stepWorker(before, { type: "exit" }, this.now());
    this.workers.delete(worker);
    if (action.type !== "forget") return;
    const job = before.job;
    if (job !== null) void job.handleWorkerGone(exit, before.killedBecause, before.fatal);
    const how = exit.signal !== null ? `signal ${exit.signal}` : `code ${exit.code}`;
    if (action.crashed) {
      this.counters.crashed++;
      const logged = { worker: worker.pid, exit: how, fatal: before.fatal, jobId: job?.ref.jobId };
      this.options.logger.warn(
        logged,
        `worker ${worker.pid} exited unexpectedly with ${how}${job ? "; its job failed" : ""}`,
      );
    }
    this.ceiling.update();
    if (this.closing !== null) return;
    if (action.bootFailed) {
      this.bootFailures++;
      if (this.bootFailures >= MAX_BOOT_FAILURES)
        return this.failQueued(
          `workers cannot start: the last ${MAX_BOOT_FAILURES} exited with ${how} before they were ready`,
        );
    }
    this.dispatch();
    this.replenish();
  }

  private failQueued(reason: string): void {
    const waiting = this.waitingJobs();
    this.options.logger.error({ jobs: waiting.length }, reason);
    for (const job of waiting) job.reject(reason);
    this.bootFailures = 0; // the next job tries again
  }

  // ---- the worker's record, and what its step says to do ----

  /**
   * Steps the worker's record and does what the step says (except "keep" and "forget", which
   * mean different things to each caller): retire, recycle, kill. Returns the action.
   */
  private apply(worker: WorkerHandle, event: WorkerEvent<PoolJob>): WorkerAction {
    const before = this.workers.get(worker);
    if (before === undefined) return { type: "none" };
    const { record, action } = stepWorker(before, event, this.now());
    this.workers.set(worker, record);
    switch (action.type) {
      case "retire":
        this.retire(worker);
        break;
      case "recycle":
        this.logRecycle(worker, record, action.reason);
        this.retire(worker);
        break;
      case "kill": {
        const { kind, reason } = action.cause;
        this.counters.killed[kind]++;
        const jobId = before.job?.ref.jobId;
        // A worker still starting when the pool closes (a replacement after a recycle) holds no
        // job: its end is part of a clean stop, not something to warn about.
        const level = kind === "shutdown" ? "info" : "warn";
        this.options.logger[level]({ worker: worker.pid, kind, jobId }, `killing worker ${worker.pid}: ${reason}`);
        before.job?.killCommandGroup();
        worker.kill();
        break;
      }
      case "none":
      case "keep":
      case "forget":
        break;
    }
    return action;
  }

  private killWorker(worker: WorkerHandle, kind: KillKind, reason: string): void {
    this.apply(worker, { type: "kill", cause: { kind, reason } });
  }

  private logRecycle(worker: WorkerHandle, record: PoolRecord, reason: RecycleReason): void {
    this.counters.recycled[reason]++;
    const now = this.now();
    const health = healthOf(record);
    const detail = describeRecycle(reason, health, record.limits, now);
    const { limit } = recycleFigures(reason, health, record.limits, now);
    this.options.logger.info(
      {
        worker: worker.pid,
        reason,
        limit,
        setting: RECYCLE_SETTING[reason],
        jobsRun: record.jobsRun,
        rssBytes: health.rssBytes,
        openFds: health.openFds,
        ageMs: now - record.spawnedAt,
      },
      `recycling worker ${worker.pid}: ${detail}`,
    );
  }

  /**
   * The visible guard against a recycle loop: there is no hidden grace that lets a worker stay
   * past a limit, so a handler that needs more than the limit is recycled after every job. The
   * operator is told, once per streak, which handler and which limit, so they can fix one or
   * raise the other.
   */
  private noteStreak(job: PoolJob, worker: WorkerHandle, reason: RecycleReason | null): void {
    const record = this.workers.get(worker);
    if (record === undefined) return;
    const spec = job.assignment.job;
    const handler = spec.kind === "module" ? spec.handler : "command";
    const streak = noteRecycleStreak(this.recycleStreaks.get(handler) ?? 0, reason, record.jobsRun);
    this.recycleStreaks.set(handler, streak);
    if (!isRecycleLoop(streak) || reason === null) return;
    const health = healthOf(record);
    const { reading, limit } = recycleFigures(reason, health, record.limits, this.now());
    const shown =
      reason === "memory"
        ? { reading: formatMiB(reading), limit: formatMiB(limit) }
        : { reading: String(reading), limit: String(limit) };
    const what = spec.kind === "module" ? `handler "${handler}"` : "command jobs";
    this.options.logger.warn(
      {
        handler,
        reason,
        streak,
        limit,
        setting: RECYCLE_SETTING[reason],
        rssBytes: health.rssBytes,
        openFds: health.openFds,
      },
      `${streak} workers in a row were recycled for ${reason} right after one job of ${what} (last: ${shown.reading}, limit ${shown.limit}): ` +
        `it leaks past the limit in one job, or a fresh worker's baseline is above it; every job now pays a cold start. Fix the handler or raise ${RECYCLE_SETTING[reason]}`,
    );
  }

  /** Asks a worker (idle, now retiring) to run its cleanup and exit; kills it if that takes too long. */
  private retire(worker: WorkerHandle): void {
    worker.send({ type: "retire" });
    const timer = setTimeout(
      () => this.killWorker(worker, "cleanup_timeout", `its cleanup took longer than ${this.retireTimeoutMs} ms`),
      this.retireTimeoutMs,
    );
    void worker.exited.then(() => clearTimeout(timer));
  }

  // ---- helpers ----

  private waitingJobs(): PoolJob[] {
    return [...this.jobs].filter((job) => job.waiting);
  }

  private busyWorkers(): [WorkerHandle, PoolRecord][] {
    return [...this.workers].filter(([, record]) => record.state === "busy");
  }

  private countWorkers(state: WorkerState): number {
    let n = 0;
    for (const record of this.workers.values()) if (record.state === state) n++;
    return n;
  }

  /** Workers that count toward the size: not on their way out. */
  private countLive(): number {
    return this.countWorkers("starting") + this.countWorkers("idle") + this.countWorkers("busy");
  }

  private broadcastFlow(): void {
    for (const [worker, record] of this.workers) {
      if (record.state === "idle" || record.state === "busy") worker.send({ type: "flow", paused: this.outputPaused });
    }
  }
}
