// The daemon over real sockets against the reference control plane: jobs flow, and results
// survive control-plane restarts, dropped and half-open connections, and kill -9.
import { describe, test, type TestContext } from "node:test";
import assert from "node:assert/strict";
import { promises as fs } from "node:fs";
import path from "node:path";
import { registerRunner, startTestControlPlane, tempDir, type TestControlPlane } from "../helpers/fixtures.js";
import { startDaemon, type DaemonProcess } from "../helpers/daemon.js";
import { startTcpProxy } from "../helpers/tcp-proxy.js";
import type { JobView } from "../../src/protocol/http.js";
import { ExitCode } from "../../src/errors.js";
import { isRunning, childrenOf } from "../helpers/processes.js";

const FAST = ["--reconnect-base-ms", "100", "--reconnect-cap-ms", "400"];
const HEARTBEAT_MS = 1000;

function killIfAlive(pid: number): void {
  try {
    process.kill(pid, "SIGKILL");
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== "ESRCH") throw error;
  }
}

async function waitForJob(
  plane: TestControlPlane,
  jobId: string,
  done: (job: JobView) => boolean,
  timeoutMs = 15_000,
): Promise<JobView> {
  const deadline = Date.now() + timeoutMs;
  let last: JobView | undefined;
  while (Date.now() < deadline) {
    last = (await plane.admin.getJob(jobId)).job;
    if (done(last)) return last;
    await new Promise((r) => setTimeout(r, 25));
  }
  throw new Error(`job ${jobId} did not reach the expected state in ${timeoutMs} ms; last: ${JSON.stringify(last)}`);
}

const finished = (job: JobView) => ["succeeded", "failed", "cancelled", "timed_out"].includes(job.status);
const connectedLine = (d: DaemonProcess) => d.waitForLog((l) => l.msg === "connected to the control plane");

async function outboxFiles(stateDir: string): Promise<string[]> {
  return (await fs.readdir(path.join(stateDir, "outbox"))).filter((f) => f.endsWith(".json"));
}

