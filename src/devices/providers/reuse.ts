// A provider's expensive read, reused while a cheap signal says nothing changed: the periodic
// scan (ScanOptions.fresh false) asks the signal first (a directory listing, a few small
// files) and reads again only when it differs, when the last answer is `maxAgeMs` old, or
// when there is none; a fresh scan always reads. A failed read is not kept. The decision is
// pure and tested; the callers below share one read at a time.
import type { ScanOptions } from "./provider.js";

/** When the last answer was read (on the scan's clock) and under which signal. */
export interface LastRead {
  signal: string | null;
  at: number;
}

/**
 * Pure: whether the expensive read must run again. A fresh scan, a first one, an answer as old
 * as the maximum age, or a different signal say yes. Where there is no signal (null both
 * times) only the age decides.
 */
export function needsFullScan(
  last: LastRead | null,
  signal: string | null,
  options: { now: number; fresh: boolean; maxAgeMs: number },
): boolean {
  if (options.fresh || last === null) return true;
  if (options.now - last.at >= options.maxAgeMs) return true;
  return signal !== last.signal;
}

/** `read`, reused as above; callers during a read share it (the gpu and display providers of one scan). */
export function reuseWhileUnchanged<T>(
  readSignal: () => Promise<string | null>,
  read: (options: ScanOptions) => Promise<T>,
  maxAgeMs: number,
): (options: ScanOptions) => Promise<T> {
  let last: (LastRead & { answer: T }) | null = null;
  let pending: Promise<T> | null = null;
  return (options) => {
    pending ??= (async () => {
      const signal = await readSignal();
      if (last && !needsFullScan(last, signal, { ...options, maxAgeMs })) return last.answer;
      const answer = await read(options);
      last = { signal, at: options.now, answer };
      return answer;
    })().finally(() => {
      pending = null;
    });
    return pending;
  };
}
