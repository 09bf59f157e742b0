// Single instance per state dir. The lock file records the owner's pid and the process's
// start time, so a lock left by a dead process, or by a pid the OS has since given to
// another process, is recognised as stale and taken over.
import { promises as fs, constants } from "node:fs";
import os from "node:os";
import path from "node:path";
import { z } from "zod";
import { RunnerError } from "../errors.js";
import { SECRET_FILE_MODE, entryAt, moveAside, readJsonFile, unwritable, writeJsonAtomic } from "./files.js";
import { compareStarts, processStartTime } from "./process-start.js";

const lockRecordSchema = z.object({
  pid: z.number().int().positive(),
  /** Opaque per-platform start time of the process (see process-start.ts); null where it cannot be read. */
  startTime: z.string().nullable(),
  hostname: z.string(),
  acquiredAt: z.string(),
  /** When the runner passed its start-up checks and began to serve (what `service install` waits for). */
  servingSince: z.string().optional(),
});
export type LockRecord = z.infer<typeof lockRecordSchema>;

export type LockState =
  { kind: "free" } | { kind: "held"; owner: LockRecord } | { kind: "stale"; owner: LockRecord | null; reason: string };

/** What is known about the process a lock names; gathered by `probeProcess`. */
export interface ProcessProbe {
  alive: boolean;
  startTime: string | null;
}

/** Pure: is the lock's owner still the process that took it? */
export function classifyLock(owner: LockRecord, probe: ProcessProbe): LockState {
  if (!probe.alive) return { kind: "stale", owner, reason: `its owner, pid ${owner.pid}, is not running` };
  if (compareStarts(owner.startTime, probe.startTime) === "different") {
    return { kind: "stale", owner, reason: `pid ${owner.pid} now belongs to another process (start time differs)` };
  }
  return { kind: "held", owner };
}

export async function probeProcess(pid: number): Promise<ProcessProbe> {
  try {
    process.kill(pid, 0);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ESRCH") return { alive: false, startTime: null };
  }
  return { alive: true, startTime: await processStartTime(pid) };
}

export async function inspectLock(file: string): Promise<LockState> {
  const read = await readJsonFile(file, lockRecordSchema);
  if (read.kind === "missing") return { kind: "free" };
  if (read.kind === "invalid")
    return { kind: "stale", owner: null, reason: `the lock file is unreadable: ${read.reason}` };
  return classifyLock(read.value, await probeProcess(read.value.pid));
}

export interface LockHandle {
  readonly file: string;
  /** What was taken over to get the lock, if anything. */
  readonly tookOver: LockState | null;
  /** Records in the lock that the runner passed its start-up checks (rewritten atomically: the lock never goes missing). */
  markServing(now: Date): Promise<void>;
  release(): Promise<void>;
}

export async function acquireLock(file: string, now: Date = new Date()): Promise<LockHandle> {
  const mine: LockRecord = {
    pid: process.pid,
    startTime: await processStartTime(process.pid),
    hostname: os.hostname(),
    acquiredAt: now.toISOString(),
  };
  let tookOver: LockState | null = null;
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      const handle = await fs.open(file, constants.O_CREAT | constants.O_EXCL | constants.O_WRONLY, SECRET_FILE_MODE);
      try {
        await handle.writeFile(JSON.stringify(mine) + "\n");
        await handle.sync();
      } finally {
        await handle.close();
      }
      return {
        file,
        tookOver,
        markServing: (at) =>
          writeJsonAtomic(file, { ...mine, servingSince: at.toISOString() }, SECRET_FILE_MODE, false),
        release: () => releaseLock(file, mine),
      };
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      // `unregister` and `credentials move` take the lock of a state dir that may not exist:
      // nothing is registered there, which is what the person needs to hear.
      if (code === "ENOENT" && (await entryAt(path.dirname(file))) === null)
        throw new RunnerError(
          "not_registered",
          `no runner is registered in ${path.dirname(file)}: there is no such dir`,
          {
            hint: "check --state-dir/--system (the same as at `runner register`)",
          },
        );
      if (code !== "EEXIST") throw unwritable(`write the lock ${file}`, error);
    }
    // A link (even a dangling one) or a dir at the lock's name makes O_EXCL fail for ever and
    // is never a lock a runner wrote: move it aside (kept for a person) and try again.
    const entry = await entryAt(file);
    if (entry !== null && entry.type !== "file") {
      const kept = await moveAside(file, now);
      tookOver = {
        kind: "stale",
        owner: null,
        reason: `${file} was a ${entry.type}, not a lock file; moved aside to ${kept}`,
      };
      continue;
    }
    const state = await inspectLock(file);
    if (state.kind === "held") {
      throw new RunnerError(
        "lock_held",
        `another runner (pid ${state.owner.pid}, since ${state.owner.acquiredAt}) is using ${file}`,
        {
          hint: "stop that runner first, or give this one its own --state-dir",
        },
      );
    }
    if (state.kind === "stale") {
      tookOver = state;
      await removeIfUnchanged(file, state.owner);
    }
  }
  throw new RunnerError("lock_held", `could not take the lock ${file}: another process keeps creating it`);
}

async function releaseLock(file: string, mine: LockRecord): Promise<void> {
  await removeIfUnchanged(file, mine);
}

/** Removes the lock only if it still names `owner`, so a racing runner's fresh lock survives. */
async function removeIfUnchanged(file: string, owner: LockRecord | null): Promise<void> {
  const read = await readJsonFile(file, lockRecordSchema);
  if (read.kind === "missing") return;
  const same =
    owner === null
      ? read.kind === "invalid"
      : read.kind === "ok" && read.value.pid === owner.pid && read.value.startTime === owner.startTime;
  if (same) await fs.rm(file, { force: true });
}
