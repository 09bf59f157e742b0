// The agent's device sync session, sans-IO: `stepSync(state, input)` returns the next state
// and the effects (send a message, persist the confirmed state, log). Time comes in the
// inputs; `nextDeadline` says when the caller should feed the `ack` timer back (the one time
// model of the sans-IO cores, see time/deadline.ts). One message is in flight
// at a time: the summary after a connect, then batches of a full snapshot (when the control
// plane asks for one) or of the diff, each acknowledged before the next goes out.
//
//   offline ──connected──> summary ──ack──> diff <──────────────┐
//                             │                                  │ ack of the last batch
//                             └──resync──> snapshot ─────────────┘
//   (any phase) ──disconnected──> offline; an unacknowledged batch is re-sent first on the next connect
import { unreachable } from "../errors.js";
import { logEffect as log, type LogEffect } from "../log/log-effect.js";
import type { RunnerMessage } from "../protocol/channel.js";
import { digestOf, type DevicesBatchMessage, type DevicesSummaryMessage } from "../protocol/devices.js";
import type { Deadline } from "../time/deadline.js";
import type { Device } from "./device.js";
import {
  diffInventory,
  takeBatch,
  type BatchRows,
  type Confirmed,
  type ConfirmedRow,
  type Inventory,
  type StillNeeded,
} from "./diff.js";

export interface SyncConfig {
  /** Rows per batch (upserts + removals). */
  batchSize: number;
  /** Refresh window used when the control plane's welcome names none. */
  refreshMs: number;
  /** An unacknowledged message is re-sent after this long. */
  ackTimeoutMs: number;
  /** Makes batch ids unique across restarts (e.g. the start time in base 36). */
  idPrefix: string;
}

export type SyncPhase = "offline" | "summary" | "snapshot" | "diff";

export interface InFlight {
  message: DevicesSummaryMessage | DevicesBatchMessage;
  sentAt: number;
  /** Re-sends after a timeout, in a row: each doubles the wait (a control plane that never answers, say one without device support, is not flooded). */
  timeouts: number;
}

/** The wait before a re-send grows to at most this many ack timeouts. */
const MAX_BACKOFF_FACTOR = 32;

export interface SyncState {
  config: SyncConfig;
  phase: SyncPhase;
  /** What the control plane has acknowledged; persisted, so a restart re-sends nothing. */
  confirmed: Confirmed;
  /** The latest scan; null until the first one. */
  inventory: Inventory | null;
  inFlight: InFlight | null;
  /** The full snapshot being sent, if any. */
  snapshotId: string | null;
  /**
   * Rows still to send, listed at the last scan or phase change (null: list them again).
   * Batches are taken from its front; a row confirmed since it was listed is skipped then,
   * so a big sync costs one diff, not one per batch.
   */
  pending: BatchRows | null;
  /** From the welcome, or config.refreshMs. */
  refreshMs: number;
  /** Batches stay under this many bytes of rows (the welcome's frame limit less an envelope margin). */
  maxBatchBytes: number;
  batchCount: number;
}

export type SyncInput =
  | { type: "connected"; now: number; maxFrameBytes: number; refreshMs?: number }
  | { type: "disconnected" }
  | { type: "scanned"; now: number; devices: readonly Device[] }
  | { type: "ack"; now: number; batchId: string }
  | { type: "resync"; now: number; batchId?: string; reason: string }
  /** The deadline `nextDeadline` named has come (or passed: a re-send is due from then on). */
  | { type: "timer"; timer: SyncTimer; now: number };

/** The core's one timer: the in-flight message's acknowledgement is overdue. */
export type SyncTimer = "ack";

export type SyncEffect =
  | { type: "send"; message: RunnerMessage }
  /** Write the confirmed state to disk (a later one supersedes an earlier one not yet written). */
  | { type: "persist"; confirmed: Confirmed }
  | LogEffect;

export interface SyncStep {
  state: SyncState;
  effects: SyncEffect[];
}

/**
 * Room left in a frame for the batch's envelope: `{"type":"devices","batchId":…,"snapshotId":…,
 * "last":false,"upserts":[],"removals":[]}` with both ids at their 64-character maximum is 223
 * bytes. Rows are counted with their separators (diff.ts), so a batch fits the frame limit
 * whatever it is (the protocol's minimum, 1024, leaves 768 bytes of rows).
 */
export const ENVELOPE_BYTES = 256;

export function initialSyncState(config: SyncConfig, confirmed: Confirmed = new Map()): SyncState {
  return {
    config,
    phase: "offline",
    confirmed,
    inventory: null,
    inFlight: null,
    snapshotId: null,
    pending: null,
    refreshMs: config.refreshMs,
    maxBatchBytes: 64 * 1024,
    batchCount: 0,
  };
}

