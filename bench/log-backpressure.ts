// The daemon side's peak RSS while a job writes hundreds of MB through the pool to a slow
// consumer. The consumer is a simulated WebSocket: onLog appends to its send buffer
// (`bufferedAmount`), which drains at a fixed rate. With backpressure the "daemon" pauses the
// pool when the buffer passes a high-water mark and resumes it below a low one; the baseline,
// measured in the same run, is the same job with no pausing (the buffer takes everything).
// Each mode runs in a fresh child process, so one's heap does not inflate the other's RSS.
// Each mode runs twice: as is, and with V8's old space capped at 32 MiB, which tells what the
// "daemon" really keeps (live memory) from what the garbage collector has not yet given back.
//
//   npm run build && node dist/bench/log-backpressure.js [mb=300] [drainMbPerS=50]
import { spawn } from "node:child_process";
import { fileURLToPath } from "node:url";
import { pino } from "pino";
import type { Assignment } from "../src/protocol/channel.js";
import { WorkerPool } from "../src/workers/parent/pool.js";
import { defaultRecycleLimits } from "../src/config/normalize.js";

const MiB = 1024 * 1024;
const HIGH_WATER = 4 * MiB;
const LOW_WATER = 1 * MiB;
const DRAIN_TICK_MS = 10;

interface Measured {
  mode: "backpressure" | "unbounded";
  idleRssMb: number;
  peakRssMb: number;
  peakBufferedMb: number;
  receivedMb: number;
  pauses: number;
  seconds: number;
}

/** Writes `mb` MiB of 1 KiB lines as fast as its stdout takes them. */
const producer = (mb: number) => `
  const line = "z".repeat(1023) + "\\n"; const total = ${mb} * 1024 * 1024; let n = 0;
  function go() { while (n < total) { n += 1024; if (!process.stdout.write(line)) return process.stdout.once("drain", go); } }
  go();`;

async function measure(mode: Measured["mode"], mb: number, drainMbPerS: number): Promise<Measured> {
  const pool = new WorkerPool({
    size: 1,
    limits: defaultRecycleLimits(1024),
    handlers: {},
    logger: pino({ level: "warn" }),
  });
  const hooks = { onStarted: () => undefined, onLog: () => undefined };
  const warm: Assignment = {
    type: "assign",
    jobId: "warm",
    attempt: 1,
    job: { kind: "command", argv: ["true"], env: {} },
    timeoutMs: 60_000,
    cancelGraceMs: 1_000,
    leaseExpiresAt: "",
  };
  await pool.start(warm, hooks).done;
  const idleRss = process.memoryUsage.rss();

  // The simulated socket: a queue of frames and the bytes not yet "sent".
  const queue: string[] = [];
  let head = 0;
  let bufferedAmount = 0;
  let peakBuffered = 0;
  let received = 0;
  let pauses = 0;
  let paused = false;
  const drainPerTick = (drainMbPerS * MiB * DRAIN_TICK_MS) / 1000;
  const drain = setInterval(() => {
    let budget = drainPerTick;
    while (budget > 0 && head < queue.length) {
      const frame = queue[head] as string;
      queue[head++] = "";
      budget -= frame.length;
      bufferedAmount -= frame.length;
    }
    if (head > 10_000) {
      queue.splice(0, head);
      head = 0;
    }
    if (paused && bufferedAmount < LOW_WATER) {
      paused = false;
      pool.resumeOutput();
    }
  }, DRAIN_TICK_MS);
  let peakRss = idleRss;
  const sampler = setInterval(() => (peakRss = Math.max(peakRss, process.memoryUsage.rss())), 20);

  const began = process.hrtime.bigint();
  const job: Assignment = {
    ...warm,
    jobId: "fast-writer",
    job: { kind: "command", argv: [process.execPath, "-e", producer(mb)], env: {} },
  };
  const result = await pool.start(job, {
    onStarted: () => undefined,
    onLog: (chunk) => {
      // A log frame as the channel would send it (JSON with the job ref and seq).
      const frame = JSON.stringify({
        type: "log",
        jobId: "fast-writer",
        attempt: 1,
        seq: received,
        stream: chunk.stream,
        data: chunk.data,
      });
      queue.push(frame);
      bufferedAmount += frame.length;
      received += chunk.data.length;
      peakBuffered = Math.max(peakBuffered, bufferedAmount);
      if (mode === "backpressure" && !paused && bufferedAmount > HIGH_WATER) {
        paused = true;
        pauses++;
        pool.pauseOutput();
      }
    },
  }).done;
  if (result.outcome !== "succeeded") throw new Error(`the writer failed: ${result.reason}`);
  while (bufferedAmount > 0) await new Promise((resolve) => setTimeout(resolve, DRAIN_TICK_MS));
  const seconds = Number(process.hrtime.bigint() - began) / 1e9;
  peakRss = Math.max(peakRss, process.memoryUsage.rss());
  clearInterval(drain);
  clearInterval(sampler);
  await pool.close();
  const toMb = (bytes: number) => Math.round((bytes / MiB) * 10) / 10;
  return {
    mode,
    idleRssMb: toMb(idleRss),
    peakRssMb: toMb(peakRss),
    peakBufferedMb: toMb(peakBuffered),
    receivedMb: toMb(received),
    pauses,
    seconds: Math.round(seconds * 10) / 10,
  };
}

