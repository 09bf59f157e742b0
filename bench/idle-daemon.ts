// The idle daemon's footprint, measured from outside as an operator would (/proc/<pid>/status
// VmRSS, /proc/<pid>/stat utime+stime): a `runner start` connected to the reference control
// plane with the default device providers, doing nothing, against a bare Node process that
// does nothing either (`node -e "setInterval(() => {}, 1e9)"`), and against the same daemon
// started without the launcher's compiler hold (src/daemon/optimizer.ts), all sampled over the
// same window. Two phases: before any job (no worker exists yet: the pool grows on demand), then
// after one command job, when the pool keeps a warm worker; the daemon and its workers are
// reported separately, and their sum. Each window is long enough to hold a periodic device
// scan (every 60 s by default), so its CPU is in the numbers. Linux only (it reads /proc).
//
//   npm run build && node dist/bench/idle-daemon.js [seconds per window=65]
import { spawn, type ChildProcess } from "node:child_process";
import { promises as fs } from "node:fs";
import os from "node:os";
import path from "node:path";
import { pino } from "pino";
import { startControlPlane, type JobEvent } from "../src/control-plane/control-plane.js";
import { AdminClient } from "../src/api-client/admin.js";
import { REPO_ROOT, RUNNER_BIN, runCliQuiet } from "./support.js";

const seconds = Number(process.argv[2] ?? 65);
/** Start-up done, then V8's memory reducer shrinks the heap once it sees the process idle (seen 15-25 s after the connect), a one-off GC that is start-up cost, not idle cost. */
const SETTLE_MS = 30_000;
const CLOCK_TICKS = 100; // USER_HZ on Linux

interface Sample {
  rssMb: number;
  cpuMs: number;
}

async function sample(pid: number): Promise<Sample> {
  const stat = await fs.readFile(`/proc/${pid}/stat`, "utf8");
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  const cpuTicks = Number(fields[11]) + Number(fields[12]); // utime + stime
  const status = await fs.readFile(`/proc/${pid}/status`, "utf8");
  const rssKb = Number(/VmRSS:\s+(\d+) kB/.exec(status)?.[1] ?? Number.NaN);
  return { rssMb: rssKb / 1024, cpuMs: (cpuTicks * 1000) / CLOCK_TICKS };
}

interface Footprint {
  rssMb: number;
  cpuMsPerMinute: number;
}

/** RSS at the end of the window, CPU over it; every pid is sampled at the same two moments. */
async function measure(pids: readonly number[]): Promise<Footprint[]> {
  const before = await Promise.all(pids.map(sample));
  await new Promise((r) => setTimeout(r, seconds * 1000));
  const after = await Promise.all(pids.map(sample));
  return after.map((end, i) => ({
    rssMb: end.rssMb,
    cpuMsPerMinute: ((end.cpuMs - before[i]!.cpuMs) * 60) / seconds,
  }));
}

/** The daemon's worker processes: its children that call themselves runner-worker (worker-main.ts sets the title). */
async function workersOf(daemonPid: number): Promise<number[]> {
  const children = await fs.readFile(`/proc/${daemonPid}/task/${daemonPid}/children`, "utf8").catch(() => "");
  const workers: number[] = [];
  for (const pid of children.trim().split(/\s+/).filter(Boolean).map(Number)) {
    const cmdline = await fs.readFile(`/proc/${pid}/cmdline`, "utf8").catch(() => "");
    if (cmdline.startsWith("runner-worker") || cmdline.includes("worker-main")) workers.push(pid);
  }
  return workers;
}

const line = (label: string, f: Footprint) =>
  `${label.padEnd(44)} RSS ${f.rssMb.toFixed(1).padStart(5)} MB   CPU ${f.cpuMsPerMinute.toFixed(0).padStart(4)} ms per minute`;

/**
 * The baseline the compiler hold is compared with: the same daemon started without the
 * launcher's hold (src/daemon/optimizer.ts), i.e. with V8's optimizing compiler on from its
 * first line, as `runner start` ran before the hold.
 */
const UNHELD = (args: string[]) =>
  `const { main } = await import(${JSON.stringify(path.join(REPO_ROOT, "dist", "src", "program.js"))});` +
  `process.exitCode = await main(${JSON.stringify(["start", ...args])});`;

