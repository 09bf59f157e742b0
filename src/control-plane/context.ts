// What the reference control plane's parts share, built once in control-plane.ts: the
// channel and the HTTP handlers both use the store, the queue, the clock, the logger and the
// version floor (Context); the handlers also reach the channel, built before them, to end a
// runner's connection, and check jobs against the frame limit (RouteContext).
import type { Logger } from "../log/logger.js";
import type { AdminTokenHash } from "./admin-token.js";
import { PROTOCOL_VERSION } from "../protocol/version.js";
import type { DisconnectWhy } from "./channel/endpoint.js";
import type { JobQueue } from "./queue/job-queue.js";
import type { ControlPlaneStore } from "./store/contract.js";

export const SUPPORTED_PROTOCOL_VERSIONS: readonly number[] = [PROTOCOL_VERSION];
/** The settings key under which the admin token's hash is kept. */
export const ADMIN_TOKEN_HASH_SETTING = "admin_token_hash";

export interface Context {
  store: ControlPlaneStore;
  queue: JobQueue;
  logger: Logger;
  /** The wall clock for stored times and leases; tests pass their own to move time. */
  now: () => Date;
  minAgentVersion: string;
  /** The admin token's hash, kept in memory (admin-token.ts). */
  adminTokenHash: AdminTokenHash;
}

/** What the HTTP handlers know of the runners' channel. */
export interface RunnerChannels {
  /** Ends a runner's open channel, if any, when an admin revokes or deletes it or a registration replaces it. */
  disconnectRunner(runnerId: string, why: DisconnectWhy): void;
}

/** What an HTTP handler is given. */
export interface RouteContext extends Context {
  channel: RunnerChannels;
  /** The largest channel frame either side accepts; a job whose `assign` would not fit is refused. */
  maxFrameBytes: number;
}
