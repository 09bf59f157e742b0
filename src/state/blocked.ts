// The needs-operator marker: `runner start` leaves it in the state dir when it stops because a
// person must act (exit 78) or the runner must be upgraded (exit 79), and removes it once a
// start gets past its checks. launchd, which cannot be told which exit codes not to restart,
// keeps the service alive only while the marker is absent; `runner status` and
// `runner service status` show it; `runner repair` clears it when nothing is left for a person.
import { promises as fs } from "node:fs";
import { z } from "zod";
import { readJsonFile, writeJsonAtomic } from "./files.js";

/**
 * Set by the launchd plist to the marker's path: under launchd every exit a restart cannot fix
 * (NO_RESTART_EXITS, also one thrown before the settings are read) leaves the marker, since
 * launchd restarts whatever else exits.
 */
export const LAUNCHD_MARKER_ENV = "RUNNER_LAUNCHD_MARKER";

const blockedSchema = z.object({
  exitCode: z.number().int(),
  reason: z.string(),
  at: z.string(),
});
export type Blocked = z.infer<typeof blockedSchema>;

export async function markBlocked(file: string, exitCode: number, reason: string, now: Date): Promise<void> {
  await writeJsonAtomic(file, { exitCode, reason, at: now.toISOString() } satisfies Blocked);
}

/** Whether there was a marker to remove. */
export async function clearBlocked(file: string): Promise<boolean> {
  try {
    await fs.rm(file);
    return true;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return false;
    throw error;
  }
}

/** The marker, if there is one; an unreadable marker still means "blocked". */
export async function readBlocked(file: string): Promise<Blocked | null> {
  const read = await readJsonFile(file, blockedSchema);
  if (read.kind === "missing") return null;
  if (read.kind === "invalid") return { exitCode: -1, reason: `unreadable marker: ${read.reason}`, at: "" };
  return read.value;
}
