// The channel driver in-process over real loopback sockets: against a hand-written peer
// that sends bad frames, and as a fleet of 100 reconnecting after a control-plane restart.
import { describe, test, type TestContext } from "node:test";
import assert from "node:assert/strict";
import { WebSocketServer, type WebSocket } from "ws";
import type { AddressInfo } from "node:net";
import https from "node:https";
import path from "node:path";
import { readFileSync } from "node:fs";
import { spawnSync } from "node:child_process";
import { ChannelDriver, type ChannelCompanion, type DriverPorts } from "../../src/channel/driver.js";
import type { MachineConfig } from "../../src/channel/machine.js";
import { encode, type Assignment, type RunnerMessage } from "../../src/protocol/channel.js";
import { register } from "../../src/api-client/runner-api.js";
import { AGENT_VERSION, PROTOCOL_VERSION } from "../../src/protocol/version.js";
import { fingerprintOf } from "../../src/state/host.js";
import { captureLogger, startTestControlPlane, tempDir } from "../helpers/fixtures.js";
import { channelUrl } from "../../src/daemon/daemon.js";
import { assignment } from "../helpers/channel-fixtures.js";
import { NO_PROXY } from "../../src/net/proxy.js";
import { onCleanup } from "../helpers/cleanup.js";

const config = (runnerId: string, overrides: Partial<MachineConfig> = {}): MachineConfig => ({
  runnerId,
  protocolVersion: PROTOCOL_VERSION,
  agentVersion: AGENT_VERSION,
  labels: [],
  capacity: 1,
  reconnectBaseMs: 100,
  reconnectCapMs: 1000,
  handshakeTimeoutMs: 5_000,
  once: false,
  exitAfterIdleMs: null,
  drainTimeoutMs: 1_000,
  ...overrides,
});

function recordingPorts() {
  const started: Assignment[] = [];
  const ports: DriverPorts = {
    startJob: async (assignment) => void started.push(assignment),
    cancelJob: () => undefined,
    persistResult: async () => undefined,
    discardResult: async () => undefined,
  };
  return { ports, started };
}

