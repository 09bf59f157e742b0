// Keeps the channel machine told whether the work dir's file system has room for a job: at
// start and then every DISK_CHECK_MS it reads the free space (one statfs) and feeds a
// `fitness` input; the machine rejects assignments while it is short (and logs each change once).
import type { Input } from "../channel/machine.js";
import type { Logger } from "../log/logger.js";
import { diskRefusal, freeBytes } from "../jobs/work-dir.js";

/** Often enough to stop taking jobs before a filling disk fails one; a statfs costs microseconds. */
export const DISK_CHECK_MS = 15_000;

export interface DiskGuard {
  stop(): void;
}

export async function startDiskGuard(options: {
  workRoot: string;
  minFreeBytes: number | null;
  feed: (input: Input) => void;
  logger: Logger;
}): Promise<DiskGuard> {
  if (options.minFreeBytes === null) return { stop: () => undefined };
  const check = async () => {
    try {
      options.feed({
        type: "fitness",
        unfit: diskRefusal(await freeBytes(options.workRoot), options.minFreeBytes, options.workRoot),
      });
    } catch (error) {
      // An unreadable file system is no reason to refuse work the job itself may manage.
      options.logger.warn({ err: error, workDir: options.workRoot }, "could not read the work dir's free space");
    }
  };
  await check();
  const timer = setInterval(() => void check(), DISK_CHECK_MS);
  timer.unref();
  return { stop: () => clearInterval(timer) };
}
