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
import path from "node:path";
import type { JobHooks, RunningJob } from "../jobs/command.js";
import type { Logger } from "../log/logger.js";
import { assignmentProblem, type Assignment } from "../protocol/channel.js";
import { PoolJob } from "./pool-job.js";
import {
  RECYCLE_SETTING,
  RECYCLE_STREAK_WARN,
  describeRecycle,
  evaluateRecycle,
  formatMiB,
  limitsForWorker,
  noteRecycleStreak,
  recycleFigures,
  type RecycleLimits,
  type RecycleReason,
  type WorkerHealth,
} from "./recycle-policy.js";
import { MemoryCeiling } from "./memory-ceiling.js";
import { WorkerHandle, type KillKind, type WorkerExit, type WorkerState } from "./worker-handle.js";
import type { FromWorker } from "./worker-messages.js";

export interface WorkerPoolOptions {
  /** Worker processes at most (the runner's capacity: the daemon never runs more jobs at once). */
  size: number;
  limits: RecycleLimits;
  /** Handler name → absolute path of its module, from the runner's own config. */
  handlers: Record<string, string>;
  logger: Logger;
  /** How often a busy worker's RSS is sampled for the hard ceiling. Default 1000 ms. */
  sampleIntervalMs?: number;
  /** How long a retired worker's cleanup may take before it is killed. Default 5000 ms. */
  retireTimeoutMs?: number;
  /** The clock for ages (ms). Default Date.now. */
  now?: () => number;
  /** Draws each worker's age jitter, in [0, 1). Default Math.random. */
  random?: () => number;
}

export interface StartOptions {
  /**
   * A command job's journal entry: its worker writes the spawned process's pid, pgid and start
   * time there, synchronously, before it reports the pid over IPC, so a crash of the daemon and
   * the worker together cannot lose it.
   */
  journalFile?: string;
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

export class WorkerPool {
  private readonly workers = new Set<WorkerHandle>();
  private queue: PoolJob[] = [];
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
  private readonly ceiling: MemoryCeiling;
  private readonly counters: Omit<PoolStats, "size" | "outputPaused" | "workers">;
  private readonly events = {
    onMessage: (worker: WorkerHandle, message: FromWorker) => this.handleMessage(worker, message),
    onExit: (worker: WorkerHandle, exit: WorkerExit, lastState: WorkerState) =>
      this.handleExit(worker, exit, lastState),
  };
  private readonly jobControl;

  constructor(private readonly options: WorkerPoolOptions) {
    if (!Number.isInteger(options.size) || options.size < 1)
      throw new Error(`pool size must be a positive integer, not ${options.size}`);
    this.handlers = new Map(Object.entries(options.handlers));
    for (const [name, file] of this.handlers) {
      if (!path.isAbsolute(file))
        throw new Error(`handler "${name}": module path must be absolute, not ${JSON.stringify(file)}`);
    }
    this.now = options.now ?? Date.now;
    this.random = options.random ?? Math.random;
    this.ceiling = new MemoryCeiling(
      options.sampleIntervalMs ?? 1_000,
      () => [...this.workers].filter((w) => w.state === "busy"),
      (worker, rss, hard) =>
        this.killWorker(
          worker,
          "memory_limit",
          `worker_memory_limit: RSS ${formatMiB(rss)} reached the hard limit ${formatMiB(hard)}`,
        ),
    );
    this.retireTimeoutMs = options.retireTimeoutMs ?? 5_000;
    this.counters = {
      spawned: 0,
      recycled: { memory: 0, fds: 0, age: 0, jobs: 0 },
      killed: { memory_limit: 0, cancel_grace: 0, unresponsive: 0, cleanup_timeout: 0, shutdown: 0, ipc_failed: 0 },
      crashed: 0,
      jobs: { dispatched: 0, rejected: 0 },
    };
    this.jobControl = {
      killWorker: (w: WorkerHandle, kind: KillKind, reason: string) => this.killWorker(w, kind, reason),
      logger: options.logger,
    };
  }

