// The control plane's end of the WebSocket channel (protocol v1): authenticates the upgrade
// before accepting it, keeps one connection per runner (a new one replaces the old), expects
// `hello` first, answers `welcome`, then hands each decoded message to the job queue.
// Liveness is the runner's job (it pings); this side only drops connections it has not
// heard from (message or ping) within IDLE_HEARTBEATS heartbeat intervals.
import type http from "node:http";
import { STATUS_CODES } from "node:http";
import type { Duplex } from "node:stream";
import type { EventEmitter } from "node:events";
import { WebSocket, WebSocketServer, type RawData } from "ws";
import {
  AGENT_VERSION_HEADER,
  CHANNEL_PATH,
  DEFAULT_MAX_FRAME_BYTES,
  PROTOCOL_HEADER,
  RUNNER_ID_HEADER,
  decodeRunnerMessage,
  encode,
  type ControlMessage,
  type RunnerMessage,
} from "../../protocol/channel.js";
import { runnerIdSchema } from "../../protocol/http.js";
import { PROTOCOL_VERSION } from "../../protocol/version.js";
import { RunnerError } from "../../errors.js";
import { SUPPORTED_PROTOCOL_VERSIONS, type Context, type RunnerChannels } from "../context.js";
import { HttpError, parseBearer, toErrorAnswer } from "../http/router.js";
import type { RunnerEvent, RunnerLink } from "../queue/job-queue.js";
import { authenticateRunner } from "../http/runner-routes.js";
import type { RunnerRecord } from "../store/contract.js";
import type { DeviceSyncEndpoint } from "./device-sync.js";
import type { ReplicaBus } from "../queue/replica-bus.js";
import { appendLog } from "./log-intake.js";

/** A connection not heard from for this many heartbeat intervals is terminated. */
export const IDLE_HEARTBEATS = 2.5;
/** Close codes the control plane uses (1008 and 1009 are the standard ones). */
export const CLOSE_CODES = {
  goingAway: 1001,
  policyViolation: 1008,
  frameTooLarge: 1009,
  /** The control plane failed to handle a frame whose loss the runner's next hello repairs. */
  internalError: 1011,
  replaced: 4000,
  /** An admin revoked the credential: a reconnect gets 401 credential_revoked. */
  revoked: 4001,
  /**
   * The runner was deleted, unregistered itself, or a registration with `replace` took its
   * name (which deletes it): a reconnect gets 404 runner_not_found.
   */
  deleted: 4002,
} as const;

/** Why an admin action or a registration ends a runner's channel, and how the close says it. */
const DISCONNECTS = {
  revoked: { code: CLOSE_CODES.revoked, reason: "credential revoked" },
  deleted: { code: CLOSE_CODES.deleted, reason: "runner deleted" },
  replaced: { code: CLOSE_CODES.deleted, reason: "runner replaced by a new registration" },
} as const;
export type DisconnectWhy = keyof typeof DISCONNECTS;
/** Frame types whose failed handling closes the connection (1011), so that the runner's hello restates them. */
const RESTATED_ON_RECONNECT: ReadonlySet<string> = new Set(["result", "reject", "ready"]);
/** Frames of one connection waiting for the store before its socket is paused, and resumed. */
const BACKLOG_PAUSE = 64;
const BACKLOG_RESUME = 16;
/** On close, connections get this long to finish the closing handshake before being cut. */
const CLOSE_GRACE_MS = 1000;

export interface ChannelOptions {
  /** The device sync's end of the channel: answers `devices_summary` and `devices`. */
  devices: DeviceSyncEndpoint;
  heartbeatIntervalMs: number;
  leaseMs: number;
  maxFrameBytes: number;
  deviceScanIntervalMs: number;
  deviceRefreshMs: number;
  /** Log each job attempt may store (channel/log-intake.ts). */
  maxLogBytesPerJob: number;
  maxLogChunksPerJob: number;
  events: EventEmitter;
  /** Tells the other replicas of a new connection (they close older ones) and of runners that may no longer connect. */
  bus: ReplicaBus;
}

