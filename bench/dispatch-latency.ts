// Dispatch latency on loopback: job submitted → accepted by the runner → started → result
// applied (and acknowledged), through the persistent WebSocket to a real `runner start`
// child process, for a no-op module job on a warm worker and for a `command` job (`true`),
// which also pays for a process spawn. Baseline, measured in the same run: a runner that polls for queued jobs once
// a second (what Bencher's server loop and SkyTest's claim loop do), timed to the moment it
// sees the job, which is a lower bound for its "started".
//
//   npm run build && node dist/bench/dispatch-latency.js [jobs=300] [baselineJobs=20]
import { spawn } from "node:child_process";
import { promises as fs } from "node:fs";
import os from "node:os";
import path from "node:path";
import { pino } from "pino";
import { startControlPlane } from "../src/control-plane/server.js";
import { AdminClient } from "../src/control-plane/admin-client.js";
import { REPO_ROOT, RUNNER_BIN, percentiles, printTable, runCliQuiet } from "./support.js";
import type { SubmitJobRequest } from "../src/protocol/http.js";

interface JobEvent {
  jobId: string;
  status: string;
  at: bigint;
}

const jobs = Number(process.argv[2] ?? 300);
const baselineJobs = Number(process.argv[3] ?? 20);
const ms = (from: bigint, to: bigint) => Number(to - from) / 1e6;

async function main(): Promise<void> {
  const work = await fs.mkdtemp(path.join(os.tmpdir(), "runner-bench-"));
  const cp = await startControlPlane({ logger: pino({ level: "warn" }) });
  const admin = new AdminClient(cp.url, cp.adminToken!);
  const times = new Map<string, Map<string, bigint>>();
  cp.events.on("job", (e: JobEvent) => {
    if (!times.has(e.jobId)) times.set(e.jobId, new Map());
    times.get(e.jobId)!.set(e.status, e.at);
  });
  const stateFlags = ["--state-dir", path.join(work, "state"), "--credential-store", "file", "--log-level", "warn"];
  const tokenFile = path.join(work, "token");
  await fs.writeFile(tokenFile, (await admin.createRegistrationToken()).token);
  await runCliQuiet(["register", "--url", cp.url, "--token-file", tokenFile, "--name", "bench", ...stateFlags]);
  const connected = new Promise<void>((resolve) => cp.events.on("runner", (e: { event: string }) => e.event === "connected" && resolve()));
  const noop = path.join(REPO_ROOT, "test", "fixtures", "handlers", "noop.mjs");
  const daemon = spawn(process.execPath, [RUNNER_BIN, "start", ...stateFlags, "--handlers", `noop=${noop}`], { stdio: "inherit" });
  await connected;

  const applied = (jobId: string) =>
    new Promise<void>((resolve) => {
      const check = (e: JobEvent) => {
        if (e.jobId === jobId && e.status === "result_applied") {
          cp.events.off("job", check);
          resolve();
        }
      };
      cp.events.on("job", check);
    });
  const runOne = async (job: SubmitJobRequest["job"]) => {
    // Subscribe before submitting: on loopback the result can come back before submit returns.
    let jobId = "";
    const pending = new Promise<void>((resolve) => {
      const wait = (e: JobEvent) => {
        if (e.status === "submitted" && !jobId) {
          jobId = e.jobId;
          cp.events.off("job", wait);
          void applied(jobId).then(resolve);
        }
      };
      cp.events.on("job", wait);
    });
    await admin.submitJob({ job });
    await pending;
    return jobId;
  };
  const measureKind = async (job: SubmitJobRequest["job"]) => {
    for (let i = 0; i < 20; i++) await runOne(job); // warm-up
    const ids: string[] = [];
    for (let i = 0; i < jobs; i++) ids.push(await runOne(job));
    const series = (to: string) => percentiles(ids.map((id) => ms(times.get(id)!.get("submitted")!, times.get(id)!.get(to)!)));
    return { accepted: series("accepted"), started: series("started"), resulted: series("result_applied") };
  };
  const moduleJob = await measureKind({ kind: "module", handler: "noop", payload: {} });
  const commandJob = await measureKind({ kind: "command", argv: ["true"], env: {} });

  daemon.kill("SIGTERM");
  await new Promise((r) => daemon.on("exit", r));

  // Baseline: jobs no runner can take (an unmatched label), found by a once-a-second poller.
  const seen = new Map<string, bigint>();
  let polling = true;
  const poller = (async () => {
    while (polling) {
      await new Promise((r) => setTimeout(r, 1000));
      const now = process.hrtime.bigint();
      for (const job of await admin.listJobs("queued")) if (!seen.has(job.jobId)) seen.set(job.jobId, now);
    }
  })();
  const baselineIds: string[] = [];
  for (let i = 0; i < baselineJobs; i++) {
    await new Promise((r) => setTimeout(r, Math.random() * 1000));
    const { job } = await admin.submitJob({ job: { kind: "command", argv: ["true"], env: {} }, requiredLabels: ["polling-baseline"] });
    baselineIds.push(job.jobId);
  }
  while (baselineIds.some((id) => !seen.has(id))) await new Promise((r) => setTimeout(r, 50));
  polling = false;
  await poller;
  const baseline = percentiles(baselineIds.map((id) => ms(times.get(id)!.get("submitted")!, seen.get(id)!)));

  printTable(`dispatch latency on loopback, ${jobs} jobs of each kind, one at a time (capacity 1), ms`, [
    ["module job (no-op) on a warm worker: submitted → accepted", moduleJob.accepted],
    ["module job: submitted → started (in the worker)", moduleJob.started],
    ["module job: submitted → result applied and acknowledged", moduleJob.resulted],
    ["command job (`true`): submitted → accepted", commandJob.accepted],
    ["command job: submitted → started (process spawned)", commandJob.started],
    ["command job: submitted → result applied and acknowledged", commandJob.resulted],
    [`baseline: poll once a second, submitted → seen (${baselineJobs} jobs)`, baseline],
  ]);
  console.log(`median ratio, baseline / module job started:  ${(baseline.p50 / moduleJob.started.p50).toFixed(0)}x`);
  console.log(`median ratio, baseline / command job started: ${(baseline.p50 / commandJob.started.p50).toFixed(0)}x`);
  console.log(`targets: submitted → started median < 1 ms, p99 < 5 ms, > 500x below the baseline's median`);
  await cp.close();
  await fs.rm(work, { recursive: true, force: true });
}

await main();
