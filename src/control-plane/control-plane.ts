// The reference control plane (protocol v1), assembled: a store on SQLite or PostgreSQL (store/), the job
// queue (queue/) and its lease reaper, the WebSocket channel (channel/), and one node:http
// server (http/) that carries the HTTP API and hands its `upgrade` requests to the channel.
// This file normalizes the options, builds those parts in dependency order (store → queue →
// channel → HTTP) and tears them down in the reverse order.
import type http from "node:http";
import { EventEmitter } from "node:events";
import { DEFAULT_MAX_FRAME_BYTES } from "../protocol/channel.js";
import { RunnerError } from "../errors.js";
import { createLogger, type Logger } from "../log/logger.js";
import { AdminTokenHash } from "./admin-token.js";
import { ChannelEndpoint } from "./channel/endpoint.js";
import { DeviceSyncEndpoint } from "./channel/device-sync.js";
import { ADMIN_TOKEN_HASH_SETTING, type Context, type RouteContext } from "./context.js";
import { createRequestHandler } from "./http/router.js";
import { closeHttpServer, createHttpServer, listen } from "./http/server.js";
import { JobQueue } from "./queue/job-queue.js";
import { ROUTES } from "./http/routes.js";
import type { ControlPlaneStore } from "./store/contract.js";
import { openStore } from "./store/open.js";
import { generateAlphanumeric, generateToken, hashSecret } from "./tokens.js";
import type { ReplicaBus, ReplicaBusHandlers, ReplicaSignal } from "./queue/replica-bus.js";

export { MAX_BODY_BYTES } from "./http/router.js";
export { SUPPORTED_PROTOCOL_VERSIONS } from "./context.js";
export type { JobEvent, JobEventStatus, RunnerEvent } from "./queue/job-queue.js";
export type { DeviceEvent } from "./channel/device-sync.js";
export { DATABASE_FILE } from "./store/sqlite/engine.js";

/**
 * Channel and queue timings, and the limits of the HTTP server and of what a runner may store;
 * each has a default and the bounds it is checked against. PROTOCOL.md ("Limits") lists them.
 */
export const CONTROL_PLANE_SETTINGS = {
  heartbeatIntervalMs: { default: 15_000, min: 100, max: 600_000 },
  leaseMs: { default: 60_000, min: 1000, max: 7 * 24 * 3600 * 1000 },
  reaperIntervalMs: { default: 1000, min: 10, max: 600_000 },
  maxFrameBytes: { default: DEFAULT_MAX_FRAME_BYTES, min: 1024, max: 64 * 1024 * 1024 },
  deviceScanIntervalMs: { default: 60_000, min: 1000, max: 24 * 3600 * 1000 },
  deviceRefreshMs: { default: 600_000, min: 1000, max: 7 * 24 * 3600 * 1000 },
  // The HTTP server. Sockets include the runners' channels: 4096 leaves room for a fleet of a
  // few thousand runners and their HTTP calls within the default open-files limit of 1024
  // raised by systemd's (or the shell's) usual 4096+ hard limit.
  maxConnections: { default: 4096, min: 1, max: 1_000_000 },
  // Headers of a real request arrive in one packet; 10 s drops a slowloris socket quickly
  // and still forgives a slow link. A body is at most 64 KiB: 30 s is generous for it.
  headersTimeoutMs: { default: 10_000, min: 100, max: 600_000 },
  requestTimeoutMs: { default: 30_000, min: 100, max: 3_600_000 },
  keepAliveTimeoutMs: { default: 5000, min: 100, max: 600_000 },
  // What one runner may store. 64 MiB of log per job attempt holds a very verbose build (a
  // large C++ or Android build logs 10-50 MB); the chunk count bounds rows when chunks are
  // tiny (a line per read): 1,048,576 chunks is an average of 64 bytes a chunk at the byte cap.
  maxLogBytesPerJob: { default: 64 * 1024 * 1024, min: 1024, max: 2 ** 40 },
  maxLogChunksPerJob: { default: 1_048_576, min: 1, max: 2 ** 31 },
  // Thousands of devices per machine is a big device farm (the design's sync target); ten
  // thousand rows, removed devices included, is room for it and its churn.
  maxDevicesPerRunner: { default: 10_000, min: 1, max: 1_000_000 },
} as const;
type Timings = { -readonly [K in keyof typeof CONTROL_PLANE_SETTINGS]: number };

