// The node:http server's life around the routes: listening (a failure is a usage error that
// names the address) and closing with a grace period for the requests in flight.
import type http from "node:http";
import type { AddressInfo } from "node:net";
import { RunnerError } from "../../errors.js";

/** In-flight requests get this long to finish on close before their sockets are cut. */
const CLOSE_GRACE_MS = 2000;

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