interface Connection {
  readonly ws: WebSocket;
  readonly runner: RunnerRecord;
  state: "awaiting_hello" | "open" | "closing";
  link: RunnerLink | undefined;
  /**
   * The frames of one connection are handled one after the other, each after the previous
   * one's store calls: a runner's `started` must not be applied after its `result`.
   */
  handling: Promise<void>;
  /** Frames received and not yet handled; over BACKLOG_PAUSE the socket is paused until BACKLOG_RESUME. */
  backlog: number;
  /** Whether a frame arrived: the first (the hello) may be larger than maxFrameBytes, no other may. */
  heardFrame: boolean;
  /** Log refusals already answered on this connection (channel/log-intake.ts). */
  readonly toldLogRefusals: Set<string>;
  readonly connectedAt: number;
  /** performance.now() of the last frame or ping from the runner. */
  lastHeardAt: number;
  /** The runner's connection generation the store gave this connection; undefined until it answered. */
  generation: number | undefined;
  /** The highest generation another replica announced for this runner before this one's was known. */
  newerSeen: number;
}

type Hello = Extract<RunnerMessage, { type: "hello" }>;

/**
 * Built before the HTTP server, which hands it every `upgrade` request (control-plane.ts);
 * the HTTP handlers reach it through the context to end a runner's channel.
 */
export class ChannelEndpoint implements RunnerChannels {
  private readonly wss: WebSocketServer;
  private readonly connections = new Map<string, Connection>();
  private readonly idleLimitMs: number;
  private readonly sweepTimer: NodeJS.Timeout;

  constructor(
    private readonly context: Context,
    private readonly options: ChannelOptions,
  ) {
    // ws closes a connection with 1009 by itself when a frame is over maxPayload: that is the
    // limit of a hello, sent before the runner knows maxFrameBytes (PROTOCOL.md, "Frames"); the
    // frames after it are held to maxFrameBytes here (receive).
    this.wss = new WebSocketServer({
      noServer: true,
      maxPayload: Math.max(options.maxFrameBytes, DEFAULT_MAX_FRAME_BYTES),
    });
    // What ws still refuses after checkHandshake (a malformed Sec-WebSocket-Protocol) gets the
    // protocol's JSON answer too, instead of ws's plain-text one.
    this.wss.on("wsClientError", (error: Error, socket: Duplex) =>
      this.refuse(socket, new HttpError(400, "bad_request", `not a WebSocket handshake: ${error.message}`)),
    );
    this.idleLimitMs = options.heartbeatIntervalMs * IDLE_HEARTBEATS;
    this.sweepTimer = setInterval(() => this.dropSilentConnections(), Math.max(10, options.heartbeatIntervalMs / 2));
  }

  // ---- upgrade ----

  upgrade(req: http.IncomingMessage, socket: Duplex, head: Buffer): void {
    socket.on("error", (error) => this.context.logger.debug({ err: error }, "channel upgrade socket error"));
    this.authenticate(req)
      .then(
        (runner) => {
          // The client may have given up while the store was asked.
          if (socket.destroyed) return;
          this.wss.handleUpgrade(req, socket, head, (ws) => this.open(ws, runner));
        },
        (error: unknown) => this.refuse(socket, error),
      )
      .catch((error: unknown) => {
        this.context.logger.error({ err: error }, "channel upgrade failed");
        socket.destroy();
      });
  }

