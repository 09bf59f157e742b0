// The device sync session, driven directly: inputs in, messages and writes out. No socket,
// no timer, no clock; the persisted state goes through a real file in a temp dir.
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { promises as fs } from "node:fs";
import os from "node:os";
import path from "node:path";
import { pino } from "pino";
import { toDevice, type Device } from "../../src/devices/device.js";
import { loadConfirmed, saveConfirmed } from "../../src/devices/state-file.js";
import {
  initialSyncState,
  nextDeadline,
  stepSync,
  type SyncConfig,
  type SyncEffect,
  type SyncInput,
  type SyncState,
} from "../../src/devices/sync.js";
import type { RunnerMessage } from "../../src/protocol/channel.js";
import { digestOf, type DevicesBatchMessage, type DevicesSummaryMessage } from "../../src/protocol/devices.js";

const config: SyncConfig = { batchSize: 100, refreshMs: 600_000, ackTimeoutMs: 30_000, idPrefix: "t" };
const T0 = 1_800_000_000_000;
const FRAME = 1 << 20;

const device = (i: number, version = 1): Device =>
  toDevice({
    id: `android:serial-${String(i).padStart(5, "0")}`,
    kind: "android",
    name: `phone ${i}`,
    state: "online",
    attributes: { version },
  });
const devices = (n: number) => Array.from({ length: n }, (_, i) => device(i));

interface Run {
  state: SyncState;
  effects: SyncEffect[];
}

function feed(state: SyncState, ...inputs: SyncInput[]): Run {
  let effects: SyncEffect[] = [];
  for (const input of inputs) {
    const next = stepSync(state, input);
    state = next.state;
    effects = [...effects, ...next.effects];
  }
  return { state, effects };
}

const sent = (effects: SyncEffect[]): RunnerMessage[] => effects.flatMap((e) => (e.type === "send" ? [e.message] : []));
const batches = (effects: SyncEffect[]) => sent(effects).filter((m): m is DevicesBatchMessage => m.type === "devices");
const only = <T>(items: T[]): T => {
  assert.equal(items.length, 1, `expected one, got ${items.length}`);
  return items[0]!;
};
const rowsOf = (message: DevicesBatchMessage) => message.upserts.length + message.removals.length;

/** Acknowledges whatever is in flight until nothing is; returns every batch that went. */
function ackAll(run: Run, now: number): { state: SyncState; sentBatches: DevicesBatchMessage[] } {
  let state = run.state;
  const sentBatches = batches(run.effects);
  for (let guard = 0; state.inFlight && guard < 10_000; guard++) {
    const next = feed(state, { type: "ack", now, batchId: state.inFlight.message.batchId });
    state = next.state;
    sentBatches.push(...batches(next.effects));
  }
  return { state, sentBatches };
}

/** Connected, the summary acknowledged, `inventory` scanned and every batch acknowledged: in sync. */
function inSync(inventory: Device[], now = T0): SyncState {
  const connected = feed(initialSyncState(config), { type: "connected", now, maxFrameBytes: FRAME });
  const summary = connected.state.inFlight!.message;
  return ackAll(
    feed(connected.state, { type: "ack", now, batchId: summary.batchId }, { type: "scanned", now, devices: inventory }),
    now,
  ).state;
}