async function waitFor(check: () => Promise<boolean>, what: string, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

async function setUp(t: TestContext, cpOptions: Parameters<typeof startTestControlPlane>[1] = {}, viaProxy = false) {
  const dataDir = await tempDir(t, "runner-cp-");
  // 1 s: a runner is cut after 2.5 intervals of silence, and on a loaded 2-core machine a
  // daemon busy starting a worker has been seen silent for more than 750 ms. The tests about
  // silence pass a shorter interval of their own.
  const plane = await startTestControlPlane(t, { dataDir, heartbeatIntervalMs: HEARTBEAT_MS, ...cpOptions });
  const proxy = viaProxy ? await startTcpProxy(t, Number(new URL(plane.cp.url).port)) : null;
  const runner = await registerRunner(t, plane, { url: proxy?.url });
  return { plane, runner, proxy, dataDir };
}

describe("the daemon and the control plane", () => {
  test(
    "runs a job end to end: accepted, started, logs streamed, result applied once and acknowledged",
    { timeout: 120_000 },
    async (t) => {
      const { plane, runner } = await setUp(t);
      const daemon = startDaemon(t, [...runner.flags, ...FAST]);
      await connectedLine(daemon);
      const { job } = await plane.admin.submitJob({
        job: { kind: "command", argv: ["sh", "-c", "echo out; echo err >&2; exit 3"], env: {} },
      });
      const done = await waitForJob(plane, job.jobId, finished);
      assert.equal(done.status, "failed");
      assert.equal(done.attempt, 1);
      assert.equal(done.result?.exitCode, 3);
      const { logs } = await plane.admin.getJob(job.jobId);
      assert.deepEqual(logs.map((l) => [l.stream, l.data]).sort(), [
        ["stderr", "err\n"],
        ["stdout", "out\n"],
      ]);
      await waitFor(async () => (await outboxFiles(runner.stateDir)).length === 0, "the outbox to empty after the ack");

      assert.equal(await daemon.stop("SIGTERM"), ExitCode.OK);
      assert.ok(
        daemon.lines.some((l) => /drained/.test(l.msg)),
        daemon.stderr(),
      );
    },
  );

  test(
    "a job whose failure reason would pass the protocol's 4096 characters ends failed with the reason cut, and the outbox empties",
    { timeout: 60_000 },
    async (t) => {
      const { plane, runner } = await setUp(t);
      const daemon = startDaemon(t, [...runner.flags, ...FAST]);
      await connectedLine(daemon);
      // The reason quotes the program: `cannot start: ENAMETOOLONG: <5000 characters>`.
      const { job } = await plane.admin.submitJob({ job: { kind: "command", argv: ["x".repeat(5000)], env: {} } });
      const done = await waitForJob(plane, job.jobId, finished);
      assert.equal(done.status, "failed");
      const reason = done.result?.reason ?? "";
      assert.ok(reason.length <= 4096, `${reason.length} characters`);
      assert.match(reason, /^cannot start: [A-Z]+: x+… \[\d+ more chars\]$/, "the code is ENOENT or ENAMETOOLONG");
      await waitFor(async () => (await outboxFiles(runner.stateDir)).length === 0, "the outbox to empty after the ack");
      assert.ok(!daemon.lines.some((l) => /could not write a result/.test(l.msg)), daemon.stderr());
    },
  );

  test(
    "with less free disk than --min-free-disk-mb the runner rejects jobs with the reason, and the job stays queued",
    { timeout: 120_000 },
    async (t) => {
      const { plane, runner } = await setUp(t);
      // 100 TB: more than this machine has.
      const daemon = startDaemon(t, [...runner.flags, ...FAST, "--min-free-disk-mb", "100000000"]);
      await daemon.waitForLog((l) => /^this machine rejects new jobs: low disk: \d+ MiB free for .*work/.test(l.msg));
      await connectedLine(daemon);
      const { job } = await plane.admin.submitJob({ job: { kind: "command", argv: ["true"], env: {} } });
      await daemon.waitForLog((l) => l.msg.startsWith(`rejected job ${job.jobId}: low disk`));
      // The control plane reads the reject after the daemon has logged it: wait for it to re-queue.
      await waitForJob(plane, job.jobId, (j) => j.status === "queued");
      assert.equal(await daemon.stop("SIGTERM"), ExitCode.OK);
    },
  );

  test(
    "a control-plane restart mid-job loses nothing: the job keeps running and its result is applied once",
    { timeout: 120_000 },
    async (t) => {
      const { plane, runner, dataDir } = await setUp(t);
      const port = Number(new URL(plane.cp.url).port);
      const daemon = startDaemon(t, [...runner.flags, ...FAST]);
      await connectedLine(daemon);
      const { job } = await plane.admin.submitJob({
        job: { kind: "command", argv: ["sh", "-c", "sleep 1.5; echo finished"], env: {} },
      });
      await waitForJob(plane, job.jobId, (j) => j.status === "running");
      await plane.cp.close();
      await new Promise((r) => setTimeout(r, 300));
      const again = await startTestControlPlane(t, { dataDir, port, heartbeatIntervalMs: HEARTBEAT_MS });
      const done = await waitForJob(again, job.jobId, finished);
      assert.equal(done.status, "succeeded");
      assert.equal(done.attempt, 1, "not re-queued: the runner came back within its lease");
      assert.ok(daemon.lines.filter((l) => l.msg === "connected to the control plane").length >= 2);
      await waitFor(async () => (await outboxFiles(runner.stateDir)).length === 0, "the outbox to empty");
    },
  );

  test(
    "a half-open connection is noticed within about two heartbeat intervals, and a result sent into it is re-sent",
    { timeout: 120_000 },
    async (t) => {
      const { plane, runner, proxy } = await setUp(t, { heartbeatIntervalMs: 300 }, true);
      const daemon = startDaemon(t, [...runner.flags, ...FAST]);
      await connectedLine(daemon);
      const { job } = await plane.admin.submitJob({
        job: { kind: "command", argv: ["sh", "-c", "sleep 0.6; echo done"], env: {} },
      });
      await waitForJob(plane, job.jobId, (j) => j.status === "running");
      const blackholedAt = Date.now();
      proxy!.blackhole();
      const noticed = await daemon.waitForLog((l) => /no pong within 300 ms/.test(l.msg), 5_000);
      const detectionMs = Date.now() - blackholedAt;
      assert.ok(detectionMs <= 2 * 300 + 400, `noticed after ${detectionMs} ms`);
      assert.ok(noticed);
      // The job finished while the connection was dead: its result went into the void or was never sent.
      await waitFor(async () => (await outboxFiles(runner.stateDir)).length === 1, "the result in the outbox");
      proxy!.resume();
      const done = await waitForJob(plane, job.jobId, finished);
      assert.equal(done.status, "succeeded");
      await waitFor(
        async () => (await outboxFiles(runner.stateDir)).length === 0,
        "the outbox to empty after the re-sent result is acknowledged",
      );
    },
  );

  test(
    "a runner away past its lease is fenced: the old attempt is cancelled, not applied, and the job runs again as attempt 2",
    { timeout: 120_000 },
    async (t) => {
      const { plane, runner, proxy } = await setUp(
        t,
        { heartbeatIntervalMs: 200, leaseMs: 1000, reaperIntervalMs: 100 },
        true,
      );
      const daemon = startDaemon(t, [...runner.flags, ...FAST]);
      await connectedLine(daemon);
      const marker = path.join(runner.stateDir, "..", "runs");
      const { job } = await plane.admin.submitJob({
        job: { kind: "command", argv: ["sh", "-c", `echo run >> ${marker}; sleep 2`], env: {} },
        cancelGraceMs: 200,
      });
      await waitForJob(plane, job.jobId, (j) => j.status === "running");
      proxy!.blackhole();
      await waitForJob(plane, job.jobId, (j) => j.status === "queued" || j.attempt === 2, 10_000);
      proxy!.resume();
      const done = await waitForJob(plane, job.jobId, finished, 20_000);
      assert.equal(done.attempt, 2);
      assert.equal(done.status, "succeeded");
      assert.equal(done.result?.attempt, 2, "the applied result is attempt 2's");
      assert.equal(
        (await fs.readFile(marker, "utf8")).trim().split("\n").length,
        2,
        "the command ran twice, once per attempt",
      );
      await daemon.waitForLog((l) => /did not apply the result of .* attempt 1/.test(l.msg), 10_000);
    },
  );

  for (const variant of ["the daemon alone", "the daemon and its workers together"] as const) {
    test(
      `after kill -9 of ${variant} mid-job, the restarted daemon leaves no process behind and reports the job failed once`,
      { timeout: 120_000 },
      async (t) => {
        const { plane, runner } = await setUp(t);
        const pidFile = path.join(runner.stateDir, "..", "pids");
        const first = startDaemon(t, [...runner.flags, ...FAST]);
        await connectedLine(first);
        const { job } = await plane.admin.submitJob({
          job: { kind: "command", argv: ["sh", "-c", `sleep 300 & echo $$ $! > ${pidFile}; wait`], env: {} },
        });
        await waitForJob(plane, job.jobId, (j) => j.status === "running");
        await waitFor(
          async () => (await fs.readFile(pidFile, "utf8").catch(() => "")).trim().split(" ").length === 2,
          "the job's pids",
        );
        const pids = (await fs.readFile(pidFile, "utf8")).trim().split(" ").map(Number);
        const workers = childrenOf(first.child.pid!);
        assert.ok(workers.length >= 1, "the job runs under a worker process");
        if (variant === "the daemon and its workers together") {
          // Held still first, so it cannot see its workers die and clean up after them: the two
          // deaths are then one crash, as when the machine's OOM killer takes the whole tree.
          process.kill(first.child.pid!, "SIGSTOP");
          // The daemon's children are its workers and maybe a short-lived device probe, gone by now.
          for (const worker of workers) killIfAlive(worker);
        }
        await first.stop("SIGKILL");
        if (variant === "the daemon and its workers together") {
          for (const pid of pids)
            assert.ok(isRunning(pid), `job process ${pid} outlived its daemon and worker, as orphans do`);
        }

        const second = startDaemon(t, [...runner.flags, ...FAST]);
        await second.waitForLog((l) => /orphaned job\(s\) as failed: agent restarted/.test(l.msg));
        if (variant === "the daemon and its workers together") {
          assert.ok(
            second.lines.some((l) => /killed the process tree of a job orphaned/.test(l.msg)),
            second.stderr(),
          );
        }
        const done = await waitForJob(plane, job.jobId, finished);
        assert.equal(done.status, "failed");
        assert.equal(done.result?.reason, "agent restarted");
        assert.equal(done.attempt, 1);
        // Gone, or a zombie waiting for PID 1 to reap it (dead either way: it runs nothing).
        await waitFor(async () => pids.every((pid) => !isRunning(pid)), "every job process to be gone");
        await waitFor(async () => (await outboxFiles(runner.stateDir)).length === 0, "the outbox to empty");
        assert.deepEqual(await fs.readdir(path.join(runner.stateDir, "running")), [], "the journal is clear");

        // A third start finds nothing to report: exactly once.
        await second.stop("SIGTERM");
        const third = startDaemon(t, [...runner.flags, ...FAST]);
        await connectedLine(third);
        assert.ok(!third.lines.some((l) => /orphaned/.test(l.msg)));
        assert.equal(await third.stop("SIGTERM"), ExitCode.OK);
      },
    );
  }

  test(
    "a result held in the outbox for an already-applied job is re-sent, acknowledged without applying, and discarded",
    { timeout: 120_000 },
    async (t) => {
      const { plane, runner } = await setUp(t);
      const daemon = startDaemon(t, [...runner.flags, ...FAST]);
      await connectedLine(daemon);
      const { job } = await plane.admin.submitJob({ job: { kind: "command", argv: ["true"], env: {} } });
      const applied = await waitForJob(plane, job.jobId, finished);
      await daemon.stop("SIGTERM");
      // The same result again, as if the ack had been lost before the outbox file was removed.
      await fs.writeFile(path.join(runner.stateDir, "outbox", `${job.jobId}.1.json`), JSON.stringify(applied.result));
      const again = startDaemon(t, [...runner.flags, ...FAST]);
      await again.waitForLog((l) => /did not apply the result/.test(l.msg));
      await waitFor(async () => (await outboxFiles(runner.stateDir)).length === 0, "the duplicate to be discarded");
      const after = (await plane.admin.getJob(job.jobId)).job;
      assert.deepEqual(after, applied, "the job is exactly as it was");
    },
  );

  test(
    "SIGTERM drains: the running job finishes and its result is flushed before exit 0",
    { timeout: 120_000 },
    async (t) => {
      const { plane, runner } = await setUp(t);
      const daemon = startDaemon(t, [...runner.flags, ...FAST]);
      await connectedLine(daemon);
      const { job } = await plane.admin.submitJob({
        job: { kind: "command", argv: ["sh", "-c", "sleep 0.5; echo ok"], env: {} },
      });
      await waitForJob(plane, job.jobId, (j) => j.status === "running");
      assert.equal(await daemon.stop("SIGTERM"), ExitCode.OK);
      assert.equal((await plane.admin.getJob(job.jobId)).job.status, "succeeded");
      assert.deepEqual(await outboxFiles(runner.stateDir), []);
    },
  );

  test(
    "a second signal cancels the running job; its result is kept in the outbox or delivered",
    { timeout: 120_000 },
    async (t) => {
      const { plane, runner } = await setUp(t);
      const daemon = startDaemon(t, [...runner.flags, ...FAST]);
      await connectedLine(daemon);
      const { job } = await plane.admin.submitJob({
        job: { kind: "command", argv: ["sleep", "30"], env: {} },
        cancelGraceMs: 200,
      });
      await waitForJob(plane, job.jobId, (j) => j.status === "running");
      daemon.child.kill("SIGTERM");
      await daemon.waitForLog((l) => /draining/.test(l.msg));
      const started = Date.now();
      assert.equal(await daemon.stop("SIGTERM"), ExitCode.OK);
      assert.ok(Date.now() - started < 5_000);
      const status = (await plane.admin.getJob(job.jobId)).job.status;
      const held = await outboxFiles(runner.stateDir);
      assert.ok(status === "cancelled" || held.length === 1, `delivered (${status}) or held (${held.join()})`);
    },
  );

  test(
    "a revoked credential stops the daemon with the needs-operator code instead of reconnecting for ever",
    { timeout: 120_000 },
    async (t) => {
      const { plane, runner, dataDir } = await setUp(t);
      const daemon = startDaemon(t, [...runner.flags, ...FAST]);
      await connectedLine(daemon);
      const [record] = await plane.admin.listRunners();
      await plane.admin.revokeRunner(record!.runnerId);
      // Restart the control plane so the runner must authenticate again.
      const port = Number(new URL(plane.cp.url).port);
      await plane.cp.close();
      await startTestControlPlane(t, { dataDir, port, heartbeatIntervalMs: HEARTBEAT_MS });
      assert.equal(await daemon.exited, ExitCode.NEEDS_OPERATOR, daemon.stderr());
      assert.ok(daemon.lines.some((l) => /rejected this runner's credential/.test(l.msg)));
    },
  );
});
