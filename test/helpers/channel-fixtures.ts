// What tests and the benchmarks' light runners share about the channel: the machine's inputs
// (a config, a welcome, an assignment), how a runner opens its channel, a finished result.
import type { MachineConfig } from "../../src/channel/machine.js";
import {
  AGENT_VERSION_HEADER,
  CHANNEL_PATH,
  PROTOCOL_HEADER,
  RUNNER_ID_HEADER,
  type Assignment,
  type ControlMessage,
  type JobRef,
  type JobResult,
} from "../../src/protocol/channel.js";
import { AGENT_VERSION, PROTOCOL_VERSION } from "../../src/protocol/version.js";

/** A config for driving the machine directly (capacity 2, 1 s base backoff, 5 s drain). */
export const machineConfig: MachineConfig = {
  runnerId: "rnr_abcdefghijklmnopqrstuvwx",
  protocolVersion: 1,
  agentVersion: "0.1.0",
  labels: ["linux"],
  capacity: 2,
  reconnectBaseMs: 1000,
  reconnectCapMs: 30_000,
  handshakeTimeoutMs: 10_000,
  once: false,
  exitAfterIdleMs: null,
  drainTimeoutMs: 5_000,
};

/** A welcome with a 1 s heartbeat, a 1 MiB frame limit, nothing fenced, not paused. */
export const welcome: ControlMessage = {
  type: "welcome",
  protocolVersion: 1,
  heartbeatIntervalMs: 1000,
  leaseMs: 30_000,
  maxFrameBytes: 1 << 20,
  fenced: [],
  paused: false,
};

/** An assignment of a command job (`true`, 1 s timeout, 100 ms grace). */
export const assignment = (jobId: string, attempt = 1): Assignment => ({
  type: "assign",
  jobId,
  attempt,
  job: { kind: "command", argv: ["true"], env: {} },
  timeoutMs: 1000,
  cancelGraceMs: 100,
  leaseExpiresAt: "2026-01-01T00:00:00Z",
});

/** What a runner needs to open its channel: its id and credential (`register`'s answer). */
export interface ChannelIdentity {
  runnerId: string;
  credential: string;
}

/** The channel's WebSocket URL for a control plane at `baseUrl` (http://… becomes ws://…). */
export function channelUrl(baseUrl: string): string {
  return baseUrl.replace(/^http/, "ws") + CHANNEL_PATH;
}

/** The upgrade request's headers a runner sends (PROTOCOL.md, "Connecting"). */
export function channelHeaders(identity: ChannelIdentity): Record<string, string> {
  return {
    authorization: `Bearer ${identity.credential}`,
    [RUNNER_ID_HEADER]: identity.runnerId,
    [PROTOCOL_HEADER]: String(PROTOCOL_VERSION),
    [AGENT_VERSION_HEADER]: AGENT_VERSION,
  };
}

/** The result of an attempt that started and finished this very moment, by default a success. */
export function finishedResult(
  ref: JobRef,
  outcome: JobResult["outcome"] = "succeeded",
  exitCode: number | null = 0,
): JobResult {
  const now = new Date().toISOString();
  return { ...ref, outcome, exitCode, signal: null, reason: null, startedAt: now, finishedAt: now };
}
