// The device diff and the scan merge, with fake providers: no sockets, no real hardware.
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { toDevice, type Device, type RawDevice } from "../../src/devices/device.js";
import {
  diffInventory,
  splitIntoBatches,
  takeBatch,
  type Confirmed,
  type ConfirmedRow,
} from "../../src/devices/diff.js";
import { mergeScan, scanDevices } from "../../src/devices/scan.js";
import type { DeviceProvider } from "../../src/devices/providers/provider.js";
import { deviceSchema } from "../../src/protocol/devices.js";

const NOW = 1_800_000_000_000;
const REFRESH_MS = 600_000;
const unbounded = { maxRows: 100, maxBytes: 1 << 20 };

function raw(i: number, attributes: RawDevice["attributes"] = {}): RawDevice {
  return {
    id: `usb:${String(i).padStart(5, "0")}`,
    kind: "usb",
    name: `device ${i}`,
    state: "online",
    attributes: { port: i, ...attributes },
  };
}
const device = (i: number, attributes: RawDevice["attributes"] = {}) => toDevice(raw(i, attributes));
const inventoryOf = (devices: Device[]) => new Map(devices.map((d) => [d.id, d]));
/** Everything in `devices` confirmed at `syncedAt`. */
function confirmedOf(devices: Device[], syncedAt = NOW - 1000): Confirmed {
  return new Map(devices.map((d) => [d.id, { fingerprint: d.fingerprint, syncedAt } satisfies ConfirmedRow]));
}
const range = (n: number) => Array.from({ length: n }, (_, i) => i);

describe("the device diff", () => {
  test("an unchanged inventory within the refresh window gives no rows", () => {
    const devices = range(50).map((i) => device(i));
    const diff = diffInventory(inventoryOf(devices), confirmedOf(devices), NOW, REFRESH_MS);
    assert.deepEqual(diff.upserts, []);
    assert.deepEqual(diff.removals, []);
  });

  test("one changed device gives exactly that row", () => {
    const before = range(50).map((i) => device(i));
    const after = before.map((d, i) => (i === 7 ? device(7, { firmware: "2.0" }) : d));
    const diff = diffInventory(inventoryOf(after), confirmedOf(before), NOW, REFRESH_MS);
    assert.deepEqual(
      diff.upserts.map((d) => d.id),
      ["usb:00007"],
    );
    assert.equal(diff.changed, 1);
    assert.deepEqual(diff.removals, []);
  });

  test("an added device gives one row, counted as added", () => {
    const before = range(3).map((i) => device(i));
    const diff = diffInventory(inventoryOf([...before, device(3)]), confirmedOf(before), NOW, REFRESH_MS);
    assert.deepEqual(
      diff.upserts.map((d) => d.id),
      ["usb:00003"],
    );
    assert.equal(diff.added, 1);
  });

  test("a device that is gone gives one removal and no upsert", () => {
    const before = range(3).map((i) => device(i));
    const diff = diffInventory(inventoryOf(before.slice(0, 2)), confirmedOf(before), NOW, REFRESH_MS);
    assert.deepEqual(diff.upserts, []);
    assert.deepEqual(diff.removals, ["usb:00002"]);
  });

  test("an unchanged row is re-sent once its last confirmed sync is as old as the refresh window, and only that row", () => {
    const devices = range(3).map((i) => device(i));
    const confirmed = new Map(confirmedOf(devices));
    confirmed.set("usb:00001", { fingerprint: devices[1]!.fingerprint, syncedAt: NOW - REFRESH_MS + 1 });
    assert.equal(
      diffInventory(inventoryOf(devices), confirmed, NOW, REFRESH_MS).upserts.length,
      0,
      "1 ms short of the window",
    );
    const later = diffInventory(inventoryOf(devices), confirmed, NOW + 1, REFRESH_MS);
    assert.deepEqual(
      later.upserts.map((d) => d.id),
      ["usb:00001"],
    );
    assert.equal(later.refreshed, 1);
  });

  test("250 changed rows at a batch size of 100 are batches of 100, 100 and 50", () => {
    const devices = range(250).map((i) => device(i));
    const diff = diffInventory(inventoryOf(devices), new Map(), NOW, REFRESH_MS);
    const batches = splitIntoBatches(diff, unbounded);
    assert.deepEqual(
      batches.map((b) => b.upserts.length + b.removals.length),
      [100, 100, 50],
    );
    assert.deepEqual(
      batches.flatMap((b) => b.upserts.map((d) => d.id)),
      devices.map((d) => d.id),
      "every row once, in order",
    );
  });

  test("removals share a batch's row limit with upserts", () => {
    const kept = range(150).map((i) => device(i));
    const gone = range(60).map((i) => device(1000 + i));
    const diff = diffInventory(inventoryOf(kept), confirmedOf(gone), NOW, REFRESH_MS);
    const batches = splitIntoBatches(diff, unbounded);
    assert.deepEqual(
      batches.map((b) => [b.upserts.length, b.removals.length]),
      [
        [100, 0],
        [50, 50],
        [0, 10],
      ],
    );
  });

  test("a batch stays under its byte limit; a row larger than the limit still goes, alone", () => {
    const devices = range(10).map((i) => device(i, { note: "x".repeat(200) }));
    const size = Buffer.byteLength(JSON.stringify(devices[0])) + 1;
    const batches = splitIntoBatches({ upserts: devices, removals: [] }, { maxRows: 100, maxBytes: size * 3 + 10 });
    assert.deepEqual(
      batches.map((b) => b.upserts.length),
      [3, 3, 3, 1],
    );
    assert.equal(takeBatch({ upserts: devices, removals: [] }, { maxRows: 100, maxBytes: 10 }).batch.upserts.length, 1);
  });

  test("the fingerprint follows the content, not the attributes' order; staleness is a change", () => {
    const a = toDevice({ id: "x", kind: "gpu", name: "n", state: "online", attributes: { a: 1, b: "2" } });
    const b = toDevice({ id: "x", kind: "gpu", name: "n", state: "online", attributes: { b: "2", a: 1 } });
    assert.equal(a.fingerprint, b.fingerprint);
    assert.notEqual(
      toDevice({ id: "x", kind: "gpu", name: "n", state: "offline", attributes: { a: 1, b: "2" } }).fingerprint,
      a.fingerprint,
    );
    assert.notEqual(
      toDevice({ id: "x", kind: "gpu", name: "n", state: "online", attributes: { a: 1, b: "2" } }, true).fingerprint,
      a.fingerprint,
    );
  });

  test("ids and attributes are brought within the protocol's bounds", () => {
    const d = toDevice({
      id: " usb:Bus 1 / Port ä ",
      kind: "USB Thing",
      name: "n",
      state: "online",
      attributes: { nan: NaN, gone: undefined, long: "y".repeat(999) },
    });
    assert.equal(d.id, "usb:Bus_1_/_Port__");
    assert.equal(d.kind, "usb-thing");
    assert.deepEqual(Object.keys(d.attributes).sort(), ["long", "nan"]);
    assert.equal(d.attributes.nan, null);
    assert.equal((d.attributes.long as string).length, 256);
    const nul = toDevice({ id: "x", kind: "usb", name: "pho\0ne", state: "online", attributes: { "k\0": "v\0" } });
    assert.equal(nul.name, "phone", "U+0000, which the protocol refuses, is dropped");
    assert.deepEqual(nul.attributes, { k: "v" });
    assert.ok(deviceSchema.safeParse(nul).success);
  });
});

