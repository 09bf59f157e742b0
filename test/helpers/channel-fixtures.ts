// The channel machine's inputs that tests share: a machine config, a welcome, an assignment.
import type { MachineConfig } from "../../src/channel/machine.js";
import type { Assignment, ControlMessage } from "../../src/protocol/channel.js";

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
