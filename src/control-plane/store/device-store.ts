// The device inventory's SQL, shared by both engines (table `devices`). A batch is applied in
// one transaction and is idempotent: applying it twice (a re-sent batch whose ack was lost)
// leaves the same rows. Removed devices are kept, offline, with removed_at set.
import {
  attributesSchema,
  deviceStateSchema,
  digestOf,
  type DeviceRequirement,
  type DeviceState,
  type DevicesBatchMessage,
} from "../../protocol/devices.js";
import type { AppliedBatch, DeviceRecord, DeviceStoreContract } from "./contract.js";
import type { SqlEngine, SqlRunner } from "./sql.js";

interface DeviceRow {
  runner_id: string;
  device_id: string;
  kind: string;
  name: string;
  state: string;
  attributes: string;
  stale: number;
  fingerprint: string;
  removed_at: number | null;
  last_seen_at: number;
  updated_at: number;
}

const PRESENT = "removed_at IS NULL";
/** Parameters: removed_at, updated_at. */
const MARK_GONE = "state = 'offline', removed_at = ?, updated_at = ?";

/** Thrown inside the transaction so that it rolls back: the batch would pass the runner's cap. */
class OverDeviceCap extends Error {
  constructor(readonly rows: number) {
    super(`over the device cap: ${rows} rows`);
  }
}

/** Rows of removed devices make room first (oldest removal first); present ones are never dropped. */
async function enforceDeviceCap(tx: SqlRunner, runnerId: string, maxRows: number): Promise<void> {
  const count = async () =>
    Number((await tx.get<{ n: number }>("SELECT COUNT(*) AS n FROM devices WHERE runner_id = ?", [runnerId]))?.n ?? 0);
  const rows = await count();
  if (rows <= maxRows) return;
  await tx.run(
    `DELETE FROM devices WHERE runner_id = ? AND device_id IN (
       SELECT device_id FROM devices WHERE runner_id = ? AND removed_at IS NOT NULL ORDER BY removed_at, device_id LIMIT ?)`,
    [runnerId, runnerId, rows - maxRows],
  );
  const left = await count();
  if (left > maxRows) throw new OverDeviceCap(left);
}

export class SqlDeviceStore implements DeviceStoreContract {
  constructor(private readonly db: SqlEngine) {}

  async summarize(runnerId: string): Promise<{ count: number; digest: string }> {
    const rows = await this.db.all<{ device_id: string; fingerprint: string }>(
      `SELECT device_id, fingerprint FROM devices WHERE runner_id = ? AND ${PRESENT} ORDER BY device_id`,
      [runnerId],
    );
    return { count: rows.length, digest: digestOf(rows.map((row) => [row.device_id, row.fingerprint] as const)) };
  }

  async touchPresent(runnerId: string, now: Date): Promise<void> {
    await this.db.run(`UPDATE devices SET last_seen_at = ? WHERE runner_id = ? AND ${PRESENT}`, [
      now.getTime(),
      runnerId,
    ]);
  }

  async applyBatch(runnerId: string, batch: DevicesBatchMessage, now: Date, maxRows: number): Promise<AppliedBatch> {
    try {
      return await this.applyWithinCap(runnerId, batch, now, maxRows);
    } catch (error) {
      if (error instanceof OverDeviceCap) return { upserted: 0, removed: 0, missing: 0, refusedRows: error.rows };
      throw error;
    }
  }

