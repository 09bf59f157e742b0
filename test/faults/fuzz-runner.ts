// Fuzz against the runner: the real daemon talks to the real control plane through a
// WebSocket relay that injects mutated and random frames into what the control plane sends
// (and sometimes replaces the welcome). The daemon must not crash, no worker may die, and
// afterwards a normal job must still run.
import path from "node:path";
import type { TestContext } from "node:test";
import { WebSocket } from "ws";
import { REPO_ROOT } from "../helpers/cli.js";
import { relayServer } from "../helpers/ws-relay.js";
import { RunnerProcess, registerThroughCli, startPhaseControlPlane, waitUntil } from "./cluster.js";
import { MarkedJobs } from "./marked-jobs.js";
import { encodeFuzzed, mangleText, mutateMessage, randomFrame } from "./mutate.js";
import type { Prng } from "./prng.js";
import type { Tally } from "./tally.js";
import { onCleanup } from "../helpers/cleanup.js";

/** Messages the control plane may send, as seeds for mutation before real ones have been seen. */
function seedTemplates(): Record<string, Record<string, unknown>> {
  const ref = { jobId: "job_fuzz0000000000000000000001", attempt: 1 };
  const lease = new Date(Date.now() + 60_000).toISOString();
  return {
    welcome: {
      type: "welcome",
      protocolVersion: 1,
      heartbeatIntervalMs: 200,
      leaseMs: 2500,
      maxFrameBytes: 1048576,
      fenced: [],
    },
    assign: {
      type: "assign",
      ...ref,
      job: { kind: "command", argv: ["true", "a"], env: { A: "b" } },
      timeoutMs: 5000,
      cancelGraceMs: 100,
      leaseExpiresAt: lease,
    },
    assign_module: {
      type: "assign",
      ...ref,
      attempt: 2,
      job: { kind: "module", handler: "noop", payload: { a: [1, 2] } },
      timeoutMs: 5000,
      cancelGraceMs: 100,
      leaseExpiresAt: lease,
    },
    result_ack: { type: "result_ack", ...ref, applied: true },
    cancel: { type: "cancel", ...ref, reason: "fuzz" },
    error: { type: "error", code: "bad_frame", message: "fuzz" },
    devices_ack: { type: "devices_ack", batchId: "b1" },
    devices_resync: { type: "devices_resync", batchId: "b1", reason: "fuzz" },
  };
}

/**
 * A fuzzed assignment must not make the runner run arbitrary programs on this machine: the
 * program of a command job becomes `true` (its arguments, env and cwd stay fuzzed), unless
 * the fuzz made argv[0] something no exec accepts (empty, a NUL, not a string).
 */
function defang(value: unknown): unknown {
  const job = (value as { job?: { argv?: unknown } } | null)?.job;
  if (job && Array.isArray(job.argv) && job.argv.length > 0) {
    const program: unknown = job.argv[0];
    if (typeof program === "string" && program !== "" && !program.includes("\0")) job.argv[0] = "true";
  }
  return value;
}