export interface ControlPlaneOptions {
  host?: string;
  /** 0 (the default) picks a free port. */
  port?: number;
  /** Directory for `control-plane.sqlite` (created 0700); in memory when absent (and no databaseUrl). */
  dataDir?: string;
  /** A PostgreSQL database (postgres://…) instead of SQLite; several control planes may share it. */
  databaseUrl?: string;
  /** Use this admin token (its hash replaces any stored one) instead of a stored or new one. */
  adminToken?: string;
  logger?: Logger;
  /** Agents older than this get 426 upgrade_required. */
  minAgentVersion?: string;
  /** The clock for stored times and leases; tests pass their own to move time. */
  now?: () => Date;
  /** How often runners ping (announced in welcome); a connection silent for 2.5 intervals is dropped. Default 15000. */
  heartbeatIntervalMs?: number;
  /** How long a job's lease lasts without the runner being heard from. Default 60000. */
  leaseMs?: number;
  /** How often expired leases are looked for. Default 1000. */
  reaperIntervalMs?: number;
  /** Largest channel frame accepted (and announced). Default DEFAULT_MAX_FRAME_BYTES (1 MiB). */
  maxFrameBytes?: number;
  /** How often runners scan their devices (announced in welcome). Default 60000. */
  deviceScanIntervalMs?: number;
  /** Runners re-send an unchanged device once its last confirmed sync is this old (announced in welcome). Default 600000. */
  deviceRefreshMs?: number;
  /** Open sockets at once (HTTP and the runners' channels); more are closed unanswered. Default 4096. */
  maxConnections?: number;
  /** A request's headers must arrive within this (else 408 and the socket is closed). Default 10000. */
  headersTimeoutMs?: number;
  /** A whole request, body included, must arrive within this (else 408 and the socket is closed). Default 30000. */
  requestTimeoutMs?: number;
  /** An idle keep-alive connection is closed after this. Default 5000. */
  keepAliveTimeoutMs?: number;
  /** UTF-8 bytes of log one job attempt may store. Default 67108864 (64 MiB). */
  maxLogBytesPerJob?: number;
  /** Log chunks one job attempt may store: `seq` must be below it. Default 1048576. */
  maxLogChunksPerJob?: number;
  /** Device rows (present and removed) one runner may have. Default 10000. */
  maxDevicesPerRunner?: number;
}

export interface ControlPlane {
  url: string;
  /** The plain admin token when given or newly generated; null when only its stored hash is known. */
  adminToken: string | null;
  httpServer: http.Server;
  store: ControlPlaneStore;
  /** `"job"` with a JobEvent at each job transition; `"runner"` with a RunnerEvent; `"devices"` with a DeviceEvent. */
  events: EventEmitter;
  /** Closes the channel's sockets, stops the reaper, stops the server, closes the database. */
  close(): Promise<void>;
}

export async function startControlPlane(options: ControlPlaneOptions = {}): Promise<ControlPlane> {
  const timings = normalizeTimings(options);
  const logger = options.logger ?? createLogger({ name: "control-plane" });
  const store = await openStore({
    dataDir: options.dataDir,
    databaseUrl: options.databaseUrl,
    onPoolError: (error) => logger.error({ err: error }, "an idle database connection failed"),
  });
  let bus: ReplicaBus | undefined;
  try {
    const { adminToken, stored: adminTokenStored } = await setUpAdminToken(store, options.adminToken);
    const adminTokenHash = new AdminTokenHash(store);
    const now = options.now ?? (() => new Date());
    const events = new EventEmitter();
    // Benchmarks and tests may attach many listeners; none is a leak.
    events.setMaxListeners(0);
    // Opened first (the queue and the channel publish on it) and bound to them once they exist:
    // a signal heard before then concerns no runner connected here, and the first pass follows.
    const replicas = bindLater();
    bus = await store.openBus("cp_" + generateAlphanumeric(12), replicas.handlers, logger);
    // Replicas already serving keep the hash they read: a new one must reach them.
    if (adminTokenStored) bus.publish({ kind: "admin_token" });
    const queue = new JobQueue({
      store: store.jobs,
      devices: store.devices,
      logger,
      now,
      leaseMs: timings.leaseMs,
      events,
      bus,
    });
    const devices = new DeviceSyncEndpoint({
      store: store.devices,
      events,
      logger,
      now,
      devicesChanged: () => queue.dispatch(),
      maxDevicesPerRunner: timings.maxDevicesPerRunner,
    });
    const context: Context = {
      store,
      queue,
      logger,
      now,
      minAgentVersion: options.minAgentVersion ?? "0.0.0",
      adminTokenHash,
    };
    // Built before the HTTP server and handed to it: the handlers need it to end a runner's
    // connection, and the server gives it every upgrade request.
    const channel = new ChannelEndpoint(context, { ...timings, devices, events, bus });
    replicas.bind({
      onSignal: (signal) => routeSignal(signal, queue, channel, adminTokenHash, logger),
      onResync: () => {
        // A new admin token may have been stored while the listener was away.
        adminTokenHash.forget();
        channel
          .resync()
          .then(() => queue.resync())
          .catch((error: unknown) =>
            logger.error({ err: error }, "resync after the replica listener reconnected failed"),
          );
      },
    });
    const routeContext: RouteContext = { ...context, channel, maxFrameBytes: timings.maxFrameBytes };
    const onUpgrade = channel.upgrade.bind(channel);
    const httpServer = createHttpServer(createRequestHandler(routeContext, ROUTES), timings, () =>
      logger.debug({ maxConnections: timings.maxConnections }, "connection closed: over maxConnections"),
    ).on("upgrade", onUpgrade);
    const address = await listen(httpServer, options.host ?? "127.0.0.1", options.port ?? 0).catch(
      async (error: unknown) => {
        await channel.close();
        throw error;
      },
    );
    const reaper = startReaper(context, timings.reaperIntervalMs);
    const url = `http://${address.family === "IPv6" ? `[${address.address}]` : address.address}:${address.port}`;
    logger.info(
      {
        url,
        store: store.engine,
        persistent: options.dataDir !== undefined || options.databaseUrl !== undefined,
        ...timings,
      },
      "control plane listening",
    );
    // The time the control plane was down does not count against runners: each gets a full lease to come back.
    await queue.extendLeasesAfterStart();
    const close = createCloser({ httpServer, onUpgrade, store, channel, reaper, bus });
    return { url, adminToken, httpServer, store, events, close };
  } catch (error) {
    await bus?.close();
    await store.close();
    throw error;
  }
}

