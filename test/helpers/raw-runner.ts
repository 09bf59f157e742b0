// A runner reduced to a raw protocol client over loopback (no agent code), for tests that
// drive control planes by URL (in-process or child processes): register through the HTTP
// API, connect the channel, send what the test says, wait for what arrives.
import type { TestContext } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import WebSocket from "ws";
import type { AdminClient } from "../../src/api-client/admin.js";
import {
  AGENT_VERSION_HEADER,
  CHANNEL_PATH,
  PROTOCOL_HEADER,
  RUNNER_ID_HEADER,
  decodeControlMessage,
  encode,
  type ControlMessage,
  type JobRef,
  type RunnerMessage,
} from "../../src/protocol/channel.js";
import { registerResponseSchema } from "../../src/protocol/http.js";
import { AGENT_VERSION, PROTOCOL_VERSION } from "../../src/protocol/version.js";

export interface Identity {
  runnerId: string;
  credential: string;
}

/** Registers a runner named `name` with a new registration token from `admin`. */
export async function registerRawRunner(
  url: string,
  admin: AdminClient,
  name: string,
  labels: string[] = ["linux"],
): Promise<Identity> {
  const { token } = await admin.createRegistrationToken();
  const response = await fetch(`${url}/api/v1/runners/register`, {
    method: "POST",
    headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
    body: JSON.stringify({
      protocolVersion: PROTOCOL_VERSION,
      agentVersion: AGENT_VERSION,
      name,
      labels,
      host: {
        hostname: name,
        platform: "linux",
        arch: "x64",
        fingerprint: createHash("sha256").update(name).digest("hex"),
      },
    }),
  });
  assert.equal(response.status, 201, await response.clone().text());
  return registerResponseSchema.parse(await response.json());
}

export type Of<T extends ControlMessage["type"]> = Extract<ControlMessage, { type: T }>;

export class RawRunner {
  private readonly pending: ControlMessage[] = [];
  private readonly waiters: { types: readonly string[]; resolve: (m: ControlMessage) => void }[] = [];
  private readonly pinger: NodeJS.Timeout;
  /** Every message received, in order (also those already taken by `next`). */
  readonly received: ControlMessage[] = [];
  readonly closed: Promise<{ code: number; reason: string }>;

  private constructor(
    readonly ws: WebSocket,
    readonly identity: Identity,
    pingMs: number,
  ) {
    ws.on("message", (data: Buffer) => {
      const decoded = decodeControlMessage(data.toString("utf8"));
      assert.ok(decoded.ok, "the control plane sent a frame outside the protocol");
      this.received.push(decoded.message);
      const index = this.waiters.findIndex((w) => w.types.includes(decoded.message.type));
      if (index >= 0) this.waiters.splice(index, 1)[0]!.resolve(decoded.message);
      else this.pending.push(decoded.message);
    });
    this.closed = new Promise((resolve) =>
      ws.once("close", (code, reason) => resolve({ code, reason: reason.toString() })),
    );
    // Like an agent: pings keep the connection (and its leases) alive.
    this.pinger = setInterval(() => ws.readyState === WebSocket.OPEN && ws.ping(), pingMs);
    void this.closed.then(() => clearInterval(this.pinger));
  }

  /** Connects to the control plane at `url` (http://…); the socket is cut when the test ends. */
  static async connect(t: TestContext, url: string, identity: Identity, pingMs = 250): Promise<RawRunner> {
    const ws = new WebSocket(url.replace(/^http/, "ws") + CHANNEL_PATH, {
      headers: {
        authorization: `Bearer ${identity.credential}`,
        [RUNNER_ID_HEADER]: identity.runnerId,
        [PROTOCOL_HEADER]: String(PROTOCOL_VERSION),
        [AGENT_VERSION_HEADER]: AGENT_VERSION,
      },
    });
    await new Promise<void>((resolve, reject) => {
      ws.once("open", resolve);
      ws.once("error", reject);
    });
    const runner = new RawRunner(ws, identity, pingMs);
    t.after(() => ws.terminate());
    return runner;
  }

  send(message: RunnerMessage): void {
    this.ws.send(encode(message));
  }

  /** The next message of this type (earlier ones of other types stay queued). */
  next<T extends ControlMessage["type"]>(type: T, timeoutMs = 10_000): Promise<Of<T>> {
    const index = this.pending.findIndex((m) => m.type === type);
    if (index >= 0) return Promise.resolve(this.pending.splice(index, 1)[0] as Of<T>);
    return new Promise((resolve, reject) => {
      const waiter = { types: [type], resolve: (m: ControlMessage) => (clearTimeout(timer), resolve(m as Of<T>)) };
      const timer = setTimeout(() => {
        this.waiters.splice(this.waiters.indexOf(waiter), 1);
        reject(new Error(`no ${type} within ${timeoutMs} ms`));
      }, timeoutMs);
      this.waiters.push(waiter);
    });
  }

  /** Sends `hello` (without waiting for the welcome). */
  sendHello(options: { capacity?: number; running?: JobRef[] } = {}): void {
    this.send({
      type: "hello",
      protocolVersion: PROTOCOL_VERSION,
      agentVersion: AGENT_VERSION,
      runnerId: this.identity.runnerId,
      capacity: options.capacity ?? 4,
      running: options.running ?? [],
      pendingResults: [],
    });
  }

  async hello(options: { capacity?: number; running?: JobRef[] } = {}): Promise<Of<"welcome">> {
    this.sendHello(options);
    return this.next("welcome");
  }

  result(ref: JobRef): void {
    const at = new Date().toISOString();
    this.send({
      type: "result",
      result: { ...ref, outcome: "succeeded", exitCode: 0, signal: null, reason: null, startedAt: at, finishedAt: at },
    });
  }
}