  /** Runs a job on a warm worker (same contract as startCommandJob). Never throws for a bad job: `done` says why. */
  start(assignment: Assignment, hooks: JobHooks, options: StartOptions = {}): RunningJob {
    const spec = assignment.job;
    const handlerPath = spec.kind === "module" ? (this.handlers.get(spec.handler) ?? null) : null;
    const job = new PoolJob(assignment, hooks, handlerPath, this.jobControl, options.journalFile ?? null);
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
      this.queue.push(job);
      this.dispatch();
    }
    return job;
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
    for (const job of this.queue.splice(0)) job.cancel("the worker pool is closing");
    for (const worker of this.workers) {
      if (worker.state === "busy") worker.job?.cancel("the worker pool is closing");
      else if (worker.state === "idle") this.retire(worker);
      else if (worker.state === "starting")
        this.killWorker(worker, "shutdown", "the pool closed while it was starting");
    }
    this.closing = Promise.all([...this.workers].map((w) => w.exited)).then(() => this.ceiling.update());
    return this.closing;
  }

  stats(): PoolStats {
    const now = this.now();
    const workers = [...this.workers].map((w) => ({
      pid: w.pid,
      state: w.state,
      jobsRun: w.jobsRun,
      ageMs: now - w.spawnedAt,
      maxAgeMs: w.limits.maxAgeMs,
      rssBytes: w.health.rssBytes,
      openFds: w.health.openFds,
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
    this.queue = this.queue.filter((job) => !job.finished); // cancelled while waiting
    while (this.queue.length > 0) {
      const worker = this.takeIdleWorker();
      if (worker === undefined) break;
      this.assign(worker, this.queue.shift() as PoolJob);
    }
    const starting = this.countWorkers("starting");
    for (let missing = this.queue.length - starting; missing > 0 && this.countLive() < this.options.size; missing--) {
      this.spawnWorker();
      this.warmTarget = Math.max(this.warmTarget, this.countLive());
    }
  }

  /**
   * An idle worker, retiring on the way any that got too old while idle. Only the age is judged
   * here: its readings and job count were judged when its last job ended (judging a fresh
   * worker's start-up readings here would retire it before it ever ran a job, in a loop).
   */
  private takeIdleWorker(): WorkerHandle | undefined {
    for (const worker of this.workers) {
      if (worker.state !== "idle") continue;
      const ageOnly = { rssBytes: null, openFds: null, jobsRun: 0, startedAt: worker.spawnedAt };
      const reason = evaluateRecycle(ageOnly, { ...worker.limits, maxJobs: null }, this.now());
      if (reason === null) return worker;
      this.recycle(worker, reason);
    }
    return undefined;
  }

  private assign(worker: WorkerHandle, job: PoolJob): void {
    worker.state = "busy";
    worker.job = job;
    this.counters.jobs.dispatched++;
    job.attach(worker, this.outputPaused);
    this.ceiling.update();
  }

  /** Keeps `warmTarget` workers alive, unless workers are failing to boot. */
  private replenish(): void {
    if (this.closing !== null || this.bootFailures > 0) return;
    while (this.countLive() < Math.min(this.warmTarget, this.options.size)) this.spawnWorker();
  }

  private spawnWorker(): WorkerHandle {
    const worker = WorkerHandle.spawn({
      spawnedAt: this.now(),
      limits: limitsForWorker(this.options.limits, this.random()),
      events: this.events,
      logger: this.options.logger,
    });
    this.workers.add(worker);
    this.counters.spawned++;
    return worker;
  }

  // ---- worker events ----

  private handleMessage(worker: WorkerHandle, message: FromWorker): void {
    switch (message.type) {
      case "ready":
        worker.booted = true;
        worker.health = message.health;
        this.bootFailures = 0;
        if (this.closing !== null) return this.retire(worker);
        worker.state = "idle";
        if (this.outputPaused) worker.send({ type: "flow", paused: true });
        this.dispatch();
        return;
      case "started":
        if (worker.job?.ref.jobId === message.jobId) worker.job.handleStarted(message.pid, message.startedAt);
        return;
      case "log":
        worker.job?.handleLog({ stream: message.stream, data: message.data });
        return;
      case "result":
        return this.handleResult(worker, message);
      case "fatal":
        worker.fatal = message.message;
        return;
    }
  }

  private handleResult(worker: WorkerHandle, message: Extract<FromWorker, { type: "result" }>): void {
    const job = worker.job;
    worker.job = null;
    worker.jobsRun++;
    worker.health = message.health;
    if (job?.ref.jobId === message.result.jobId) job.handleResult(message.result);
    if (worker.killedBecause !== null) return; // being killed: the exit handler takes it from here
    worker.state = "idle";
    this.ceiling.update();
    if (this.closing !== null) return this.retire(worker);
    const reason = evaluateRecycle(this.healthOf(worker), worker.limits, this.now());
    if (reason !== null) this.recycle(worker, reason);
    if (job !== null) this.noteStreak(job, worker, reason);
    this.dispatch();
    this.replenish();
  }

  private handleExit(worker: WorkerHandle, exit: WorkerExit, lastState: WorkerState): void {
    this.workers.delete(worker);
    const job = worker.job;
    worker.job = null;
    if (job !== null) void job.handleWorkerGone(exit, worker.killedBecause, worker.fatal);
    const how = exit.signal !== null ? `signal ${exit.signal}` : `code ${exit.code}`;
    if (worker.killedBecause === null && lastState !== "retiring") {
      this.counters.crashed++;
      const logged = { worker: worker.pid, exit: how, fatal: worker.fatal, jobId: job?.ref.jobId };
      this.options.logger.warn(
        logged,
        `worker ${worker.pid} exited unexpectedly with ${how}${job ? "; its job failed" : ""}`,
      );
    }
    this.ceiling.update();
    if (this.closing !== null) return;
    if (!worker.booted) {
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
    this.options.logger.error({ jobs: this.queue.length }, reason);
    for (const job of this.queue.splice(0)) job.reject(reason);
    this.bootFailures = 0; // the next job tries again
  }

  // ---- recycle and kill ----

  private recycle(worker: WorkerHandle, reason: RecycleReason): void {
    this.counters.recycled[reason]++;
    const now = this.now();
    const health = this.healthOf(worker);
    const detail = describeRecycle(reason, health, worker.limits, now);
    const { limit } = recycleFigures(reason, health, worker.limits, now);
    this.options.logger.info(
      {
        worker: worker.pid,
        reason,
        limit,
        setting: RECYCLE_SETTING[reason],
        jobsRun: worker.jobsRun,
        rssBytes: health.rssBytes,
        openFds: health.openFds,
        ageMs: now - worker.spawnedAt,
      },
      `recycling worker ${worker.pid}: ${detail}`,
    );
    this.retire(worker);
  }

  /**
   * The visible guard against a recycle loop: there is no hidden grace that lets a worker stay
   * past a limit, so a handler that needs more than the limit is recycled after every job. The
   * operator is told, once per streak, which handler and which limit, so they can fix one or
   * raise the other.
   */
  private noteStreak(job: PoolJob, worker: WorkerHandle, reason: RecycleReason | null): void {
    const spec = job.assignment.job;
    const handler = spec.kind === "module" ? spec.handler : "command";
    const streak = noteRecycleStreak(this.recycleStreaks.get(handler) ?? 0, reason, worker.jobsRun);
    this.recycleStreaks.set(handler, streak);
    if (streak !== RECYCLE_STREAK_WARN || reason === null) return;
    const health = this.healthOf(worker);
    const { reading, limit } = recycleFigures(reason, health, worker.limits, this.now());
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

  /** Asks an idle worker to run its cleanup and exit; kills it if that takes too long. */
  private retire(worker: WorkerHandle): void {
    worker.state = "retiring";
    worker.send({ type: "retire" });
    const timer = setTimeout(
      () => this.killWorker(worker, "cleanup_timeout", `its cleanup took longer than ${this.retireTimeoutMs} ms`),
      this.retireTimeoutMs,
    );
    void worker.exited.then(() => clearTimeout(timer));
  }

  private killWorker(worker: WorkerHandle, kind: KillKind, reason: string): void {
    if (worker.state === "gone" || worker.killedBecause !== null) return;
    this.counters.killed[kind]++;
    const jobId = worker.job?.ref.jobId;
    this.options.logger.warn({ worker: worker.pid, kind, jobId }, `killing worker ${worker.pid}: ${reason}`);
    worker.job?.killCommandGroup();
    worker.kill(kind, reason);
  }

  // ---- helpers ----

  private healthOf(worker: WorkerHandle): WorkerHealth {
    return { ...worker.health, jobsRun: worker.jobsRun, startedAt: worker.spawnedAt };
  }

  private countWorkers(state: WorkerState): number {
    let n = 0;
    for (const w of this.workers) if (w.state === state) n++;
    return n;
  }

  /** Workers that count toward the size: not on their way out. */
  private countLive(): number {
    return this.countWorkers("starting") + this.countWorkers("idle") + this.countWorkers("busy");
  }

  private broadcastFlow(): void {
    for (const worker of this.workers) {
      if (worker.state === "idle" || worker.state === "busy") worker.send({ type: "flow", paused: this.outputPaused });
    }
  }
}
