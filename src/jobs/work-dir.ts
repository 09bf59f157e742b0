// The jobs' own directories: a command job without a cwd runs in a fresh, empty directory
// under the work dir (--work-dir), named after its job and attempt, which is removed once the
// job is over unless the job asked to keep it. What a killed runner left there is removed at
// the next start, before any job runs.
import { mkdirSync, promises as fs } from "node:fs";
import path from "node:path";
import type { JobRef } from "../protocol/channel.js";
import { makeDirs } from "../state/files.js";

/** The directory of one attempt of a job (job ids are [A-Za-z0-9_-], so the name is safe). */
export function jobWorkDir(workRoot: string, ref: JobRef): string {
  return path.join(workRoot, `${ref.jobId}-${ref.attempt}`);
}

/** Synchronous: on the spawn path, where it takes ~0.1 ms. */
export function createJobWorkDir(dir: string): void {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
}

export async function removeJobWorkDir(dir: string): Promise<void> {
  await fs.rm(dir, { recursive: true, force: true, maxRetries: 2 });
}

/** At start (no job runs yet): creates the work dir, and empties it of what earlier runs left. Returns what it removed. */
export async function prepareWorkRoot(workRoot: string): Promise<string[]> {
  await makeDirs(workRoot, 0o700);
  const left = await fs.readdir(workRoot);
  for (const name of left) await removeJobWorkDir(path.join(workRoot, name));
  return left;
}

const MiB = 1024 * 1024;

/** Why a job must not start for lack of disk in the work dir, or null (`minFreeBytes` null: no check). */
export function diskRefusal(freeBytes: number, minFreeBytes: number | null, workRoot: string): string | null {
  if (minFreeBytes === null || freeBytes >= minFreeBytes) return null;
  return `low disk: ${(freeBytes / MiB).toFixed(0)} MiB free for ${workRoot}, below --min-free-disk-mb ${(minFreeBytes / MiB).toFixed(0)}`;
}

/** The bytes an unprivileged process may still write on the work dir's file system. */
export async function freeBytes(workRoot: string): Promise<number> {
  const stats = await fs.statfs(workRoot);
  return stats.bavail * stats.bsize;
}
