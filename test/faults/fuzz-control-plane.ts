// Fuzz against the control plane: a fake runner (registered through the HTTP API, speaking
// over its own WebSocket) sends mutated and random frames, and sometimes a mutated hello
// first, while a real runner keeps taking jobs. The control plane must not crash, and must
// keep serving the real runner: every job submitted meanwhile finishes, and one after.
import { createHash } from "node:crypto";
import path from "node:path";
import type { TestContext } from "node:test";
import { WebSocket } from "ws";
import { AdminClient } from "../../src/api-client/admin.js";
import { CHANNEL_PATH } from "../../src/protocol/channel.js";
import { API_PREFIX, registerResponseSchema } from "../../src/protocol/http.js";
import { AGENT_VERSION, PROTOCOL_VERSION } from "../../src/protocol/version.js";
import { RunnerProcess, registerThroughCli, startPhaseControlPlane, waitUntil } from "./cluster.js";
import { MarkedJobs } from "./marked-jobs.js";
import { encodeFuzzed, mangleText, mutateMessage, randomFrame } from "./mutate.js";
import type { Prng } from "./prng.js";
import type { Tally } from "./tally.js";

const TERMINAL = new Set(["succeeded", "failed", "cancelled", "timed_out"]);

function templatesFor(runnerId: string, refs: { jobId: string; attempt: number }[]): Record<string, unknown>[] {
  const ref = refs.at(-1) ?? { jobId: "job_fuzz0000000000000000000001", attempt: 1 };
  const now = new Date().toISOString();
  const device = {
    id: "usb-1",
    kind: "usb",
    name: "thing",
    state: "online",
    attributes: { a: 1 },
    stale: false,
    fingerprint: "abcdef0123456789",
  };
  return [
    {
      type: "hello",
      protocolVersion: PROTOCOL_VERSION,
      agentVersion: AGENT_VERSION,
      runnerId,
      capacity: 1,
      running: refs.slice(-2),
      pendingResults: [],
      labels: ["fuzz"],
    },
    { type: "ready", slots: 1 },
    { type: "accept", ...ref },
    { type: "reject", ...ref, reason: "fuzz" },
    { type: "started", ...ref, startedAt: now },
    { type: "log", ...ref, seq: 0, stream: "stdout", data: "out\n" },
    {
      type: "result",
      result: {
        ...ref,
        outcome: "succeeded",
        exitCode: 0,
        signal: null,
        reason: null,
        startedAt: now,
        finishedAt: now,
      },
    },
    { type: "goodbye", reason: "fuzz" },
    { type: "devices_summary", batchId: "s1", count: 0, digest: createHash("sha256").update("").digest("hex") },
    { type: "devices", batchId: "b1", snapshotId: "s1", last: true, upserts: [device], removals: [] },
  ];
}

async function registerFakeRunner(
  cpUrl: string,
  admin: AdminClient,
): Promise<{ runnerId: string; credential: string }> {
  const { token } = await admin.createRegistrationToken(600);
  const response = await fetch(`${cpUrl}${API_PREFIX}/runners/register`, {
    method: "POST",
    headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
    body: JSON.stringify({
      protocolVersion: PROTOCOL_VERSION,
      agentVersion: AGENT_VERSION,
      name: "fuzzing-runner",
      labels: ["fuzz"],
      host: { hostname: "fuzz-host", platform: "linux", arch: "x64", fingerprint: "0".repeat(64) },
    }),
  });
  if (response.status !== 201 && response.status !== 200)
    throw new Error(`fake runner registration: ${response.status} ${await response.text()}`);
  const { runnerId, credential } = registerResponseSchema.parse(await response.json());
  return { runnerId, credential };
}