const CAPPED_OLD_SPACE_MB = 32;

/** One mode in a fresh process; null when that process died (out of memory, under the cap). */
function runChild(mode: Measured["mode"], mb: number, drain: number, capped: boolean): Promise<Measured | null> {
  const flags = capped ? [`--max-old-space-size=${CAPPED_OLD_SPACE_MB}`] : [];
  return new Promise((resolve) => {
    const child = spawn(
      process.execPath,
      [...flags, fileURLToPath(import.meta.url), `--mode=${mode}`, String(mb), String(drain)],
      { stdio: ["ignore", "pipe", "pipe"] },
    );
    let out = "";
    let err = "";
    child.stdout.on("data", (d: Buffer) => (out += d.toString()));
    child.stderr.on("data", (d: Buffer) => (err += d.toString()));
    child.on("exit", (code) => {
      if (code === 0) return resolve(JSON.parse(out) as Measured);
      if (!capped || !/heap out of memory/i.test(err)) process.stderr.write(err);
      resolve(null);
    });
  });
}

const modeArg = process.argv.find((a) => a.startsWith("--mode="));
const [mb, drainMbPerS] = process.argv
  .slice(2)
  .filter((a) => !a.startsWith("--"))
  .map(Number);
const size = mb ?? 300;
const drain = drainMbPerS ?? 50;
if (modeArg !== undefined) {
  process.stdout.write(JSON.stringify(await measure(modeArg.slice("--mode=".length) as Measured["mode"], size, drain)));
} else {
  const runs: [string, Measured["mode"], boolean][] = [
    ["with backpressure (pause/resume)", "backpressure", false],
    ["baseline: no backpressure", "unbounded", false],
    [`with backpressure, old space capped at ${CAPPED_OLD_SPACE_MB} MiB`, "backpressure", true],
    [`baseline, old space capped at ${CAPPED_OLD_SPACE_MB} MiB`, "unbounded", true],
  ];
  const results: [string, Measured | null][] = [];
  for (const [label, mode, capped] of runs) results.push([label, await runChild(mode, size, drain, capped)]);
  console.log(
    `\na job writing ${size} MiB through the pool to a consumer draining ${drain} MiB/s (high/low water ${HIGH_WATER / MiB}/${LOW_WATER / MiB} MiB)\n`,
  );
  const header = ["", "idle RSS", "peak RSS", "peak buffered", "received", "pauses", "seconds"];
  const rows = results.map(([label, m]) =>
    m === null
      ? [label, "-", "crashed", "-", "-", "-", "-"]
      : [
          label,
          `${m.idleRssMb} MiB`,
          `${m.peakRssMb} MiB`,
          `${m.peakBufferedMb} MiB`,
          `${m.receivedMb} MiB`,
          String(m.pauses),
          String(m.seconds),
        ],
  );
  const widths = header.map((_, i) => Math.max(...[header, ...rows].map((r) => (r[i] ?? "").length)));
  for (const row of [header, ...rows])
    console.log(row.map((cell, i) => (i === 0 ? cell.padEnd(widths[i]!) : cell.padStart(widths[i]! + 2))).join(""));
  const growth = (m: Measured | null | undefined) => (m ? `${(m.peakRssMb - m.idleRssMb).toFixed(1)} MiB` : "n/a");
  if (results.some(([, m]) => m === null))
    console.log('crashed: the process died with "JavaScript heap out of memory"');
  console.log(
    `\npeak RSS growth over idle: ${growth(results[0]?.[1])} with backpressure, ${growth(results[1]?.[1])} without`,
  );
  console.log(
    "target: memory stays bounded with backpressure: the buffered output stays near the high-water mark whatever the job writes, and the job completes within a small capped heap; without backpressure the buffer, and RSS, grow with the output",
  );
}
