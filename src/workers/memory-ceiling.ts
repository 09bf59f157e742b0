// The hard memory ceiling's loop: while any worker is busy, sample each busy worker's RSS from
// outside (its event loop may be stuck in the very allocation that is the problem) and report
// the ones at or past their hard limit. No timer runs while the pool is idle.
import { sampleRss } from "./sample.js";
import type { WorkerHandle } from "./worker-handle.js";

export class MemoryCeiling {
  private timer: NodeJS.Timeout | null = null;
  private sampling = false;

  constructor(
    private readonly intervalMs: number,
    private readonly listBusy: () => WorkerHandle[],
    private readonly onBreach: (worker: WorkerHandle, rssBytes: number, hardRssBytes: number) => void,
  ) {}

  /** Call whenever a worker becomes busy or stops being busy: starts or stops the timer. */
  update(): void {
    const needed = this.listBusy().some((w) => w.limits.hardRssBytes !== null);
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
      for (const worker of this.listBusy()) {
        const hard = worker.limits.hardRssBytes;
        if (hard === null) continue;
        const rss = await sampleRss(worker.pid);
        // Still busy after the await? A job that just ended is judged at its boundary instead.
        if (rss !== null && rss >= hard && worker.state === "busy") this.onBreach(worker, rss, hard);
      }
    } finally {
      this.sampling = false;
    }
  }
}