export async function runControlPlaneFuzz(options: {
  t: TestContext;
  prng: Prng;
  tally: Tally;
  frames: number;
  root: string;
  runMark: string;
  log: (line: string) => void;
}): Promise<void> {
  const { t, prng, tally, root } = options;
  const { cp, admin, port } = await startPhaseControlPlane(t, root, tally);

  // The real runner, which must keep being served.
  // The credential store is register's setting only (start reads it from the registration).
  const base = ["--state-dir", path.join(root, "runner-state"), "--machine-id", "cp-fuzz-machine"];
  await registerThroughCli(admin, root, cp.url, "real-runner", [...base, "--credential-store", "file"]);
  const runner = RunnerProcess.start(
    t,
    [
      ...base,
      "--capacity",
      "2",
      "--reconnect-base-ms",
      "100",
      "--reconnect-cap-ms",
      "500",
      "--device-providers",
      "none",
    ],
    tally,
  );
  await runner.waitConnectedFrom(0);

  const fake = await registerFakeRunner(cp.url, admin);
  const refs: { jobId: string; attempt: number }[] = [];
  const jobs = new MarkedJobs(`${options.runMark}-cf`);
  const submitted: string[] = [];
  let ws: WebSocket | null = null;
  let connections = 0;

  const connect = async (): Promise<WebSocket | null> => {
    connections++;
    const socket = new WebSocket(`ws://127.0.0.1:${port}${CHANNEL_PATH}`, {
      headers: {
        authorization: `Bearer ${fake.credential}`,
        "x-runner-id": fake.runnerId,
        "x-runner-protocol": String(PROTOCOL_VERSION),
        "x-runner-agent-version": AGENT_VERSION,
      },
      maxPayload: 64 * 1024 * 1024,
    });
    socket.on("error", () => undefined);
    // Assignments the control plane gives the fake runner become the job refs of later frames.
    socket.on("message", (data) => {
      try {
        const message = JSON.parse(data.toString()) as { type?: string; jobId?: string; attempt?: number };
        if (message.type === "assign" && message.jobId && message.attempt)
          refs.push({ jobId: message.jobId, attempt: message.attempt });
      } catch {
        // The control plane's frames are not what is tested here.
      }
    });
    const opened = await new Promise<boolean>((resolve) => {
      socket.once("open", () => resolve(true));
      socket.once("close", () => resolve(false));
      setTimeout(() => resolve(false), 10_000).unref();
    });
    if (!opened) return null;
    const [hello] = templatesFor(fake.runnerId, refs);
    // Mostly a valid hello, sometimes a fuzzed one (the control plane then closes the connection).
    const first = prng.chance(0.8)
      ? JSON.stringify(hello)
      : encodeFuzzed(mutateMessage(prng, hello as Record<string, unknown>));
    socket.send(first);
    tally.fuzzFrames.toControlPlane++;
    return socket;
  };

  for (let sent = 0; sent < options.frames; sent++) {
    if (!ws || ws.readyState !== WebSocket.OPEN) {
      ws = await connect();
      if (!ws) continue;
    }
    if (sent % 50 === 0) {
      const submittedJob = await admin.submitJob(jobs.next("quick").request).catch(() => null);
      if (submittedJob) {
        submitted.push(submittedJob.job.jobId);
        tally.jobsSubmitted++;
      }
    }
    const roll = prng.next();
    const template = prng.pick(templatesFor(fake.runnerId, refs)) as Record<string, unknown>;
    const frame =
      roll < 0.25
        ? randomFrame(prng)
        : roll < 0.4
          ? mangleText(prng, JSON.stringify(template))
          : encodeFuzzed(mutateMessage(prng, template));
    ws.send(frame, { binary: Buffer.isBuffer(frame) });
    tally.fuzzFrames.toControlPlane++;
    await new Promise((resolve) => setTimeout(resolve, typeof frame === "string" && frame.length > 50_000 ? 10 : 1));
  }
  ws?.terminate();
  options.log(
    `control-plane fuzz: ${tally.fuzzFrames.toControlPlane} frames over ${connections} connection(s); checking the real runner is still served`,
  );

  // ---- still serving the real runner? ----
  const cpAlive = () => cp.child.exitCode === null && cp.child.signalCode === null;
  const after = await admin.submitJob(jobs.next("quick").request).catch(() => null);
  if (after) {
    submitted.push(after.job.jobId);
    tally.jobsSubmitted++;
  } else if (cpAlive())
    tally.finding("crashes", "after the fuzz, the control plane (still running) refused a job submission");
  let statuses = new Map<string, string>();
  try {
    // A dead control plane serves nothing: no point waiting for it.
    if (!cpAlive()) throw new Error("the control plane is gone");
    await waitUntil(
      "every job of the control-plane fuzz to finish",
      async () => {
        if (!cpAlive()) throw new Error("the control plane is gone");
        const jobsNow = await admin.listJobs().catch(() => null);
        if (jobsNow) statuses = new Map(jobsNow.map((j) => [j.jobId, j.status]));
        return submitted.every((id) => TERMINAL.has(statuses.get(id) ?? ""));
      },
      60_000,
      100,
    );
  } catch {
    const stuck = submitted.filter((id) => !TERMINAL.has(statuses.get(id) ?? ""));
    // A crashed control plane was counted as a crash; its queue is not lost, only stopped.
    if (cpAlive())
      tally.finding(
        "lost",
        `control-plane fuzz: ${stuck.length} job(s) did not finish: ${stuck
          .slice(0, 3)
          .map((id) => `${id} ${statuses.get(id)}`)
          .join(", ")}`,
        stuck.length,
      );
  }
  if (after && cpAlive() && statuses.get(after.job.jobId) !== "succeeded") {
    tally.finding(
      "crashes",
      `after the fuzz, the real runner's job ended ${statuses.get(after.job.jobId)}, not succeeded`,
    );
  }
  await runner.stop("SIGTERM", 20_000);
}
