// Runs the jobs the channel assigns, on the worker pool, and reports back to it: the
// daemon's side of the driver's ports. Every command job is in the journal before its
// process exists, and its pid is in it (written by its worker) before anyone learns it (a
// module job runs inside its worker, which leaves with the daemon), and
// every result is in the outbox before the journal forgets the job, so a crash at any point
// loses nothing. The pool is the one registry of running jobs: this host cancels by reference
// and keeps no list of its own.
import type { Logger } from "../log/logger.js";
import type { DriverPorts } from "../channel/driver.js";
import { keyOf, type Input } from "../channel/machine.js";
import type { PoolJobHooks, WorkerPool } from "../workers/parent/pool.js";
import type { JobJournal } from "../jobs/journal.js";
import type { Assignment, JobRef, JobResult } from "../protocol/channel.js";
import { processStartTime } from "../state/process-start.js";
import type { Outbox } from "../state/outbox.js";

export class JobHost implements DriverPorts {
  /** The journal write of each job's pid; its result must not clear the journal before it lands. */
  private readonly pidWrites = new Map<string, Promise<void>>();

  constructor(
    private readonly pool: WorkerPool,
    private readonly journal: JobJournal,
    private readonly outbox: Outbox,
    private readonly logger: Logger,
    private readonly feed: (input: Input) => void,
  ) {}

  async startJob(assignment: Assignment): Promise<void> {
    const ref = { jobId: assignment.jobId, attempt: assignment.attempt };
    // Journal writes are synchronous (no fsync, see the journal): ~0.1 ms each, where an async
    // write's threadpool hops measured ~0.5 ms on the path from assignment to start.
    const recordAssigned = () =>
      this.journal.recordNow({ ...ref, pid: null, pgid: null, processStartTime: null, startedAt: null });
    // A command job's process group must be in the journal before it can exist. A module job
    // runs inside its worker, which stops it and exits when the daemon goes: it is handed to
    // the worker first and journalled while the worker starts it (a crash in between only
    // means the control plane re-queues the job this runner no longer reports).
    if (assignment.job.kind === "command") recordAssigned();
    const kind = assignment.job.kind;
    const hooks: PoolJobHooks = {
      onStarted: ({ pid, startedAt }) => {
        this.logger.info(
          { jobId: ref.jobId, attempt: ref.attempt, kind, jobPid: pid },
          `job ${ref.jobId} attempt ${ref.attempt} started (${kind}, pid ${pid})`,
        );
        this.feed({ type: "job_started", ref, startedAt });
        // A command job's worker has already written its pid (and, on Linux, its start time) to
        // the journal before reporting it: nothing to do here on the hot path. A module job's
        // process is its worker, recorded here with no await in between.
        if (kind === "module") this.journal.recordNow({ ...ref, pid, pgid: pid, processStartTime: null, startedAt });
        if (kind === "module" || process.platform !== "linux")
          this.pidWrites.set(keyOf(ref), this.recordStartTime(ref, pid, startedAt));
      },
      onLog: ({ stream, data }) => this.feed({ type: "job_output", ref, stream, data }),
      // On a later turn (the pool's promise): a job refused at once (an invalid job, an unknown
      // handler) is done before the driver has written the `accept` that follows this call, and
      // its result must come after.
      onFinished: (result) => this.feed({ type: "job_finished", result }),
    };
    this.pool.start(assignment, hooks, kind === "command" ? { journalFile: this.journal.fileFor(ref) } : {});
    if (assignment.job.kind === "module") recordAssigned();
  }

  cancelJob(ref: JobRef, reason: string): void {
    this.pool.cancel(ref, reason);
  }

  async persistResult(result: JobResult): Promise<void> {
    await this.outbox.put(result);
    await this.pidWrites.get(keyOf(result));
    this.pidWrites.delete(keyOf(result));
    await this.journal.remove(result);
  }

  async discardResult(ref: JobRef): Promise<void> {
    await this.outbox.remove(ref);
  }

  /**
   * Cancels whatever still runs and keeps each result in the outbox for the next start (with
   * those of jobs that ended but whose result the driver, now stopped, has not taken).
   */
  async stopAll(reason: string): Promise<void> {
    const results = this.pool.cancelAll(reason);
    if (results.length === 0) return;
    this.logger.warn({ jobs: results.length }, `cancelling running jobs: ${reason}`);
    for (const result of await Promise.all(results)) await this.persistResult(result);
  }

  /** Adds the process start time, which tells the job's leader from a later process with its pid. */
  private async recordStartTime(ref: JobRef, pid: number, startedAt: string): Promise<void> {
    try {
      await this.journal.record({ ...ref, pid, pgid: pid, processStartTime: await processStartTime(pid), startedAt });
    } catch (error) {
      this.logger.error({ err: error, jobId: ref.jobId }, "could not record a job's start time in the journal");
    }
  }
}