async function main(): Promise<void> {
  if (process.platform !== "linux") throw new Error("this benchmark reads /proc: Linux only");
  const work = await fs.mkdtemp(path.join(os.tmpdir(), "runner-bench-idle-"));
  const cp = await startControlPlane({ logger: pino({ level: "warn" }), heartbeatIntervalMs: 15_000 });
  const admin = new AdminClient(cp.url, cp.adminToken!);
  // Two runners, each with a label of its own, so that each gets its own job.
  const register = async (name: string): Promise<string[]> => {
    const flags = ["--state-dir", path.join(work, name), "--log-level", "warn"];
    await fs.writeFile(path.join(work, `${name}.token`), (await admin.createRegistrationToken()).token);
    await runCliQuiet([
      "register",
      "--url",
      cp.url,
      "--token-file",
      path.join(work, `${name}.token`),
      "--name",
      name,
      "--labels",
      name,
      ...flags,
      "--credential-store",
      "file",
    ]);
    return flags;
  };
  const heldFlags = await register("held");
  const unheldFlags = await register("unheld");
  let connections = 0;
  const connected = new Promise<void>((resolve) =>
    cp.events.on("runner", (e: { event: string }) => e.event === "connected" && ++connections === 2 && resolve()),
  );
  const daemon: ChildProcess = spawn(process.execPath, [RUNNER_BIN, "start", ...heldFlags], { stdio: "inherit" });
  const unheld: ChildProcess = spawn(process.execPath, ["--input-type=module", "-e", UNHELD(unheldFlags)], {
    stdio: "inherit",
  });
  const bare = spawn(process.execPath, ["-e", "setInterval(() => {}, 1e9)"], { stdio: "inherit" });
  try {
    await connected;
    await new Promise((r) => setTimeout(r, SETTLE_MS));
    const [idle, idleUnheld, baseline] = await measure([daemon.pid!, unheld.pid!, bare.pid!]);

    // One job each, so that each pool keeps a warm worker; then the same window again.
    let applied = 0;
    const done = new Promise<void>((resolve) =>
      cp.events.on("job", (e: JobEvent) => e.status === "result_applied" && ++applied === 2 && resolve()),
    );
    for (const label of ["held", "unheld"])
      await admin.submitJob({ job: { kind: "command", argv: ["true"], env: {} }, requiredLabels: [label] });
    await done;
    await new Promise((r) => setTimeout(r, SETTLE_MS));
    const workers = await workersOf(daemon.pid!);
    const [afterJob, afterJobUnheld, bareAgain, ...warm] = await measure([
      daemon.pid!,
      unheld.pid!,
      bare.pid!,
      ...workers,
    ]);
    const sum: Footprint = {
      rssMb: [afterJob!, ...warm].reduce((s, f) => s + f.rssMb, 0),
      cpuMsPerMinute: [afterJob!, ...warm].reduce((s, f) => s + f.cpuMsPerMinute, 0),
    };

    console.log(`\nidle footprint, measured from outside over ${seconds} s windows (heartbeat every 15 s,`);
    console.log(`device scans every 60 s with the default providers: ${"gpu,usb,display,android,ios-simulator"})`);
    console.log(line("baseline: bare idle node process", baseline!));
    console.log(line("baseline: runner start, compiler on from start", idleUnheld!));
    console.log(line("runner start, connected, before any job", idle!));
    console.log(`after one job (${warm.length} warm worker${warm.length === 1 ? "" : "s"}):`);
    console.log(line("  baseline: bare idle node process", bareAgain!));
    console.log(line("  baseline: compiler on from start", afterJobUnheld!));
    console.log(line("  daemon", afterJob!));
    warm.forEach((f, i) => console.log(line(`  warm worker ${i + 1}`, f)));
    console.log(line("  daemon + warm workers", sum));
    console.log(`target: the idle daemon under 60 MB RSS, CPU near zero`);
  } finally {
    for (const child of [daemon, unheld]) child.kill("SIGTERM");
    bare.kill("SIGTERM");
    await Promise.all([daemon, unheld].map((child) => new Promise((r) => child.once("exit", r))));
    await cp.close();
    await fs.rm(work, { recursive: true, force: true });
  }
}

await main();
