// The control plane's half of the device sync: a runner's summary is compared with the
// stored devices (match: acknowledged; else: the runner is asked for a full snapshot), a
// batch is applied and acknowledged. Each is reported as a `"devices"` event, and a change
// lets the queue dispatch jobs that wait for a device.
import type { EventEmitter } from "node:events";
import type { Logger } from "../log/logger.js";
import type { ControlMessage } from "../protocol/channel.js";
import type { DevicesBatchMessage, DevicesSummaryMessage } from "../protocol/devices.js";
import type { DeviceStore } from "./device-store.js";

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
  store: DeviceStore;
  events: EventEmitter;
  logger: Logger;
  now: () => Date;
  /** Called after a batch that changed devices: queued jobs may now find their runner. */
  devicesChanged: () => void;
}

export class DeviceSyncEndpoint {
  constructor(private readonly options: DeviceSyncOptions) {}

  /** Answers a summary: `devices_ack` when it matches the stored devices, else `devices_resync`. */
  summarize(runnerId: string, summary: DevicesSummaryMessage): ControlMessage {
    const { store, now, logger } = this.options;
    const stored = store.summarize(runnerId);
    const matched = stored.count === summary.count && stored.digest === summary.digest;
    this.emit({ runnerId, type: "devices_summary", batchId: summary.batchId, matched, upserts: 0, removals: 0, missing: 0 });
    if (matched) {
      store.touchPresent(runnerId, now());
      return { type: "devices_ack", batchId: summary.batchId };
    }
    const reason =
      stored.count === 0 && summary.count > 0
        ? "the control plane has no devices for this runner"
        : `the control plane holds ${stored.count} device(s) with another digest than the runner's ${summary.count}`;
    logger.info({ runnerId, stored: stored.count, reported: summary.count }, `device summary mismatch: asking for a full snapshot (${reason})`);
    return { type: "devices_resync", batchId: summary.batchId, reason };
  }

  /** Applies a batch (idempotently) and acknowledges it. */
  applyBatch(runnerId: string, batch: DevicesBatchMessage): ControlMessage {
    const applied = this.options.store.applyBatch(runnerId, batch, this.options.now());
    this.emit({ runnerId, type: "devices", batchId: batch.batchId, upserts: batch.upserts.length, removals: batch.removals.length, missing: applied.missing });
    if (applied.missing > 0) this.options.logger.info({ runnerId, devices: applied.missing }, "devices missing from the runner's full snapshot marked offline");
    if (applied.upserted + applied.removed + applied.missing > 0) this.options.devicesChanged();
    return { type: "devices_ack", batchId: batch.batchId };
  }

  private emit(event: DeviceEvent): void {
    this.options.events.emit("devices", event);
  }
}
