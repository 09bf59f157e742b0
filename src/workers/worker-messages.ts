// The IPC messages between the daemon's pool (parent/) and a worker process (child/), the one
// file both sides import. One job at a time per worker, so log messages carry no job
// reference; `started` and `result` do, as a check.
import type { Assignment, JobResult } from "../protocol/channel.js";
import type { LogStream } from "../jobs/log-chunks.js";

/** A worker's own readings of itself; null = unknown (no fd count on Windows, say). */
export interface HealthReading {
  rssBytes: number | null;
  openFds: number | null;
}

export type StopOutcome = "cancelled" | "timed_out";

export type ToWorker =
  /**
   * `handlerPath` is set for module jobs: the daemon maps the job's handler name to it.
   * `journalFile`: for a command job, the journal entry the worker writes the spawned process's
   * pid to before it reports `started` (null: not journalled, as in the pool's own tests).
   */
  | {
      type: "run";
      assignment: Assignment;
      handlerPath: string | null;
      outputPaused: boolean;
      journalFile: string | null;
    }
  /** Command job: SIGTERM its group, SIGKILL after graceMs. Module job: abort its signal. */
  | { type: "stop"; jobId: string; outcome: StopOutcome; reason: string; graceMs: number }
  /** The daemon's log consumer is slow (paused) or has caught up. */
  | { type: "flow"; paused: boolean }
  /** Finish: run the handlers' cleanup, then exit. Only sent to an idle worker. */
  | { type: "retire" };

export type FromWorker =
  | { type: "ready"; health: HealthReading }
  | { type: "started"; jobId: string; pid: number; startedAt: string }
  | { type: "log"; stream: LogStream; data: string }
  | { type: "result"; result: JobResult; health: HealthReading }
  /** Sent just before the worker exits on an uncaught exception, so the job's reason says why. */
  | { type: "fatal"; message: string };
