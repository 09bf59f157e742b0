// The README's first command: the whole system on one machine. Starts the embedded
// reference control plane on loopback, registers a runner through the real CLI in a
// temporary state dir, prints what `runner verify` and `runner status` say, starts the
// daemon, submits a few jobs and prints their results and logs, then drains the daemon.
import { spawn, type ChildProcess } from "node:child_process";
import { promises as fs } from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { pino } from "pino";
import { startControlPlane, type ControlPlane } from "../src/control-plane/control-plane.js";
import type { SubmitJobRequest } from "../src/protocol/http.js";
import { AdminClient } from "../src/api-client/admin.js";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const bin = path.join(root, "bin", "runner.js");

function section(title: string): void {
  process.stdout.write(`\n== ${title}\n`);
}

/** Runs the real CLI. Asynchronously: the control plane in this process must keep answering. */
function runner(args: string[], options: { quiet?: boolean } = {}): Promise<number> {
  if (!options.quiet) process.stdout.write(`$ runner ${args.join(" ")}\n`);
  const child = spawn(process.execPath, [bin, ...args], {
    stdio: ["ignore", options.quiet ? "ignore" : "inherit", options.quiet ? "ignore" : "inherit"],
    env: { ...process.env, RUNNER_LOG_FORMAT: "pretty" },
  });
  return new Promise((resolve) => child.on("close", (code) => resolve(code ?? 1)));
}

/** `runner start` as a child process; resolves once the control plane sees it connected. */
async function startDaemon(cp: ControlPlane, args: string[], env: Record<string, string>): Promise<ChildProcess> {
  process.stdout.write(
    `$ ${Object.entries(env)
      .map(([k, v]) => `${k}=${v} `)
      .join("")}runner start ${args.join(" ")} &\n`,
  );
  const connected = new Promise<void>((resolve) =>
    cp.events.on("runner", (e: { event: string }) => e.event === "connected" && resolve()),
  );
  const child = spawn(process.execPath, [bin, "start", ...args], {
    stdio: ["ignore", "inherit", "inherit"],
    env: { ...process.env, ...env },
  });
  await connected;
  return child;
}

const DEMO_JOBS: { title: string; request: SubmitJobRequest }[] = [
  {
    title: "a module job on a warm worker",
    request: { job: { kind: "module", handler: "hello", payload: { name: "operator" } } },
  },
  {
    title: "hello",
    request: {
      job: { kind: "command", argv: ["sh", "-c", "echo hello from $(hostname); echo to stderr >&2"], env: {} },
    },
  },
  {
    title: "its own environment only",
    request: {
      job: {
        kind: "command",
        argv: ["sh", "-c", 'echo "GREETING=$GREETING RUNNER_CAPACITY=${RUNNER_CAPACITY:-unset}"'],
        env: { GREETING: "hi" },
      },
    },
  },
  {
    title: "a failing job",
    request: { job: { kind: "command", argv: ["sh", "-c", "echo about to fail; exit 3"], env: {} } },
  },
  {
    title: "a job that times out",
    request: { job: { kind: "command", argv: ["sleep", "30"], env: {} }, timeoutMs: 500, cancelGraceMs: 200 },
  },
];

async function waitForResult(admin: AdminClient, jobId: string) {
  let view = await admin.getJob(jobId);
  while (!view.job.result) {
    await new Promise((r) => setTimeout(r, 50));
    view = await admin.getJob(jobId);
  }
  return view;
}

async function runJobs(admin: AdminClient, jobs: { title: string; request: SubmitJobRequest }[]): Promise<void> {
  const submitted = [];
  for (const { title, request } of jobs) {
    const { job } = await admin.submitJob(request);
    process.stdout.write(`submitted ${job.jobId}: ${title}\n`);
    submitted.push({ title, jobId: job.jobId });
  }
  for (const { title, jobId } of submitted) {
    const view = await waitForResult(admin, jobId);
    const r = view.job.result!;
    process.stdout.write(
      `\n${jobId} (${title}): ${view.job.status}, attempt ${view.job.attempt}, exit ${r.exitCode ?? "-"}${r.reason ? `, ${r.reason}` : ""}\n`,
    );
    for (const chunk of view.logs)
      process.stdout.write(`  ${chunk.stream}| ${chunk.data.trimEnd().split("\n").join(`\n  ${chunk.stream}| `)}\n`);
  }
}

