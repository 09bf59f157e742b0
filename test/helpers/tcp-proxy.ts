// A loopback TCP proxy that can stop forwarding without closing anything: the way a
// half-open connection looks to both ends (a NAT that forgot the flow, a cable pulled).
import net from "node:net";
import type { TestContext } from "node:test";
import { onCleanup } from "./cleanup.js";

export interface TcpProxy {
  port: number;
  url: string;
  /**
   * Silently drop every byte of existing connections until `resume`. New connections are
   * refused meanwhile, or with `swallowNew` accepted and never answered (a link that drops
   * everything, SYN-ACK aside): they stay dead after `resume`, as after a real black hole.
   */
  blackhole(options?: { swallowNew?: boolean }): void;
  /** Connections accepted and swallowed while black-holed, so far. */
  swallowed(): number;
  resume(): void;
  close(): Promise<void>;
}

export async function startTcpProxy(t: TestContext, targetPort: number): Promise<TcpProxy> {
  let blackholed = false;
  let swallowNew = false;
  let swallowed = 0;
  const sockets = new Set<net.Socket>();
  const server = net.createServer((client) => {
    if (blackholed && swallowNew) {
      swallowed++;
      sockets.add(client);
      client.on("close", () => sockets.delete(client));
      client.on("error", () => undefined);
      return void client.resume(); // read and drop, never answer
    }
    if (blackholed) return void client.destroy();
    const upstream = net.connect(targetPort, "127.0.0.1");
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on("close", () => sockets.delete(s));
      s.on("error", () => undefined);
    }
    // Each pipe is tied to the moment it was made: a connection made before a blackhole stays dead.
    let dead = false;
    const forward = (to: net.Socket) => (chunk: Buffer) => {
      if (blackholed) dead = true;
      if (!dead) to.write(chunk);
    };
    client.on("data", forward(upstream));
    upstream.on("data", forward(client));
    client.on("end", () => !blackholed && upstream.end());
    upstream.on("end", () => !blackholed && client.end());
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const port = (server.address() as net.AddressInfo).port;
  const proxy: TcpProxy = {
    port,
    url: `http://127.0.0.1:${port}`,
    blackhole: (options = {}) => {
      blackholed = true;
      swallowNew = options.swallowNew ?? false;
    },
    swallowed: () => swallowed,
    resume: () => void (blackholed = false),
    close: () =>
      new Promise((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
  onCleanup(t, () => proxy.close());
  return proxy;
}
