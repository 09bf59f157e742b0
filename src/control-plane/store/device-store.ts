// The device inventory's SQL (table `devices`, migration 3 in store.ts). A batch is applied in
// one transaction and is idempotent: applying it twice (a re-sent batch whose ack was lost)
// leaves the same rows. Removed devices are kept, offline, with removed_at set.
import type Database from "better-sqlite3";
import {
  attributesSchema,
  deviceStateSchema,
  digestOf,
  type AttributeValue,
  type DeviceRequirement,
  type DeviceState,
  type DevicesBatchMessage,
} from "../../protocol/devices.js";

export interface DeviceRecord {
  runnerId: string;
  id: string;
  kind: string;
  name: string;
  /** 'offline' once removed, whatever the runner said last. */
  state: DeviceState;
  attributes: Record<string, AttributeValue>;
  stale: boolean;
  fingerprint: string;
  /** False once the runner removed it or left it out of a full snapshot. */
  present: boolean;
  lastSeenAt: Date;
  updatedAt: Date;
}

export interface AppliedBatch {
  upserted: number;
  removed: number;
  /** Devices a completed full snapshot did not mention, now marked offline. */
  missing: number;
}

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
const MARK_GONE = "state = 'offline', removed_at = @now, updated_at = @now";

export class DeviceStore {
  constructor(
    private readonly db: Database.Database,
    private readonly statement: (sql: string) => Database.Statement,
  ) {}

  /** The count and digest (protocol/devices.ts digestOf) of the runner's present devices. */
  summarize(runnerId: string): { count: number; digest: string } {
    const rows = this.statement(
      `SELECT device_id, fingerprint FROM devices WHERE runner_id = ? AND ${PRESENT} ORDER BY device_id`,
    ).all(runnerId) as {
      device_id: string;
      fingerprint: string;
    }[];
    return { count: rows.length, digest: digestOf(rows.map((row) => [row.device_id, row.fingerprint] as const)) };
  }

  /** A summary that matched confirms every present device as seen now. */
  touchPresent(runnerId: string, now: Date): void {
    this.statement(`UPDATE devices SET last_seen_at = ? WHERE runner_id = ? AND ${PRESENT}`).run(
      now.getTime(),
      runnerId,
    );
  }

  applyBatch(runnerId: string, batch: DevicesBatchMessage, now: Date): AppliedBatch {
    const apply = this.db.transaction((): AppliedBatch => {
      const at = now.getTime();
      const upsert = this.statement(
        `INSERT INTO devices (runner_id, device_id, kind, name, state, attributes, stale, fingerprint, snapshot_id, removed_at, last_seen_at, updated_at)
         VALUES (@runnerId, @id, @kind, @name, @state, @attributes, @stale, @fingerprint, @snapshotId, NULL, @now, @now)
         ON CONFLICT (runner_id, device_id) DO UPDATE SET
           kind = excluded.kind, name = excluded.name, state = excluded.state, attributes = excluded.attributes,
           stale = excluded.stale, fingerprint = excluded.fingerprint, snapshot_id = excluded.snapshot_id,
           -- SET expressions read the row as it was: an unchanged, present device keeps its updated_at.
           updated_at = CASE WHEN devices.fingerprint = excluded.fingerprint AND devices.removed_at IS NULL THEN devices.updated_at ELSE excluded.updated_at END,
           removed_at = NULL, last_seen_at = excluded.last_seen_at`,
      );
      for (const device of batch.upserts) {
        upsert.run({
          runnerId,
          id: device.id,
          kind: device.kind,
          name: device.name,
          state: device.state,
          attributes: JSON.stringify(device.attributes),
          stale: device.stale ? 1 : 0,
          fingerprint: device.fingerprint,
          snapshotId: batch.snapshotId ?? null,
          now: at,
        });
      }
      const remove = this.statement(
        `UPDATE devices SET ${MARK_GONE} WHERE runner_id = @runnerId AND device_id = @id AND ${PRESENT}`,
      );
      let removed = 0;
      for (const id of batch.removals) removed += remove.run({ runnerId, id, now: at }).changes;
      let missing = 0;
      if (batch.snapshotId !== undefined && batch.last) {
        missing = this.statement(
          `UPDATE devices SET ${MARK_GONE} WHERE runner_id = @runnerId AND ${PRESENT} AND (snapshot_id IS NULL OR snapshot_id <> @snapshotId)`,
        ).run({ runnerId, snapshotId: batch.snapshotId, now: at }).changes;
      }
      return { upserted: batch.upserts.length, removed, missing };
    });
    return apply.immediate();
  }

  /** Devices of one runner, or of all runners, optionally of one kind; ordered by runner then device id. */
  list(filter: { runnerId?: string; kind?: string; state?: DeviceState } = {}): DeviceRecord[] {
    const rows = this.statement(
      `SELECT * FROM devices
       WHERE (@runnerId IS NULL OR runner_id = @runnerId) AND (@kind IS NULL OR kind = @kind) AND (@state IS NULL OR state = @state)
       ORDER BY runner_id, device_id`,
    ).all({ runnerId: filter.runnerId ?? null, kind: filter.kind ?? null, state: filter.state ?? null }) as DeviceRow[];
    return rows.map(toDeviceRecord);
  }

  /**
   * Whether the runner has a present device matching the requirement that its last scan saw
   * online. A stale row (its provider failed that scan) does not count: it may be gone.
   */
  hasOnlineDevice(runnerId: string, requirement: DeviceRequirement): boolean {
    const row = this.statement(
      `SELECT 1 FROM devices
       WHERE runner_id = @runnerId AND ${PRESENT} AND state = 'online' AND stale = 0
         AND (@kind IS NULL OR kind = @kind) AND (@id IS NULL OR device_id = @id)
       LIMIT 1`,
    ).get({ runnerId, kind: requirement.kind ?? null, id: requirement.id ?? null });
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