async function until(check: () => boolean, what: string, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** A WebSocket server on 127.0.0.1 that the test's end closes, clients and all. */
function loopbackServer(t: TestContext): WebSocketServer {
  const server = new WebSocketServer({ host: "127.0.0.1", port: 0 });
  onCleanup(t, () => {
    for (const socket of server.clients) socket.terminate();
    return new Promise<void>((r) => server.close(() => r()));
  });
  return server;
}

/**
 * A peer that answers each hello with a welcome of `maxFrameBytes`: the sockets it holds and
 * every message it received, in order.
 */
function welcomingPeer(server: WebSocketServer, maxFrameBytes: number) {
  const sockets: WebSocket[] = [];
  const received: RunnerMessage[] = [];
  server.on("connection", (socket) => {
    sockets.push(socket);
    socket.on("message", (data) => {
      const message = JSON.parse(data.toString()) as RunnerMessage;
      received.push(message);
      if (message.type !== "hello") return;
      socket.send(
        encode({
          type: "welcome",
          protocolVersion: 1,
          heartbeatIntervalMs: 5_000,
          leaseMs: 60_000,
          maxFrameBytes,
          fenced: [],
          paused: false,
        }),
      );
    });
  });
  return { sockets, received };
}

describe("the channel driver", () => {
  test("malformed, unknown and oversized frames are logged and survived", { timeout: 60_000 }, async (t) => {
    const server = loopbackServer(t);
    const { sockets, received } = welcomingPeer(server, 65_536);
    const hellos = () => received.filter((m) => m.type === "hello");
    await new Promise((r) => server.once("listening", r));
    const port = (server.address() as AddressInfo).port;
    const capture = captureLogger();
    const { ports, started } = recordingPorts();
    const driver = new ChannelDriver(
      config("rnr_aaaaaaaaaaaaaaaaaaaaaaaa"),
      {},
      {
        url: `ws://127.0.0.1:${port}/api/v1/channel`,
        credential: "rnc_test-credential-not-secret-here",
        maxFrameBytes: 65_536,
        logger: capture.logger,
        ports,
      },
    );
    void driver.start();
    onCleanup(t, () => driver.dispose());
    await until(() => driver.current.connection.phase === "connected", "the welcome");

    const socket = sockets[0]!;
    socket.send("this is not JSON");
    socket.send(JSON.stringify({ type: "launch_missiles" }));
    socket.send(JSON.stringify({ type: "assign", jobId: "j0" }));
    socket.send(Buffer.from([1, 2, 3]), { binary: true });
    socket.send(encode(assignment("j1")));
    await until(() => started.length === 1, "the valid assignment to start");
    assert.equal(started[0]?.jobId, "j1");
    const logs = capture.text();
    assert.match(logs, /ignored a frame from the control plane: not JSON/);
    assert.match(logs, /unknown message type \\"launch_missiles\\"/);
    assert.match(logs, /assign: attempt: Required/);
    assert.match(logs, /a binary frame/);
    assert.equal(driver.current.connection.phase, "connected", "still connected after four bad frames");

    socket.send("x".repeat(100_000)); // over the 64 KiB frame limit: ws closes with 1009
    await until(() => hellos().length === 2, "a reconnect after the oversized frame");
    assert.match(capture.text(), /socket error: Max payload size exceeded/);
    assert.deepEqual(
      (hellos()[1] as Extract<RunnerMessage, { type: "hello" }>).running,
      [{ jobId: "j1", attempt: 1 }],
      "the job survived the reconnect",
    );
  });

  test(
    "wss:// verifies the certificate: a self-signed one is refused and retried, never trusted",
    { timeout: 60_000 },
    async (t) => {
      const dir = await tempDir(t);
      const key = path.join(dir, "key.pem");
      const cert = path.join(dir, "cert.pem");
      const made = spawnSync(
        "openssl",
        [
          "req",
          "-x509",
          "-newkey",
          "rsa:2048",
          "-nodes",
          "-keyout",
          key,
          "-out",
          cert,
          "-subj",
          "/CN=localhost",
          "-days",
          "1",
        ],
        { encoding: "utf8" },
      );
      if (made.status !== 0) return t.skip(`openssl could not make a certificate: ${made.stderr}`);
      const server = https.createServer({ key: readFileSync(key), cert: readFileSync(cert) });
      const wss = new WebSocketServer({ server });
      let upgrades = 0;
      wss.on("connection", () => upgrades++);
      await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
      onCleanup(t, () => new Promise<void>((r) => (wss.close(), server.close(() => r()))));
      const capture = captureLogger();
      const driver = new ChannelDriver(
        config("rnr_bbbbbbbbbbbbbbbbbbbbbbbb"),
        {},
        {
          url: `wss://localhost:${(server.address() as AddressInfo).port}/api/v1/channel`,
          credential: "rnc_test-credential-not-secret-here",
          maxFrameBytes: 65_536,
          logger: capture.logger,
          ports: recordingPorts().ports,
        },
      );
      void driver.start();
      onCleanup(t, () => driver.dispose());
      await until(
        () => (capture.text().match(/cannot connect: .*(SELF_SIGNED|self-signed)/gi) ?? []).length >= 2,
        "two refused attempts",
        10_000,
      );
      assert.equal(upgrades, 0, "no WebSocket was ever opened to the untrusted server");
      assert.notEqual(driver.current.connection.phase, "connected");
    },
  );

  test(
    "100 runners reconnecting after a control-plane restart are spread out by jitter",
    { timeout: 60_000 },
    async (t) => {
      const dataDir = await tempDir(t, "runner-cp-");
      const plane = await startTestControlPlane(t, { dataDir, heartbeatIntervalMs: 5_000 });
      const port = Number(new URL(plane.cp.url).port);
      const fleet = 100;
      const identities = await Promise.all(
        Array.from({ length: fleet }, async (_, i) => {
          const { token } = await plane.admin.createRegistrationToken(60);
          const host = {
            hostname: `host-${i}`,
            platform: "linux",
            arch: "x64",
            fingerprint: fingerprintOf(`machine-${i}`),
          };
          return register({ url: plane.cp.url, timeoutMs: 5_000, proxy: NO_PROXY }, token, {
            protocolVersion: PROTOCOL_VERSION,
            agentVersion: AGENT_VERSION,
            name: `fleet-${i}`,
            labels: [],
            host,
            replace: false,
          });
        }),
      );
      const quiet = captureLogger("warn");
      const drivers = identities.map(
        (id) =>
          new ChannelDriver(
            config(id.runnerId, { reconnectBaseMs: 1000, reconnectCapMs: 10_000 }),
            {},
            {
              url: channelUrl(plane.cp.url, false),
              credential: id.credential,
              maxFrameBytes: 1 << 20,
              logger: quiet.logger,
              ports: recordingPorts().ports,
            },
          ),
      );
      onCleanup(t, () => drivers.forEach((d) => d.dispose()));
      for (const driver of drivers) void driver.start();
      await until(
        () => drivers.every((d) => d.current.connection.phase === "connected"),
        "the whole fleet to connect",
        20_000,
      );

      await plane.cp.close();
      const restartedAt = process.hrtime.bigint();
      const again = await startTestControlPlane(t, { dataDir, port, heartbeatIntervalMs: 5_000 });
      const reconnects: number[] = [];
      again.cp.events.on("runner", (e: { event: string }) => {
        if (e.event === "connected") reconnects.push(Number(process.hrtime.bigint() - restartedAt) / 1e6);
      });
      await until(() => reconnects.length >= fleet, "the whole fleet to reconnect", 20_000);

      const sorted = [...reconnects].sort((a, b) => a - b);
      const spread = sorted[fleet - 1]! - sorted[0]!;
      const buckets = new Map<number, number>();
      for (const ms of sorted) buckets.set(Math.floor(ms / 100), (buckets.get(Math.floor(ms / 100)) ?? 0) + 1);
      const busiest = Math.max(...buckets.values());
      console.log(
        `# 100 runners reconnected over ${spread.toFixed(0)} ms (first ${sorted[0]!.toFixed(0)} ms, median ${sorted[50]!.toFixed(0)} ms, last ${sorted[fleet - 1]!.toFixed(0)} ms after the restart); busiest 100 ms window: ${busiest}`,
      );
      assert.ok(spread >= 500, `reconnects spread over ${spread} ms`);
      assert.ok(busiest <= 30, `at most 30 of 100 in any 100 ms window, saw ${busiest}`);
    },
  );

  test(
    "a companion hears of the connection after the welcome's own frames, sends within its frame limit on that connection only, and hears of its loss",
    { timeout: 60_000 },
    async (t) => {
      const server = loopbackServer(t);
      const { sockets, received } = welcomingPeer(server, 1024);
      await new Promise((r) => server.once("listening", r));
      const heard: string[] = [];
      const sends: ((message: RunnerMessage) => boolean)[] = [];
      const companion: ChannelCompanion = {
        onConnected: (sendOnThis, welcome) => {
          heard.push(`connected ${welcome.maxFrameBytes}`);
          sends.push(sendOnThis);
        },
        onDisconnected: () => void heard.push("disconnected"),
        onMessage: () => false,
      };
      const driver = new ChannelDriver(
        config("rnr_dddddddddddddddddddddddd"),
        {},
        {
          url: `ws://127.0.0.1:${(server.address() as AddressInfo).port}/api/v1/channel`,
          credential: "rnc_test-credential-not-secret-here",
          maxFrameBytes: 1 << 20,
          logger: captureLogger().logger,
          ports: recordingPorts().ports,
          companions: [companion],
        },
      );
      void driver.start();
      onCleanup(t, () => driver.dispose());
      await until(() => heard.length === 1, "the companion to hear of the connection");
      assert.deepEqual(heard, ["connected 1024"]);
      const sendOnFirst = sends[0]!;
      assert.equal(sendOnFirst({ type: "goodbye", reason: "x".repeat(2000) }), false, "over the welcome's limit");
      assert.equal(sendOnFirst({ type: "goodbye", reason: "companion" }), true);
      await until(() => received.length === 3, "the companion's frame");
      assert.deepEqual(
        received.map((m) => m.type),
        ["hello", "ready", "goodbye"],
        "the welcome's own ready goes first",
      );
      sockets[0]!.terminate();
      // The driver reconnects at once: a new welcome may be heard before this looks again.
      await until(() => heard.length >= 2, "the companion to hear of the loss");
      assert.deepEqual(heard.slice(0, 2), ["connected 1024", "disconnected"]);
      assert.equal(sendOnFirst({ type: "goodbye", reason: "late" }), false, "a send bound to a gone connection");
    },
  );

  test(
    "a huge unknown frame, error message or cancel reason from the control plane makes a bounded log line",
    { timeout: 60_000 },
    async (t) => {
      const server = loopbackServer(t);
      const { sockets } = welcomingPeer(server, 1 << 20);
      await new Promise((r) => server.once("listening", r));
      const capture = captureLogger();
      const { ports, started } = recordingPorts();
      const driver = new ChannelDriver(
        config("rnr_cccccccccccccccccccccccc"),
        {},
        {
          url: `ws://127.0.0.1:${(server.address() as AddressInfo).port}/api/v1/channel`,
          credential: "rnc_test-credential-not-secret-here",
          maxFrameBytes: 1 << 20,
          logger: capture.logger,
          ports,
        },
      );
      void driver.start();
      onCleanup(t, () => driver.dispose());
      await until(() => driver.current.connection.phase === "connected", "the welcome");

      const huge = "\u0001".repeat(150_000); // 900 KB once escaped
      const socket = sockets[0]!;
      socket.send(JSON.stringify({ type: huge }));
      socket.send(JSON.stringify({ type: "error", code: "invalid", message: huge }));
      socket.send(JSON.stringify({ type: "cancel", jobId: "j1", attempt: 1, reason: "x" }));
      socket.send(encode(assignment("j1")));
      await until(() => started.length === 1, "the assignment after the huge frames");
      const longestLine = () => Math.max(...capture.lines.map((l) => l.length));
      assert.ok(longestLine() < 16_000, `the longest log line is ${longestLine()} characters`);
      socket.send(JSON.stringify({ type: "cancel", jobId: "j1", attempt: 1, reason: "y".repeat(1024) }));
      socket.send(JSON.stringify({ type: "pause", reason: "z".repeat(1024) }));
      await until(() => driver.current.mode === "paused", "the pause");
      assert.match(capture.text(), /unknown message type/);
      assert.match(capture.text(), /could not use a frame/);
      assert.ok(longestLine() < 16_000, `the longest log line is ${longestLine()} characters`);
    },
  );
});