describe("a scan with fake providers", () => {
  const fixed = (name: string, rows: () => RawDevice[]): DeviceProvider => ({ name, scan: async () => rows() });

  test("a failing provider's last good rows are kept, marked stale, and not removed", async () => {
    let failing = false;
    const gpus = fixed("gpu", () => {
      if (failing) throw new Error("nvidia-smi: command failed");
      return [{ id: "gpu:0000:01:00.0", kind: "gpu", name: "RTX", state: "online", attributes: {} }];
    });
    const usb = fixed("usb", () => [raw(1)]);
    const first = await scanDevices([gpus, usb], { timeoutMs: 1000 });
    assert.deepEqual(
      first.devices.map((d) => [d.id, d.stale]),
      [
        ["gpu:0000:01:00.0", false],
        ["usb:00001", false],
      ],
    );

    failing = true;
    const second = await scanDevices([gpus, usb], { timeoutMs: 1000, lastGood: first.lastGood });
    assert.deepEqual(
      second.devices.map((d) => [d.id, d.stale]),
      [
        ["gpu:0000:01:00.0", true],
        ["usb:00001", false],
      ],
    );
    const gpuReport = second.reports.find((r) => r.name === "gpu")!;
    assert.equal(gpuReport.ok, false);
    assert.match(gpuReport.error!, /nvidia-smi/);
    assert.equal(gpuReport.rows, 1, "the kept rows are counted");

    // Against what the control plane confirmed after the first scan: the GPU row changes (stale), nothing is removed.
    const diff = diffInventory(inventoryOf(second.devices), confirmedOf(first.devices), NOW, REFRESH_MS);
    assert.deepEqual(diff.removals, []);
    assert.deepEqual(
      diff.upserts.map((d) => [d.id, d.stale]),
      [["gpu:0000:01:00.0", true]],
    );

    failing = false;
    const third = await scanDevices([gpus, usb], { timeoutMs: 1000, lastGood: second.lastGood });
    assert.deepEqual(
      third.devices.map((d) => d.stale),
      [false, false],
      "fresh again once the provider works",
    );
    assert.equal(third.devices[0]!.fingerprint, first.devices[0]!.fingerprint);
  });

  test("a provider that times out fails alone, and is not started again while it still runs", async () => {
    let calls = 0;
    let release!: () => void;
    const hung: DeviceProvider = {
      name: "android",
      scan: () => {
        calls++;
        return new Promise((resolve) => (release = () => resolve([])));
      },
    };
    const stillRunning = new Map<string, Promise<unknown>>();
    const started = performance.now();
    const first = await scanDevices([hung, fixed("usb", () => [raw(1)])], { timeoutMs: 50, stillRunning });
    assert.ok(performance.now() - started < 2000, "bounded by the timeout");
    assert.deepEqual(
      first.devices.map((d) => d.id),
      ["usb:00001"],
    );
    assert.match(first.reports[0]!.error!, /timed out after 50 ms/);

    const second = await scanDevices([hung], { timeoutMs: 50, stillRunning });
    assert.equal(calls, 1, "not started twice");
    assert.match(second.reports[0]!.error!, /still running/);

    release();
    await stillRunning.get("android");
    await scanDevices([hung], { timeoutMs: 50, stillRunning });
    assert.equal(calls, 2, "started again once the old scan ended");
  });

  test("mergeScan: two providers reporting one id keep the first row", () => {
    const a = device(1, { from: "a" });
    const b = device(1, { from: "b" });
    const merged = mergeScan(
      [
        { name: "a", ok: true, devices: [a] },
        { name: "b", ok: true, devices: [b] },
      ],
      new Map(),
    );
    assert.deepEqual(merged.devices, [a]);
  });
});
