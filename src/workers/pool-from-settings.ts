// The daemon's one call to get its pool: the runner's settings in, a WorkerPool out, with the
// limits it chose logged once so an operator can see them.
import type { Logger } from "../log/logger.js";
import { limitsFromSettings, type WorkerLimitSettings } from "./limits-from-settings.js";
import { WorkerPool } from "./parent/pool.js";
import { readOpenFileLimit } from "./parent/rlimit.js";

export interface PoolSettings extends WorkerLimitSettings {
  capacity?: number | undefined;
  handlers?: Record<string, string> | undefined;
}

export async function createPoolFromSettings(settings: PoolSettings, logger: Logger): Promise<WorkerPool> {
  const rlimitNofile = await readOpenFileLimit();
  const limits = limitsFromSettings(settings, rlimitNofile);
  const handlers = settings.handlers ?? {};
  logger.info({ limits, rlimitNofile, handlers: Object.keys(handlers) }, "worker pool limits");
  return new WorkerPool({ size: settings.capacity ?? 1, limits, handlers, logger });
}