/** Handlers that forward to ones given later: the bus exists before the parts it wakes. */
function bindLater(): { handlers: ReplicaBusHandlers; bind(target: ReplicaBusHandlers): void } {
  let target: ReplicaBusHandlers | undefined;
  return {
    handlers: {
      onSignal: (signal) => target?.onSignal(signal),
      onResync: () => target?.onResync(),
    },
    bind: (given) => {
      target = given;
    },
  };
}

/** Another replica's signal, to the part that acts on it. */
function routeSignal(
  signal: ReplicaSignal,
  queue: JobQueue,
  channel: ChannelEndpoint,
  adminTokenHash: AdminTokenHash,
  logger: Logger,
): void {
  switch (signal.kind) {
    case "admin_token":
      adminTokenHash.forget();
      return logger.info("admin token replaced on another replica: its hash is read again");
    case "connected":
      return channel.replacedElsewhere(signal.runnerId, signal.generation);
    case "ended":
      return channel.disconnectRunner(signal.runnerId, signal.why, true);
    default:
      return queue.applySignal(signal);
  }
}

function normalizeTimings(options: ControlPlaneOptions): Timings {
  const timings: Partial<Timings> = {};
  for (const [name, rule] of Object.entries(CONTROL_PLANE_SETTINGS) as [
    keyof Timings,
    (typeof CONTROL_PLANE_SETTINGS)[keyof Timings],
  ][]) {
    const value = options[name] ?? rule.default;
    if (!Number.isInteger(value) || value < rule.min || value > rule.max) {
      throw new RunnerError("usage", `${name} must be an integer from ${rule.min} to ${rule.max}, not ${value}`);
    }
    timings[name] = value;
  }
  // node:http refuses the pair otherwise; the headers are part of the request.
  if ((timings.headersTimeoutMs ?? 0) > (timings.requestTimeoutMs ?? 0)) {
    throw new RunnerError(
      "usage",
      `headersTimeoutMs (${timings.headersTimeoutMs}) must not be larger than requestTimeoutMs (${timings.requestTimeoutMs})`,
    );
  }
  return timings as Timings;
}

/** One reaper pass per interval, never two at once; a failure is logged, never thrown out of the timer. */
function startReaper(context: Context, intervalMs: number): NodeJS.Timeout {
  let reaping = false;
  return setInterval(() => {
    if (reaping) return;
    reaping = true;
    context.queue
      .reapExpiredLeases()
      .catch((error: unknown) => context.logger.error({ err: error }, "lease reaper failed"))
      .finally(() => {
        reaping = false;
      });
  }, intervalMs);
}

/**
 * A given token replaces the stored hash. Otherwise a new one is stored only if none is: of
 * several replicas starting at once on an empty database, one stores its token and prints
 * it; the others find it stored (and print nothing, like a restart).
 */
async function setUpAdminToken(
  store: ControlPlaneStore,
  given: string | undefined,
): Promise<{ adminToken: string | null; stored: boolean }> {
  if (given !== undefined) {
    if (given.trim().length < 16) {
      throw new RunnerError("usage", "the admin token is too short (at least 16 characters)");
    }
    await store.setSetting(ADMIN_TOKEN_HASH_SETTING, hashSecret(given.trim()));
    return { adminToken: given.trim(), stored: true };
  }
  const generated = generateToken("admin");
  const stored = await store.insertSettingIfAbsent(ADMIN_TOKEN_HASH_SETTING, hashSecret(generated));
  return { adminToken: stored ? generated : null, stored };
}

function createCloser(parts: {
  httpServer: http.Server;
  onUpgrade: ChannelEndpoint["upgrade"];
  store: ControlPlaneStore;
  channel: ChannelEndpoint;
  reaper: NodeJS.Timeout;
  bus: ReplicaBus;
}): () => Promise<void> {
  const { httpServer, onUpgrade, store, channel, reaper, bus } = parts;
  let closing: Promise<void> | undefined;
  return () => {
    closing ??= (async () => {
      clearInterval(reaper);
      // Stops accepting at once; finishes once the channel's sockets are gone too.
      const serverClosed = closeHttpServer(httpServer);
      httpServer.off("upgrade", onUpgrade);
      await channel.close();
      await serverClosed;
      await bus.close();
      // Reaper passes and handlers still awaiting the store finish first (the SQLite engine queues the close behind them).
      await store.close();
    })();
    return closing;
  };
}