export async function runRunnerFuzz(options: {
  t: TestContext;
  prng: Prng;
  tally: Tally;
  frames: number;
  root: string;
  runMark: string;
  log: (line: string) => void;
}): Promise<void> {
  const { t, prng, tally, root } = options;
  const { admin, port } = await startPhaseControlPlane(t, root, tally);
  const templates = seedTemplates();
  let fuzzing = true;
  const downstreams = new Set<WebSocket>();

  // ---- the relay ----
  const relay = relayServer("127.0.0.1", port, {
    onConnection: (down) => {
      downstreams.add(down);
      down.on("close", () => downstreams.delete(down));
    },
    fromControlPlane: (data, down) => {
      const text = data.toString();
      let message: Record<string, unknown> | null = null;
      try {
        message = JSON.parse(text) as Record<string, unknown>;
      } catch {
        // Passed on as it is.
      }
      if (message && typeof message.type === "string")
        templates[message.type === "assign" ? `assign_${message.jobId as string}`.slice(0, 40) : message.type] =
          message;
      // Now and then the welcome itself is the fuzzed frame.
      if (fuzzing && message?.type === "welcome" && prng.chance(0.2)) {
        tally.fuzzFrames.toRunner++;
        return sendSafely(down, encodeFuzzed(defang(mutateMessage(prng, message))));
      }
      sendSafely(down, text);
    },
  });
  await new Promise<void>((resolve) => relay.listen(0, "127.0.0.1", resolve));
  const relayUrl = `http://127.0.0.1:${(relay.address() as { port: number }).port}`;
  onCleanup(t, async () => {
    for (const ws of downstreams) ws.terminate();
    await new Promise<void>((resolve) => relay.close(() => resolve()));
  });

  // ---- the runner ----
  // The credential store is register's setting only (start reads it from the registration).
  const base = ["--state-dir", path.join(root, "runner-state"), "--machine-id", "fuzz-machine"];
  const args = [
    ...base,
    "--capacity",
    "2",
    "--reconnect-base-ms",
    "50",
    "--reconnect-cap-ms",
    "500",
    "--device-providers",
    "none",
    "--handlers",
    `noop=${path.join(REPO_ROOT, "test", "fixtures", "handlers", "noop.mjs")}`,
  ];
  await registerThroughCli(admin, root, relayUrl, "fuzzed-runner", [...base, "--credential-store", "file"]);
  let runner = RunnerProcess.start(t, args, tally);
  await runner.waitConnectedFrom(0);

  // ---- the fuzz ----
  const jobs = new MarkedJobs(`${options.runMark}-rf`);
  let restarts = 0;
  for (let sent = 0; sent < options.frames;) {
    // A daemon that exited was counted as a crash; start it again so the fuzz goes on.
    if (runner.daemon.child.exitCode !== null || runner.daemon.child.signalCode !== null) {
      if (++restarts > 5) break;
      runner = RunnerProcess.start(t, args, tally);
    }
    const open = [...downstreams].filter((ws) => ws.readyState === WebSocket.OPEN);
    if (open.length === 0) {
      await waitUntil(
        "the runner to reconnect to the relay",
        () => [...downstreams].some((ws) => ws.readyState === WebSocket.OPEN),
        30_000,
        10,
      ).catch(() => undefined);
      continue;
    }
    if (sent % 100 === 0)
      await admin.submitJob(jobs.next("quick").request).then(
        () => tally.jobsSubmitted++,
        () => undefined,
      );
    const frame = pickFrame(prng, templates);
    sendSafely(open[open.length - 1]!, frame);
    sent++;
    tally.fuzzFrames.toRunner++;
    // Let the daemon read: a flood would only measure socket buffers.
    await new Promise((resolve) => setTimeout(resolve, typeof frame === "string" && frame.length > 50_000 ? 10 : 1));
  }
  fuzzing = false;
  options.log(`runner fuzz: ${tally.fuzzFrames.toRunner} frames sent; checking that a normal job still runs`);

  // ---- still serving? ----
  const from = runner.lines.length;
  await runner.waitConnectedFrom(from, 30_000).catch(() => undefined);
  const { request } = jobs.next("quick");
  let status = "not submitted";
  try {
    const { job } = await admin.submitJob(request);
    tally.jobsSubmitted++;
    await waitUntil(
      "the job after the fuzz to succeed",
      async () => {
        status = (await admin.getJob(job.jobId).catch(() => null))?.job.status ?? status;
        return status === "succeeded";
      },
      60_000,
      50,
    );
  } catch {
    tally.finding(
      "crashes",
      `after the fuzz, a normal job did not succeed within 60 s on the runner (status: ${status})`,
    );
  }
  const workerDeaths = runner.lines.filter((l) => /exited unexpectedly/.test(l.msg));
  if (workerDeaths.length > 0)
    tally.finding(
      "crashes",
      `the fuzz killed ${workerDeaths.length} worker(s): ${String(workerDeaths[0]!.msg).slice(0, 200)}`,
      workerDeaths.length,
    );
  const longest = Math.max(0, ...runner.lines.map((l) => JSON.stringify(l).length));
  if (longest > 64 * 1024)
    tally.notes.push(
      `runner fuzz: the daemon wrote a ${longest}-character log line (strings from the wire reach the log uncapped)`,
    );
  await runner.stop("SIGTERM", 20_000);
}

function pickFrame(prng: Prng, templates: Record<string, Record<string, unknown>>): string | Buffer {
  const roll = prng.next();
  if (roll < 0.25) return randomFrame(prng);
  const template = templates[prng.pick(Object.keys(templates))]!;
  if (roll < 0.4) return mangleText(prng, JSON.stringify(defang(JSON.parse(JSON.stringify(template)))));
  return encodeFuzzed(defang(mutateMessage(prng, template)));
}

function sendSafely(ws: WebSocket, data: string | Buffer): void {
  if (ws.readyState === WebSocket.OPEN) ws.send(data, { binary: Buffer.isBuffer(data) });
}
