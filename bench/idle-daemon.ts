// The idle daemon's footprint: RSS and CPU time of a connected `runner start` doing nothing,
// against a bare Node process that does nothing either (`node -e "setInterval(() => {}, 1e9)"`),
// both sampled from /proc over the same window. Linux only (it reads /proc/<pid>/stat).
//
//   npm run build && node dist/bench/idle-daemon.js [seconds=20]
import { spawn, type ChildProcess } from "node:child_process";
import { promises as fs } from "node:fs";
import os from "node:os";
import path from "node:path";
import { pino } from "pino";
import { startControlPlane } from "../src/control-plane/control-plane.js";
import { AdminClient } from "../src/api-client/admin.js";
import { RUNNER_BIN, runCliQuiet } from "./support.js";

const seconds = Number(process.argv[2] ?? 20);
const CLOCK_TICKS = 100; // USER_HZ on Linux

async function sample(pid: number): Promise<{ rssMb: number; cpuMs: number }> {
  const stat = await fs.readFile(`/proc/${pid}/stat`, "utf8");
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  const cpuTicks = Number(fields[11]) + Number(fields[12]); // utime + stime
  const statm = (await fs.readFile(`/proc/${pid}/statm`, "utf8")).split(" ");
  return { rssMb: (Number(statm[1]) * 4096) / 2 ** 20, cpuMs: (cpuTicks * 1000) / CLOCK_TICKS };
}

async function measure(child: ChildProcess): Promise<{ rssMb: number; cpuMsPerMinute: number }> {
  const before = await sample(child.pid!);
  await new Promise((r) => setTimeout(r, seconds * 1000));
  const after = await sample(child.pid!);
  return { rssMb: after.rssMb, cpuMsPerMinute: ((after.cpuMs - before.cpuMs) * 60) / seconds };
}

async function main(): Promise<void> {
  if (process.platform !== "linux") throw new Error("this benchmark reads /proc: Linux only");
  const work = await fs.mkdtemp(path.join(os.tmpdir(), "runner-bench-idle-"));
  const cp = await startControlPlane({ logger: pino({ level: "warn" }), heartbeatIntervalMs: 15_000 });
  const admin = new AdminClient(cp.url, cp.adminToken!);
  const flags = ["--state-dir", path.join(work, "state"), "--log-level", "warn"];
  await fs.writeFile(path.join(work, "token"), (await admin.createRegistrationToken()).token);
  await runCliQuiet([
    "register",
    "--url",
    cp.url,
    "--token-file",
    path.join(work, "token"),
    "--name",
    "idle",
    ...flags,
    "--credential-store",
    "file",
  ]);
  const connected = new Promise<void>((resolve) =>
    cp.events.on("runner", (e: { event: string }) => e.event === "connected" && resolve()),
  );
  const daemon = spawn(
    process.execPath,
    [...(process.env.BENCH_PROF ? ["--cpu-prof", "--cpu-prof-dir=/tmp/prof"] : []), RUNNER_BIN, "start", ...flags],
    { stdio: "inherit" },
  );
  const bare = spawn(process.execPath, ["-e", "setInterval(() => {}, 1e9)"], { stdio: "inherit" });
  await connected;
  await new Promise((r) => setTimeout(r, 15_000)); // settle: start-up, then V8 shrinks the heap once (seen at ~10 s)
  const [idle, baseline] = await Promise.all([measure(daemon), measure(bare)]);

  console.log(`\nidle footprint over ${seconds} s (heartbeat every 15 s)`);
  console.log(
    `runner start, connected, no jobs:  RSS ${idle.rssMb.toFixed(1)} MB, CPU ${idle.cpuMsPerMinute.toFixed(0)} ms per minute`,
  );
  console.log(
    `baseline, bare idle node process:  RSS ${baseline.rssMb.toFixed(1)} MB, CPU ${baseline.cpuMsPerMinute.toFixed(0)} ms per minute`,
  );
  console.log(`target: idle daemon under 60 MB RSS, CPU near zero`);
  daemon.kill("SIGTERM");
  bare.kill("SIGTERM");
  await new Promise((r) => daemon.on("exit", r));
  await cp.close();
  await fs.rm(work, { recursive: true, force: true });
}

await main();
