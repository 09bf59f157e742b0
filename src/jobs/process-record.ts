// The durable record of a job's process, written synchronously by whoever is about to make
// the process known: the worker that spawned a command job (right after the spawn, before it
// reports the pid over IPC), and the daemon for a module job's worker. It is a journal entry
// (see journal.ts, which validates it when reading) kept dependency-free so the worker process
// does not load the daemon's schemas at boot.
//
// Why the worker writes it: a pid known only to the worker and to an IPC message in flight is
// lost when the daemon and the worker both die before the daemon writes it, and the job's
// detached group then runs on unsupervised. Written here, before the report, every process a
// job starts is on disk by the time anyone else can learn of it.
import { renameSync, writeFileSync } from "node:fs";

export interface JobProcessRecord {
  jobId: string;
  attempt: number;
  /** Null until the process exists (the entry is written before spawning). */
  pid: number | null;
  pgid: number | null;
  /** Opaque per-platform start time of `pid`, to tell a reused pid (see src/state/process-start.ts). */
  processStartTime: string | null;
  startedAt: string | null;
}

/** The journal files are private to the runner's user. */
const RECORD_MODE = 0o600;

/**
 * Writes the record atomically (temp file + rename; no fsync: it guards against a crash of the
 * runner's processes, which the page cache survives). Its temp name ends `.<pid>.now.tmp`, which
 * the next start removes if a kill left it behind (removeInterruptedWrites).
 */
export function writeJobProcessRecord(file: string, record: JobProcessRecord): void {
  const temp = `${file}.${process.pid}.now.tmp`;
  writeFileSync(temp, JSON.stringify(record), { mode: RECORD_MODE });
  renameSync(temp, file);
}
