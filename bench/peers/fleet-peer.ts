// The simulated fleet of the fleet benchmark, in a process of its own (forked by
// bench/fleet.ts): N light runners (light-runner.ts) on one event loop, told over IPC which
// control plane each connects to. What the runners see goes back to the parent in batches,
// once per turn of the event loop: each assign's arrival time (process.hrtime, the machine's
// monotonic clock, which the parent's submit times share) and each result_ack.
import { LightRunner, type LightRunnerIdentity } from "./light-runner.js";

export type FleetCommand =
  { type: "connect"; runners: LightRunnerIdentity[]; capacity: number; timeoutMs: number } | { type: "close" };

/** One observation: `a` an assign (runner index, ms on the monotonic clock), `d` a result_ack. */
export type FleetObservation =
  { kind: "a"; jobId: string; runner: number; atMs: number } | { kind: "d"; jobId: string };

export type FleetReport =
  | { type: "connected"; count: number; ms: number }
  | { type: "connect_failed"; message: string }
  | { type: "observations"; items: FleetObservation[] }
  | { type: "trouble"; what: string }
  | { type: "closed" };

/** Handshakes at once: enough to connect 500 runners in a few seconds without a thundering herd. */
const CONNECT_CONCURRENCY = 32;

let runners: LightRunner[] = [];
let pending: FleetObservation[] = [];
let flushQueued = false;

function report(message: FleetReport): void {
  process.send!(message);
}

function observe(item: FleetObservation): void {
  pending.push(item);
  if (flushQueued) return;
  flushQueued = true;
  setImmediate(() => {
    flushQueued = false;
    const items = pending;
    pending = [];
    report({ type: "observations", items });
  });
}

/** Connects more runners beside those already connected; a runner's index counts across calls. */
async function connectMore(identities: LightRunnerIdentity[], capacity: number, timeoutMs: number): Promise<void> {
  const started = performance.now();
  const first = runners.length;
  const added = identities.map(
    (identity, i) =>
      new LightRunner(identity, capacity, {
        onAssign: (jobId, at) => observe({ kind: "a", jobId, runner: first + i, atMs: Number(at) / 1e6 }),
        onResultAck: (jobId) => observe({ kind: "d", jobId }),
        onTrouble: (what) => report({ type: "trouble", what }),
      }),
  );
  runners.push(...added);
  let next = 0;
  const worker = async () => {
    while (next < added.length) await added[next++]!.connect(timeoutMs);
  };
  await Promise.all(Array.from({ length: CONNECT_CONCURRENCY }, worker));
  report({ type: "connected", count: runners.length, ms: performance.now() - started });
}

process.on("message", (command: FleetCommand) => {
  if (command.type === "connect") {
    connectMore(command.runners, command.capacity, command.timeoutMs).catch((error: Error) =>
      report({ type: "connect_failed", message: error.message }),
    );
  } else {
    void Promise.all(runners.map((runner) => runner.close())).then(() => {
      runners = [];
      report({ type: "closed" });
    });
  }
});
// The parent is gone (it finished, or died): nothing here is worth keeping.
process.on("disconnect", () => process.exit(0));
