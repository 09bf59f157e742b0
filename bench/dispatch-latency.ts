// Dispatch latency on loopback, through the persistent WebSocket to a real `runner start` child
// process and its warm worker: job submitted → started → result applied and acknowledged.
//
// "Started" is timed where it happens: the module job's handler logs process.hrtime at its
// first line, and every process on the machine reads the same monotonic clock, so
// submitted → started needs no message back. When the control plane records `started` (one
// more hop, worker → daemon → control plane) is shown as well. A command job (`true`) also
// pays for a process spawn; its start is the control plane's record.
//
// Series, all in one run:
// - steady: one job at a time, each submitted as soon as the previous result is acknowledged;
// - idle runner: module jobs with a pause between them, so every process is asleep when the
//   job arrives (on a VM, waking a vCPU is part of the bill);
// - floors: a bare WebSocket round trip and a bare IPC round trip to another Node process;
// - baseline: a runner that polls for queued jobs once a second (what Bencher's server loop and
//   SkyTest's claim loop do), timed to the moment it sees the job, a lower bound for its start.
//
//   npm run build && node dist/bench/dispatch-latency.js [jobs=300] [baselineJobs=100] [idleJobs=50]
import { fork, spawn } from "node:child_process";
import { promises as fs } from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { pino } from "pino";
import { WebSocketServer, type WebSocket } from "ws";
import { startControlPlane } from "../src/control-plane/control-plane.js";
import { AdminClient } from "../src/api-client/admin.js";
import { REPO_ROOT, RUNNER_BIN, percentiles, printTable, runCliQuiet, type Percentiles } from "./support.js";
import type { SubmitJobRequest } from "../src/protocol/http.js";

interface JobEvent {
  jobId: string;
  status: string;
  at: bigint;
}

const jobs = Number(process.argv[2] ?? 300);
const baselineJobs = Number(process.argv[3] ?? 100);
const idleJobs = Number(process.argv[4] ?? 50);
const IDLE_PAUSE_MS = 200;
const WARM_UP_JOBS = 20;
const ms = (from: bigint, to: bigint) => Number(to - from) / 1e6;
const sleep = (delay: number) => new Promise((resolve) => setTimeout(resolve, delay));
const HANDLER = path.join(REPO_ROOT, "bench", "handlers", "log-start-time.mjs");
const ECHO_PEER = path.join(path.dirname(fileURLToPath(import.meta.url)), "peers", "echo-peer.js");

async function main(): Promise<void> {
  const work = await fs.mkdtemp(path.join(os.tmpdir(), "runner-bench-"));
  const cp = await startControlPlane({ logger: pino({ level: "warn" }) });
  const admin = new AdminClient(cp.url, cp.adminToken!);
  const times = new Map<string, Map<string, bigint>>();
  cp.events.on("job", (e: JobEvent) => {
    if (!times.has(e.jobId)) times.set(e.jobId, new Map());
    times.get(e.jobId)!.set(e.status, e.at);
  });
  const stateFlags = ["--state-dir", path.join(work, "state"), "--log-level", "warn"];
  const tokenFile = path.join(work, "token");
  await fs.writeFile(tokenFile, (await admin.createRegistrationToken()).token);
  await runCliQuiet([
    "register",
    "--url",
    cp.url,
    "--token-file",
    tokenFile,
    "--name",
    "bench",
    ...stateFlags,
    "--credential-store",
    "file",
  ]);
  const connected = new Promise<void>((resolve) =>
    cp.events.on("runner", (e: { event: string }) => e.event === "connected" && resolve()),
  );
  const daemon = spawn(process.execPath, [RUNNER_BIN, "start", ...stateFlags, "--handlers", `stamp=${HANDLER}`], {
    stdio: "inherit",
  });
  await connected;

  const runOne = async (job: SubmitJobRequest["job"]) => {
    // Subscribe before submitting: on loopback the result can come back before submit returns.
    const applied = new Promise<string>((resolve) => {
      let jobId = "";
      const watch = (e: JobEvent) => {
        if (e.status === "submitted" && !jobId) jobId = e.jobId;
        if (e.jobId === jobId && e.status === "result_applied") {
          cp.events.off("job", watch);
          resolve(jobId);
        }
      };
      cp.events.on("job", watch);
    });
    await admin.submitJob({ job });
    return applied;
  };
  const runSeries = async (job: SubmitJobRequest["job"], count: number, pauseMs: number) => {
    const ids: string[] = [];
    for (let i = 0; i < WARM_UP_JOBS + count; i++) {
      const id = await runOne(job);
      if (i >= WARM_UP_JOBS) ids.push(id);
      if (pauseMs > 0) await sleep(pauseMs);
    }
    return ids;
  };
  const since = (ids: string[], to: (id: string) => bigint) =>
    percentiles(ids.map((id) => ms(times.get(id)!.get("submitted")!, to(id))));
  const event = (name: string) => (id: string) => times.get(id)!.get(name)!;
  /** The handler's first line, logged by the worker on the shared monotonic clock. */
  const handlerStart = async (ids: string[]) => {
    const stamps = new Map<string, bigint>();
    for (const id of ids) {
      const { logs } = await admin.getJob(id);
      stamps.set(id, BigInt(logs[0]!.data.trim()));
    }
    return (id: string) => stamps.get(id)!;
  };

  const moduleJob = { kind: "module", handler: "stamp", payload: {} } as const;
  const steadyModule = await runSeries(moduleJob, jobs, 0);
  const steadyCommand = await runSeries({ kind: "command", argv: ["true"], env: {} }, jobs, 0);
  const idleModule = await runSeries(moduleJob, idleJobs, IDLE_PAUSE_MS);
  const moduleStarted = since(steadyModule, await handlerStart(steadyModule));
  const idleStarted = since(idleModule, await handlerStart(idleModule));

  daemon.kill("SIGTERM");
  await new Promise((r) => daemon.on("exit", r));

  const floors = await measureFloors(jobs, 0);
  const idleFloors = await measureFloors(idleJobs, IDLE_PAUSE_MS);
  const baseline = await measurePollingBaseline(admin, times, baselineJobs);

  printTable(
    `dispatch latency on loopback, ms (one job at a time, capacity 1; ${WARM_UP_JOBS} warm-up jobs per series not counted)`,
    [
      ["module job (no-op), steady: submitted → started in the worker", moduleStarted],
      ["module job, steady: submitted → control plane records started", since(steadyModule, event("started"))],
      ["module job, steady: submitted → result applied, ack sent", since(steadyModule, event("result_applied"))],
      [
        "command job (`true`), steady: submitted → control plane records started",
        since(steadyCommand, event("started")),
      ],
      ["command job, steady: submitted → result applied, ack sent", since(steadyCommand, event("result_applied"))],
      [`module job, idle runner (${IDLE_PAUSE_MS} ms between jobs): submitted → started in the worker`, idleStarted],
      ["floor: bare WebSocket round trip to another process", floors.webSocket],
      ["floor: bare IPC round trip to a forked child", floors.ipc],
      [`floor, idle (${IDLE_PAUSE_MS} ms between): bare WebSocket round trip`, idleFloors.webSocket],
      [`floor, idle (${IDLE_PAUSE_MS} ms between): bare IPC round trip`, idleFloors.ipc],
      [`baseline: poll once a second, submitted → seen`, baseline],
    ],
  );
  const ratio = (p: Percentiles) => baseline.p50 / p.p50;
  console.log(`\nmedian ratio, baseline / module job started (steady):      ${ratio(moduleStarted).toFixed(0)}x`);
  console.log(`median ratio, baseline / module job started (idle runner): ${ratio(idleStarted).toFixed(0)}x`);
  const verdict = (p: Percentiles) => (p.p50 < 1 && p.p99 < 5 && ratio(p) > 500 ? "met" : "NOT met");
  console.log(`target: submitted → started median < 1 ms, p99 < 5 ms, > 500x below the baseline's median`);
  console.log(`  steady: ${verdict(moduleStarted)}; idle runner: ${verdict(idleStarted)}`);
  await cp.close();
  await fs.rm(work, { recursive: true, force: true });
}