  private applyWithinCap(
    runnerId: string,
    batch: DevicesBatchMessage,
    now: Date,
    maxRows: number,
  ): Promise<AppliedBatch> {
    return this.db.transaction(async (tx): Promise<AppliedBatch> => {
      const at = now.getTime();
      for (const device of batch.upserts) {
        await tx.run(
          `INSERT INTO devices (runner_id, device_id, kind, name, state, attributes, stale, fingerprint, snapshot_id, removed_at, last_seen_at, updated_at)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, ?, ?)
           ON CONFLICT (runner_id, device_id) DO UPDATE SET
             kind = excluded.kind, name = excluded.name, state = excluded.state, attributes = excluded.attributes,
             stale = excluded.stale, fingerprint = excluded.fingerprint, snapshot_id = excluded.snapshot_id,
             -- SET expressions read the row as it was: an unchanged, present device keeps its updated_at.
             updated_at = CASE WHEN devices.fingerprint = excluded.fingerprint AND devices.removed_at IS NULL THEN devices.updated_at ELSE excluded.updated_at END,
             removed_at = NULL, last_seen_at = excluded.last_seen_at`,
          [
            runnerId,
            device.id,
            device.kind,
            device.name,
            device.state,
            JSON.stringify(device.attributes),
            device.stale ? 1 : 0,
            device.fingerprint,
            batch.snapshotId ?? null,
            at,
            at,
          ],
        );
      }
      let removed = 0;
      for (const id of batch.removals) {
        removed += await tx.run(
          `UPDATE devices SET ${MARK_GONE} WHERE runner_id = ? AND device_id = ? AND ${PRESENT}`,
          [at, at, runnerId, id],
        );
      }
      let missing = 0;
      if (batch.snapshotId !== undefined && batch.last) {
        missing = await tx.run(
          `UPDATE devices SET ${MARK_GONE}
           WHERE runner_id = ? AND ${PRESENT} AND (snapshot_id IS NULL OR snapshot_id <> ?)`,
          [at, at, runnerId, batch.snapshotId],
        );
      }
      if (batch.snapshotId !== undefined && batch.last) {
        // A completed snapshot with nothing present: the runner has no devices, keep no rows.
        const present = await tx.get<{ n: number }>(
          `SELECT COUNT(*) AS n FROM devices WHERE runner_id = ? AND ${PRESENT}`,
          [runnerId],
        );
        if (Number(present?.n ?? 0) === 0) await tx.run("DELETE FROM devices WHERE runner_id = ?", [runnerId]);
      }
      await enforceDeviceCap(tx, runnerId, maxRows);
      return { upserted: batch.upserts.length, removed, missing };
    });
  }

  async list(
    filter: { runnerId?: string; kind?: string; state?: DeviceState } = {},
    page?: { after?: { runnerId: string; deviceId: string }; limit: number },
  ): Promise<DeviceRecord[]> {
    const runnerId = filter.runnerId ?? null;
    const kind = filter.kind ?? null;
    const state = filter.state ?? null;
    // The cursor is a row-value range on the primary key, so a page starts where the last
    // ended instead of scanning from the first row (both engines seek on it).
    const after = page?.after;
    const rows = await this.db.all<DeviceRow>(
      `SELECT * FROM devices
       WHERE (CAST(? AS TEXT) IS NULL OR runner_id = ?) AND (CAST(? AS TEXT) IS NULL OR kind = ?)
         AND (CAST(? AS TEXT) IS NULL OR state = ?)${after ? " AND (runner_id, device_id) > (CAST(? AS TEXT), CAST(? AS TEXT))" : ""}
       ORDER BY runner_id, device_id${page ? " LIMIT ?" : ""}`,
      [
        runnerId,
        runnerId,
        kind,
        kind,
        state,
        state,
        ...(after ? [after.runnerId, after.deviceId] : []),
        ...(page ? [page.limit] : []),
      ],
    );
    return rows.map(toDeviceRecord);
  }

  /** A stale row (its provider failed that scan) does not count: it may be gone. */
  async hasOnlineDevice(runnerId: string, requirement: DeviceRequirement): Promise<boolean> {
    const kind = requirement.kind ?? null;
    const id = requirement.id ?? null;
    const row = await this.db.get<{ found: number }>(
      `SELECT 1 AS found FROM devices
       WHERE runner_id = ? AND ${PRESENT} AND state = 'online' AND stale = 0
         AND (CAST(? AS TEXT) IS NULL OR kind = ?) AND (CAST(? AS TEXT) IS NULL OR device_id = ?)
       LIMIT 1`,
      [runnerId, kind, kind, id, id],
    );
    return row !== undefined;
  }
}

/** Rows come from disk: state and JSON columns are validated, not trusted. */
function toDeviceRecord(row: DeviceRow): DeviceRecord {
  return {
    runnerId: row.runner_id,
    id: row.device_id,
    kind: row.kind,
    name: row.name,
    state: deviceStateSchema.parse(row.state),
    attributes: attributesSchema.parse(JSON.parse(row.attributes)),
    stale: row.stale === 1,
    fingerprint: row.fingerprint,
    present: row.removed_at === null,
    lastSeenAt: new Date(row.last_seen_at),
    updatedAt: new Date(row.updated_at),
  };
}
