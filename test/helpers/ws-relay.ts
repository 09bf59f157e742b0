// A relay between a real runner and a real control plane on loopback: HTTP requests and the
// channel's frames pass through unchanged, every frame is recorded on the way, and a test can
// inject frames towards the runner that the control plane would never send (it refuses such
// jobs at submit). The runner cannot tell the injected frames from the control plane's.
import http from "node:http";
import type { Duplex } from "node:stream";
import type { TestContext } from "node:test";
import { WebSocket, WebSocketServer, type RawData } from "ws";
import { onCleanup } from "./cleanup.js";

/** The channel's upgrade headers a relay passes on to the control plane. */
const FORWARDED_HEADERS = ["authorization", "x-runner-id", "x-runner-protocol", "x-runner-agent-version"];

/** An HTTP server that passes every plain request on to `port` on `host` (upgrades are the caller's). */
function forwardingServer(host: string, port: number | string): http.Server {
  return http.createServer((req, res) => {
    const upstream = http.request({ host, port, method: req.method, path: req.url, headers: req.headers }, (answer) => {
      res.writeHead(answer.statusCode ?? 502, answer.headers);
      answer.pipe(res);
    });
    upstream.on("error", () => res.destroy());
    req.pipe(upstream);
  });
}

export interface RelayHooks {
  /** Each new connection from a runner (its socket to the runner). */
  onConnection?(down: WebSocket): void;
  /** A runner's frame, before it is passed on. */
  fromRunner?(data: RawData): void;
  /** A control plane's frame: the hook sends whatever should reach the runner instead. */
  fromControlPlane(data: RawData, down: WebSocket): void;
}

/**
 * A relay on an HTTP server that forwards plain requests to `port` on `host` and joins each
 * channel upgrade to a new socket to the control plane with the same auth headers. The
 * runner's frames pass on as they came (a frame sent before the upstream socket opened is held
 * and keeps its kind: a text hello sent on as binary would be refused); a close on either side
 * closes both.
 */
export function relayServer(host: string, port: number | string, hooks: RelayHooks): http.Server {
  const server = forwardingServer(host, port);
  const wss = new WebSocketServer({ noServer: true, maxPayload: 64 * 1024 * 1024 });
  server.on("upgrade", (req: http.IncomingMessage, socket: Duplex, head: Buffer) => {
    wss.handleUpgrade(req, socket, head, (down) => {
      const headers: Record<string, string> = {};
      for (const name of FORWARDED_HEADERS)
        if (typeof req.headers[name] === "string") headers[name] = req.headers[name];
      const up = new WebSocket(`ws://${host}:${port}${req.url ?? "/"}`, { headers, maxPayload: 64 * 1024 * 1024 });
      const early: Array<{ data: RawData; binary: boolean }> = [];
      hooks.onConnection?.(down);
      down.on("message", (data: RawData, binary: boolean) => {
        hooks.fromRunner?.(data);
        if (up.readyState === WebSocket.OPEN) up.send(data, { binary });
        else early.push({ data, binary });
      });
      up.on("open", () => early.splice(0).forEach(({ data, binary }) => up.send(data, { binary })));
      up.on("message", (data: RawData) => hooks.fromControlPlane(data, down));
      // Close codes the ws library may not send itself (1005, 1006) become 1011.
      const closeBoth = (code: number) => {
        const usable = code === 1000 || (code >= 3000 && code <= 4999) ? code : 1011;
        if (up.readyState <= WebSocket.OPEN) up.close(usable);
        if (down.readyState <= WebSocket.OPEN) down.close(usable);
      };
      up.on("close", closeBoth);
      down.on("close", closeBoth);
      up.on("error", () => closeBoth(1011));
      down.on("error", () => closeBoth(1011));
    });
  });
  return server;
}

export type Frame = Record<string, unknown>;

export interface FrameLog {
  frames: Frame[];
  /** Resolves with the index of the first frame at or after `from` that matches. */
  waitFor(match: (frame: Frame) => boolean, from: number, timeoutMs: number): Promise<number>;
}

export interface WsRelay {
  /** Base URL to register the runner with. */
  url: string;
  /** What the runner sent, decoded. */
  fromRunner: FrameLog;
  /** What the control plane sent (not what was injected), decoded, including frames held back. */
  fromControlPlane: FrameLog;
  /** Sends a frame to the runner on its newest open connection. */
  inject(text: string): void;
}

function frameLog(what: string): FrameLog & { push(text: string): Frame } {
  const frames: Frame[] = [];
  const waiters = new Set<() => void>();
  return {
    frames,
    push(text) {
      let frame: Frame;
      try {
        frame = JSON.parse(text) as Frame;
      } catch {
        frame = { unparsed: text.slice(0, 200) };
      }
      frames.push(frame);
      for (const wake of [...waiters]) wake();
      return frame;
    },
    waitFor(match, from, timeoutMs) {
      return new Promise((resolve, reject) => {
        const check = () => {
          const index = frames.findIndex((frame, i) => i >= from && match(frame));
          if (index === -1) return false;
          clearTimeout(timer);
          waiters.delete(check);
          resolve(index);
          return true;
        };
        const timer = setTimeout(() => {
          waiters.delete(check);
          const seen = frames.slice(from).map((f) => JSON.stringify(f).slice(0, 300));
          reject(
            new Error(`no matching frame ${what} within ${timeoutMs} ms; frames since #${from}:\n${seen.join("\n")}`),
          );
        }, timeoutMs);
        if (!check()) waiters.add(check);
      });
    },
  };
}

export interface WsRelayOptions {
  /** Frames of the control plane's that are recorded but not passed on to the runner. */
  holdBack?: (frame: Frame) => boolean;
}

export async function startWsRelay(
  t: TestContext,
  controlPlaneUrl: string,
  options: WsRelayOptions = {},
): Promise<WsRelay> {
  const target = new URL(controlPlaneUrl);
  const fromRunner = frameLog("from the runner");
  const fromControlPlane = frameLog("from the control plane");
  const downstreams: WebSocket[] = [];

  const server = relayServer(target.hostname, target.port, {
    onConnection: (down) => downstreams.push(down),
    fromRunner: (data) => fromRunner.push(data.toString()),
    fromControlPlane: (data, down) => {
      const text = data.toString();
      const frame = fromControlPlane.push(text);
      if (options.holdBack?.(frame)) return;
      if (down.readyState === WebSocket.OPEN) down.send(text);
    },
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  onCleanup(t, async () => {
    for (const ws of downstreams) ws.terminate();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });
  return {
    url: `http://127.0.0.1:${(server.address() as { port: number }).port}`,
    fromRunner,
    fromControlPlane,
    inject(text) {
      const open = downstreams.filter((ws) => ws.readyState === WebSocket.OPEN);
      if (open.length === 0) throw new Error("the runner has no open connection to the relay");
      open[open.length - 1]!.send(text);
    },
  };
}