  /** The checks of /runners/verify, without the fingerprint, from the upgrade's headers. */
  private async authenticate(req: http.IncomingMessage): Promise<RunnerRecord> {
    const path = new URL(req.url ?? "/", "http://localhost").pathname;
    if (path !== CHANNEL_PATH) throw new HttpError(404, "not_found", `no such endpoint: ${path}`);
    checkHandshake(req);
    const bearer = parseBearer(req.headers.authorization);
    if (bearer === undefined)
      throw new HttpError(401, "unauthorized", "missing or malformed header: Authorization: Bearer <credential>");
    const runnerId = runnerIdSchema.safeParse(header(req, RUNNER_ID_HEADER));
    if (!runnerId.success) throw new HttpError(400, "bad_request", `header ${RUNNER_ID_HEADER}: a runner id (rnr_...)`);
    const protocol = header(req, PROTOCOL_HEADER) ?? "";
    if (!/^\d{1,9}$/.test(protocol))
      throw new HttpError(400, "bad_request", `header ${PROTOCOL_HEADER}: the protocol version, an integer`);
    const agentVersion = header(req, AGENT_VERSION_HEADER) ?? "";
    if (agentVersion.length === 0 || agentVersion.length > 64) {
      throw new HttpError(400, "bad_request", `header ${AGENT_VERSION_HEADER}: the agent version, 1-64 characters`);
    }
    return authenticateRunner(this.context, bearer, {
      protocolVersion: Number(protocol),
      agentVersion,
      runnerId: runnerId.data,
    });
  }

  /** Answers the upgrade request with a plain HTTP error (the protocol's JSON body) and drops the socket. */
  private refuse(socket: Duplex, error: unknown): void {
    const { status, body, headers } = toErrorAnswer(this.context, error);
    this.context.logger.info({ status, code: body.error.code, reason: body.error.message }, "channel upgrade refused");
    const text = JSON.stringify(body);
    const head = [
      `HTTP/1.1 ${status} ${STATUS_CODES[status] ?? "Error"}`,
      "Connection: close",
      "Content-Type: application/json; charset=utf-8",
      `Content-Length: ${Buffer.byteLength(text)}`,
      "Cache-Control: no-store",
      ...Object.entries(headers).map(([name, value]) => `${name}: ${value}`),
    ];
    socket.once("finish", () => socket.destroy());
    socket.end(`${head.join("\r\n")}\r\n\r\n${text}`);
  }

  // ---- connection lifecycle ----

  private open(ws: WebSocket, runner: RunnerRecord): void {
    const now = performance.now();
    const connection: Connection = {
      ws,
      runner,
      state: "awaiting_hello",
      link: undefined,
      connectedAt: now,
      lastHeardAt: now,
      handling: Promise.resolve(),
      backlog: 0,
      generation: undefined,
      newerSeen: 0,
      heardFrame: false,
      toldLogRefusals: new Set(),
    };
    const previous = this.connections.get(runner.id);
    this.connections.set(runner.id, connection);
    if (previous) {
      this.context.logger.info({ runnerId: runner.id }, "a new channel replaces the runner's previous one");
      this.closeConnection(previous, CLOSE_CODES.replaced, "replaced");
    }
    this.claimGeneration(connection).catch((error: unknown) =>
      this.context.logger.warn({ err: error, runnerId: runner.id }, "recording a runner's connection failed"),
    );
    ws.on("message", (data, isBinary) => this.receive(connection, data, isBinary));
    ws.on("ping", () => this.hear(connection));
    ws.on("pong", () => this.hear(connection));
    ws.on("error", (error) => this.logSocketError(connection, error));
    ws.on("close", (code, reason) => this.closed(connection, code, reason.toString("utf8")));
    this.context.logger.info({ runnerId: runner.id }, "channel connected; waiting for hello");
  }

  /**
   * One connection per runner across replicas: the store numbers this connection, the others
   * hear of it and close an older one of theirs (4000). Should another replica's newer number
   * arrive before this one's, this connection is the older: closed as soon as it is known.
   */
  private async claimGeneration(connection: Connection): Promise<void> {
    const runnerId = connection.runner.id;
    const generation = await this.context.store.openChannelGeneration(runnerId, this.context.now());
    if (generation === undefined) return;
    connection.generation = generation;
    if (connection.newerSeen > generation) return this.supersede(connection);
    this.options.bus.publish({ kind: "connected", runnerId, generation });
  }

  /** Another replica announced a connection of this runner: an older one here is closed with 4000. */
  replacedElsewhere(runnerId: string, generation: number): void {
    const connection = this.connections.get(runnerId);
    if (!connection) return;
    if (connection.generation === undefined) connection.newerSeen = Math.max(connection.newerSeen, generation);
    else if (connection.generation < generation) this.supersede(connection);
  }

