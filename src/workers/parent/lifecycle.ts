// One worker's life as the pool keeps it: a record the pool owns (its state, the job it runs,
// its jobs run, its last readings, whether it booted, why the pool killed it) and a pure step
// function, `stepWorker(record, event, now)`, that returns the next record and the one thing
// the pool must do about it. The pool does the doing (messages, signals, timers, logs, counts);
// the handle (worker-handle.ts) only drives the process and holds none of this.
//
//   starting ──ready──▶ idle ──assign──▶ busy ──result──▶ idle (kept) or retiring (recycled)
//      │                 │ offer: too old ──▶ retiring                    │
//      └── kill ─────────┴──────── kill (any live state) ─────────────────┴──exit──▶ gone
//
// A killed worker keeps its state until it exits: the kill's cause, recorded once (the first
// wins), is what its job's result says, and its exit is then no crash.
import {
  evaluateRecycle,
  isTooOld,
  type RecycleLimits,
  type RecycleReason,
  type WorkerHealth,
} from "./recycle-policy.js";
import type { HealthReading } from "../worker-messages.js";

export type WorkerState = "starting" | "idle" | "busy" | "retiring" | "gone";

/** Why the pool killed a worker. */
export type KillKind = "memory_limit" | "cancel_grace" | "unresponsive" | "cleanup_timeout" | "shutdown" | "ipc_failed";

export interface KillCause {
  kind: KillKind;
  reason: string;
}

/** The pool's bookkeeping for one worker. `J` is the pool's job type (opaque here). */
export interface WorkerRecord<J> {
  readonly state: WorkerState;
  /** When it was spawned (ms, the pool's clock). */
  readonly spawnedAt: number;
  /** This worker's own limits (its age limit jittered at spawn). */
  readonly limits: RecycleLimits;
  readonly jobsRun: number;
  /** What the worker last reported of itself (with "ready", then with each result). */
  readonly health: HealthReading;
  /** The job it runs, while busy. */
  readonly job: J | null;
  /** Set when the pool killed it: why (it becomes the running job's reason). */
  readonly killedBecause: KillCause | null;
  /** It said "ready" (a worker that dies before that failed to boot). */
  readonly booted: boolean;
  /** What the worker said before dying of an uncaught exception. */
  readonly fatal: string | null;
}

export type WorkerEvent<J> =
  /** The worker says it is ready; `closing`: the pool is closing (it is retired at once). */
  | { type: "ready"; health: HealthReading; closing: boolean }
  /** The pool hands it a job (it is idle). */
  | { type: "assign"; job: J }
  /** It reports its job's result, with its readings: the job boundary. */
  | { type: "result"; health: HealthReading; closing: boolean }
  /** The pool would give this idle worker a job: is it still fit to take one? */
  | { type: "offer" }
  /** The pool is closing. */
  | { type: "close" }
  /** The pool wants it dead (mid-job limits, a stuck handler, a cleanup that takes too long...). */
  | { type: "kill"; cause: KillCause }
  /** It reported an uncaught exception (its exit follows). */
  | { type: "fatal"; message: string }
  /** Its process is gone. */
  | { type: "exit" };

export type WorkerAction =
  | { type: "none" }
  /** It is idle and fit: it may take the next job. */
  | { type: "keep" }
  /** Ask it to run its handlers' cleanup and exit (the pool is closing). */
  | { type: "retire" }
  /** Retire it because it crossed a limit at a job boundary (or got too old while idle). */
  | { type: "recycle"; reason: RecycleReason }
  /** SIGKILL it (and its job's process group). */
  | { type: "kill"; cause: KillCause }
  /** It is gone: forget it. `crashed`: it died on its own; `bootFailed`: before it was ever ready. */
  | { type: "forget"; crashed: boolean; bootFailed: boolean };

export interface WorkerStep<J> {
  record: WorkerRecord<J>;
  action: WorkerAction;
}

export function newWorkerRecord<J>(limits: RecycleLimits, spawnedAt: number): WorkerRecord<J> {
  return {
    state: "starting",
    spawnedAt,
    limits,
    jobsRun: 0,
    health: { rssBytes: null, openFds: null },
    job: null,
    killedBecause: null,
    booted: false,
    fatal: null,
  };
}

/** The readings, job count and age the recycle policy judges a worker on. */
export function healthOf<J>(record: WorkerRecord<J>): WorkerHealth {
  return { ...record.health, jobsRun: record.jobsRun, startedAt: record.spawnedAt };
}

export function stepWorker<J>(record: WorkerRecord<J>, event: WorkerEvent<J>, now: number): WorkerStep<J> {
  const none: WorkerStep<J> = { record, action: { type: "none" } };
  if (record.state === "gone") return none; // nothing more happens to a worker that is gone
  switch (event.type) {
    case "ready": {
      const booted = { ...record, booted: true, health: event.health };
      if (event.closing) return retire(booted, { type: "retire" });
      return { record: { ...booted, state: "idle" }, action: { type: "keep" } };
    }
    case "assign":
      if (record.state !== "idle") return none;
      return { record: { ...record, state: "busy", job: event.job }, action: { type: "none" } };
    case "result": {
      const ended: WorkerRecord<J> = { ...record, job: null, jobsRun: record.jobsRun + 1, health: event.health };
      if (record.killedBecause !== null) return { record: ended, action: { type: "none" } }; // its exit takes it from here
      if (event.closing) return retire(ended, { type: "retire" });
      const reason = evaluateRecycle(healthOf(ended), ended.limits, now);
      if (reason !== null) return retire(ended, { type: "recycle", reason });
      return { record: { ...ended, state: "idle" }, action: { type: "keep" } };
    }
    case "offer":
      if (record.state !== "idle") return none;
      if (isTooOld(record.spawnedAt, record.limits, now)) return retire(record, { type: "recycle", reason: "age" });
      return { record, action: { type: "keep" } };
    case "close":
      if (record.state === "idle") return retire(record, { type: "retire" });
      if (record.state === "starting")
        return stepWorker(record, { type: "kill", cause: { kind: "shutdown", reason: STARTING_AT_CLOSE } }, now);
      return none; // a busy worker's job is cancelled (and the worker retired after it); a retiring one is leaving
    case "kill":
      if (record.killedBecause !== null) return none;
      return { record: { ...record, killedBecause: event.cause }, action: { type: "kill", cause: event.cause } };
    case "fatal":
      return { record: { ...record, fatal: event.message }, action: { type: "none" } };
    case "exit": {
      const crashed = record.killedBecause === null && record.state !== "retiring";
      return {
        record: { ...record, state: "gone", job: null },
        action: { type: "forget", crashed, bootFailed: !record.booted },
      };
    }
  }
}

const STARTING_AT_CLOSE = "the pool closed while it was starting";

function retire<J>(record: WorkerRecord<J>, action: WorkerAction): WorkerStep<J> {
  return { record: { ...record, state: "retiring" }, action };
}
