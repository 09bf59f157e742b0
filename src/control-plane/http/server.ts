// The node:http server's life around the routes: its limits (connections, header, request and
// keep-alive timeouts), listening (a failure is a usage error that names the address) and
// closing with a grace period for the requests in flight.
import http from "node:http";
import type { AddressInfo } from "node:net";
import { RunnerError } from "../../errors.js";

/** In-flight requests get this long to finish on close before their sockets are cut. */
const CLOSE_GRACE_MS = 2000;

/**
 * How often node:http looks for requests past headersTimeout or requestTimeout. Node's default
 * (30 s) would let a slowloris socket live up to 30 s past its deadline; 1 s keeps the
 * deadlines what PROTOCOL.md says, for the cost of one walk over the open sockets per second.
 */
const TIMEOUT_CHECK_INTERVAL_MS = 1000;

export interface HttpServerLimits {
  /** Open sockets at once, the runners' channels included; more are closed at once. */
  maxConnections: number;
  /** From a connection's first byte of a request to the end of its headers. */
  headersTimeoutMs: number;
  /** From the first byte of a request to the end of its body. */
  requestTimeoutMs: number;
  /** An idle keep-alive connection is closed after this. */
  keepAliveTimeoutMs: number;
}

/** A node:http server that holds to the limits; `onDrop` hears of each connection refused over maxConnections. */
export function createHttpServer(
  listener: http.RequestListener,
  limits: HttpServerLimits,
  onDrop: () => void,
): http.Server {
  const server = http.createServer(
    {
      headersTimeout: limits.headersTimeoutMs,
      requestTimeout: limits.requestTimeoutMs,
      keepAliveTimeout: limits.keepAliveTimeoutMs,
      connectionsCheckingInterval: TIMEOUT_CHECK_INTERVAL_MS,
    },
    listener,
  );
  // net.Server closes a socket over the cap before any byte is read: no answer, no work.
  server.maxConnections = limits.maxConnections;
  server.on("drop", onDrop);
  return server;
}

export function listen(server: http.Server, host: string, port: number): Promise<AddressInfo> {
  return new Promise((resolve, reject) => {
    const fail = (error: Error) =>
      reject(new RunnerError("usage", `cannot listen on ${host}:${port}: ${error.message}`, { cause: error }));
    server.once("error", fail);
    server.listen(port, host, () => {
      server.off("error", fail);
      resolve(server.address() as AddressInfo);
    });
  });
}

/**
 * Stops accepting connections at once; resolves when every connection is gone. Upgraded
 * sockets (the channel's) count as the server's connections: their owner must close them.
 */
export function closeHttpServer(server: http.Server): Promise<void> {
  return new Promise<void>((resolve) => {
    const cutOff = setTimeout(() => server.closeAllConnections(), CLOSE_GRACE_MS);
    server.close(() => {
      clearTimeout(cutOff);
      resolve();
    });
    // Keep-alive sockets without a request would otherwise hold close() open.
    server.closeIdleConnections();
  });
}
