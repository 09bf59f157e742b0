// The cost of one health sample, per call:
// - from outside (the daemon's hard-ceiling sampler, every sampleIntervalMs per busy worker):
//   /proc/<pid>/statm read of a live worker; for comparison, pidusage on the same pid (what
//   macOS uses, where it spawns `ps`; on Linux it reads /proc too);
// - inside a worker, with every result: process.memoryUsage.rss() plus the open-fd count; for
//   comparison, process.memoryUsage() (which also walks the V8 heap spaces).
//
//   npm run build && node dist/bench/health-sample.js [calls=20000]
import { pino } from "pino";
import pidusage from "pidusage";
import type { Assignment } from "../src/protocol/channel.js";
import { WorkerPool } from "../src/workers/parent/pool.js";
import { defaultRecycleLimits } from "../src/config/normalize.js";
import { countOpenFds, readOwnHealth } from "../src/workers/child/own-health.js";
import { readRssFromProc } from "../src/workers/parent/sample.js";
import { percentiles, printTable, type Percentiles } from "./support.js";

const calls = Number(process.argv[2] ?? 20_000);

async function time(label: string, n: number, sample: () => unknown): Promise<[string, Percentiles]> {
  const call = async () => {
    const value = sample();
    if (value instanceof Promise) await value; // only the async one pays for an await
  };
  for (let i = 0; i < Math.min(1000, n); i++) await call(); // warm-up
  const micros: number[] = [];
  for (let i = 0; i < n; i++) {
    const start = process.hrtime.bigint();
    const value = sample();
    if (value instanceof Promise) await value;
    micros.push(Number(process.hrtime.bigint() - start) / 1e3);
  }
  return [label, percentiles(micros)];
}

// A real, live worker to sample from outside.
const pool = new WorkerPool({
  size: 1,
  limits: defaultRecycleLimits(1024),
  handlers: {},
  logger: pino({ level: "warn" }),
});
const warmUp: Assignment = {
  type: "assign",
  jobId: "w",
  attempt: 1,
  job: { kind: "command", argv: ["true"], env: {} },
  timeoutMs: 10_000,
  cancelGraceMs: 0,
  leaseExpiresAt: "",
};
await pool.start(warmUp, { onStarted: () => undefined, onLog: () => undefined }).done;
const workerPid = pool.stats().workers[0]!.pid;

const rows: [string, Percentiles][] = [];
const linux = process.platform === "linux";
if (linux)
  rows.push(await time(`outside: /proc/${workerPid}/statm × page size`, calls, () => readRssFromProc(workerPid)));
rows.push(
  await time("outside, comparison: pidusage(pid)", Math.min(calls, linux ? calls : 200), () => pidusage(workerPid)),
);
rows.push(await time("inside: rss() + open-fd count (what a worker reports)", calls, () => readOwnHealth()));
rows.push(await time("inside, part: process.memoryUsage.rss()", calls, () => process.memoryUsage.rss()));
rows.push(await time("inside, part: open-fd count (readdir /proc/self/fd)", calls, () => countOpenFds()));
rows.push(await time("inside, comparison: process.memoryUsage()", calls, () => process.memoryUsage()));
await pool.close();

printTable(`one health sample, ${calls} calls each (µs per call)`, rows);
console.log(`\nopen fds in this process while measuring: ${countOpenFds()}`);
console.log(
  "baseline: the sampler's budget is its interval, 1000 ms per busy worker; a worker's job round trip is ~100+ µs",
);
console.log(
  "target: a sample costs well under 1 ms (under 0.1% of one core at 1 Hz), and the in-worker report is small next to a job's round trip",
);