async function main(): Promise<number> {
  const work = await fs.mkdtemp(path.join(os.tmpdir(), "runner-demo-"));
  const stateDir = path.join(work, "state");
  const cp = await startControlPlane({ logger: pino({ level: "warn" }) });
  try {
    section("control plane");
    process.stdout.write(`embedded reference control plane listening on ${cp.url} (in memory)\n`);
    const admin = new AdminClient(cp.url, cp.adminToken!);
    const { token, expiresAt } = await admin.createRegistrationToken(600);
    const tokenFile = path.join(work, "registration-token");
    await fs.writeFile(tokenFile, token, { mode: 0o600 });
    process.stdout.write(`created a one-time registration token (expires ${expiresAt}) in ${tokenFile}\n`);

    const flags = ["--state-dir", stateDir];
    section("register");
    if (
      (await runner([
        "register",
        "--url",
        cp.url,
        "--token-file",
        tokenFile,
        "--name",
        "demo-runner",
        "--labels",
        "demo,linux",
        ...flags,
      ])) !== 0
    )
      return 1;

    section("verify");
    const healthy = await runner(["verify", ...flags]);

    section("status");
    await runner(["status", ...flags]);

    section("the control plane's view");
    for (const r of await admin.listRunners())
      process.stdout.write(`${r.runnerId}  ${r.name}  labels=${r.labels.join(",")}  host=${r.host.hostname}\n`);

    section("break something, then repair it");
    await fs.chmod(stateDir, 0o755);
    await runner(["verify", ...flags]);
    await runner(["repair", ...flags]);

    section("start the daemon and run jobs");
    const handlers = ["hello", "leaky"]
      .map((name) => `${name}=${path.join(root, "examples", "handlers", `${name}.mjs`)}`)
      .join(",");
    // Only the soft limit is lowered: the hard ceiling stays at its default, so what retires the
    // leaking worker below is the soft limit alone, at the first job boundary past it.
    const softLimitMb = 200;
    const daemon = await startDaemon(
      cp,
      [...flags, "--log-format", "pretty", "--worker-max-rss-mb", String(softLimitMb)],
      {
        RUNNER_CAPACITY: "2",
        RUNNER_HANDLERS: handlers,
      },
    );
    await runJobs(admin, DEMO_JOBS);

    section(
      `a module job that leaks 60 MB per job: its worker is recycled at the first job boundary past the soft limit (${softLimitMb} MB)`,
    );
    for (let i = 1; i <= 6; i++) {
      // One at a time, so they land on the same warm worker until it is recycled; the daemon's
      // "recycling worker" line above the next job's result says which limit fired and at what RSS.
      await runJobs(admin, [
        { title: `leaky #${i}`, request: { job: { kind: "module", handler: "leaky", payload: { mb: 60 } } } },
      ]);
    }

    section("a cancelled job");
    const { job: sleeper } = await admin.submitJob({
      job: { kind: "command", argv: ["sleep", "30"], env: {} },
      cancelGraceMs: 2000,
    });
    while ((await admin.getJob(sleeper.jobId)).job.status !== "running") await new Promise((r) => setTimeout(r, 20));
    const cancelAt = Date.now();
    await admin.cancelJob(sleeper.jobId);
    await waitForResult(admin, sleeper.jobId);
    const cancelled = (await admin.getJob(sleeper.jobId)).job;
    process.stdout.write(
      `${sleeper.jobId} (sleep 30): ${cancelled.status} ${Date.now() - cancelAt} ms after the cancel: ${cancelled.result?.reason}\n`,
    );

    section("SIGTERM: drain and stop");
    daemon.kill("SIGTERM");
    const code = await new Promise<number>((resolve) => daemon.on("exit", (c) => resolve(c ?? 1)));
    process.stdout.write(`the daemon exited with code ${code}\n`);
    return healthy || code;
  } finally {
    // The demo used a throw-away state dir; forget its keychain entry too, if it made one.
    await runner(["unregister", "--local-only", "--state-dir", stateDir], { quiet: true });
    await cp.close();
    await fs.rm(work, { recursive: true, force: true });
  }
}

process.exitCode = await main();