describe("the device sync session", () => {
  test("after a connect it sends one summary of the confirmed state, and nothing else", () => {
    const confirmed = new Map(devices(3).map((d) => [d.id, { fingerprint: d.fingerprint, syncedAt: T0 }]));
    const run = feed(initialSyncState(config, confirmed), { type: "connected", now: T0, maxFrameBytes: FRAME });
    const summary = only(sent(run.effects)) as DevicesSummaryMessage;
    assert.equal(summary.type, "devices_summary");
    assert.equal(summary.count, 3);
    assert.equal(
      summary.digest,
      digestOf(
        devices(3)
          .reverse()
          .map((d) => [d.id, d.fingerprint] as const),
      ),
      "order does not matter",
    );
  });

  test("a summary that matches: no snapshot, and an unchanged scan sends no rows", () => {
    const inventory = devices(20);
    const synced = inSync(inventory);
    const restarted = initialSyncState(config, synced.confirmed);
    const connected = feed(restarted, { type: "connected", now: T0 + 1000, maxFrameBytes: FRAME });
    const acked = feed(connected.state, {
      type: "ack",
      now: T0 + 1000,
      batchId: connected.state.inFlight!.message.batchId,
    });
    assert.equal(acked.state.phase, "diff");
    const scanned = feed(acked.state, { type: "scanned", now: T0 + 2000, devices: inventory });
    assert.deepEqual(sent(scanned.effects), [], "0 changes, 0 rows");
    assert.equal(scanned.state.inFlight, null);
  });

  test("a resync gets a full snapshot in batches of N, the last one marked, then only changes", () => {
    const inventory = devices(250);
    let run = feed(
      initialSyncState(config),
      { type: "connected", now: T0, maxFrameBytes: FRAME },
      { type: "scanned", now: T0, devices: inventory },
    );
    const summary = run.state.inFlight!.message;
    run = feed(run.state, { type: "resync", now: T0, batchId: summary.batchId, reason: "no devices stored" });
    assert.equal(run.state.phase, "snapshot");
    const { state, sentBatches } = ackAll(run, T0);
    assert.deepEqual(sentBatches.map(rowsOf), [100, 100, 50]);
    assert.deepEqual(
      sentBatches.map((b) => b.last),
      [false, false, true],
    );
    assert.equal(new Set(sentBatches.map((b) => b.snapshotId)).size, 1, "one snapshot id");
    assert.ok(sentBatches[0]!.snapshotId);
    assert.equal(state.phase, "diff");
    assert.equal(state.confirmed.size, 250);
    assert.deepEqual(sent(feed(state, { type: "scanned", now: T0 + 1, devices: inventory }).effects), []);
  });

  test("a resync of an empty inventory is one empty batch marked last (so the control plane marks the rest offline)", () => {
    let run = feed(
      initialSyncState(config),
      { type: "connected", now: T0, maxFrameBytes: FRAME },
      { type: "scanned", now: T0, devices: [] },
    );
    run = feed(run.state, { type: "resync", now: T0, reason: "asked" });
    const batch = only(batches(run.effects));
    assert.equal(batch.last, true);
    assert.equal(rowsOf(batch), 0);
  });

  test("one changed device sends one row; a removed one sends one removal", () => {
    const inventory = devices(50);
    const synced = inSync(inventory);
    const changed = inventory.map((d, i) => (i === 10 ? device(10, 2) : d));
    const one = feed(synced, { type: "scanned", now: T0 + 1000, devices: changed });
    const batch = only(batches(one.effects));
    assert.deepEqual(
      batch.upserts.map((d) => d.id),
      [device(10).id],
    );
    assert.deepEqual(batch.removals, []);

    const acked = feed(one.state, { type: "ack", now: T0 + 1000, batchId: batch.batchId });
    const removed = feed(acked.state, { type: "scanned", now: T0 + 2000, devices: changed.slice(1) });
    const removal = only(batches(removed.effects));
    assert.deepEqual(removal.upserts, []);
    assert.deepEqual(removal.removals, [inventory[0]!.id]);
    const after = feed(removed.state, { type: "ack", now: T0 + 2000, batchId: removal.batchId });
    assert.equal(after.state.confirmed.has(inventory[0]!.id), false);
    assert.ok(
      after.effects.some((e) => e.type === "persist"),
      "each acknowledgement is persisted",
    );
  });

  test("250 changes at N=100 go as 100, 100 and 50, each only after the previous one's ack", () => {
    const synced = inSync(devices(300));
    const changed = devices(300).map((d, i) => (i < 250 ? device(i, 2) : d));
    const run = feed(synced, { type: "scanned", now: T0 + 1000, devices: changed });
    assert.equal(batches(run.effects).length, 1, "one batch in flight at a time");
    const rescanned = feed(run.state, { type: "scanned", now: T0 + 1001, devices: changed });
    assert.deepEqual(sent(rescanned.effects), [], "a scan while a batch is in flight sends nothing more");
    const { sentBatches, state } = ackAll({ state: rescanned.state, effects: run.effects }, T0 + 1002);
    assert.deepEqual(sentBatches.map(rowsOf), [100, 100, 50]);
    assert.equal(state.inFlight, null);
  });

  test("the refresh window: unchanged rows are re-sent once their confirmation is that old, then not again", () => {
    const inventory = devices(5);
    const synced = inSync(inventory, T0);
    assert.deepEqual(
      sent(feed(synced, { type: "scanned", now: T0 + config.refreshMs - 1, devices: inventory }).effects),
      [],
    );
    const due = feed(synced, { type: "scanned", now: T0 + config.refreshMs, devices: inventory });
    assert.equal(rowsOf(only(batches(due.effects))), 5);
    const { state } = ackAll(due, T0 + config.refreshMs);
    assert.deepEqual(
      sent(feed(state, { type: "scanned", now: T0 + config.refreshMs + 1000, devices: inventory }).effects),
      [],
    );
  });

  test("the control plane's refresh window (from the welcome) wins over the local one", () => {
    const inventory = devices(2);
    const synced = inSync(inventory, T0);
    const reconnected = feed(
      synced,
      { type: "disconnected" },
      { type: "connected", now: T0 + 10, maxFrameBytes: FRAME, refreshMs: 5000 },
    );
    const matched = feed(reconnected.state, {
      type: "ack",
      now: T0 + 10,
      batchId: reconnected.state.inFlight!.message.batchId,
    });
    assert.equal(
      rowsOf(only(batches(feed(matched.state, { type: "scanned", now: T0 + 5000, devices: inventory }).effects))),
      2,
    );
  });

  test("a restart with the persisted state re-sends nothing", async () => {
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), "runner-device-sync-"));
    try {
      const inventory = devices(120);
      const synced = inSync(inventory, T0);
      const file = path.join(dir, "devices.json");
      await saveConfirmed(file, synced.confirmed);
      const loaded = await loadConfirmed(file, pino({ level: "silent" }));
      assert.deepEqual([...loaded], [...synced.confirmed]);

      const restarted = feed(initialSyncState({ ...config, idPrefix: "u" }, loaded), {
        type: "connected",
        now: T0 + 5000,
        maxFrameBytes: FRAME,
      });
      const summary = only(sent(restarted.effects)) as DevicesSummaryMessage;
      assert.equal(summary.count, 120);
      const run = feed(
        restarted.state,
        { type: "ack", now: T0 + 5000, batchId: summary.batchId },
        { type: "scanned", now: T0 + 6000, devices: inventory },
      );
      assert.deepEqual(sent(run.effects), [], "nothing re-sent after the restart");
    } finally {
      await fs.rm(dir, { recursive: true, force: true });
    }
  });

  test("an unreadable state file is moved aside and the sync starts from nothing", async () => {
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), "runner-device-sync-"));
    try {
      const file = path.join(dir, "devices.json");
      await fs.writeFile(file, '{"version": 1, "confirmed": [["a", ');
      assert.equal((await loadConfirmed(file, pino({ level: "silent" }))).size, 0);
      assert.ok((await fs.readdir(dir)).some((name) => name.startsWith("devices.json.corrupt-")));
    } finally {
      await fs.rm(dir, { recursive: true, force: true });
    }
  });

  test("a batch not acknowledged before a disconnect is re-sent, unchanged, first thing after the reconnect; then the summary", () => {
    const inventory = devices(10);
    const synced = inSync(inventory);
    const changed = feed(synced, { type: "scanned", now: T0 + 1000, devices: [...inventory, device(99)] });
    const lost = only(batches(changed.effects));
    const reconnected = feed(
      changed.state,
      { type: "disconnected" },
      { type: "connected", now: T0 + 2000, maxFrameBytes: FRAME },
    );
    assert.deepEqual(sent(reconnected.effects), [lost], "the same batch, same id, before any summary");
    const acked = feed(reconnected.state, { type: "ack", now: T0 + 2000, batchId: lost.batchId });
    const summary = only(sent(acked.effects)) as DevicesSummaryMessage;
    assert.equal(summary.type, "devices_summary");
    assert.equal(summary.count, 11, "the summary includes the re-sent batch");
  });

  test("a snapshot batch in flight at a disconnect is re-sent after the reconnect", () => {
    let run = feed(
      initialSyncState(config),
      { type: "connected", now: T0, maxFrameBytes: FRAME },
      { type: "scanned", now: T0, devices: devices(150) },
    );
    run = feed(run.state, { type: "resync", now: T0, reason: "asked" });
    const first = only(batches(run.effects));
    run = feed(run.state, { type: "disconnected" }, { type: "connected", now: T0 + 1, maxFrameBytes: FRAME });
    assert.deepEqual(sent(run.effects), [first]);
  });

  test("an unacknowledged message is re-sent when its deadline passes, not before, with a growing wait", () => {
    const synced = inSync(devices(3));
    const run = feed(synced, { type: "scanned", now: T0 + 1000, devices: [device(0, 9), ...devices(3).slice(1)] });
    const batch = only(batches(run.effects));
    const deadline = nextDeadline(run.state)?.at ?? -1;
    assert.deepEqual(nextDeadline(run.state), { timer: "ack", at: T0 + 1000 + config.ackTimeoutMs });
    assert.deepEqual(sent(feed(run.state, { type: "timer", timer: "ack", now: deadline - 1 }).effects), []);
    const late = feed(run.state, { type: "timer", timer: "ack", now: deadline });
    assert.deepEqual(sent(late.effects), [batch]);
    assert.equal(nextDeadline(late.state)?.at, deadline + 2 * config.ackTimeoutMs, "the next wait is twice as long");
    const later = feed(late.state, { type: "timer", timer: "ack", now: deadline + 2 * config.ackTimeoutMs });
    assert.deepEqual(sent(later.effects), [batch]);
    assert.equal(nextDeadline(later.state)?.at, deadline + 6 * config.ackTimeoutMs);
    assert.equal(nextDeadline(feed(late.state, { type: "disconnected" }).state), null, "no deadline while offline");
  });

  test("an ack or a resync for a message no longer in flight is ignored", () => {
    const synced = inSync(devices(3));
    const run = feed(synced, { type: "scanned", now: T0, devices: [device(0, 9), ...devices(3).slice(1)] });
    const stale = feed(
      run.state,
      { type: "ack", now: T0, batchId: "t-0" },
      { type: "resync", now: T0, batchId: "t-0", reason: "old" },
    );
    assert.deepEqual(sent(stale.effects), []);
    assert.equal(stale.state.phase, "diff");
    assert.equal(stale.state.inFlight, run.state.inFlight);
  });

  test("a resync empties the confirmed state (and persists that): only the snapshot's acks confirm rows", () => {
    const synced = inSync(devices(5));
    const reconnected = feed(synced, { type: "disconnected" }, { type: "connected", now: T0, maxFrameBytes: FRAME });
    const run = feed(reconnected.state, {
      type: "resync",
      now: T0,
      batchId: reconnected.state.inFlight!.message.batchId,
      reason: "digest differs",
    });
    assert.equal(run.state.confirmed.size, 0);
    const persisted = run.effects.find((e) => e.type === "persist");
    assert.ok(persisted && persisted.type === "persist" && persisted.confirmed.size === 0);
    assert.equal(rowsOf(only(batches(run.effects))), 5);
  });

  test("batches stay under the frame limit the welcome announces", () => {
    const big = Array.from({ length: 40 }, (_, i) =>
      toDevice({
        id: `usb:${i}`,
        kind: "usb",
        name: "n",
        state: "online",
        attributes: Object.fromEntries(Array.from({ length: 20 }, (_, k) => [`k${k}`, "v".repeat(200)])),
      }),
    );
    const connected = feed(
      initialSyncState(config),
      { type: "connected", now: T0, maxFrameBytes: 64 * 1024 },
      { type: "scanned", now: T0, devices: big },
    );
    const run = feed(connected.state, { type: "resync", now: T0, reason: "asked" });
    const { sentBatches } = ackAll(run, T0);
    assert.ok(sentBatches.length > 1);
    for (const batch of sentBatches) assert.ok(Buffer.byteLength(JSON.stringify(batch)) <= 64 * 1024, "fits the frame");
    assert.equal(
      sentBatches.reduce((n, b) => n + rowsOf(b), 0),
      40,
    );
  });

  test("nothing is sent while offline, and nothing before the first scan except the summary", () => {
    const offline = feed(initialSyncState(config), { type: "scanned", now: T0, devices: devices(5) });
    assert.deepEqual(sent(offline.effects), []);
    const connected = feed(initialSyncState(config), { type: "connected", now: T0, maxFrameBytes: FRAME });
    const matched = feed(connected.state, { type: "ack", now: T0, batchId: connected.state.inFlight!.message.batchId });
    assert.deepEqual(sent(matched.effects), [], "no scan yet: nothing to diff");
  });

  test("under the protocol's smallest frame limit (1024) every batch of a full snapshot, ids and all, fits the frame", () => {
    const ids = { ...config, idPrefix: "x".repeat(50) };
    const connected = feed(initialSyncState(ids), { type: "connected", now: T0, maxFrameBytes: 1024 });
    const summary = connected.state.inFlight!.message;
    const run = feed(
      connected.state,
      { type: "scanned", now: T0, devices: devices(40) },
      { type: "resync", now: T0, batchId: summary.batchId, reason: "test" },
    );
    const { sentBatches } = ackAll(run, T0);
    assert.equal(
      sentBatches.reduce((n, b) => n + rowsOf(b), 0),
      40,
      "every device went",
    );
    for (const batch of sentBatches) {
      const bytes = Buffer.byteLength(JSON.stringify(batch));
      assert.ok(bytes <= 1024, `a batch of ${rowsOf(batch)} rows is ${bytes} bytes`);
    }
  });
});