  private supersede(connection: Connection): void {
    this.context.logger.info(
      { runnerId: connection.runner.id },
      "the runner connected to another control-plane replica: this channel is replaced",
    );
    if (this.connections.get(connection.runner.id) === connection) this.connections.delete(connection.runner.id);
    this.closeConnection(connection, CLOSE_CODES.replaced, "replaced");
  }

  /** After the bus's listener reconnected: a connection here that a newer one elsewhere replaced meanwhile is closed. */
  async resync(): Promise<void> {
    for (const connection of [...this.connections.values()]) {
      if (connection.generation === undefined) continue;
      const current = await this.context.store.channelGeneration(connection.runner.id);
      if (current !== undefined && current > connection.generation) this.supersede(connection);
    }
  }

  disconnectRunner(runnerId: string, why: DisconnectWhy, fromReplica = false): void {
    const connection = this.connections.get(runnerId);
    if (!connection) {
      // Connected to another replica, maybe: that one closes it.
      if (!fromReplica) this.options.bus.publish({ kind: "ended", runnerId, why });
      return;
    }
    this.context.logger.info({ runnerId, why }, "closing the channel of a runner that may no longer connect");
    const { code, reason } = DISCONNECTS[why];
    this.closeConnection(connection, code, reason);
  }

  /** Starts the closing handshake and forgets the runner's link at once (no more assignments on it). */
  private closeConnection(connection: Connection, code: number, reason: string): void {
    this.unlink(connection);
    connection.ws.close(code, reason);
  }

  private closed(connection: Connection, code: number, reason: string): void {
    if (this.connections.get(connection.runner.id) === connection) this.connections.delete(connection.runner.id);
    this.unlink(connection);
    this.context.logger.info({ runnerId: connection.runner.id, code, reason }, "channel closed");
  }

  private unlink(connection: Connection): void {
    connection.state = "closing";
    const link = connection.link;
    if (!link) return;
    connection.link = undefined;
    this.context.queue.disconnect(link);
    this.emitRunnerEvent({ runnerId: link.runnerId, event: "disconnected" });
  }

  private logSocketError(connection: Connection, error: Error): void {
    const code = (error as { code?: string }).code;
    if (code === "WS_ERR_UNSUPPORTED_MESSAGE_LENGTH") {
      this.refuseLargeFrame(connection);
    } else {
      this.context.logger.warn({ runnerId: connection.runner.id, err: error, code }, "channel socket error");
    }
  }

  private refuseLargeFrame(connection: Connection): void {
    this.context.logger.warn(
      { runnerId: connection.runner.id, maxFrameBytes: this.options.maxFrameBytes },
      "frame over the size limit: connection closed with 1009",
    );
  }

  private dropSilentConnections(): void {
    const now = performance.now();
    for (const connection of this.connections.values()) {
      if (now - connection.lastHeardAt > this.idleLimitMs) {
        this.context.logger.warn(
          { runnerId: connection.runner.id, silentMs: Math.round(now - connection.lastHeardAt) },
          "runner silent (no frame, no ping): connection terminated",
        );
        this.unlink(connection);
        // A peer that went quiet may be gone: no closing handshake to wait for.
        connection.ws.terminate();
      } else if (connection.state === "awaiting_hello" && now - connection.connectedAt > this.idleLimitMs) {
        this.closeConnection(connection, CLOSE_CODES.policyViolation, "no hello");
      }
    }
  }

  /** Closes every connection (1001) and stops the idle sweep; the HTTP server stops handing it upgrades first. */
  async close(): Promise<void> {
    clearInterval(this.sweepTimer);
    const closing = [...this.wss.clients].map(
      (ws) =>
        new Promise<void>((resolve) => {
          if (ws.readyState === WebSocket.CLOSED) return resolve();
          ws.once("close", () => resolve());
          const cut = setTimeout(() => ws.terminate(), CLOSE_GRACE_MS);
          ws.once("close", () => clearTimeout(cut));
          ws.close(CLOSE_CODES.goingAway, "control plane shutting down");
        }),
    );
    for (const connection of this.connections.values()) this.unlink(connection);
    await Promise.all(closing);
    await new Promise<void>((resolve) => this.wss.close(() => resolve()));
  }