/** When the in-flight message times out (feed the `ack` timer then); null when nothing waits. */
export function nextDeadline(state: SyncState): Deadline<SyncTimer> | null {
  if (state.phase === "offline" || !state.inFlight) return null;
  const wait = state.config.ackTimeoutMs * Math.min(MAX_BACKOFF_FACTOR, 2 ** state.inFlight.timeouts);
  return { timer: "ack", at: state.inFlight.sentAt + wait };
}

export function stepSync(state: SyncState, input: SyncInput): SyncStep {
  switch (input.type) {
    case "connected":
      return onConnected(state, input);
    case "disconnected":
      // A summary is rebuilt on the next connect; a batch is re-sent as it was.
      return {
        state: {
          ...state,
          phase: "offline",
          inFlight: state.inFlight?.message.type === "devices" ? state.inFlight : null,
        },
        effects: [],
      };
    case "scanned": {
      const inventory = new Map(input.devices.map((device) => [device.id, device]));
      return pump({ ...state, inventory, pending: null }, input.now);
    }
    case "ack":
      return onAck(state, input.batchId, input.now);
    case "resync":
      return onResync(state, input);
    case "timer":
      return onAckTimer(state, input.now);
    default:
      return unreachable(input, "input");
  }
}

// ---- inputs ----

function onConnected(state: SyncState, input: Extract<SyncInput, { type: "connected" }>): SyncStep {
  const next: SyncState = {
    ...state,
    phase: "summary",
    pending: null,
    refreshMs: input.refreshMs ?? state.config.refreshMs,
    maxBatchBytes: input.maxFrameBytes - ENVELOPE_BYTES,
  };
  // The batch the last connection did not see acknowledged goes first, unchanged: applying it
  // twice is harmless, and once acknowledged the summary below includes it.
  if (state.inFlight?.message.type === "devices") {
    return resend(
      next,
      { ...state.inFlight, timeouts: 0 },
      input.now,
      "re-sending the device batch not acknowledged before the reconnect",
    );
  }
  return pump({ ...next, inFlight: null }, input.now);
}

function onAck(state: SyncState, batchId: string, now: number): SyncStep {
  const message = state.inFlight?.message;
  if (!message || message.batchId !== batchId) {
    return {
      state,
      effects: [log("debug", `ignored an acknowledgement of device batch ${batchId}, which is not in flight`)],
    };
  }
  const cleared: SyncState = { ...state, inFlight: null };
  if (message.type === "devices_summary") {
    if (state.phase !== "summary") return pump(cleared, now);
    const effects = [
      log("info", "the control plane's device inventory matches this runner's: only changes will be sent", {
        devices: message.count,
      }),
    ];
    return pump({ ...cleared, phase: "diff", snapshotId: null, pending: null }, now, effects);
  }
  const confirmed = confirm(state.confirmed, message, now);
  const effects: SyncEffect[] = [{ type: "persist", confirmed }];
  let next: SyncState = { ...cleared, confirmed };
  if (message.snapshotId !== undefined && message.snapshotId === state.snapshotId && message.last) {
    effects.push(log("info", "full device snapshot acknowledged", { devices: confirmed.size }));
    next = { ...next, snapshotId: null, pending: null, phase: state.phase === "snapshot" ? "diff" : state.phase };
  }
  return pump(next, now, effects);
}

function onResync(state: SyncState, input: Extract<SyncInput, { type: "resync" }>): SyncStep {
  if (state.phase === "offline") return { state, effects: [] };
  // An answer to a message no longer in flight (say, the first copy of one re-sent after a timeout) is old news.
  if (input.batchId !== undefined && state.inFlight?.message.batchId !== input.batchId) {
    return {
      state,
      effects: [log("debug", `ignored a resync request for device batch ${input.batchId}, which is not in flight`)],
    };
  }
  // Nothing is confirmed any more: the snapshot's batches confirm their rows one by one.
  const confirmed: Confirmed = new Map();
  const snapshotId = `${batchId(state)}-snapshot`;
  const next: SyncState = {
    ...state,
    phase: "snapshot",
    inFlight: null,
    confirmed,
    snapshotId,
    pending: null,
    batchCount: state.batchCount + 1,
  };
  const effects: SyncEffect[] = [
    { type: "persist", confirmed },
    log("info", `the control plane asked for a full device snapshot: ${input.reason}`, {
      devices: state.inventory?.size ?? null,
    }),
  ];
  return pump(next, input.now, effects);
}

