// Device sync end to end over real loopback sockets: the channel driver in-process with the
// device sync as its companion and a fake provider, against the reference control plane.
// Rows are counted on the control plane's side (its "devices" events).
import { describe, test, type TestContext } from "node:test";
import assert from "node:assert/strict";
import path from "node:path";
import { ChannelDriver, type DriverPorts } from "../../src/channel/driver.js";
import type { MachineConfig } from "../../src/channel/machine.js";
import { register } from "../../src/api-client/runner-api.js";
import { deviceSyncSettings } from "../../src/config/normalize.js";
import { defaultSettings } from "../../src/config/resolve.js";
import { channelUrl } from "../../src/daemon/daemon.js";
import { createDeviceSync, type DeviceSync } from "../../src/devices/index.js";
import type { RawDevice } from "../../src/devices/device.js";
import type { DeviceProvider } from "../../src/devices/providers/provider.js";
import type { DeviceEvent } from "../../src/control-plane/control-plane.js";
import type { RegisterResponse } from "../../src/protocol/http.js";
import { AGENT_VERSION, PROTOCOL_VERSION } from "../../src/protocol/version.js";
import { fingerprintOf } from "../../src/state/host.js";
import { captureLogger, startTestControlPlane, tempDir, type TestControlPlane } from "../helpers/fixtures.js";
import { NO_PROXY } from "../../src/net/proxy.js";
import { onCleanup } from "../helpers/cleanup.js";

async function until<T>(check: () => T | Promise<T>, what: string, timeoutMs = 10_000): Promise<NonNullable<T>> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value) return value as NonNullable<T>;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** A provider whose rows the test sets; `fail` makes its next scans throw. */
function fakeProvider(rows: RawDevice[]) {
  const state = { rows, fail: false };
  const provider: DeviceProvider = {
    name: "fake",
    scan: async () => {
      if (state.fail) throw new Error("the fake provider broke");
      return state.rows.map((row) => ({ ...row, attributes: { ...row.attributes } }));
    },
  };
  return { provider, state };
}

const device = (id: string, kind: string, attributes: RawDevice["attributes"] = {}): RawDevice => ({
  id,
  kind,
  name: id,
  state: "online",
  attributes,
});

async function registerIdentity(plane: TestControlPlane, name: string): Promise<RegisterResponse> {
  const { token } = await plane.admin.createRegistrationToken(60);
  const host = { hostname: name, platform: "linux", arch: "x64", fingerprint: fingerprintOf(name) };
  return register({ url: plane.cp.url, timeoutMs: 5_000, proxy: NO_PROXY }, token, {
    protocolVersion: PROTOCOL_VERSION,
    agentVersion: AGENT_VERSION,
    name,
    labels: [],
    host,
    replace: false,
  });
}

const idlePorts: DriverPorts = {
  startJob: async () => undefined,
  cancelJob: () => undefined,
  persistResult: async () => undefined,
  discardResult: async () => undefined,
};

interface TestRunner {
  driver: ChannelDriver;
  sync: DeviceSync;
  stop(): Promise<void>;
}

/** The channel driver with the device sync as its companion: what the daemon wires, minus jobs. */
function startRunner(
  t: TestContext,
  plane: TestControlPlane,
  identity: RegisterResponse,
  options: { stateDir: string; provider: DeviceProvider; capacity: number },
): TestRunner {
  const { logger } = captureLogger("warn");
  const sync = createDeviceSync({
    stateDir: options.stateDir,
    settings: { ...deviceSyncSettings(defaultSettings()), deviceBatchSize: 100 },
    logger,
    providers: [options.provider],
    ackTimeoutMs: 5_000,
  });
  const config: MachineConfig = {
    runnerId: identity.runnerId,
    protocolVersion: PROTOCOL_VERSION,
    agentVersion: AGENT_VERSION,
    labels: [],
    capacity: options.capacity,
    reconnectBaseMs: 100,
    reconnectCapMs: 1000,
    handshakeTimeoutMs: 5_000,
    once: false,
    exitAfterIdleMs: null,
    drainTimeoutMs: 1_000,
  };
  const driver = new ChannelDriver(
    config,
    {},
    {
      url: channelUrl(plane.cp.url, false),
      credential: identity.credential,
      maxFrameBytes: 1 << 20,
      logger,
      ports: idlePorts,
      companions: [sync.companion],
    },
  );
  void driver.start();
  let stopped = false;
  const stop = async () => {
    if (stopped) return;
    stopped = true;
    driver.dispose();
    await sync.close();
  };
  onCleanup(t, stop);
  return { driver, sync, stop };
}

