// The device diff, pure: what must cross the wire, given the inventory just scanned and what
// the control plane has confirmed. Added and changed rows, rows whose last confirmed sync is
// older than the refresh window, and removals; nothing else. Then the next batch of it,
// bounded in rows and in bytes.
import type { Device } from "./device.js";

/** What the control plane confirmed (acknowledged) for one device. */
export interface ConfirmedRow {
  fingerprint: string;
  /** When that acknowledgement came (ms since the epoch). */
  syncedAt: number;
}
export type Confirmed = ReadonlyMap<string, ConfirmedRow>;
export type Inventory = ReadonlyMap<string, Device>;

export interface InventoryDiff {
  upserts: Device[];
  removals: string[];
  added: number;
  changed: number;
  /** Unchanged rows re-sent because their last confirmed sync is older than the refresh window. */
  refreshed: number;
}

export function diffInventory(
  inventory: Inventory,
  confirmed: Confirmed,
  now: number,
  refreshMs: number,
): InventoryDiff {
  const diff: InventoryDiff = { upserts: [], removals: [], added: 0, changed: 0, refreshed: 0 };
  for (const device of inventory.values()) {
    const known = confirmed.get(device.id);
    if (!known) diff.added++;
    else if (known.fingerprint !== device.fingerprint) diff.changed++;
    else if (now - known.syncedAt >= refreshMs) diff.refreshed++;
    else continue;
    diff.upserts.push(device);
  }
  for (const id of confirmed.keys()) if (!inventory.has(id)) diff.removals.push(id);
  return diff;
}

export interface BatchLimits {
  /** Rows (upserts + removals) per batch. */
  maxRows: number;
  /** Bytes of rows per batch (the JSON of each upsert, the quoted id of each removal). */
  maxBytes: number;
}

export interface BatchRows {
  upserts: Device[];
  removals: string[];
}

/** Which rows still need sending when they are taken (the sync skips rows confirmed since they were listed). */
export interface StillNeeded {
  upsert(device: Device): boolean;
  removal(id: string): boolean;
}

const EVERY_ROW: StillNeeded = { upsert: () => true, removal: () => true };

/**
 * The first batch of `rows` (upserts first, then removals; at least one row when one is
 * left) and the rows after it. Rows `needed` rejects are dropped on the way.
 */
export function takeBatch(
  rows: BatchRows,
  limits: BatchLimits,
  needed: StillNeeded = EVERY_ROW,
): { batch: BatchRows; rest: BatchRows } {
  const batch: BatchRows = { upserts: [], removals: [] };
  let count = 0;
  let bytes = 0;
  const fits = (size: number) => count < limits.maxRows && (count === 0 || bytes + size <= limits.maxBytes);
  let u = 0;
  for (; u < rows.upserts.length; u++) {
    const device = rows.upserts[u]!;
    if (!needed.upsert(device)) continue;
    const size = Buffer.byteLength(JSON.stringify(device)) + 1;
    if (!fits(size)) return { batch, rest: { upserts: rows.upserts.slice(u), removals: rows.removals } };
    batch.upserts.push(device);
    count++;
    bytes += size;
  }
  let r = 0;
  for (; r < rows.removals.length; r++) {
    const id = rows.removals[r]!;
    if (!needed.removal(id)) continue;
    const size = id.length + 3;
    if (!fits(size)) return { batch, rest: { upserts: [], removals: rows.removals.slice(r) } };
    batch.removals.push(id);
    count++;
    bytes += size;
  }
  return { batch, rest: { upserts: [], removals: [] } };
}

/** Every batch, in order (the sync sends them one at a time; this is for tests and benchmarks). */
export function splitIntoBatches(rows: BatchRows, limits: BatchLimits): BatchRows[] {
  const batches: BatchRows[] = [];
  let rest = rows;
  while (rest.upserts.length + rest.removals.length > 0) {
    const taken = takeBatch(rest, limits);
    batches.push(taken.batch);
    rest = taken.rest;
  }
  return batches;
}
