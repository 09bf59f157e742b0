// The hard memory ceiling's loop: while any worker is busy, sample each busy worker's RSS from
// outside (its event loop may be stuck in the very allocation that is the problem) and report
// the ones at or past their hard limit. No timer runs while the pool is idle.
import { hasHardCeiling, isPastHardCeiling, type RecycleLimits } from "./recycle-policy.js";
import { sampleRss } from "./sample.js";

/** A busy worker as the ceiling sees it: `worker` is whatever the pool knows it by. */
export interface Watched<W> {
  worker: W;
  pid: number;
  limits: RecycleLimits;
}

export class MemoryCeiling<W> {
  private timer: NodeJS.Timeout | null = null;
  private sampling = false;

  constructor(
    private readonly intervalMs: number,
    private readonly listBusy: () => Watched<W>[],
    /** Called after an await: the pool checks the worker is still busy (a job that just ended is judged at its boundary instead). */
    private readonly onBreach: (worker: W, rssBytes: number, hardRssBytes: number) => void,
  ) {}

  /** Call whenever a worker becomes busy or stops being busy: starts or stops the timer. */
  update(): void {
    const needed = this.listBusy().some((w) => hasHardCeiling(w.limits));
    if (needed && this.timer === null) {
      this.timer = setInterval(() => void this.sampleOnce(), this.intervalMs);
      this.timer.unref();
    } else if (!needed && this.timer !== null) {
      clearInterval(this.timer);
      this.timer = null;
    }
  }

  private async sampleOnce(): Promise<void> {
    if (this.sampling) return; // pidusage (off Linux) is async and may take longer than the interval
    this.sampling = true;
    try {
      for (const { worker, pid, limits } of this.listBusy()) {
        const hard = limits.hardRssBytes;
        if (hard === null) continue;
        const rss = await sampleRss(pid);
        if (rss !== null && isPastHardCeiling(rss, limits)) this.onBreach(worker, rss, hard);
      }
    } finally {
      this.sampling = false;
    }
  }
}
