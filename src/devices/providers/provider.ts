// What every device provider is: a name and one scan. The scan runner (scan.ts) bounds each
// scan in time; a provider that spawns a process should also pass the timeout on, so the
// process is killed rather than left behind.
import type { RawDevice } from "../device.js";

export interface ScanOptions {
  timeoutMs: number;
  /**
   * True: read everything again (a connect, `runner devices`, a rescan asked for). False (the
   * periodic scan): a provider may reuse its last answer while a cheap signal says nothing
   * changed (see graphics.ts).
   */
  fresh: boolean;
  /** The scan's time, in ms on the caller's clock (only differences matter). */
  now: number;
}

export interface DeviceProvider {
  readonly name: string;
  scan(options: ScanOptions): Promise<RawDevice[]>;
}
