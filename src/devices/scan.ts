// One inventory scan: every enabled provider at once, each bounded by a timeout and timed.
// A provider that fails or times out does not stop the others; its last good rows are kept,
// marked stale (mergeScan, pure). A provider still running from an earlier scan that timed
// out is not started again: that would pile up processes on a machine that is already slow.
import type { DeviceProvider, ScanOptions } from "./providers/provider.js";
import { markStale, toDevice, type Device } from "./device.js";

export interface ProviderReport {
  name: string;
  ok: boolean;
  ms: number;
  /** Rows it reported (or, when it failed, the stale rows kept for it). */
  rows: number;
  error?: string;
}

export type ProviderOutcome =
  { name: string; ok: true; devices: Device[] } | { name: string; ok: false; error: string };

/** Each provider's rows from its last successful scan. */
export type LastGood = ReadonlyMap<string, readonly Device[]>;

export interface ScanResult {
  devices: Device[];
  reports: ProviderReport[];
  lastGood: LastGood;
  /** Wall time of the whole scan. */
  ms: number;
}

export interface ScanRunOptions {
  timeoutMs: number;
  /** False lets providers reuse an answer a cheap signal says is still right (the periodic scan); default true. */
  fresh?: boolean;
  /** The scan's time on the caller's clock; default performance.now(). */
  now?: number;
  lastGood?: LastGood;
  /** Providers' scans that outlived their timeout and are still running; shared between scans. */
  stillRunning?: Map<string, Promise<unknown>>;
}

export async function scanDevices(providers: readonly DeviceProvider[], options: ScanRunOptions): Promise<ScanResult> {
  const started = performance.now();
  const stillRunning = options.stillRunning ?? new Map<string, Promise<unknown>>();
  const scanOptions = { timeoutMs: options.timeoutMs, fresh: options.fresh ?? true, now: options.now ?? started };
  const timed = await Promise.all(providers.map((provider) => runProvider(provider, scanOptions, stillRunning)));
  const merged = mergeScan(
    timed.map((t) => t.outcome),
    options.lastGood ?? new Map(),
  );
  const reports = timed.map(({ outcome, ms }) => ({
    name: outcome.name,
    ok: outcome.ok,
    ms,
    rows: outcome.ok ? outcome.devices.length : (merged.lastGood.get(outcome.name)?.length ?? 0),
    ...(outcome.ok ? {} : { error: outcome.error }),
  }));
  return {
    devices: merged.devices,
    reports,
    lastGood: merged.lastGood,
    ms: Math.round((performance.now() - started) * 10) / 10,
  };
}

/**
 * Pure: this scan's inventory from the providers' outcomes. A failed provider contributes
 * its last good rows, marked stale; two rows with one id keep the first (provider order).
 */
export function mergeScan(
  outcomes: readonly ProviderOutcome[],
  lastGood: LastGood,
): { devices: Device[]; lastGood: LastGood } {
  const nextGood = new Map(lastGood);
  const byId = new Map<string, Device>();
  for (const outcome of outcomes) {
    let rows: readonly Device[];
    if (outcome.ok) {
      rows = outcome.devices;
      nextGood.set(outcome.name, outcome.devices);
    } else {
      rows = (lastGood.get(outcome.name) ?? []).map(markStale);
    }
    for (const device of rows) if (!byId.has(device.id)) byId.set(device.id, device);
  }
  return { devices: [...byId.values()], lastGood: nextGood };
}

async function runProvider(
  provider: DeviceProvider,
  options: ScanOptions,
  stillRunning: Map<string, Promise<unknown>>,
): Promise<{ outcome: ProviderOutcome; ms: number }> {
  const { timeoutMs } = options;
  const started = performance.now();
  const elapsed = () => Math.round((performance.now() - started) * 10) / 10;
  if (stillRunning.has(provider.name)) {
    return {
      outcome: { name: provider.name, ok: false, error: "its previous scan, which timed out, is still running" },
      ms: 0,
    };
  }
  let timer: NodeJS.Timeout | undefined;
  const scan = Promise.resolve().then(() => provider.scan(options));
  const timeout = new Promise<"timeout">((resolve) => {
    timer = setTimeout(() => resolve("timeout"), timeoutMs);
  });
  try {
    const raced = await Promise.race([scan, timeout]);
    if (raced === "timeout") {
      const forget = () => stillRunning.delete(provider.name);
      stillRunning.set(provider.name, scan.then(forget, forget));
      return { outcome: { name: provider.name, ok: false, error: `timed out after ${timeoutMs} ms` }, ms: elapsed() };
    }
    return { outcome: { name: provider.name, ok: true, devices: raced.map((raw) => toDevice(raw)) }, ms: elapsed() };
  } catch (error) {
    return { outcome: { name: provider.name, ok: false, error: describe(error) }, ms: elapsed() };
  } finally {
    clearTimeout(timer);
  }
}

function describe(error: unknown): string {
  const e = error as { shortMessage?: string; message?: string };
  return (e.shortMessage ?? e.message ?? String(error)).split("\n")[0]!.slice(0, 300);
}
