// What the reference control plane's HTTP handlers and channel share: the store, the queue,
// the clock, the logger and the limits, built once in server.ts.
import type { Logger } from "../log/logger.js";
import { PROTOCOL_VERSION } from "../protocol/version.js";
import type { DisconnectWhy } from "./channel/endpoint.js";
import type { DeviceSyncEndpoint } from "./channel/device-sync.js";
import type { JobQueue } from "./queue/job-queue.js";
import type { ControlPlaneStore } from "./store/store.js";

export const SUPPORTED_PROTOCOL_VERSIONS: readonly number[] = [PROTOCOL_VERSION];
/** The settings key under which the admin token's hash is kept. */
export const ADMIN_TOKEN_HASH_SETTING = "admin_token_hash";

export interface Context {
  store: ControlPlaneStore;
  queue: JobQueue;
  /** The channel's device messages (summary, batches). */
  devices: DeviceSyncEndpoint;
  logger: Logger;
  /** The wall clock for stored times and leases; tests pass their own to move time. */
  now: () => Date;
  minAgentVersion: string;
  /** The largest channel frame either side accepts; a job whose `assign` would not fit is refused. */
  maxFrameBytes: number;
  /** Set once the channel is attached: ends a runner's open channel when an admin revokes or deletes it, or a registration replaces it. */
  channel?: { disconnectRunner(runnerId: string, why: DisconnectWhy): void };
}
