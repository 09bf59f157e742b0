// The durable journal of running jobs: one file per job attempt, written when the job is
// taken (before a command job's process can exist) and again once its pid is known (for a
// command job by the worker that spawned it, before it reports the pid: process-record.ts),
// removed only once the job's result is in the outbox. After a kill -9 of the daemon it names the process groups left behind, so the
// next start can kill them and report each job failed exactly once.
//
// Its writes are not fsynced: it guards against a crash of the daemon, which the page cache
// survives. A crash of the machine kills the jobs too, and an entry lost with it only means
// the control plane's lease reaper, not this journal, hands the job out again. (The outbox,
// which holds results, is fsynced.) This keeps an fsync off the path to starting each job.
import { promises as fs } from "node:fs";
import path from "node:path";
import { z } from "zod";
import type { JobRef, JobResult } from "../protocol/channel.js";
import { SECRET_FILE_MODE, ensureDir, readJsonDir, writeJsonAtomic, type SetAsideFile } from "../state/files.js";
import { jobFileName } from "../state/outbox.js";
import { compareStarts, processStartTime } from "../state/process-start.js";
import { isGroupAlive, signalGroup, waitForGroupExit } from "./process-group.js";
import { writeJobProcessRecord, type JobProcessRecord } from "./process-record.js";
import { killMarkedProcesses } from "./job-marks.js";

const journalEntrySchema = z.object({
  jobId: z.string().min(1).max(128),
  attempt: z.number().int().positive(),
  /** Null until the process exists (the entry is written before spawning). */
  pid: z.number().int().positive().nullable(),
  pgid: z.number().int().positive().nullable(),
  /** Opaque per-platform start time of `pid` (see src/state/process-start.ts), to tell a reused pid. */
  processStartTime: z.string().nullable(),
  startedAt: z.string().nullable(),
}) satisfies z.ZodType<JobProcessRecord>; // the worker writes entries without zod: one shape
export type JournalEntry = z.infer<typeof journalEntrySchema>;

export type { SetAsideFile };

export class JobJournal {
  /** Writes to one entry run one after the other, so a later record() always lands last. */
  private readonly writes = new Map<string, Promise<void>>();

  constructor(readonly dir: string) {}

  async record(entry: JournalEntry): Promise<void> {
    const value = journalEntrySchema.parse(entry);
    await this.serialize(this.fileFor(entry), async (file) => {
      await ensureDir(this.dir);
      await writeJsonAtomic(file, value, SECRET_FILE_MODE, false);
    });
  }

  /**
   * Records synchronously: before a spawn, and right after it, so that no await stands between
   * the process existing and the journal naming it. (Call only while no async `record` of the
   * same entry is pending: the daemon uses it for an entry's first two writes.)
   */
  recordNow(entry: JournalEntry): void {
    writeJobProcessRecord(this.fileFor(entry), journalEntrySchema.parse(entry));
  }

  /** Forgets a job attempt. Removing one that is not there is fine. */
  async remove(ref: JobRef): Promise<void> {
    await this.serialize(this.fileFor(ref), async (file) => {
      await fs.rm(file, { force: true });
    });
  }

  /** Every entry. A damaged file is moved aside (kept for a person) and named in `setAside`. */
  async list(now: Date = new Date()): Promise<{ entries: JournalEntry[]; setAside: SetAsideFile[] }> {
    const { values, setAside } = await readJsonDir(this.dir, journalEntrySchema, now);
    return { entries: values, setAside };
  }

  /** The entry's file: a worker that spawns the job's process writes the pid there itself. */
  fileFor(ref: JobRef): string {
    return path.join(this.dir, jobFileName(ref));
  }

  private async serialize(file: string, write: (file: string) => Promise<void>): Promise<void> {
    const previous = this.writes.get(file) ?? Promise.resolve();
    const next = previous.catch(() => undefined).then(() => write(file));
    this.writes.set(file, next);
    try {
      await next;
    } finally {
      if (this.writes.get(file) === next) this.writes.delete(file);
    }
  }
}

export const ORPHAN_REASON = "agent restarted";
/** How long to wait for a SIGKILLed orphan group to vanish. */
const ORPHAN_KILL_WAIT_MS = 5_000;

export interface OrphanRecovery {
  /** One failed result per journal entry, for the outbox. */
  results: JobResult[];
  /**
   * The entries whose process group was still alive and has been killed. `jobPid`, not `pid`:
   * the daemon logs these objects as they are, and `pid` is the logger's own (the daemon's) field.
   */
  killed: { jobId: string; attempt: number; jobPid: number }[];
  /** Damaged journal files that were moved aside, for the caller to log. */
  setAside: SetAsideFile[];
}

/**
 * At start, after a crash: kills the process group of every job the journal names that is
 * still alive (and provably still that job's), and returns a failed result for each entry.
 * The entries stay: the caller removes each once its result is in the outbox, so a crash in
 * between repeats this step instead of losing or duplicating a result.
 */
export async function recoverOrphans(journal: JobJournal, now: Date): Promise<OrphanRecovery> {
  const { entries, setAside } = await journal.list(now);
  const results: JobResult[] = [];
  const killed: OrphanRecovery["killed"] = [];
  for (const entry of entries) {
    const pid = entry.pid;
    if (pid !== null && (await killOrphanGroup({ ...entry, pid })))
      killed.push({ jobId: entry.jobId, attempt: entry.attempt, jobPid: pid });
    // Processes the entry does not name (the crash came between the spawn and the pid's record,
    // or one left the job's group) still carry the job's marks in their environment.
    for (const marked of killMarkedProcesses(entry)) {
      if (marked !== pid) killed.push({ jobId: entry.jobId, attempt: entry.attempt, jobPid: marked });
    }
    results.push({
      jobId: entry.jobId,
      attempt: entry.attempt,
      outcome: "failed",
      exitCode: null,
      signal: null,
      reason: ORPHAN_REASON,
      startedAt: entry.startedAt,
      finishedAt: now.toISOString(),
    });
  }
  return { results, killed, setAside };
}

/** SIGKILLs the entry's group if it is alive and still the job's. True when it did. */
async function killOrphanGroup(entry: JournalEntry & { pid: number }): Promise<boolean> {
  const pgid = entry.pgid ?? entry.pid;
  if (!isGroupAlive(pgid)) return false;
  if (!(await isStillTheJobsLeader(entry))) return false;
  signalGroup(pgid, "SIGKILL");
  await waitForGroupExit(pgid, ORPHAN_KILL_WAIT_MS);
  return true;
}

/**
 * A live leader whose start time differs from the recorded one is another process that got
 * the pid after the job's leader died: never touch it. A dead leader with a live group is
 * the job's members (a pgid is not handed out again while its group has members), and a
 * start time that cannot be read on either side cannot prove a reuse.
 */
async function isStillTheJobsLeader(entry: JournalEntry & { pid: number }): Promise<boolean> {
  if (entry.processStartTime === null) return true;
  return compareStarts(entry.processStartTime, await processStartTime(entry.pid)) !== "different";
}