  // ---- frames ----

  private hear(connection: Connection): void {
    connection.lastHeardAt = performance.now();
    if (connection.link)
      this.context.queue
        .renewLeases(connection.link)
        .catch((error: unknown) =>
          this.context.logger.error({ err: error, runnerId: connection.runner.id }, "lease renewal failed"),
        );
  }

  private receive(connection: Connection, data: RawData, isBinary: boolean): void {
    this.hear(connection);
    if (connection.state === "closing") return;
    const first = !connection.heardFrame;
    connection.heardFrame = true;
    if (!first && frameBytes(data) > this.options.maxFrameBytes) {
      this.refuseLargeFrame(connection);
      return this.closeConnection(connection, CLOSE_CODES.frameTooLarge, "frame over maxFrameBytes");
    }
    if (isBinary)
      return this.refuseFrame(connection, "binary_frame", "binary frames are not part of the protocol; send JSON text");
    const text = toText(data);
    const decoded = decodeRunnerMessage(text);
    const link = connection.link;
    if (!decoded.ok && decoded.problem === "invalid" && link) {
      // "invalid" means JSON of a known type: parsing it again cannot throw.
      const raw = JSON.parse(text) as unknown;
      if (typeOf(raw) === "devices")
        return this.handle(connection, "devices", () =>
          this.answerInvalidDevices(connection, link, raw, decoded.detail),
        );
    }
    if (!decoded.ok) return this.refuseFrame(connection, decoded.problem, decoded.detail);
    const message = decoded.message;
    this.handle(connection, message.type, async () => {
      if (connection.state === "closing") return;
      if (connection.state === "awaiting_hello") {
        if (message.type === "hello") await this.welcome(connection, message);
        else this.closeConnection(connection, CLOSE_CODES.policyViolation, `expected hello first, got ${message.type}`);
        return;
      }
      if (connection.link) await this.route(connection, connection.link, message);
    });
  }

  /**
   * Queues a frame's handler behind the connection's earlier frames; a failure is logged and
   * answered `error` `internal`, and the connection stays up.
   */
  private handle(connection: Connection, type: string, handler: () => Promise<void>): void {
    // A runner that sends faster than the store answers (a remote database) is read more
    // slowly: TCP pushes back on it, and the queue of frames here stays short.
    if (++connection.backlog === BACKLOG_PAUSE) connection.ws.pause();
    connection.handling = connection.handling
      .then(() => this.runHandler(connection, type, handler))
      .finally(() => {
        if (--connection.backlog === BACKLOG_RESUME) connection.ws.resume();
      });
  }

  private async runHandler(connection: Connection, type: string, handler: () => Promise<void>): Promise<void> {
    try {
      await handler();
    } catch (error) {
      this.context.logger.error({ err: error, runnerId: connection.runner.id, type }, "channel message failed");
      this.send(connection, {
        type: "error",
        code: "internal",
        message: `the control plane failed to handle ${type}; see its log`,
      });
      // A result, a reject or a ready that was lost would strand its job (running, or held by a
      // runner that does not run it) or the runner's credits for as long as the connection
      // lasts: closed, the runner says hello again, which squares its jobs, re-sends its
      // results and grants its credits anew.
      if (RESTATED_ON_RECONNECT.has(type))
        this.closeConnection(connection, CLOSE_CODES.internalError, `the control plane failed to handle ${type}`);
    }
  }

  /** A frame that cannot be used: logged and answered with `error`; before hello it ends the connection. */
  private refuseFrame(connection: Connection, code: string, detail: string): void {
    this.context.logger.warn({ runnerId: connection.runner.id, code, detail }, "bad frame from runner");
    if (connection.state === "awaiting_hello") {
      this.closeConnection(connection, CLOSE_CODES.policyViolation, `expected hello first (${code})`);
      return;
    }
    this.send(connection, { type: "error", code, message: detail });
  }

