// A free TCP port on 127.0.0.1, for a server a test starts in another process (PostgreSQL,
// nginx, a daemon's --status-port): found by listening on port 0 and closing. Another process
// could take it in between; on loopback in a test run that is rare enough.
import net from "node:net";

export function freeLoopbackPort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      const port = typeof address === "object" && address !== null ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}
