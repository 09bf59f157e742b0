// The durable outbox: every job result is written here (fsync) before it is sent, and stays
// until the control plane acknowledges it. One file per job attempt; nothing is ever
// dropped for having been tried too often.
import { promises as fs } from "node:fs";
import path from "node:path";
import { createHash } from "node:crypto";
import { jobResultSchema, withBoundedFields, type JobRef, type JobResult } from "../protocol/channel.js";
import { readJsonDir, writeJsonAtomic, type SetAsideFile } from "./files.js";

export class Outbox {
  constructor(readonly dir: string) {}

  async put(result: JobResult): Promise<void> {
    // Every result is kept, whatever its reason's length (a stop's results come straight here).
    await writeJsonAtomic(this.fileFor(result), jobResultSchema.parse(withBoundedFields(result)));
  }

  /**
   * Forgets an acknowledged result. Removing one that is not there is fine (acks can repeat).
   * Not fsynced: if a machine crash undoes the removal, the result is sent once more and the
   * control plane acknowledges it again without applying it.
   */
  async remove(ref: JobRef): Promise<void> {
    await fs.rm(this.fileFor(ref), { force: true });
  }

  /** Every held result. A damaged file is moved aside (kept) and named in `setAside`. */
  async list(now: Date = new Date()): Promise<{ results: JobResult[]; setAside: SetAsideFile[] }> {
    const { values, setAside } = await readJsonDir(this.dir, jobResultSchema, now);
    return { results: values, setAside };
  }

  private fileFor(ref: JobRef): string {
    return path.join(this.dir, jobFileName(ref));
  }
}

/** One file per job attempt, in the outbox and in the running-jobs journal alike. */
export function jobFileName(ref: JobRef): string {
  return `${fileSafe(ref.jobId)}.${ref.attempt}.json`;
}

/**
 * Job ids come from the network: keep them to a harmless file-name alphabet, one-to-one
 * (fixed-width escapes), and short enough for any file system (a hash stands in for the tail).
 */
export function fileSafe(id: string): string {
  const escaped = id.replace(/[^A-Za-z0-9_-]/g, (c) => `~${c.charCodeAt(0).toString(16).padStart(4, "0")}`);
  if (escaped.length <= 120) return escaped;
  return `${escaped.slice(0, 80)}~${createHash("sha256").update(id).digest("hex").slice(0, 32)}`;
}
