// The one HTTP client under both API clients, against real loopback servers: a control plane
// that accepts and never answers makes an admin call fail with a clear timeout; a control
// plane behind a path prefix is reached there by both clients; a redirect is reported, never
// followed with the token.
import { describe, test, type TestContext } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
import net from "node:net";
import type { AddressInfo } from "node:net";
import { AdminClient, AdminRequestError } from "../../src/api-client/admin.js";
import { register } from "../../src/api-client/runner-api.js";
import { identityBody } from "../../src/api-client/identity.js";
import { RunnerError } from "../../src/errors.js";
import { fakePlane } from "../helpers/fake-plane.js";
import { NO_PROXY } from "../../src/net/proxy.js";
import { onCleanup } from "../helpers/cleanup.js";

const TIMEOUT = { timeout: 10_000 };
const ADMIN_TOKEN = "adm_" + "A".repeat(43);

/** A TCP server that accepts every connection and never writes a byte. */
async function silentServer(t: TestContext): Promise<string> {
  const sockets = new Set<net.Socket>();
  const server = net.createServer((socket) => {
    sockets.add(socket);
    socket.on("error", () => {});
    socket.on("close", () => sockets.delete(socket));
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  onCleanup(
    t,
    () =>
      new Promise<void>((resolve) => {
        for (const socket of sockets) socket.destroy();
        server.close(() => resolve());
      }),
  );
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
}

const sendJson = (res: http.ServerResponse, status: number, body: unknown) =>
  res.writeHead(status, { "content-type": "application/json" }).end(JSON.stringify(body));

describe("the admin client", () => {
  test(
    "a control plane that accepts and never answers makes an admin call fail with a timeout error",
    TIMEOUT,
    async (t) => {
      const url = await silentServer(t);
      const admin = new AdminClient(url, ADMIN_TOKEN, { timeoutMs: 300 });
      const started = performance.now();
      await assert.rejects(
        admin.listRunners(),
        (error: unknown) =>
          error instanceof RunnerError &&
          error.code === "control_plane_unavailable" &&
          error.message === `cannot reach the control plane at ${url}: no answer within 300 ms` &&
          !error.message.includes(ADMIN_TOKEN),
      );
      // The deadline is what ended the call, not the test's own timeout.
      assert.ok(performance.now() - started < 5_000);
    },
  );

  test(
    "a control plane that refuses the connection is unreachable, and the error says so by its code",
    TIMEOUT,
    async () => {
      // A port nobody listens on: a server's, once it is closed.
      const closed = await new Promise<string>((resolve) => {
        const server = net.createServer().listen(0, "127.0.0.1", () => {
          const port = (server.address() as AddressInfo).port;
          server.close(() => resolve(`http://127.0.0.1:${port}`));
        });
      });
      await assert.rejects(
        new AdminClient(closed, ADMIN_TOKEN, { timeoutMs: 5_000 }).listRunners(),
        (error: unknown) =>
          error instanceof RunnerError &&
          error.code === "control_plane_unavailable" &&
          error.message === `cannot reach the control plane at ${closed}: ECONNREFUSED`,
      );
    },
  );

  test("a control plane behind a path prefix is reached under that prefix", TIMEOUT, async (t) => {
    const plane = await fakePlane(t, (_req, res) => sendJson(res, 200, { runners: [] }));
    const admin = new AdminClient(`${plane.url}/cp/`, ADMIN_TOKEN);
    assert.deepEqual(await admin.listRunners(), []);
    assert.deepEqual(plane.requests, ["GET /cp/api/v1/admin/runners"]);
  });

  test("a redirect is reported as an error and not followed with the admin token", TIMEOUT, async (t) => {
    const elsewhere = await fakePlane(t, (_req, res) => sendJson(res, 200, { runners: [] }));
    const plane = await fakePlane(t, (_req, res) =>
      res.writeHead(307, { location: `${elsewhere.url}/api/v1/admin/runners` }).end(),
    );
    const admin = new AdminClient(plane.url, ADMIN_TOKEN);
    await assert.rejects(
      admin.listRunners(),
      (error: unknown) =>
        error instanceof AdminRequestError &&
        error.status === 307 &&
        /a redirect to .*which is not followed/.test(error.message),
    );
    assert.deepEqual(elsewhere.requests, []);
  });
});

describe("the runner API client", () => {
  test(
    "a control plane URL with a path keeps it: the request goes under the prefix, as the channel's does",
    TIMEOUT,
    async (t) => {
      const plane = await fakePlane(t, (_req, res) =>
        sendJson(res, 201, {
          runnerId: "rnr_" + "R".repeat(24),
          credential: "rnc_" + "C".repeat(43),
          name: "prefixed",
          labels: [],
        }),
      );
      const host = { hostname: "h", platform: "linux", arch: "x64", fingerprint: "f".repeat(64) };
      const answer = await register(
        { url: `${plane.url}/cp`, timeoutMs: 2_000, proxy: NO_PROXY },
        "rgt_" + "T".repeat(43),
        identityBody({ name: "prefixed", labels: [], host, replace: false }),
      );
      assert.equal(answer.name, "prefixed");
      assert.deepEqual(plane.requests, ["POST /cp/api/v1/runners/register"]);
    },
  );
});