/** Round trips of a small frame to a Node process that echoes it, over ws and over IPC. */
async function measureFloors(count: number, pauseMs: number): Promise<{ webSocket: Percentiles; ipc: Percentiles }> {
  const server = new WebSocketServer({ host: "127.0.0.1", port: 0, perMessageDeflate: false });
  await new Promise((resolve) => server.once("listening", resolve));
  const { port } = server.address() as { port: number };
  const socketReady = new Promise<WebSocket>((resolve) => server.once("connection", resolve));
  const peer = fork(ECHO_PEER, [`ws://127.0.0.1:${port}`], { stdio: "inherit" });
  const socket = await socketReady;
  const frame = JSON.stringify({ type: "assign", jobId: "job_0123456789abcdefghijklmn", attempt: 1 });
  const roundTrips = async (send: () => void, subscribe: (done: () => void) => void) => {
    const samples: number[] = [];
    for (let i = 0; i < WARM_UP_JOBS + count; i++) {
      const start = process.hrtime.bigint();
      await new Promise<void>((resolve) => {
        subscribe(resolve);
        send();
      });
      if (i >= WARM_UP_JOBS) samples.push(ms(start, process.hrtime.bigint()));
      if (pauseMs > 0) await sleep(pauseMs);
    }
    return percentiles(samples);
  };
  const webSocket = await roundTrips(
    () => socket.send(frame),
    (done) => socket.once("message", done),
  );
  const ipc = await roundTrips(
    () => peer.send(frame),
    (done) => peer.once("message", done),
  );
  peer.disconnect();
  socket.terminate();
  await new Promise((resolve) => server.close(resolve));
  return { webSocket, ipc };
}

/**
 * Jobs no runner can take (an unmatched label), submitted at random moments, found by a
 * once-a-second poller: the delay a polling runner adds before it could even start them.
 */
async function measurePollingBaseline(
  admin: AdminClient,
  times: Map<string, Map<string, bigint>>,
  count: number,
): Promise<Percentiles> {
  const seen = new Map<string, bigint>();
  let polling = true;
  const poller = (async () => {
    while (polling) {
      await sleep(1000);
      const now = process.hrtime.bigint();
      for (const job of await admin.listJobs("queued")) if (!seen.has(job.jobId)) seen.set(job.jobId, now);
    }
  })();
  // Spread over about count/10 seconds, ten jobs per poll on average.
  const spreadMs = count * 100;
  const ids = await Promise.all(
    Array.from({ length: count }, async () => {
      await sleep(Math.random() * spreadMs);
      const { job } = await admin.submitJob({
        job: { kind: "command", argv: ["true"], env: {} },
        requiredLabels: ["polling-baseline"],
      });
      return job.jobId;
    }),
  );
  while (ids.some((id) => !seen.has(id))) await sleep(50);
  polling = false;
  await poller;
  return percentiles(ids.map((id) => ms(times.get(id)!.get("submitted")!, seen.get(id)!)));
}

await main();
