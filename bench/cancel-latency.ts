// Cancel latency: cancel() called → the job's whole process tree gone (that is when `done`
// resolves; checked again afterwards). Through the worker pool, for:
// - a command job whose shell and two background children honour SIGTERM;
// - a module job whose handler honours its AbortSignal (the worker stays);
// - a module job whose handler ignores it, with grace 0 (its worker is SIGKILLed).
// Reference, in the same run: the same command job run by startCommandJob directly, without
// the worker hop; and the grace period a cancel would wait without a process-group kill (10 s).
//
//   npm run build && node dist/bench/cancel-latency.js [runs=60]
import path from "node:path";
import { setTimeout as delay } from "node:timers/promises";
import { pino } from "pino";
import { startCommandJob, type JobHooks, type RunningJob } from "../src/jobs/command.js";
import { isGroupAlive } from "../src/jobs/process-group.js";
import type { Assignment, JobSpec } from "../src/protocol/channel.js";
import { WorkerPool } from "../src/workers/parent/pool.js";
import { defaultRecycleLimits } from "../src/config/normalize.js";
import { REPO_ROOT, percentiles, printTable } from "./support.js";

const runs = Number(process.argv[2] ?? 60);
const STOP = path.join(REPO_ROOT, "test", "fixtures", "handlers", "stop.mjs");
const COMMAND: JobSpec = { kind: "command", argv: ["sh", "-c", "sleep 300 & sleep 300 & echo ready; wait"], env: {} };
let survivors = 0;

let nextId = 0;
const assign = (job: JobSpec, cancelGraceMs: number): Assignment => ({
  type: "assign",
  jobId: `cancel-${nextId++}`,
  attempt: 1,
  job,
  timeoutMs: 600_000,
  cancelGraceMs,
  leaseExpiresAt: new Date().toISOString(),
});

/**
 * Starts a job, waits for `marker` in its output, cancels it and times cancel → done. Then
 * checks the job's process group is gone (not for a module job that honours its signal: its
 * "process" is the worker, which is kept on purpose).
 */
async function timeCancel(start: (hooks: JobHooks) => RunningJob, marker: string, groupEnds = true): Promise<number> {
  let output = "";
  let pid: number | null = null;
  let ready!: () => void;
  const isReady = new Promise<void>((resolve) => (ready = resolve));
  const job = start({
    onStarted: (info) => (pid = info.pid),
    onLog: (chunk) => {
      output += chunk.data;
      if (output.includes(marker)) ready();
    },
  });
  await isReady;
  await delay(5); // let the background children exist
  const began = process.hrtime.bigint();
  job.cancel("bench cancel");
  const result = await job.done;
  const elapsed = Number(process.hrtime.bigint() - began) / 1e6;
  if (result.outcome !== "cancelled") throw new Error(`expected cancelled, got ${result.outcome}: ${result.reason}`);
  if (groupEnds && pid !== null && isGroupAlive(pid)) survivors++;
  return elapsed;
}

async function waitForIdleWorker(pool: WorkerPool): Promise<void> {
  while (!pool.stats().workers.some((w) => w.state === "idle")) await delay(5);
}

const pool = new WorkerPool({
  size: 1,
  limits: defaultRecycleLimits(1024),
  handlers: { stop: STOP },
  logger: pino({ level: "error" }),
});
const series: Record<string, number[]> = { direct: [], pooled: [], honours: [], ignores: [] };
for (let i = 0; i < 5; i++) await timeCancel((h) => pool.start(assign(COMMAND, 10_000), h), "ready"); // warm-up
for (let i = 0; i < runs; i++) {
  series.direct!.push(await timeCancel((h) => startCommandJob(assign(COMMAND, 10_000), h), "ready"));
  series.pooled!.push(await timeCancel((h) => pool.start(assign(COMMAND, 10_000), h), "ready"));
  series.honours!.push(
    await timeCancel(
      (h) => pool.start(assign({ kind: "module", handler: "stop", payload: { mode: "honour" } }, 10_000), h),
      "waiting",
      false,
    ),
  );
  series.ignores!.push(
    await timeCancel(
      (h) => pool.start(assign({ kind: "module", handler: "stop", payload: { mode: "ignore" } }, 0), h),
      "child ",
    ),
  );
  await waitForIdleWorker(pool); // its replacement, so the next run does not time a cold start
}
await pool.close();

printTable(`cancel() → whole process tree gone, ${runs} runs each (ms)`, [
  ["command job honouring SIGTERM, through the pool", percentiles(series.pooled!)],
  ["module job honouring its AbortSignal (worker kept)", percentiles(series.honours!)],
  ["module job ignoring it, grace 0 (worker group SIGKILLed)", percentiles(series.ignores!)],
  ["reference: the command job without the worker hop", percentiles(series.direct!)],
]);
console.log(`\nprocesses that outlived their job's result: ${survivors}`);
console.log(
  "baseline: a cancel that waits out the default grace period before SIGKILL takes 10000 ms; SkyTest's cancel SLA is 1000 ms",
);
console.log("target: p95 under 50 ms for a job that honours SIGTERM, and no survivor");