  /** A `devices` frame that failed validation gets an answer that ends the runner's sync (never `error` alone when it can be addressed). */
  private async answerInvalidDevices(
    connection: Connection,
    link: RunnerLink,
    raw: unknown,
    detail: string,
  ): Promise<void> {
    for (const answer of await this.options.devices.answerInvalidBatch(link.runnerId, raw, detail))
      this.send(connection, answer);
  }

  private async welcome(connection: Connection, hello: Hello): Promise<void> {
    // Read again: an admin may have paused, relabelled or deleted the runner since the upgrade.
    const runner = await this.context.store.findRunner(connection.runner.id);
    if (connection.state === "closing") return;
    if (!runner) {
      const { code, reason } = DISCONNECTS.deleted;
      return this.closeConnection(connection, code, reason);
    }
    if (hello.runnerId !== runner.id) {
      return this.closeConnection(
        connection,
        CLOSE_CODES.policyViolation,
        `hello.runnerId does not match ${RUNNER_ID_HEADER}`,
      );
    }
    if (!SUPPORTED_PROTOCOL_VERSIONS.includes(hello.protocolVersion)) {
      return this.closeConnection(
        connection,
        CLOSE_CODES.policyViolation,
        `protocol version ${hello.protocolVersion} is not supported`,
      );
    }
    const link: RunnerLink = {
      runnerId: runner.id,
      // The registered labels gate jobs: a runner's credential must not let it claim others.
      labels: new Set(runner.labels),
      capacity: hello.capacity,
      credits: 0,
      draining: false,
      paused: runner.pausedAt !== null,
      lastAssigned: 0,
      handedOut: new Set(),
      leasesRenewedAt: 0,
      send: (message) => this.send(connection, message),
    };
    const { fenced, cancels } = await this.context.queue.reconcileHello(link, hello);
    // Replaced or closed while the store was asked: this link must not join the queue.
    if (isClosing(connection)) return;
    connection.state = "open";
    connection.link = link;
    this.send(connection, {
      type: "welcome",
      protocolVersion: PROTOCOL_VERSION,
      heartbeatIntervalMs: this.options.heartbeatIntervalMs,
      leaseMs: this.options.leaseMs,
      maxFrameBytes: this.options.maxFrameBytes,
      fenced,
      deviceScanIntervalMs: this.options.deviceScanIntervalMs,
      deviceRefreshMs: this.options.deviceRefreshMs,
      paused: link.paused,
    });
    for (const cancel of cancels) this.send(connection, cancel);
    if (hello.labels !== undefined && !sameLabels(hello.labels, runner.labels))
      this.ignoreHelloLabels(connection, hello.labels, runner.labels);
    this.context.queue.connect(link);
    this.context.logger.info(
      {
        runnerId: runner.id,
        capacity: hello.capacity,
        running: hello.running.length,
        pendingResults: hello.pendingResults.length,
        fenced: fenced.length,
        paused: link.paused,
      },
      "runner said hello",
    );
    this.emitRunnerEvent({ runnerId: runner.id, event: "connected" });
  }

  /** The runner claims other labels than it has: matching keeps the registered ones, and both sides hear of it. */
  private ignoreHelloLabels(connection: Connection, claimed: readonly string[], registered: readonly string[]): void {
    this.context.logger.warn(
      { runnerId: connection.runner.id, claimed, registered },
      "hello.labels differ from the registered labels: ignored (an admin changes labels with PUT /admin/runners/{id}/labels)",
    );
    this.send(connection, {
      type: "error",
      code: "labels_ignored",
      message:
        `hello.labels are ignored: jobs are matched with the registered labels [${registered.join(", ")}]; ` +
        "an admin changes them with PUT /api/v1/admin/runners/{id}/labels (or register again)",
    });
  }

