// The status server's own edges, on real sockets: what it does when its place is taken.
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { once } from "node:events";
import { promises as fs } from "node:fs";
import http from "node:http";
import net from "node:net";
import path from "node:path";
import { captureLogger, tempDir } from "../helpers/fixtures.js";
import { maxSocketPathBytes, startStatusServer, type StatusServerOptions } from "../../src/status/server.js";
import { readDaemonStatus } from "../../src/status/client.js";
import { onCleanup } from "../helpers/cleanup.js";

function options(logger: StatusServerOptions["logger"], where: Partial<StatusServerOptions>): StatusServerOptions {
  return {
    socketPath: null,
    port: null,
    // These tests ask /healthz only, which reads nothing.
    read: () => assert.fail("read() is not needed by /healthz"),
    now: Date.now,
    logger,
    ...where,
  };
}

function healthz(where: { socketPath: string } | { port: number }): Promise<number> {
  return new Promise((resolve, reject) => {
    const target = "socketPath" in where ? where : { host: "127.0.0.1", port: where.port };
    http
      .get({ ...target, path: "/healthz", timeout: 5000 }, (response) => {
        response.resume();
        resolve(response.statusCode ?? 0);
      })
      .on("error", reject);
  });
}

describe("status server", () => {
  test("serves on a fresh socket with mode 0600 and removes it when closed", { timeout: 30_000 }, async (t) => {
    const dir = await tempDir(t);
    const socketPath = path.join(dir, "status.sock");
    const { logger } = captureLogger();
    const server = await startStatusServer(options(logger, { socketPath }));
    assert.equal(server.socketPath, socketPath);
    assert.equal((await fs.stat(socketPath)).mode & 0o777, 0o600);
    assert.equal(await healthz({ socketPath }), 200);
    await server.close();
    await assert.rejects(fs.lstat(socketPath), { code: "ENOENT" });
  });

  test(
    "leaves a file that is not a socket alone, says so, and serves on the port anyway",
    { timeout: 30_000 },
    async (t) => {
      const dir = await tempDir(t);
      const socketPath = path.join(dir, "status.sock");
      await fs.writeFile(socketPath, "not mine to delete");
      const log = captureLogger();
      const server = await startStatusServer(options(log.logger, { socketPath, port: 0 }));
      onCleanup(t, () => server.close());
      assert.equal(server.socketPath, null);
      assert.equal(await fs.readFile(socketPath, "utf8"), "not mine to delete");
      assert.match(log.text(), /something that is not a socket is in the status socket's place/);
      assert.ok(server.port !== null && server.port > 0);
      assert.equal(await healthz({ port: server.port }), 200);
    },
  );

  test(
    "a state dir too deep for a socket path gets no socket and an error naming the way out",
    { timeout: 30_000 },
    async (t) => {
      const dir = await tempDir(t);
      const deep = path.join(dir, "d".repeat(maxSocketPathBytes(process.platform)));
      const log = captureLogger();
      const server = await startStatusServer(options(log.logger, { socketPath: path.join(deep, "status.sock") }));
      assert.equal(server.socketPath, null);
      assert.match(log.text(), /too long for a Unix socket: no status socket \(use --status-port/);
      await server.close();
    },
  );

  test("a port in use is logged as an error and the rest still serves", { timeout: 30_000 }, async (t) => {
    const dir = await tempDir(t);
    const socketPath = path.join(dir, "status.sock");
    const taken = net.createServer().listen(0, "127.0.0.1");
    await once(taken, "listening");
    onCleanup(t, () => taken.close());
    const port = (taken.address() as net.AddressInfo).port;
    const log = captureLogger();
    const server = await startStatusServer(options(log.logger, { socketPath, port }));
    onCleanup(t, () => server.close());
    assert.equal(server.port, null);
    assert.match(log.text(), /could not serve the status endpoints on 127\.0\.0\.1/);
    assert.match(log.text(), /EADDRINUSE/);
    assert.doesNotMatch(log.text(), /status server error/, "the failed listen is logged once");
    assert.equal(await healthz({ socketPath }), 200);
  });

  test(
    "runner status's reader gives up on a daemon that does not answer, and refuses an answer that is not a status",
    { timeout: 30_000 },
    async (t) => {
      const dir = await tempDir(t);
      const silent = path.join(dir, "silent.sock");
      const held: net.Socket[] = [];
      const mute = net.createServer((socket) => void held.push(socket)).listen(silent);
      await once(mute, "listening");
      onCleanup(t, () => {
        for (const socket of held) socket.destroy();
        mute.close();
      });
      assert.deepEqual(await readDaemonStatus(silent, 300), {
        kind: "none",
        reason: `the daemon did not answer on ${silent} within 300 ms`,
      });

      const odd = path.join(dir, "odd.sock");
      const impostor = http.createServer((_request, response) => response.end('{"pid":"not a number"}')).listen(odd);
      await once(impostor, "listening");
      onCleanup(t, () => impostor.close());
      const answer = await readDaemonStatus(odd, 5000);
      assert.equal(answer.kind, "none");
      assert.match(
        answer.kind === "none" ? answer.reason : "",
        /^the daemon's status is not what this runner expects \(pid: /,
      );
    },
  );
});
