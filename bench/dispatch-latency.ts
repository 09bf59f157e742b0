// Dispatch latency on loopback: job submitted → accepted by the runner → started → result
// applied (and acknowledged), through the persistent WebSocket to a real `runner start`
// child process. Baseline, measured in the same run: a runner that polls for queued jobs once
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
import { RUNNER_BIN, percentiles, printTable, runCliQuiet } from "./support.js";

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
  const daemon = spawn(process.execPath, [RUNNER_BIN, "start", ...stateFlags], { stdio: "inherit" });
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
  const runOne = async () => {
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
    await admin.submitJob({ job: { kind: "command", argv: ["true"], env: {} } });
    await pending;
    return jobId;
  };

  for (let i = 0; i < 20; i++) await runOne(); // warm-up
  const ids: string[] = [];
  for (let i = 0; i < jobs; i++) ids.push(await runOne());
  const series = (to: string) => ids.map((id) => ms(times.get(id)!.get("submitted")!, times.get(id)!.get(to)!));
  const accepted = percentiles(series("accepted"));
  const started = percentiles(series("started"));
  const resulted = percentiles(series("result_applied"));

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

  printTable(`dispatch latency on loopback, ${jobs} jobs (command job \`true\`, capacity 1), ms`, [
    ["submitted → accepted by the runner", accepted],
    ["submitted → started (process spawned)", started],
    ["submitted → result applied and acknowledged", resulted],
    [`baseline: poll once a second, submitted → seen (${baselineJobs} jobs)`, baseline],
  ]);
  console.log(`median ratio, baseline seen / persistent socket accepted: ${(baseline.p50 / accepted.p50).toFixed(0)}x`);
  console.log(`median ratio, baseline seen / persistent socket started:  ${(baseline.p50 / started.p50).toFixed(0)}x`);
  console.log(`targets: submitted → started median < 1 ms, p99 < 5 ms, > 500x below the baseline's median`);
  await cp.close();
  await fs.rm(work, { recursive: true, force: true });
}

await main();