  private async route(connection: Connection, link: RunnerLink, message: RunnerMessage): Promise<void> {
    const queue = this.context.queue;
    switch (message.type) {
      case "hello":
        return this.send(connection, {
          type: "error",
          code: "unexpected_hello",
          message: "hello was already received on this connection",
        });
      case "ready":
        return queue.grantCredits(link, message.slots);
      case "accept":
        return queue.accept(link, message);
      case "reject":
        return queue.reject(link, message, message.reason);
      case "started":
        return queue.started(link, message);
      case "log": {
        const refused = await appendLog(
          this.context.store.jobs,
          this.context.logger,
          link.runnerId,
          message,
          {
            maxBytes: this.options.maxLogBytesPerJob,
            maxChunks: this.options.maxLogChunksPerJob,
          },
          connection.toldLogRefusals,
        );
        return refused && this.send(connection, refused);
      }
      case "result":
        return queue.applyResult(link, message.result);
      case "goodbye":
        return queue.drain(link, message.reason);
      case "devices_summary":
        return this.send(connection, await this.options.devices.summarize(link.runnerId, message));
      case "devices":
        for (const answer of await this.options.devices.applyBatch(link.runnerId, message))
          this.send(connection, answer);
        return;
      default: {
        const unhandled: never = message;
        throw new RunnerError("internal", `unhandled message ${JSON.stringify(unhandled)}`);
      }
    }
  }

  private send(connection: Connection, message: ControlMessage): void {
    if (connection.ws.readyState !== WebSocket.OPEN) return;
    connection.ws.send(encode(message), (error) => {
      if (error)
        this.context.logger.debug(
          { runnerId: connection.runner.id, type: message.type, err: error },
          "channel send failed",
        );
    });
  }

  private emitRunnerEvent(event: RunnerEvent): void {
    this.options.events.emit("runner", event);
  }
}

/** Read through a call: the state may have changed while a store call was awaited, which narrowing cannot see. */
function isClosing(connection: Connection): boolean {
  return connection.state === "closing";
}

function sameLabels(a: readonly string[], b: readonly string[]): boolean {
  const left = new Set(a);
  const right = new Set(b);
  return left.size === right.size && [...left].every((label) => right.has(label));
}

/** The Sec-WebSocket-Key of a handshake: 16 bytes in base64 (RFC 6455 §4.1), as ws checks it. */
const WEBSOCKET_KEY = /^[+/0-9A-Za-z]{22}==$/;

/**
 * An upgrade request that is not a WebSocket handshake ws would take is refused here, before
 * its credentials are checked (as a plain request on the channel path is, PROTOCOL.md
 * "Connecting"), with the protocol's JSON error body: ws would answer it in plain text.
 */
function checkHandshake(req: http.IncomingMessage): void {
  if (req.method !== "GET")
    throw new HttpError(405, "not_found", `${CHANNEL_PATH} is opened with GET (a WebSocket handshake)`, {
      Allow: "GET",
    });
  const notHandshake = (what: string) =>
    new HttpError(400, "bad_request", `not a WebSocket handshake (RFC 6455): ${what}`, {
      "Sec-WebSocket-Version": "13",
    });
  if (header(req, "upgrade")?.toLowerCase() !== "websocket") throw notHandshake("Upgrade must be websocket");
  if (!WEBSOCKET_KEY.test(header(req, "sec-websocket-key") ?? ""))
    throw notHandshake("missing or malformed Sec-WebSocket-Key");
  // ws speaks versions 13 (RFC 6455) and 8 (its last draft).
  const version = header(req, "sec-websocket-version");
  if (version !== "13" && version !== "8") throw notHandshake("Sec-WebSocket-Version must be 13");
}

function header(req: http.IncomingMessage, name: string): string | undefined {
  const value = req.headers[name];
  return Array.isArray(value) ? value[0] : value;
}

function typeOf(parsed: unknown): unknown {
  return typeof parsed === "object" && parsed !== null ? (parsed as { type?: unknown }).type : undefined;
}

function frameBytes(data: RawData): number {
  return Array.isArray(data) ? data.reduce((sum, part) => sum + part.length, 0) : data.byteLength;
}

function toText(data: RawData): string {
  if (Buffer.isBuffer(data)) return data.toString("utf8");
  if (Array.isArray(data)) return Buffer.concat(data).toString("utf8");
  return Buffer.from(data).toString("utf8");
}