function onAckTimer(state: SyncState, now: number): SyncStep {
  const deadline = nextDeadline(state);
  if (deadline === null || now < deadline.at || !state.inFlight) return { state, effects: [] };
  const { message, timeouts } = state.inFlight;
  return resend(
    state,
    { ...state.inFlight, timeouts: timeouts + 1 },
    now,
    `no acknowledgement of ${message.type} ${message.batchId} in ${now - state.inFlight.sentAt} ms; re-sending it`,
  );
}

// ---- sending ----

/** Sends the next message the phase calls for, unless one is in flight. */
function pump(state: SyncState, now: number, effects: SyncEffect[] = []): SyncStep {
  if (state.phase === "offline" || state.inFlight) return { state, effects };
  switch (state.phase) {
    case "summary":
      return send(state, summaryOf(state), now, effects);
    case "snapshot":
      return sendSnapshotBatch(state, now, effects);
    case "diff":
      return sendDiffBatch(state, now, effects);
  }
}

function summaryOf(state: SyncState): DevicesSummaryMessage {
  const pairs = [...state.confirmed].map(([id, row]) => [id, row.fingerprint] as const);
  return { type: "devices_summary", batchId: batchId(state), count: state.confirmed.size, digest: digestOf(pairs) };
}

function sendDiffBatch(state: SyncState, now: number, effects: SyncEffect[]): SyncStep {
  const inventory = state.inventory;
  if (!inventory) return { state, effects };
  const { confirmed, refreshMs } = state;
  const pending = state.pending ?? diffInventory(inventory, confirmed, now, refreshMs);
  const needed: StillNeeded = {
    upsert: (device) => {
      const known = confirmed.get(device.id);
      return !known || known.fingerprint !== device.fingerprint || now - known.syncedAt >= refreshMs;
    },
    removal: (id) => confirmed.has(id) && !inventory.has(id),
  };
  const { batch, rest } = takeBatch(pending, limitsOf(state), needed);
  if (batch.upserts.length + batch.removals.length === 0) return { state: { ...state, pending: rest }, effects };
  const message: DevicesBatchMessage = { type: "devices", batchId: batchId(state), last: true, ...batch };
  return send({ ...state, pending: rest }, message, now, effects);
}

/** The snapshot's rows are the inventory's rows not yet confirmed (confirmed was emptied when it began). */
function sendSnapshotBatch(state: SyncState, now: number, effects: SyncEffect[]): SyncStep {
  const { inventory, confirmed } = state;
  if (!inventory || state.snapshotId === null) return { state, effects };
  const pending = state.pending ?? {
    upserts: [...inventory.values()].filter((device) => !confirmed.has(device.id)),
    removals: [],
  };
  const { batch, rest } = takeBatch(pending, limitsOf(state), {
    upsert: (device) => !confirmed.has(device.id),
    removal: () => false,
  });
  const message: DevicesBatchMessage = {
    type: "devices",
    batchId: batchId(state),
    snapshotId: state.snapshotId,
    // Rows left that were confirmed meanwhile would make this false once too often: an empty last batch follows then.
    last: rest.upserts.length === 0,
    upserts: batch.upserts,
    removals: [],
  };
  return send({ ...state, pending: rest }, message, now, effects);
}

function send(
  state: SyncState,
  message: DevicesSummaryMessage | DevicesBatchMessage,
  now: number,
  effects: SyncEffect[],
): SyncStep {
  return {
    state: { ...state, inFlight: { message, sentAt: now, timeouts: 0 }, batchCount: state.batchCount + 1 },
    effects: [...effects, { type: "send", message }],
  };
}

/** Sends the in-flight message again, unchanged (same batch id). */
function resend(state: SyncState, inFlight: InFlight, now: number, why: string): SyncStep {
  return {
    state: { ...state, inFlight: { ...inFlight, sentAt: now } },
    effects: [log("info", why, { batchId: inFlight.message.batchId }), { type: "send", message: inFlight.message }],
  };
}

// ---- helpers ----

function confirm(confirmed: Confirmed, batch: DevicesBatchMessage, now: number): Confirmed {
  const next = new Map<string, ConfirmedRow>(confirmed);
  for (const device of batch.upserts) next.set(device.id, { fingerprint: device.fingerprint, syncedAt: now });
  for (const id of batch.removals) next.delete(id);
  return next;
}

function limitsOf(state: SyncState) {
  return { maxRows: state.config.batchSize, maxBytes: state.maxBatchBytes };
}

/** The id the next message gets. */
function batchId(state: SyncState): string {
  return `${state.config.idPrefix}-${state.batchCount + 1}`;
}
