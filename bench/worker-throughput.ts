// Warm-worker throughput: no-op module jobs, one after another, through the pool's warm
// worker, against the baseline measured in the same run: a fresh Node process per job
// (`node -e` importing the same module and calling its handler), which is what a runner without
// warm workers pays.
//
//   npm run build && node dist/bench/worker-throughput.js [warmJobs=5000] [freshJobs=40]
import { spawn } from "node:child_process";
import path from "node:path";
import { pathToFileURL } from "node:url";
import { pino } from "pino";
import type { Assignment } from "../src/protocol/channel.js";
import { WorkerPool } from "../src/workers/parent/pool.js";
import { defaultRecycleLimits } from "../src/config/normalize.js";
import { REPO_ROOT, percentiles, printTable } from "./support.js";

const warmJobs = Number(process.argv[2] ?? 5000);
const freshJobs = Number(process.argv[3] ?? 40);
const NOOP = path.join(REPO_ROOT, "test", "fixtures", "handlers", "noop.mjs");
const hooks = { onStarted: () => undefined, onLog: () => undefined };
const msSince = (start: bigint) => Number(process.hrtime.bigint() - start) / 1e6;

let nextId = 0;
const noopJob = (): Assignment => ({
  type: "assign",
  jobId: `bench-${nextId++}`,
  attempt: 1,
  job: { kind: "module", handler: "noop", payload: {} },
  timeoutMs: 60_000,
  cancelGraceMs: 1_000,
  leaseExpiresAt: new Date().toISOString(),
});

async function measureWarm(): Promise<{ perJob: number[]; jobsPerSecond: number }> {
  const pool = new WorkerPool({
    size: 1,
    limits: defaultRecycleLimits(1024),
    handlers: { noop: NOOP },
    logger: pino({ level: "warn" }),
  });
  for (let i = 0; i < 200; i++) await pool.start(noopJob(), hooks).done; // spawn + warm-up (JIT, module import)
  const perJob: number[] = [];
  const began = process.hrtime.bigint();
  for (let i = 0; i < warmJobs; i++) {
    const start = process.hrtime.bigint();
    const result = await pool.start(noopJob(), hooks).done;
    if (result.outcome !== "succeeded") throw new Error(`warm job failed: ${result.reason}`);
    perJob.push(msSince(start));
  }
  const total = msSince(began);
  await pool.close();
  return { perJob, jobsPerSecond: warmJobs / (total / 1000) };
}

/** The same handler, called the same way, in a process of its own per job. */
function runFresh(): Promise<void> {
  const script = `import(${JSON.stringify(pathToFileURL(NOOP).href)}).then((m) => m.default({}, { jobId: "x", attempt: 1, signal: new AbortController().signal, log: () => true, drained: async () => {} }))`;
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ["-e", script], { stdio: "ignore" });
    child.on("error", reject);
    child.on("exit", (code) => (code === 0 ? resolve() : reject(new Error(`fresh process exited ${code}`))));
  });
}

async function measureFresh(): Promise<{ perJob: number[]; jobsPerSecond: number }> {
  for (let i = 0; i < 3; i++) await runFresh(); // warm the page cache
  const perJob: number[] = [];
  const began = process.hrtime.bigint();
  for (let i = 0; i < freshJobs; i++) {
    const start = process.hrtime.bigint();
    await runFresh();
    perJob.push(msSince(start));
  }
  return { perJob, jobsPerSecond: freshJobs / (msSince(began) / 1000) };
}

const warm = await measureWarm();
const fresh = await measureFresh();
printTable("no-op module job, submitted to the pool → result (ms)", [
  [`warm worker (${warmJobs} jobs, one at a time)`, percentiles(warm.perJob)],
  [`baseline: fresh \`node -e\` per job (${freshJobs} jobs)`, percentiles(fresh.perJob)],
]);
console.log(`\nwarm worker:               ${warm.jobsPerSecond.toFixed(0)} jobs/s`);
console.log(`baseline, fresh process:   ${fresh.jobsPerSecond.toFixed(1)} jobs/s`);
console.log(`ratio:                     ${(warm.jobsPerSecond / fresh.jobsPerSecond).toFixed(0)}x`);
console.log("target: at least 100x the jobs per second of a fresh process per job");