/** Connected, scanned, and nothing waiting for an acknowledgement: the runner and the control plane agree. */
function settled(runner: TestRunner): boolean {
  const status = runner.sync.status();
  return (
    runner.driver.current.connection.phase === "connected" &&
    status.phase === "diff" &&
    status.inventory !== null &&
    status.inFlight === null
  );
}

describe("device sync through the real channel and control plane", () => {
  test(
    "devices arrive, only changes cross the wire, removals go offline, a restart re-sends nothing, jobs go where the device is",
    { timeout: 90_000 },
    async (t) => {
      // Scans happen on connect and on demand only: the welcome's interval is an hour.
      const plane = await startTestControlPlane(t, { heartbeatIntervalMs: 5_000, deviceScanIntervalMs: 3_600_000 });
      const events: DeviceEvent[] = [];
      plane.cp.events.on("devices", (event: DeviceEvent) => events.push(event));
      const rowsOf = (runnerId: string) =>
        events
          .filter((e) => e.runnerId === runnerId && e.type === "devices")
          .reduce((n, e) => n + e.upserts + e.removals, 0);
      const admin = plane.admin;

      const identityA = await registerIdentity(plane, "runner-with-gpu");
      const identityB = await registerIdentity(plane, "runner-without-gpu");
      const stateA = path.join(await tempDir(t), "state");
      const fakeA = fakeProvider([
        device("gpu:0000:01:00.0", "gpu", { vramMb: 24576 }),
        device("usb:1-1", "usb", { firmware: "1.0" }),
        device("usb:1-2", "usb"),
      ]);
      const { mkdir } = await import("node:fs/promises");
      await mkdir(stateA, { recursive: true });
      let a = startRunner(t, plane, identityA, { stateDir: stateA, provider: fakeA.provider, capacity: 1 });

      // 1. First connect: the summary (nothing confirmed) matches what is stored (nothing); the scan's rows follow as changes.
      await until(() => settled(a), "runner A to sync");
      const listed = await admin.listRunnerDevices(identityA.runnerId);
      assert.deepEqual(
        listed.map((d) => [d.id, d.kind, d.state, d.present, d.runnerConnected]),
        [
          ["gpu:0000:01:00.0", "gpu", "online", true, true],
          ["usb:1-1", "usb", "online", true, true],
          ["usb:1-2", "usb", "online", true, true],
        ],
      );
      assert.equal(events.find((e) => e.type === "devices_summary")?.matched, true);
      assert.equal(rowsOf(identityA.runnerId), 3);
      assert.deepEqual(
        (await admin.listDevices({ kind: "gpu" })).map((d) => d.runnerId),
        [identityA.runnerId],
      );

      // 2. An unchanged rescan sends no device rows.
      await a.sync.rescan();
      assert.equal(a.sync.status().inFlight, null, "nothing to send");
      await new Promise((r) => setTimeout(r, 200));
      assert.equal(rowsOf(identityA.runnerId), 3, "no rows for an unchanged inventory");

      // 3. One change, one row.
      fakeA.state.rows[1] = device("usb:1-1", "usb", { firmware: "1.1" });
      await a.sync.rescan();
      await until(() => rowsOf(identityA.runnerId) === 4 && settled(a), "the changed row");
      assert.deepEqual(events.at(-1), {
        runnerId: identityA.runnerId,
        type: "devices",
        batchId: events.at(-1)!.batchId,
        upserts: 1,
        removals: 0,
        missing: 0,
      });
      assert.equal(
        (await admin.listRunnerDevices(identityA.runnerId)).find((d) => d.id === "usb:1-1")?.attributes.firmware,
        "1.1",
      );

      // 4. A removal: the device is kept, offline, not present.
      fakeA.state.rows.pop();
      await a.sync.rescan();
      await until(() => rowsOf(identityA.runnerId) === 5 && settled(a), "the removal");
      const removed = (await admin.listRunnerDevices(identityA.runnerId)).find((d) => d.id === "usb:1-2");
      assert.deepEqual([removed?.state, removed?.present], ["offline", false]);

      // 5. A restart: the runner's rows are kept while it is away; back, its summary matches and no row is re-sent.
      await a.stop();
      await until(
        async () => (await admin.listRunnerDevices(identityA.runnerId)).every((d) => !d.runnerConnected),
        "the runner shown offline",
      );
      const summariesBefore = events.filter((e) => e.type === "devices_summary").length;
      a = startRunner(t, plane, identityA, { stateDir: stateA, provider: fakeA.provider, capacity: 1 });
      await until(
        () => settled(a) && events.filter((e) => e.type === "devices_summary").length > summariesBefore,
        "runner A to come back",
      );
      assert.equal(events.filter((e) => e.type === "devices_summary").at(-1)?.matched, true, "the summary matched");
      await new Promise((r) => setTimeout(r, 200));
      assert.equal(rowsOf(identityA.runnerId), 5, "nothing re-sent after the restart");

      // 6. Jobs that require a device. B has more credits, so it would win any job it is eligible for.
      const stateB = path.join(await tempDir(t), "state");
      await mkdir(stateB, { recursive: true });
      const fakeB = fakeProvider([device("usb:2-1", "usb")]);
      const b = startRunner(t, plane, identityB, { stateDir: stateB, provider: fakeB.provider, capacity: 2 });
      await until(() => settled(b), "runner B to sync");

      const job = { kind: "command" as const, argv: ["true"], env: {} };
      const androidJob = (await admin.submitJob({ job, requiredDevices: [{ kind: "android" }] })).job;
      assert.deepEqual(androidJob.requiredDevices, [{ kind: "android" }]);
      const gpuJob = (await admin.submitJob({ job, requiredDevices: [{ kind: "gpu" }] })).job;
      const assigned = await until(async () => {
        const view = (await admin.getJob(gpuJob.jobId)).job;
        return view.status === "assigned" ? view : null;
      }, "the GPU job to be assigned");
      assert.equal(assigned.runnerId, identityA.runnerId, "only the runner with the GPU gets it");
      await new Promise((r) => setTimeout(r, 300));
      assert.equal(
        (await admin.getJob(androidJob.jobId)).job.status,
        "queued",
        "no runner has an Android device: it waits",
      );

      // An Android device shows up on B: the waiting job goes there.
      fakeB.state.rows.push(device("android:emulator-5554", "android"));
      await b.sync.rescan();
      const androidAssigned = await until(async () => {
        const view = (await admin.getJob(androidJob.jobId)).job;
        return view.status === "assigned" ? view : null;
      }, "the Android job to be assigned");
      assert.equal(androidAssigned.runnerId, identityB.runnerId);

      // 7. A provider that fails keeps its rows, marked stale, still present.
      fakeA.state.fail = true;
      await a.sync.rescan();
      await until(
        async () => (await admin.listRunnerDevices(identityA.runnerId)).filter((d) => d.present).every((d) => d.stale),
        "stale rows",
      );
      const afterFailure = await admin.listRunnerDevices(identityA.runnerId);
      assert.deepEqual(
        afterFailure.filter((d) => d.present).map((d) => d.id),
        ["gpu:0000:01:00.0", "usb:1-1"],
        "kept, not removed",
      );
    },
  );

  test(
    "a runner whose state file was lost gets a full snapshot; devices it no longer has go offline",
    { timeout: 90_000 },
    async (t) => {
      const plane = await startTestControlPlane(t, { heartbeatIntervalMs: 5_000, deviceScanIntervalMs: 3_600_000 });
      const identity = await registerIdentity(plane, "runner-forgetful");
      const { mkdir, rm } = await import("node:fs/promises");
      const stateDir = path.join(await tempDir(t), "state");
      await mkdir(stateDir, { recursive: true });
      const fake = fakeProvider(Array.from({ length: 250 }, (_, i) => device(`usb:${i}`, "usb")));
      let runner = startRunner(t, plane, identity, { stateDir, provider: fake.provider, capacity: 1 });
      await until(() => settled(runner), "the first sync");
      assert.equal((await plane.admin.listRunnerDevices(identity.runnerId)).length, 250);

      await runner.stop();
      await rm(path.join(stateDir, "devices.json"));
      fake.state.rows = fake.state.rows.slice(0, 200);
      const batches: DeviceEvent[] = [];
      plane.cp.events.on("devices", (e: DeviceEvent) => e.type === "devices" && batches.push(e));
      runner = startRunner(t, plane, identity, { stateDir, provider: fake.provider, capacity: 1 });
      await until(() => settled(runner), "the resync");
      assert.deepEqual(
        batches.map((e) => e.upserts),
        [100, 100],
        "a full snapshot, in batches of 100",
      );
      assert.equal(batches.at(-1)?.missing, 50, "the 50 it no longer reports are marked offline");
      const listed = await plane.admin.listRunnerDevices(identity.runnerId);
      assert.equal(listed.filter((d) => d.present && d.state === "online").length, 200);
      assert.equal(listed.filter((d) => !d.present && d.state === "offline").length, 50);
    },
  );
});
