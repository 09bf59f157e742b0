// Device sync with 10,000 fake devices: rows, frames and bytes the runner sends for an
// unchanged inventory, one changed device and all changed, by the diff-based sync against a
// full snapshot of the same inventory (both produced by the same sync core, in the same run;
// bytes are the encoded frames as they go on the wire), and the diff's time. Then the same
// end to end through a real socket and the reference control plane (SQLite in memory), and
// the cost of one real scan of this machine (systeminformation graphics + usb, adb, simctl).
//
//   npm run build && node dist/bench/device-sync.js [devices=10000] [repeats=30]
import { mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { pino } from "pino";
import { ChannelDriver } from "../src/channel/driver.js";
import { register } from "../src/api-client/runner-api.js";
import { deviceSyncSettings } from "../src/config/normalize.js";
import { defaultSettings } from "../src/config/resolve.js";
import { AdminClient } from "../src/api-client/admin.js";
import { startControlPlane, type DeviceEvent } from "../src/control-plane/control-plane.js";
import { channelUrl } from "../src/daemon/daemon.js";
import { toDevice, type Device, type RawDevice } from "../src/devices/device.js";
import { diffInventory } from "../src/devices/diff.js";
import { createDeviceSync } from "../src/devices/sync-host.js";
import { createProviders } from "../src/devices/providers/index.js";
import { DEVICE_PROVIDER_NAMES } from "../src/devices/provider-names.js";
import { scanDevices } from "../src/devices/scan.js";
import { initialSyncState, stepSync, type SyncEffect, type SyncInput, type SyncState } from "../src/devices/sync.js";
import { encode, type RunnerMessage } from "../src/protocol/channel.js";
import { digestOf } from "../src/protocol/devices.js";
import { AGENT_VERSION, PROTOCOL_VERSION } from "../src/protocol/version.js";
import { fingerprintOf } from "../src/state/host.js";
import { percentiles, printTable } from "./support.js";
import { NO_PROXY } from "../src/net/proxy.js";

const count = Number(process.argv[2] ?? 10_000);
const repeats = Number(process.argv[3] ?? 30);
const BATCH = 100;
const T0 = Date.UTC(2030, 0, 1);
const config = { batchSize: BATCH, refreshMs: 600_000, ackTimeoutMs: 30_000, idPrefix: "bench" };

function rawDevice(i: number, revision = 1): RawDevice {
  const kind = i % 4 === 0 ? "android" : "usb";
  return {
    id: `${kind}:${kind === "android" ? "R58M" : "1-"}${String(i).padStart(6, "0")}`,
    kind,
    name: kind === "android" ? `Pixel ${i % 9}` : `FT232 Serial (UART) IC #${i}`,
    state: "online",
    attributes: {
      vendor: "Future Technology Devices International, Ltd",
      product: "0403:6001",
      serial: `FT${i.toString(16).padStart(8, "0")}`,
      bus: i % 8,
      address: i % 127,
      firmware: `1.${revision}`,
    },
  };
}
const inventoryAt = (revisions: (i: number) => number): Device[] =>
  Array.from({ length: count }, (_, i) => toDevice(rawDevice(i, revisions(i))));

interface Wire {
  rows: number;
  frames: number;
  bytes: number;
}

/** Feeds inputs, acknowledging every message at once (a loopback control plane that agrees), and counts what went out. */
function drive(state: SyncState, inputs: SyncInput[], now: number): { state: SyncState; wire: Wire } {
  const wire: Wire = { rows: 0, frames: 0, bytes: 0 };
  const queue = [...inputs];
  while (queue.length > 0) {
    const step = stepSync(state, queue.shift()!);
    state = step.state;
    for (const message of sentMessages(step.effects)) {
      wire.frames++;
      wire.bytes += Buffer.byteLength(encode(message));
      if (message.type === "devices") wire.rows += message.upserts.length + message.removals.length;
      if (message.type === "devices" || message.type === "devices_summary")
        queue.push({ type: "ack", now, batchId: message.batchId });
    }
  }
  return { state, wire };
}

const sentMessages = (effects: SyncEffect[]): RunnerMessage[] =>
  effects.flatMap((e) => (e.type === "send" ? [e.message] : []));

/** Baseline: the same inventory sent whole, as the full snapshot the control plane gets after a resync (what a sync without a diff sends every time). */
function fullSnapshot(inventory: Device[], now: number): Wire {
  const connected = stepSync(initialSyncState(config), { type: "connected", now, maxFrameBytes: 1 << 20 }).state;
  const scanned = stepSync(connected, { type: "scanned", now, devices: inventory }).state;
  return drive(scanned, [{ type: "resync", now, batchId: scanned.inFlight!.message.batchId, reason: "baseline" }], now)
    .wire;
}

/** A session in the diff phase with `inventory` confirmed at T0. */
function syncedWith(inventory: Device[]): SyncState {
  const connected = stepSync(initialSyncState(config), { type: "connected", now: T0, maxFrameBytes: 1 << 20 }).state;
  const matched = stepSync(connected, { type: "ack", now: T0, batchId: connected.inFlight!.message.batchId }).state;
  return drive(matched, [{ type: "scanned", now: T0, devices: inventory }], T0).state;
}

function measureScenarios(): void {
  const base = inventoryAt(() => 1);
  const synced = syncedWith(base);
  const scenarios: [string, Device[]][] = [
    ["unchanged", base],
    ["1 changed", inventoryAt((i) => (i === 4242 % count ? 2 : 1))],
    ["all changed", inventoryAt(() => 2)],
  ];
  const now = T0 + 60_000;
  const fmtBytes = (b: number) =>
    b >= 1e6 ? `${(b / 1e6).toFixed(2)} MB` : b >= 1e3 ? `${(b / 1e3).toFixed(1)} kB` : `${b} B`;
  console.log(
    `\ndevice sync of ${count.toLocaleString("en")} devices, batches of ${BATCH}: what the runner sends on a rescan (frames as encoded on the wire)`,
  );
  const header = [
    "scenario",
    "diff rows",
    "diff frames",
    "diff bytes",
    "full rows",
    "full frames",
    "full bytes",
    "full / diff bytes",
  ];
  const row = (cells: (string | number)[]) =>
    cells
      .map((c, i) => (i === 0 ? String(c).padEnd(12) : String(c).padStart(i === cells.length - 1 ? 19 : 13)))
      .join("");
  console.log(row(header));
  const timings: [string, ReturnType<typeof percentiles>][] = [];
  for (const [name, inventory] of scenarios) {
    const diff = drive(synced, [{ type: "scanned", now, devices: inventory }], now).wire;
    const fullOnly = fullSnapshot(inventory, now);
    const ratio =
      diff.bytes === 0
        ? "(diff sends none)"
        : `${(fullOnly.bytes / diff.bytes).toFixed(fullOnly.bytes / diff.bytes < 10 ? 2 : 0)}x`;
    const cells = [
      name,
      diff.rows,
      diff.frames,
      fmtBytes(diff.bytes),
      fullOnly.rows,
      fullOnly.frames,
      fmtBytes(fullOnly.bytes),
      ratio,
    ];
    console.log(row(cells));

    const inventoryMap = new Map(inventory.map((d) => [d.id, d]));
    const ms: number[] = [];
    for (let r = 0; r < repeats; r++) {
      const started = performance.now();
      diffInventory(inventoryMap, synced.confirmed, now, config.refreshMs);
      ms.push(performance.now() - started);
    }
    timings.push([`diffInventory, ${name}`, percentiles(ms)]);
  }
  const summaryBytes = Buffer.byteLength(
    encode({ type: "devices_summary", batchId: "lq2x9k1b-1", count, digest: "0".repeat(64) }),
  );
  console.log(
    `(after a reconnect with an unchanged inventory the runner sends one summary frame of ${summaryBytes} bytes instead of the full snapshot)`,
  );

  const digestMs: number[] = [];
  const pairs = [...synced.confirmed].map(([id, row]) => [id, row.fingerprint] as const);
  for (let r = 0; r < repeats; r++) {
    const started = performance.now();
    digestOf(pairs);
    digestMs.push(performance.now() - started);
  }
  timings.push([`summary digest over ${count} rows`, percentiles(digestMs)]);
  const syncMs: number[] = [];
  const changed = scenarios[2]![1];
  for (let r = 0; r < Math.min(repeats, 10); r++) {
    const started = performance.now();
    drive(synced, [{ type: "scanned", now, devices: changed }], now);
    syncMs.push(performance.now() - started);
  }
  timings.push([`all changed: diff + ${count / BATCH} batches built, acked`, percentiles(syncMs)]);
  printTable(`time on the runner, ms (${repeats} repeats)`, timings);
}

/** The same through a real socket: the channel driver with the device sync, the reference control plane. */
async function measureEndToEnd(): Promise<void> {
  const quiet = pino({ level: "warn" });
  const cp = await startControlPlane({ logger: quiet, heartbeatIntervalMs: 15_000, deviceScanIntervalMs: 3_600_000 });
  const work = await mkdtemp(path.join(os.tmpdir(), "runner-bench-devices-"));
  try {
    const admin = new AdminClient(cp.url, cp.adminToken!);
    const rows = { value: 0, frames: 0 };
    cp.events.on("devices", (e: DeviceEvent) => {
      rows.frames++;
      rows.value += e.upserts + e.removals;
    });
    const { token } = await admin.createRegistrationToken(60);
    const identity = await register({ url: cp.url, timeoutMs: 5000, proxy: NO_PROXY }, token, {
      protocolVersion: PROTOCOL_VERSION,
      agentVersion: AGENT_VERSION,
      name: "bench-devices",
      labels: [],
      host: {
        hostname: "bench",
        platform: process.platform,
        arch: process.arch,
        fingerprint: fingerprintOf("bench-devices"),
      },
      replace: false,
    });
    let revision = (_i: number) => 1;
    const provider = {
      name: "fake",
      scan: async () => Array.from({ length: count }, (_, i) => rawDevice(i, revision(i))),
    };
    const sync = createDeviceSync({
      stateDir: work,
      settings: { ...deviceSyncSettings(defaultSettings()), deviceBatchSize: BATCH },
      logger: quiet,
      providers: [provider],
    });
    const driver = new ChannelDriver(
      {
        runnerId: identity.runnerId,
        protocolVersion: PROTOCOL_VERSION,
        agentVersion: AGENT_VERSION,
        labels: [],
        capacity: 1,
        reconnectBaseMs: 100,
        reconnectCapMs: 1000,
        handshakeTimeoutMs: 5000,
        once: false,
        exitAfterIdleMs: null,
        drainTimeoutMs: 1000,
      },
      {},
      {
        url: channelUrl(cp.url, false),
        credential: identity.credential,
        maxFrameBytes: 1 << 20,
        logger: quiet,
        ports: {
          startJob: async () => undefined,
          cancelJob: () => undefined,
          persistResult: async () => undefined,
          discardResult: async () => undefined,
        },
        companions: [sync.companion],
      },
    );
    const settled = () => {
      const s = sync.status();
      return (
        driver.current.connection.phase === "connected" &&
        s.phase === "diff" &&
        s.inventory !== null &&
        s.inFlight === null
      );
    };
    const waitSettled = async () => {
      while (!settled()) await new Promise((r) => setTimeout(r, 2));
    };
    const results: [string, number, number, number][] = [];
    const measure = async (label: string, act: () => Promise<void>) => {
      const before = { ...rows };
      const started = performance.now();
      await act();
      await waitSettled();
      results.push([label, rows.value - before.value, rows.frames - before.frames, performance.now() - started]);
    };
    await measure("connect + first sync (scan, summary, all rows)", async () => void driver.start());
    await measure("rescan, unchanged", () => sync.rescan());
    revision = (i) => (i === 7 ? 2 : 1);
    await measure("rescan, 1 changed", () => sync.rescan());
    revision = () => 3;
    await measure("rescan, all changed", () => sync.rescan());
    console.log(
      `\nend to end over loopback (channel driver + device sync -> reference control plane, SQLite in memory), ${count.toLocaleString("en")} devices`,
    );
    console.log(`${"".padEnd(48)}${"rows".padStart(8)}${"frames".padStart(8)}${"ms".padStart(10)}`);
    for (const [label, n, frames, ms] of results)
      console.log(
        `${label.padEnd(48)}${String(n).padStart(8)}${String(frames).padStart(8)}${ms.toFixed(1).padStart(10)}`,
      );
    console.log(
      "(frames: device messages the control plane applied, summary included; ms: until the runner saw every ack)",
    );
    driver.dispose();
    await sync.close();
  } finally {
    await cp.close();
    await rm(work, { recursive: true, force: true });
  }
}

async function measureRealScan(): Promise<void> {
  const providers = createProviders([...DEVICE_PROVIDER_NAMES]);
  const totals: number[] = [];
  const perProvider = new Map<string, number[]>();
  let found = 0;
  let failures = new Set<string>();
  const scans = 5;
  for (let r = 0; r < scans; r++) {
    const result = await scanDevices(providers, { timeoutMs: 10_000 });
    totals.push(result.ms);
    found = result.devices.length;
    failures = new Set(result.reports.filter((p) => !p.ok).map((p) => `${p.name}: ${p.error}`));
    for (const report of result.reports)
      perProvider.set(report.name, [...(perProvider.get(report.name) ?? []), report.ms]);
  }
  printTable(`one real scan of this machine (${os.platform()}, ${scans} scans; the providers run side by side), ms`, [
    ["whole scan", percentiles(totals)],
    ...[...perProvider].map(([name, ms]) => [`  ${name}`, percentiles(ms)] as [string, ReturnType<typeof percentiles>]),
  ]);
  console.log(
    `devices found: ${found}${failures.size ? `; failed: ${[...failures].join("; ")}` : ""} (gpu and display share one si.graphics() call)`,
  );
}

async function main(): Promise<void> {
  measureScenarios();
  await measureEndToEnd();
  await measureRealScan();
}

await main();
