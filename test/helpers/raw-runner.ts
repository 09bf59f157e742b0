// A runner reduced to a raw protocol client over loopback (no agent code), for tests that
// drive control planes by URL (in-process or child processes): register through the HTTP
// API, connect the channel, send what the test says, wait for what arrives.
import type { TestContext } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import WebSocket from "ws";
import type { AdminClient } from "../../src/api-client/admin.js";
import {
  decodeControlMessage,
  encode,
  type ControlMessage,
  type JobRef,
  type JobResult,
  type RunnerMessage,
} from "../../src/protocol/channel.js";
import { registerResponseSchema } from "../../src/protocol/http.js";
import { AGENT_VERSION, PROTOCOL_VERSION } from "../../src/protocol/version.js";
import { channelHeaders, channelUrl, finishedResult, type ChannelIdentity } from "./channel-fixtures.js";
import { onCleanup } from "./cleanup.js";

export type Identity = ChannelIdentity;

/**
 * Registers a runner named `name` with a new registration token from `admin`; `replace` asks
 * the control plane to replace a runner already registered from the same host.
 */
export async function registerRawRunner(
  url: string,
  admin: AdminClient,
  name: string,
  labels: string[] = ["linux"],
  replace = false,
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
      replace,
    }),
  });
  assert.equal(response.status, 201, await response.clone().text());
  const { runnerId, credential } = registerResponseSchema.parse(await response.json());
  return { runnerId, credential };
}

export type Of<T extends ControlMessage["type"]> = Extract<ControlMessage, { type: T }>;

export interface RawRunnerOptions {
  /** How long `next`/`nextOf` wait by default before they reject (ms). */
  waitMs?: number;
}

export type HelloOptions = { capacity?: number; running?: JobRef[]; pendingResults?: JobRef[]; labels?: string[] };

export class RawRunner {
  private readonly pending: ControlMessage[] = [];
  private readonly waiters: { types: readonly string[]; resolve: (m: ControlMessage) => void }[] = [];
  private readonly waitMs: number;
  /** Every message received, in order (also those already taken by `next`). */
  readonly received: ControlMessage[] = [];
  readonly closed: Promise<{ code: number; reason: string }>;

  private constructor(
    readonly ws: WebSocket,
    readonly identity: Identity,
    pingMs: number | false,
    options: RawRunnerOptions,
  ) {
    this.waitMs = options.waitMs ?? 10_000;
    ws.on("message", (data: Buffer) => {
      const decoded = decodeControlMessage(data.toString("utf8"));
      assert.ok(decoded.ok, `the control plane sent a frame outside the protocol: ${decoded.ok ? "" : decoded.detail}`);
      const message = decoded.message;
      this.received.push(message);
      const index = this.waiters.findIndex((w) => w.types.includes(message.type));
      if (index >= 0) this.waiters.splice(index, 1)[0]!.resolve(message);
      else this.pending.push(message);
    });
    this.closed = new Promise((resolve) =>
      ws.once("close", (code, reason) => resolve({ code, reason: reason.toString() })),
    );
    // Like an agent: pings keep the connection (and its leases) alive. Without them the runner
    // is heard only by its frames, which is what the heartbeat tests need.
    if (pingMs !== false) {
      const pinger = setInterval(() => ws.readyState === WebSocket.OPEN && ws.ping(), pingMs);
      void this.closed.then(() => clearInterval(pinger));
    }
  }

  /**
   * Connects to the control plane at `url` (http://…), pinging every `pingMs` (false: never).
   * Rejects when the upgrade is refused (with its HTTP status); the socket is cut when the test ends.
   */
  static async connect(
    t: TestContext,
    url: string,
    identity: Identity,
    pingMs: number | false = 250,
    options: RawRunnerOptions = {},
  ): Promise<RawRunner> {
    const ws = new WebSocket(channelUrl(url), { headers: channelHeaders(identity) });
    onCleanup(t, () => ws.terminate());
    await new Promise<void>((resolve, reject) => {
      ws.once("open", resolve);
      ws.once("error", reject);
      ws.once("unexpected-response", (_req, res) => reject(new Error(`upgrade refused: ${res.statusCode}`)));
    });
    return new RawRunner(ws, identity, pingMs, options);
  }

  /** Sends a protocol message, or a raw string as it is (for frames outside the protocol). */
  send(message: RunnerMessage | string): void {
    this.ws.send(typeof message === "string" ? message : encode(message));
  }

  /** The next message of this type (earlier ones of other types stay queued). */
  next<T extends ControlMessage["type"]>(type: T, timeoutMs = this.waitMs): Promise<Of<T>> {
    return this.nextOf([type], timeoutMs);
  }

  /** The next message of any of these types (earlier ones of other types stay queued). */
  nextOf<T extends ControlMessage["type"]>(types: readonly T[], timeoutMs = this.waitMs): Promise<Of<T>> {
    const index = this.pending.findIndex((m) => (types as readonly string[]).includes(m.type));
    if (index >= 0) return Promise.resolve(this.pending.splice(index, 1)[0] as Of<T>);
    return new Promise((resolve, reject) => {
      const waiter = { types, resolve: (m: ControlMessage) => (clearTimeout(timer), resolve(m as Of<T>)) };
      const timer = setTimeout(() => {
        this.waiters.splice(this.waiters.indexOf(waiter), 1);
        reject(new Error(`no ${types.join(" or ")} within ${timeoutMs} ms`));
      }, timeoutMs);
      this.waiters.push(waiter);
    });
  }

  /** Asserts that no message of this type is queued after `ms` (one not yet taken by `next`). */
  async expectNo(type: ControlMessage["type"], ms = 150): Promise<void> {
    await new Promise((resolve) => setTimeout(resolve, ms));
    const found = this.pending.filter((m) => m.type === type);
    assert.deepEqual(found, [], `unexpected ${type}`);
  }

  /** Sends `hello` (without waiting for the welcome). */
  sendHello(options: HelloOptions = {}): void {
    this.send({
      type: "hello",
      protocolVersion: PROTOCOL_VERSION,
      agentVersion: AGENT_VERSION,
      runnerId: this.identity.runnerId,
      capacity: options.capacity ?? 4,
      running: options.running ?? [],
      pendingResults: options.pendingResults ?? [],
      ...(options.labels ? { labels: options.labels } : {}),
    });
  }

  async hello(options: HelloOptions = {}): Promise<Of<"welcome">> {
    this.sendHello(options);
    return this.next("welcome");
  }

  ready(slots: number): void {
    this.send({ type: "ready", slots });
  }

  result(ref: JobRef, outcome: JobResult["outcome"] = "succeeded", exitCode: number | null = 0): void {
    this.send({ type: "result", result: finishedResult(ref, outcome, exitCode) });
  }

  close(): Promise<{ code: number; reason: string }> {
    this.ws.close();
    return this.closed;
  }

  /** Drops the TCP connection without a closing handshake (a crash or a cut cable). */
  drop(): Promise<{ code: number; reason: string }> {
    this.ws.terminate();
    return this.closed;
  }
}
