// The control plane's half of the device sync: a runner's summary is compared with the
// stored devices (match: acknowledged; else: the runner is asked for a full snapshot), a
// batch is applied and acknowledged. Each is reported as a `"devices"` event, and a change
// lets the queue dispatch jobs that wait for a device. A batch that fails validation is
// answered so that the runner's sync always ends (answerInvalidBatch).
import type { EventEmitter } from "node:events";
import type { z } from "zod";
import type { Logger } from "../../log/logger.js";
import type { ControlMessage } from "../../protocol/channel.js";
import {
  batchIdSchema,
  describeRepeatedRow,
  deviceIdSchema,
  deviceSchema,
  devicesBatchEnvelopeSchema,
  repeatedDeviceRows,
  type Device,
  type DevicesBatchMessage,
  type DevicesSummaryMessage,
} from "../../protocol/devices.js";
import type { DeviceStoreContract } from "../store/contract.js";
import { capText } from "../../log/cap-text.js";

/** Emitted as `"devices"` on the control plane's `events` for each device message applied. */
export interface DeviceEvent {
  runnerId: string;
  type: "devices_summary" | "devices";
  batchId: string;
  /** For a summary: whether it matched (false: a resync was asked for). */
  matched?: boolean;
  /** Rows the message carried. */
  upserts: number;
  removals: number;
  /** Devices marked offline because a completed full snapshot lacked them. */
  missing: number;
}

export interface DeviceSyncOptions {
  store: DeviceStoreContract;
  events: EventEmitter;
  logger: Logger;
  now: () => Date;
  /** Called after a batch that changed devices: queued jobs may now find their runner. */
  devicesChanged: () => void;
  /** Device rows one runner may hold (present and removed); a batch past it is refused. */
  maxDevicesPerRunner: number;
}

export class DeviceSyncEndpoint {
  constructor(private readonly options: DeviceSyncOptions) {}

  /** Answers a summary: `devices_ack` when it matches the stored devices, else `devices_resync`. */
  async summarize(runnerId: string, summary: DevicesSummaryMessage): Promise<ControlMessage> {
    const { store, now, logger } = this.options;
    const stored = await store.summarize(runnerId);
    const matched = stored.count === summary.count && stored.digest === summary.digest;
    this.emit({
      runnerId,
      type: "devices_summary",
      batchId: summary.batchId,
      matched,
      upserts: 0,
      removals: 0,
      missing: 0,
    });
    if (matched) {
      await store.touchPresent(runnerId, now());
      return { type: "devices_ack", batchId: summary.batchId };
    }
    const reason =
      stored.count === 0 && summary.count > 0
        ? "the control plane has no devices for this runner"
        : `the control plane holds ${stored.count} device(s) with another digest than the runner's ${summary.count}`;
    logger.info(
      { runnerId, stored: stored.count, reported: summary.count },
      `device summary mismatch: asking for a full snapshot (${reason})`,
    );
    return { type: "devices_resync", batchId: summary.batchId, reason };
  }

  /**
   * Applies a batch (idempotently) and acknowledges it. A batch past the runner's device cap
   * is not applied: `error` device_limit_exceeded, then the ack all the same, because without
   * an ack the runner re-sends the batch at once and for ever; the summary of its next scan
   * will not match, so it tries again once per scan interval, not in a loop.
   */
  async applyBatch(runnerId: string, batch: DevicesBatchMessage): Promise<ControlMessage[]> {
    const { maxDevicesPerRunner } = this.options;
    const applied = await this.options.store.applyBatch(runnerId, batch, this.options.now(), maxDevicesPerRunner);
    const ack: ControlMessage = { type: "devices_ack", batchId: batch.batchId };
    if (applied.refusedRows !== undefined) {
      const message = `devices batch ${batch.batchId} not applied: the runner would hold ${applied.refusedRows} device rows, over the limit of ${maxDevicesPerRunner}`;
      this.options.logger.warn(
        { runnerId, batchId: batch.batchId, rows: applied.refusedRows },
        "device batch over the cap refused",
      );
      return [{ type: "error", code: "device_limit_exceeded", message }, ack];
    }
    this.emit({
      runnerId,
      type: "devices",
      batchId: batch.batchId,
      upserts: batch.upserts.length,
      removals: batch.removals.length,
      missing: applied.missing,
    });
    if (applied.missing > 0)
      this.options.logger.info(
        { runnerId, devices: applied.missing },
        "devices missing from the runner's full snapshot marked offline",
      );
    if (applied.upserted + applied.removed + applied.missing > 0) this.options.devicesChanged();
    return [ack];
  }

