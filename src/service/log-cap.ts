// The launchd log's size cap. launchd opens the plist's StandardOutPath once per spawn and
// holds it for the job's whole life, so rotating by renaming the file (newsyslog) would leave
// the runner writing to the renamed file until its next restart, and launchd has no signal to
// reopen it. But launchd opens it with O_APPEND, so the runner caps the file itself: it copies
// the file to `<log>.1` (after shifting the older copies up, the oldest dropped) and truncates
// it in place; the next append lands at offset 0, with no hole. Lines written between the copy
// and the truncate (a few milliseconds) are lost. The plist names the file in RUNNER_LAUNCHD_LOG.
import { promises as fs } from "node:fs";
import type { Logger } from "../log/logger.js";

/** Set by the plist: the log file launchd writes the runner's output to. */
export const LAUNCHD_LOG_ENV = "RUNNER_LAUNCHD_LOG";

export interface LogCap {
  maxBytes: number;
  /** How many older copies are kept (`<log>.1` newest … `<log>.<keep>` oldest). */
  keep: number;
}
export const LAUNCHD_LOG_CAP: LogCap = { maxBytes: 10 * 1024 * 1024, keep: 3 };
/** How often the running daemon looks at the file's size (one stat). */
export const LOG_CHECK_INTERVAL_MS = 5 * 60_000;

export interface Rotation {
  /** Renames, in order: older copies shifted up one (the oldest is overwritten). */
  shift: [from: string, to: string][];
  /** The file is copied here, then truncated to 0; null (keep 0): only truncated. */
  copyTo: string | null;
}

/** Pure: what to do with a log file of `size` bytes; null while it is under the cap. */
export function planRotation(file: string, size: number, cap: LogCap): Rotation | null {
  if (size < cap.maxBytes) return null;
  const shift: [string, string][] = [];
  for (let n = cap.keep - 1; n >= 1; n--) shift.push([`${file}.${n}`, `${file}.${n + 1}`]);
  return { shift, copyTo: cap.keep > 0 ? `${file}.1` : null };
}

/** Caps the file once; returns the rotation done, or null (under the cap, or no file). */
export async function capLogFile(file: string, cap: LogCap): Promise<Rotation | null> {
  const stat = await fs.stat(file).catch(() => null);
  if (stat === null || !stat.isFile()) return null;
  const rotation = planRotation(file, stat.size, cap);
  if (rotation === null) return null;
  for (const [from, to] of rotation.shift)
    await fs.rename(from, to).catch((error: NodeJS.ErrnoException) => {
      if (error.code !== "ENOENT") throw error;
    });
  if (rotation.copyTo !== null) await fs.copyFile(file, rotation.copyTo);
  await fs.truncate(file, 0);
  return rotation;
}

/**
 * Under launchd (RUNNER_LAUNCHD_LOG set): caps the log now and every LOG_CHECK_INTERVAL_MS
 * (an unref'd timer: it never keeps the process alive). Null elsewhere (systemd's journal
 * rotates itself; a terminal has no file).
 */
export function startLaunchdLogCap(
  env: NodeJS.ProcessEnv,
  logger: Logger,
  cap: LogCap = LAUNCHD_LOG_CAP,
): { stop(): void } | null {
  const file = env[LAUNCHD_LOG_ENV];
  if (!file) return null;
  const check = () => {
    capLogFile(file, cap).then(
      (rotation) => {
        if (rotation) logger.info({ file, keptAs: rotation.copyTo }, "the log file reached its cap and was rotated");
      },
      (error: Error) => logger.warn({ file, error: error.message }, "could not rotate the log file"),
    );
  };
  check();
  const timer = setInterval(check, LOG_CHECK_INTERVAL_MS);
  timer.unref();
  return { stop: () => clearInterval(timer) };
}
