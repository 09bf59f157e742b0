// A forward proxy on loopback that speaks only CONNECT, as corporate proxies do for TLS: it
// records each tunnel asked for (host:port and the Proxy-Authorization sent), optionally
// demands Basic credentials (407 without them), and pipes the tunnel to its target. It tunnels
// only to loopback: anything else is refused with 403, so no test can send traffic elsewhere.
import http from "node:http";
import net from "node:net";
import type { TestContext } from "node:test";
import { isLoopbackHost } from "../../src/config/transport.js";
import { onCleanup } from "./cleanup.js";

export interface ConnectRequest {
  /** The CONNECT target, `host:port`. */
  target: string;
  /** The Proxy-Authorization header as sent, or null. */
  authorization: string | null;
  /** What the proxy answered: 200 (tunnel opened), 407 or 403. */
  status: number;
  /** The first line the client sent through an opened tunnel (`POST /api/v1/...`, `GET /api/v1/channel`), once seen. */
  firstLine?: string;
}

export interface ConnectProxy {
  port: number;
  /** `http://127.0.0.1:<port>`, without credentials. */
  url: string;
  /** Every CONNECT so far, in order. */
  requests: ConnectRequest[];
  /** Resolves once `count` CONNECTs have been answered (already or to come). */
  waitForRequests(count: number, timeoutMs?: number): Promise<ConnectRequest[]>;
  close(): Promise<void>;
}

export async function startConnectProxy(
  t: TestContext,
  options: {
    credentials?: { user: string; password: string };
    /** Refuse every tunnel with 403, as a proxy whose rules deny the host or port does. */
    denyAll?: boolean;
  } = {},
): Promise<ConnectProxy> {
  const requests: ConnectRequest[] = [];
  const waiters: { count: number; resolve: () => void }[] = [];
  const sockets = new Set<net.Socket>();
  const track = (socket: net.Socket) => {
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
  };
  const expected = options.credentials
    ? `Basic ${Buffer.from(`${options.credentials.user}:${options.credentials.password}`).toString("base64")}`
    : null;
  const record = (request: ConnectRequest) => {
    requests.push(request);
    for (const waiter of [...waiters]) {
      if (requests.length >= waiter.count) {
        waiters.splice(waiters.indexOf(waiter), 1);
        waiter.resolve();
      }
    }
  };

  // Anything but CONNECT (a plain forward-proxy request) is not what the runner should send.
  const server = http.createServer((_request, response) => response.writeHead(405).end());
  server.on("connect", (request: http.IncomingMessage, client: net.Socket, head: Buffer) => {
    track(client);
    client.on("error", () => client.destroy());
    const target = request.url ?? "";
    const authorization = request.headers["proxy-authorization"] ?? null;
    const answer = (status: number, text: string, extra = "") => {
      record({ target, authorization, status });
      client.end(`HTTP/1.1 ${status} ${text}\r\n${extra}Content-Length: 0\r\nConnection: close\r\n\r\n`);
    };
    if (expected !== null && authorization !== expected)
      return answer(407, "Proxy Authentication Required", 'Proxy-Authenticate: Basic realm="test"\r\n');
    const match = /^(.+):(\d+)$/.exec(target);
    if (options.denyAll || !match || !isLoopbackHost(match[1]!)) return answer(403, "Forbidden");
    const upstream = net.connect(Number(match[2]), match[1]!.replace(/^\[|\]$/g, ""));
    track(upstream);
    upstream.on("error", () => {
      upstream.destroy();
      client.destroy();
    });
    client.on("close", () => upstream.destroy());
    upstream.on("close", () => client.destroy());
    upstream.on("connect", () => {
      const opened: ConnectRequest = { target, authorization, status: 200 };
      // Plain HTTP inside the tunnel (the test's control plane is http://): its first line says
      // which request went through, the API's or the WebSocket's upgrade.
      const sniff = (chunk: Buffer) => (opened.firstLine ??= chunk.toString("latin1").split("\r\n")[0]);
      if (head.length > 0) sniff(head);
      else client.once("data", sniff);
      record(opened);
      client.write("HTTP/1.1 200 Connection Established\r\n\r\n");
      if (head.length > 0) upstream.write(head);
      upstream.pipe(client);
      client.pipe(upstream);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const port = (server.address() as net.AddressInfo).port;
  const close = async () => {
    for (const socket of sockets) socket.destroy();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  };
  onCleanup(t, close);
  return {
    port,
    url: `http://127.0.0.1:${port}`,
    requests,
    waitForRequests(count, timeoutMs = 10_000) {
      if (requests.length >= count) return Promise.resolve(requests);
      return new Promise((resolve, reject) => {
        const timer = setTimeout(
          () => reject(new Error(`the proxy saw ${requests.length} CONNECT(s), not ${count}, within ${timeoutMs} ms`)),
          timeoutMs,
        );
        waiters.push({ count, resolve: () => (clearTimeout(timer), resolve(requests)) });
      });
    },
    close,
  };
}
