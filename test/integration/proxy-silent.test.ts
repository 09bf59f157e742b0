// A proxy that accepts the TCP connection and never answers the CONNECT: each attempt through
// it must let go of its socket, so that a runner retrying for hours does not pile up open
// connections at the proxy (and file descriptors here). The proxy is a loopback TCP server that
// reads and stays silent, counting the sockets it holds open.
import { describe, test, type TestContext } from "node:test";
import assert from "node:assert/strict";
import net from "node:net";
import { ChannelDriver } from "../../src/channel/driver.js";
import { verify } from "../../src/api-client/runner-api.js";
import { RunnerError } from "../../src/errors.js";
import { chooseProxy, proxyConfig } from "../../src/net/proxy.js";
import { channelTunnel } from "../../src/net/proxy-agents.js";
import { machineConfig } from "../helpers/channel-fixtures.js";
import { captureLogger } from "../helpers/fixtures.js";
import { onCleanup } from "../helpers/cleanup.js";

interface SilentProxy {
  url: string;
  /** Connections accepted so far. */
  accepted(): number;
  /** Connections still open. */
  open(): number;
  /** Resolves when `check` holds after a connection opened or closed; rejects after `timeoutMs`. */
  until(what: string, check: () => boolean, timeoutMs: number): Promise<void>;
}

async function startSilentProxy(t: TestContext): Promise<SilentProxy> {
  const sockets = new Set<net.Socket>();
  let accepted = 0;
  const changes = new Set<() => void>();
  const changed = () => changes.forEach((notify) => notify());
  const server = net.createServer((socket) => {
    accepted++;
    sockets.add(socket);
    socket.resume(); // reads the CONNECT, answers nothing
    socket.on("error", () => undefined);
    socket.on("close", () => {
      sockets.delete(socket);
      changed();
    });
    changed();
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  onCleanup(t, async () => {
    for (const socket of sockets) socket.destroy();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });
  return {
    url: `http://127.0.0.1:${(server.address() as net.AddressInfo).port}`,
    accepted: () => accepted,
    open: () => sockets.size,
    until(what, check, timeoutMs) {
      if (check()) return Promise.resolve();
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => {
          changes.delete(notify);
          reject(new Error(`${what}: not within ${timeoutMs} ms (accepted ${accepted}, open ${sockets.size})`));
        }, timeoutMs);
        const notify = () => {
          if (!check()) return;
          clearTimeout(timer);
          changes.delete(notify);
          resolve();
        };
        changes.add(notify);
      });
    },
  };
}

// The control plane named is never reached: the proxy never opens a tunnel to it.
const TARGET = "http://127.0.0.1:59999";
const ATTEMPTS = 4;

describe("a proxy that accepts and never answers CONNECT", () => {
  test(
    "each channel attempt through it closes its socket: at most the one being made and the one just given up are open at once",
    { timeout: 60_000 },
    async (t) => {
      const proxy = await startSilentProxy(t);
      const choice = chooseProxy(TARGET, proxyConfig(proxy.url, {}));
      assert.ok(choice);
      // Well under the handshake timeout, so that this attempt fails on the agent's timer.
      const answerTimeoutMs = 200;
      const tunnel = await channelTunnel(choice, answerTimeoutMs);
      const capture = captureLogger();
      const driver = new ChannelDriver(
        { ...machineConfig, handshakeTimeoutMs: 5_000, reconnectBaseMs: 20, reconnectCapMs: 50 },
        {},
        {
          url: TARGET.replace(/^http/, "ws") + "/api/v1/channel",
          credential: "rnc_test-credential-not-secret-here",
          maxFrameBytes: 65_536,
          logger: capture.logger,
          ports: {
            startJob: async () => undefined,
            cancelJob: () => undefined,
            persistResult: async () => undefined,
            discardResult: async () => undefined,
          },
          tunnel,
        },
      );
      void driver.start();
      onCleanup(t, () => driver.dispose());
      let mostOpen = 0;
      await proxy.until(
        `${ATTEMPTS} attempts`,
        () => ((mostOpen = Math.max(mostOpen, proxy.open())), proxy.accepted() >= ATTEMPTS),
        20_000,
      );
      await driver.dispose();
      await proxy.until("every socket closed once the driver stopped", () => proxy.open() === 0, 5_000);
      assert.match(capture.text(), /the proxy did not answer the CONNECT within 200 ms/);
      assert.ok(mostOpen <= 2, `at most the attempt being made and the one just given up: ${mostOpen} open at once`);
    },
  );

  test("each API request through it closes its socket when it times out", { timeout: 60_000 }, async (t) => {
    const proxy = await startSilentProxy(t);
    const api = { url: TARGET, timeoutMs: 200, proxy: proxyConfig(proxy.url, {}) };
    for (let i = 1; i <= ATTEMPTS; i++) {
      await assert.rejects(
        verify(api, "rnc_test-credential-not-secret-here", {
          protocolVersion: 1,
          agentVersion: "0.1.0",
          runnerId: "rnr_cccccccccccccccccccccccc",
          host: { hostname: "h", platform: "linux", arch: "x64", fingerprint: "a".repeat(64) },
        }),
        (error: unknown) => error instanceof RunnerError && error.code === "control_plane_unavailable",
      );
      await proxy.until(`request ${i}'s socket closed`, () => proxy.accepted() === i && proxy.open() === 0, 5_000);
    }
  });
});
