// What every device provider is: a name and one scan. The scan runner (scan.ts) bounds each
// scan in time; a provider that spawns a process should also pass the timeout on, so the
// process is killed rather than left behind.
import type { RawDevice } from "../device.js";

export interface ScanOptions {
  timeoutMs: number;
}

export interface DeviceProvider {
  readonly name: string;
  scan(options: ScanOptions): Promise<RawDevice[]>;
}
