// The daemon's status endpoints over HTTP (node:http): on a Unix socket in the state dir, and
// on a loopback TCP port when --status-port asks. A thin driver: what each endpoint says is
// built by the pure snapshot.ts and metric-families.ts from the parts `read()` returns. A
// status endpoint that cannot be served is logged and left out: it never stops the runner
// from running jobs.
import http from "node:http";
import { promises as fs } from "node:fs";
import type { AddressInfo } from "node:net";
import type { Logger } from "../log/logger.js";
import type { Clock } from "../time/deadline.js";
import { renderMetrics } from "./exposition.js";
import { metricFamilies } from "./metric-families.js";
import { readiness, statusView, type StatusParts } from "./snapshot.js";

export interface StatusServerOptions {
  /** The Unix socket to serve on (null: none). A stale socket file there is replaced: the caller holds the state dir's lock. */
  socketPath: string | null;
  /** A TCP port on 127.0.0.1 to serve on as well (null: none; 0: any free port, for tests). */
  port: number | null;
  read(): StatusParts;
  now: Clock;
  logger: Logger;
}

export interface StatusServer {
  /** Where it serves: null for what it does not (not asked, or it could not). */
  socketPath: string | null;
  port: number | null;
  close(): Promise<void>;
}

/**
 * The longest Unix socket path the platform takes (sun_path less its NUL): 107 bytes on Linux,
 * 103 on macOS and the BSDs. A longer one cannot be bound.
 */
export function maxSocketPathBytes(platform: NodeJS.Platform): number {
  return platform === "linux" ? 107 : 103;
}

/** The paths it answers; anything else is a 404, any method but GET a 405. */
export const STATUS_PATHS = ["/healthz", "/readyz", "/status", "/metrics"] as const;

export async function startStatusServer(options: StatusServerOptions): Promise<StatusServer> {
  const { logger } = options;
  const servers: http.Server[] = [];
  let socketPath: string | null = null;
  let port: number | null = null;

  if (options.socketPath !== null) {
    const bytes = Buffer.byteLength(options.socketPath);
    if (bytes > maxSocketPathBytes(process.platform)) {
      logger.error(
        { socket: options.socketPath, bytes, maxBytes: maxSocketPathBytes(process.platform) },
        "the state dir's path is too long for a Unix socket: no status socket (use --status-port, or a shorter --state-dir)",
      );
    } else if (await clearStaleSocket(options.socketPath, logger)) {
      const server = createServer(options);
      try {
        await listen(server, { path: options.socketPath }, logger);
        // The state dir is 0700, so no one else can reach the socket before this narrows it.
        await fs.chmod(options.socketPath, 0o600);
        servers.push(server);
        socketPath = options.socketPath;
      } catch (error) {
        server.close();
        logger.error({ err: error, socket: options.socketPath }, "could not serve the status socket");
      }
    }
  }
  if (options.port !== null) {
    const server = createServer(options);
    try {
      await listen(server, { host: "127.0.0.1", port: options.port }, logger);
      servers.push(server);
      port = (server.address() as AddressInfo).port;
    } catch (error) {
      server.close();
      logger.error({ err: error, port: options.port }, "could not serve the status endpoints on 127.0.0.1");
    }
  }
  if (socketPath !== null || port !== null)
    logger.info({ socket: socketPath, port }, "serving /healthz, /readyz, /status and /metrics");

  return {
    socketPath,
    port,
    async close() {
      await Promise.all(
        servers.map(
          (server) =>
            new Promise<void>((resolve) => {
              server.close(() => resolve());
              server.closeAllConnections();
            }),
        ),
      );
      if (socketPath !== null) await fs.rm(socketPath, { force: true });
    },
  };
}

/**
 * A socket file left by a daemon that was killed is removed (no live daemon can hold it: the
 * caller holds the lock). Anything else at that path is not the runner's to delete: false.
 */
async function clearStaleSocket(file: string, logger: Logger): Promise<boolean> {
  try {
    const stat = await fs.lstat(file).catch((error: NodeJS.ErrnoException) => {
      if (error.code === "ENOENT") return null;
      throw error;
    });
    if (stat === null) return true;
    if (!stat.isSocket()) {
      logger.error(
        { socket: file },
        "something that is not a socket is in the status socket's place: no status socket",
      );
      return false;
    }
    await fs.rm(file, { force: true });
    return true;
  } catch (error) {
    logger.error({ err: error, socket: file }, "could not clear the status socket's place: no status socket");
    return false;
  }
}

function listen(
  server: http.Server,
  where: { path: string } | { host: string; port: number },
  logger: Logger,
): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(where, () => {
      server.off("error", reject);
      // Only a listening server's errors are logged as such: a failed listen is logged once, by the caller.
      server.on("error", (error) => logger.error({ err: error }, "status server error"));
      resolve();
    });
  });
}

function createServer(options: StatusServerOptions): http.Server {
  const server = http.createServer((request, response) => {
    void answer(options, request, response).catch((error: unknown) => {
      options.logger.error({ err: error, path: request.url }, "a status request failed");
      if (!response.headersSent) send(response, 500, { error: "internal error" });
      else response.destroy();
    });
  });
  // A status client that stalls must not hold a connection for long.
  server.requestTimeout = 10_000;
  server.headersTimeout = 5_000;
  return server;
}

async function answer(
  options: StatusServerOptions,
  request: http.IncomingMessage,
  response: http.ServerResponse,
): Promise<void> {
  const path = new URL(request.url ?? "/", "http://status").pathname;
  const known = (STATUS_PATHS as readonly string[]).includes(path);
  if (!known) return send(response, 404, { error: `no such endpoint: ${path} (try ${STATUS_PATHS.join(", ")})` });
  if (request.method !== "GET") {
    response.setHeader("allow", "GET");
    return send(response, 405, { error: `${request.method} is not allowed; only GET` });
  }
  switch (path) {
    case "/healthz":
      return send(response, 200, { status: "ok" });
    case "/readyz": {
      const ready = readiness(options.read().state);
      return send(response, ready.ready ? 200 : 503, ready);
    }
    case "/status":
      return send(response, 200, statusView(options.read(), options.now()));
    default: {
      const { contentType, body } = await renderMetrics(metricFamilies(options.read()));
      response.writeHead(200, { "content-type": contentType, "cache-control": "no-store" });
      response.end(body);
      return;
    }
  }
}

function send(response: http.ServerResponse, status: number, body: unknown): void {
  response.writeHead(status, { "content-type": "application/json; charset=utf-8", "cache-control": "no-store" });
  response.end(JSON.stringify(body) + "\n");
}