  /**
   * Answers a `devices` frame that failed the schema (`raw` is its parsed JSON). An `error`
   * alone would make the runner re-send the same batch for ever, so:
   * - a batch outside a full snapshot gets `devices_resync`: the snapshot that follows
   *   replaces whatever the bad batch was meant to change;
   * - a batch of a snapshot is applied without its invalid rows (each dropped on its own and
   *   named in an `error` `device_rows_dropped`), then acknowledged: asking for yet another
   *   snapshot would bring the same rows back and never end;
   * - without a usable `batchId`, or a snapshot batch whose envelope itself is broken, there
   *   is nothing to acknowledge: `error` `invalid`, as for any other frame.
   */
  async answerInvalidBatch(runnerId: string, raw: unknown, detail: string): Promise<ControlMessage[]> {
    const { logger } = this.options;
    const fields = typeof raw === "object" && raw !== null ? (raw as Record<string, unknown>) : {};
    const batchId = batchIdSchema.safeParse(fields.batchId);
    const invalid: ControlMessage = { type: "error", code: "invalid", message: capped(detail) };
    if (!batchId.success) return [invalid];
    if (fields.snapshotId === undefined) {
      logger.warn(
        { runnerId, batchId: batchId.data, detail: capped(detail) },
        "invalid device batch: asking for a full snapshot",
      );
      return [
        {
          type: "devices_resync",
          batchId: batchId.data,
          reason: capped(`devices batch ${batchId.data} failed validation (${detail}); send a full snapshot`),
        },
      ];
    }
    const envelope = devicesBatchEnvelopeSchema.safeParse(raw);
    if (!envelope.success) {
      logger.warn(
        { runnerId, batchId: batchId.data, detail: capped(detail) },
        "invalid device snapshot batch: nothing applied",
      );
      return [invalid];
    }
    const { upserts, removals, dropped } = checkRows(envelope.data.upserts, envelope.data.removals);
    logger.warn(
      { runnerId, batchId: batchId.data, dropped: dropped.length, rows: capped(dropped.join("; ")) },
      "invalid rows of a device snapshot batch dropped; the rest applied",
    );
    const answers = await this.applyBatch(runnerId, { ...envelope.data, upserts, removals });
    const message = `devices batch ${batchId.data}: ${dropped.length} invalid row(s) dropped, the rest applied: ${dropped.join("; ")}`;
    return [{ type: "error", code: "device_rows_dropped", message: capped(message) }, ...answers];
  }

  private emit(event: DeviceEvent): void {
    this.options.events.emit("devices", event);
  }
}

/**
 * Splits a batch's rows into the valid ones and a description of each invalid one: a row that
 * breaks the schema, or that names a device an earlier valid row names (the first one stays).
 */
function checkRows(
  rawUpserts: readonly unknown[],
  rawRemovals: readonly unknown[],
): { upserts: Device[]; removals: string[]; dropped: string[] } {
  const dropped: string[] = [];
  const upserts = rawUpserts.map((row, index) => {
    const device = deviceSchema.safeParse(row);
    if (device.success) return device.data;
    dropped.push(`upserts[${index}]${idOf(row)}: ${firstIssue(device.error)}`);
    return null;
  });
  const removals = rawRemovals.map((row, index) => {
    const id = deviceIdSchema.safeParse(row);
    if (id.success) return id.data;
    dropped.push(`removals[${index}]: ${firstIssue(id.error)}`);
    return null;
  });
  const repeated = repeatedDeviceRows(
    upserts.map((device) => device?.id ?? null),
    removals,
  );
  for (const row of repeated) {
    (row.list === "upserts" ? upserts : removals)[row.index] = null;
    dropped.push(`${row.list}[${row.index}]: ${describeRepeatedRow(row)}`);
  }
  return {
    upserts: upserts.filter((device) => device !== null),
    removals: removals.filter((id) => id !== null),
    dropped,
  };
}

function idOf(row: unknown): string {
  const id = typeof row === "object" && row !== null ? (row as { id?: unknown }).id : undefined;
  return typeof id === "string" ? ` (id ${JSON.stringify(id.slice(0, 64))})` : "";
}

function firstIssue(error: z.ZodError): string {
  const issue = error.issues[0];
  return issue ? `${issue.path.join(".") || "(row)"}: ${issue.message}` : "invalid";
}

/** What the control plane says back (and logs) stays short, whatever the frame held. */
/** With capText's marker, a detail stays under devices_resync's 1024-character reason. */
const MAX_DETAIL_CHARS = 900;
const capped = (text: string) => capText(text, MAX_DETAIL_CHARS);
