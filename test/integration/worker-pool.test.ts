// The worker pool against real worker processes: warm reuse, recycling on memory, fds, age and
// jobs at the job boundary (whatever the worker's age), the recycle-loop warning, the hard ceiling, cancel and timeout of both
// job kinds, crashes, unknown handlers, the job environment, and output backpressure.
import { describe, test, type TestContext } from "node:test";
import assert from "node:assert/strict";
import { existsSync, promises as fs, readFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { setTimeout as delay } from "node:timers/promises";
import { pino } from "pino";
import { recycleLimits } from "../../src/config/normalize.js";
import type { JobHooks, RunningJob } from "../../src/jobs/command.js";
import type { LogChunk } from "../../src/jobs/log-chunks.js";
import { decodeControlMessage, type Assignment, type JobSpec } from "../../src/protocol/channel.js";
import { WorkerPool, type WorkerPoolOptions } from "../../src/workers/parent/pool.js";
import { RECYCLE_STREAK_WARN, type RecycleLimits } from "../../src/workers/parent/recycle-policy.js";
import { HELD_LIMIT_BYTES } from "../../src/workers/child/worker-output.js";
import { REPO_ROOT } from "../helpers/cli.js";
import { isRunning } from "../helpers/processes.js";
import { onCleanup } from "../helpers/cleanup.js";

const posixOnly = process.platform === "win32" ? "needs POSIX process groups, sh and /dev/null" : false;
const MiB = 1024 * 1024;
const fixture = (name: string) => path.join(REPO_ROOT, "test", "fixtures", "handlers", `${name}.mjs`);
const HANDLERS = Object.fromEntries(
  ["counter", "leak", "grow-memory", "stop", "crash", "chatty", "noop"].map((n) => [n, fixture(n)]),
);
/** Every limit off: each test turns on the one it is about. */
const NO_LIMITS: RecycleLimits = {
  maxRssBytes: null,
  hardRssBytes: null,
  maxOpenFds: null,
  maxAgeMs: null,
  ageJitter: 0,
  maxJobs: null,
};
/** Limits as an operator's settings make them (everything else the runner adds included), with only the given ones on. */
const operatorLimits = (settings: { workerMaxRssMb?: number; workerMaxFds?: number }) =>
  recycleLimits({
    workerMaxRssMb: 0,
    workerHardRssMb: 0,
    workerMaxFds: 0,
    workerMaxAgeS: 0,
    workerMaxJobs: 0,
    ...settings,
  });

interface LogLine {
  msg: string;
  [field: string]: unknown;
}

function createPool(
  t: TestContext,
  options: Omit<Partial<WorkerPoolOptions>, "limits"> & { limits?: Partial<RecycleLimits> } = {},
) {
  const lines: LogLine[] = [];
  const logger = pino({ level: "info" }, { write: (line: string) => void lines.push(JSON.parse(line) as LogLine) });
  const pool = new WorkerPool({
    size: 1,
    handlers: HANDLERS,
    sampleIntervalMs: 50,
    ...options,
    logger,
    limits: { ...NO_LIMITS, ...options.limits },
  });
  onCleanup(t, async () => {
    // Bounded, so a broken pool fails its test instead of hanging the run; leftovers are killed.
    await Promise.race([pool.close(), delay(10_000)]);
    for (const worker of pool.stats().workers) killGroupQuietly(worker.pid);
  });
  return { pool, lines };
}

async function tempDir(t: TestContext): Promise<string> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), "runner-pool-"));
  onCleanup(t, () => fs.rm(dir, { recursive: true, force: true }));
  return dir;
}

let nextId = 0;
function assign(job: JobSpec, overrides: { timeoutMs?: number; cancelGraceMs?: number } = {}): Assignment {
  return {
    type: "assign",
    jobId: `pool-${process.pid}-${nextId++}`,
    attempt: 1,
    job,
    timeoutMs: overrides.timeoutMs ?? 30_000,
    cancelGraceMs: overrides.cancelGraceMs ?? 10_000,
    leaseExpiresAt: new Date(Date.now() + 60_000).toISOString(),
  };
}
const moduleJob = (handler: string, payload: unknown = {}): JobSpec => ({ kind: "module", handler, payload });
const commandJob = (argv: string[], env: Record<string, string> = {}): JobSpec => ({ kind: "command", argv, env });

interface Observed {
  job: RunningJob;
  logs: LogChunk[];
  started: { pid: number; startedAt: string }[];
  text(stream?: "stdout" | "stderr"): string;
  bytes(): number;
  /** Resolves once the output contains the text. */
  waitFor(needle: string): Promise<void>;
}

function run(pool: WorkerPool, a: Assignment): Observed {
  const logs: LogChunk[] = [];
  const started: Observed["started"] = [];
  let received = 0;
  const waiters: { needle: string; resolve: () => void }[] = [];
  const text = (stream?: "stdout" | "stderr") =>
    logs
      .filter((l) => stream === undefined || l.stream === stream)
      .map((l) => l.data)
      .join("");
  const hooks: JobHooks = {
    onStarted: (info) => {
      assert.equal(logs.length, 0, "onStarted comes before any log chunk");
      started.push(info);
    },
    onLog: (chunk) => {
      logs.push(chunk);
      received += chunk.data.length;
      if (waiters.length > 0) {
        const all = text();
        for (const w of waiters.splice(0))
          if (all.includes(w.needle)) w.resolve();
          else waiters.push(w);
      }
    },
  };
  const job = pool.start(a, hooks);
  const waitFor = (needle: string) =>
    new Promise<void>((resolve) => {
      if (text().includes(needle)) resolve();
      else waiters.push({ needle, resolve });
    });
  return { job, logs, started, text, bytes: () => received, waitFor };
}

/** Runs a job to its end and returns what happened. */
async function runToEnd(
  pool: WorkerPool,
  spec: JobSpec,
  overrides: { timeoutMs?: number; cancelGraceMs?: number } = {},
) {
  const observed = run(pool, assign(spec, overrides));
  const result = await observed.job.done;
  return { ...observed, result, pid: observed.started[0]?.pid ?? null };
}

function counterReport(observed: { text(): string }): { pid: number; imports: number; calls: number; env: string[] } {
  return JSON.parse(observed.text().trim()) as { pid: number; imports: number; calls: number; env: string[] };
}

function killGroupQuietly(pgid: number): void {
  try {
    process.kill(-pgid, "SIGKILL");
  } catch {
    // already gone
  }
}

async function waitUntil(condition: () => boolean, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}`);
    await delay(10);
  }
}

const workerPid = (pool: WorkerPool) => pool.stats().workers.find((w) => w.state !== "retiring")?.pid;

describe("warm workers", { skip: posixOnly }, () => {
  test(
    "consecutive module jobs run on the same worker, which imports the module once",
    { timeout: 20_000 },
    async (t) => {
      const { pool } = createPool(t);
      const reports: ReturnType<typeof counterReport>[] = [];
      for (let i = 0; i < 3; i++) {
        const done = await runToEnd(pool, moduleJob("counter"));
        assert.equal(done.result.outcome, "succeeded");
        assert.equal(done.pid, counterReport(done).pid, "onStarted names the worker");
        reports.push(counterReport(done));
      }
      assert.deepEqual(
        reports.map((r) => [r.pid, r.imports, r.calls]),
        [1, 2, 3].map((calls) => [reports[0]!.pid, 1, calls]),
      );
      assert.equal(pool.stats().spawned, 1);
    },
  );

  test("a worker's environment, and a command job's, hold nothing of the runner's", { timeout: 20_000 }, async (t) => {
    process.env.RUNNER_TEST_POOL_SECRET = "pool-secret-value";
    onCleanup(t, () => delete process.env.RUNNER_TEST_POOL_SECRET);
    const { pool } = createPool(t);
    const fromModule = await runToEnd(pool, moduleJob("counter"));
    assert.ok(
      !counterReport(fromModule).env.includes("RUNNER_TEST_POOL_SECRET"),
      "the module's worker does not see it",
    );
    assert.ok(counterReport(fromModule).env.includes("PATH"));
    const fromCommand = await runToEnd(
      pool,
      commandJob(["env"], { JOB_OWN: "yes", RUNNER_JOB_ID: "a job cannot hide behind another's id" }),
    );
    assert.equal(fromCommand.result.outcome, "succeeded");
    assert.match(fromCommand.text("stdout"), /^JOB_OWN=yes$/m);
    // The job's own marks (which recovery finds its processes by) are the only RUNNER_ variables.
    assert.match(fromCommand.text("stdout"), new RegExp(`^RUNNER_JOB_ID=${fromCommand.result.jobId}$`, "m"));
    assert.match(fromCommand.text("stdout"), new RegExp(`^RUNNER_JOB_ATTEMPT=${fromCommand.result.attempt}$`, "m"));
    const others = fromCommand
      .text()
      .split("\n")
      .filter((line) => line.startsWith("RUNNER_") && !/^RUNNER_JOB_(ID|ATTEMPT)=/.test(line));
    assert.deepEqual(others, []);
    assert.doesNotMatch(fromCommand.text(), /pool-secret-value/);
  });

  test(
    "command jobs run through a worker and stream their output in order, stdout and stderr apart",
    { timeout: 20_000 },
    async (t) => {
      const { pool } = createPool(t);
      const script = "for i in 1 2 3; do echo out$i; echo err$i >&2; done; exit 3";
      const first = await runToEnd(pool, commandJob(["sh", "-c", script]));
      assert.deepEqual(
        [first.result.outcome, first.result.exitCode, first.result.reason],
        ["failed", 3, "exited with code 3"],
      );
      assert.equal(first.text("stdout"), "out1\nout2\nout3\n");
      assert.equal(first.text("stderr"), "err1\nerr2\nerr3\n");
      assert.notEqual(first.pid, workerPid(pool), "the command is its own process, started by the worker");
      const before = workerPid(pool);
      await runToEnd(pool, commandJob(["true"]));
      assert.equal(workerPid(pool), before, "the same worker runs the next command");
    },
  );

  test("a pool of two runs two jobs at once on two workers", { timeout: 20_000 }, async (t) => {
    const { pool } = createPool(t, { size: 2 });
    const a = run(pool, assign(moduleJob("stop", { mode: "honour" })));
    const b = run(pool, assign(moduleJob("stop", { mode: "honour" })));
    await Promise.all([a.waitFor("waiting"), b.waitFor("waiting")]);
    assert.notEqual(a.started[0]!.pid, b.started[0]!.pid);
    a.job.cancel("enough");
    b.job.cancel("enough");
    assert.deepEqual([(await a.job.done).outcome, (await b.job.done).outcome], ["cancelled", "cancelled"]);
  });

  test(
    "an unknown handler fails at once with a clear reason, and no worker is involved",
    { timeout: 10_000 },
    async (t) => {
      const { pool } = createPool(t);
      const done = await runToEnd(pool, moduleJob("rm-rf"));
      assert.equal(done.result.outcome, "failed");
      assert.match(
        done.result.reason ?? "",
        /^unknown handler "rm-rf": this runner's config maps no module to it \(known: counter, /,
      );
      assert.deepEqual(
        [done.started.length, done.result.startedAt, pool.stats().spawned, pool.stats().jobs.rejected],
        [0, null, 0, 1],
      );
    },
  );

  test(
    "a handler that rejects fails its job with the error's message and keeps its worker",
    { timeout: 10_000 },
    async (t) => {
      const { pool } = createPool(t);
      const done = await runToEnd(pool, moduleJob("crash", { how: "reject" }));
      assert.deepEqual([done.result.outcome, done.result.reason], ["failed", "handler said no"]);
      assert.equal(workerPid(pool), done.pid);
      assert.equal(pool.stats().crashed, 0);
    },
  );
});

describe("recycling at the job boundary", { skip: posixOnly }, () => {
  test(
    "a young worker leaking memory is recycled at the first job boundary past the soft limit, never more than one job's leak above it",
    { timeout: 60_000 },
    async (t) => {
      // A fresh worker is ~50 MB; 40 MB kept per job crosses 150 MB within a few jobs, seconds
      // after the worker started.
      const softMb = 150;
      const leakMb = 40;
      const { pool, lines } = createPool(t, { limits: operatorLimits({ workerMaxRssMb: softMb }) });
      const pids: (number | null)[] = [];
      for (let i = 0; i < 8 && pool.stats().recycled.memory === 0; i++)
        pids.push((await runToEnd(pool, moduleJob("leak", { mb: leakMb }))).pid);
      assert.equal(pool.stats().recycled.memory, 1, "recycled within 8 jobs of 40 MB");
      const logged = lines.find((l) => l.reason === "memory");
      assert.ok(logged !== undefined);
      const rss = logged.rssBytes as number;
      assert.equal(logged.limit, softMb * MiB);
      assert.equal(logged.setting, "--worker-max-rss-mb");
      assert.ok(
        rss >= softMb * MiB && rss < (softMb + leakMb) * MiB,
        `retired at ${(rss / MiB).toFixed(1)} MiB: past the limit by less than one job's leak`,
      );
      assert.equal(logged.jobsRun, pids.length, "at the boundary of the job that crossed it");
      assert.match(
        logged.msg,
        new RegExp(`^recycling worker ${pids.at(-1)}: RSS \\d+\\.\\d MiB reached the soft limit 150\\.0 MiB$`),
      );
      const next = await runToEnd(pool, moduleJob("leak", { mb: 0 }));
      assert.notEqual(next.pid, pids.at(-1), "the next job runs on a fresh worker");
      assert.match(next.text(), /holds 0 leaks/, "which starts clean");
    },
  );

  test(
    "a young worker leaking file descriptors is recycled at the first job boundary past its fd limit",
    { timeout: 60_000 },
    async (t) => {
      // A fresh worker has ~20 fds open; 30 more per job pass 100 within a few jobs.
      const { pool, lines } = createPool(t, { limits: operatorLimits({ workerMaxFds: 100 }) });
      const pids: (number | null)[] = [];
      for (let i = 0; i < 8 && pool.stats().recycled.fds === 0; i++)
        pids.push((await runToEnd(pool, moduleJob("leak", { fds: 30 }))).pid);
      assert.equal(pool.stats().recycled.fds, 1, "recycled within 8 jobs of 30 fds");
      const logged = lines.find((l) => l.reason === "fds");
      assert.ok(logged !== undefined);
      assert.ok(
        (logged.openFds as number) >= 100 && (logged.openFds as number) < 130,
        `retired with ${String(logged.openFds)} fds open`,
      );
      assert.deepEqual([logged.limit, logged.setting], [100, "--worker-max-fds"]);
      const next = await runToEnd(pool, moduleJob("leak", { fds: 0 }));
      assert.notEqual(next.pid, pids.at(-1));
      assert.match(next.text(), /holds 0 leaks/, "the fresh worker starts clean");
    },
  );

  test(
    "age: each worker's limit is jittered at spawn, and a worker past it is replaced at the next job",
    { timeout: 30_000 },
    async (t) => {
      // The pool's clock is passed in: the workers' ages are what the test says, however slow the machine.
      let clock = 5_000;
      const now = () => clock;
      const jittered = createPool(t, { limits: { maxAgeMs: 1_600, ageJitter: 0.5 }, random: () => 0.99, now });
      const unjittered = createPool(t, { limits: { maxAgeMs: 1_600, ageJitter: 0.5 }, random: () => 0, now });
      const firstJittered = await runToEnd(jittered.pool, moduleJob("counter"));
      const firstUnjittered = await runToEnd(unjittered.pool, moduleJob("counter"));
      assert.equal(jittered.pool.stats().workers[0]?.maxAgeMs, 808, "1600 × (1 − 0.5 × 0.99)");
      assert.equal(unjittered.pool.stats().workers[0]?.maxAgeMs, 1_600);
      clock += 1_000;
      assert.notEqual(
        (await runToEnd(jittered.pool, moduleJob("counter"))).pid,
        firstJittered.pid,
        "past its jittered 808 ms",
      );
      assert.equal(
        (await runToEnd(unjittered.pool, moduleJob("counter"))).pid,
        firstUnjittered.pid,
        "still under 1600 ms",
      );
      assert.equal(jittered.pool.stats().recycled.age, 1);
      assert.equal(unjittered.pool.stats().recycled.age, 0);
      assert.ok(jittered.lines.some((l) => l.reason === "age" && l.ageMs === 1_000 && l.limit === 808));
    },
  );

  test(
    "a handler whose fresh worker is already past the limit is recycled after every job, and the pool warns, naming it and the limit",
    { timeout: 60_000 },
    async (t) => {
      // Every worker is born over a 1 MiB soft limit: no hidden grace keeps one past it.
      const { pool, lines } = createPool(t, { limits: operatorLimits({ workerMaxRssMb: 1 }) });
      const pids = new Set();
      for (let i = 0; i < RECYCLE_STREAK_WARN + 1; i++) pids.add((await runToEnd(pool, moduleJob("counter"))).pid);
      assert.equal(pids.size, RECYCLE_STREAK_WARN + 1, "a fresh worker for every job");
      assert.equal(pool.stats().recycled.memory, RECYCLE_STREAK_WARN + 1);
      const warnings = lines.filter((l) => l.level === 40 && l.handler === "counter");
      assert.equal(warnings.length, 1, "warned once per streak");
      assert.deepEqual(
        [warnings[0]!.reason, warnings[0]!.setting, warnings[0]!.limit],
        ["memory", "--worker-max-rss-mb", 1 * MiB],
      );
      assert.match(
        warnings[0]!.msg,
        /^3 workers in a row were recycled for memory right after one job of handler "counter" \(last: \d+\.\d MiB, limit 1\.0 MiB\): it leaks past the limit in one job, or a fresh worker's baseline is above it/,
      );
    },
  );

  test("a recycled worker runs its handlers' cleanup before it exits (jobs limit)", { timeout: 20_000 }, async (t) => {
    const dir = await tempDir(t);
    const marker = path.join(dir, "closed");
    const { pool } = createPool(t, { limits: { maxJobs: 2 } });
    const first = await runToEnd(pool, moduleJob("counter", { cleanupMarker: marker }));
    assert.equal(existsSync(marker), false);
    const second = await runToEnd(pool, moduleJob("counter"));
    assert.equal(second.pid, first.pid);
    // Another process writes it: it can exist, still empty, a moment before its content lands.
    await waitUntil(
      () => existsSync(marker) && readFileSync(marker, "utf8").length > 0,
      5_000,
      "the cleanup marker's content",
    );
    assert.equal(readFileSync(marker, "utf8"), String(first.pid), "the retired worker's close() ran");
    assert.equal(pool.stats().recycled.jobs, 1);
    const third = await runToEnd(pool, moduleJob("counter"));
    assert.notEqual(third.pid, first.pid);
    assert.equal(counterReport(third).imports, 1, "the fresh worker imports the module anew");
  });
});

describe("the hard memory ceiling", { skip: posixOnly }, () => {
  test(
    "a worker crossing it mid-job is killed, the job fails with worker_memory_limit, and the pool carries on",
    { timeout: 30_000 },
    async (t) => {
      const { pool, lines } = createPool(t, { limits: { hardRssBytes: 250 * MiB } });
      const began = Date.now();
      const grown = await runToEnd(pool, moduleJob("grow-memory", { mb: 2000, stepMb: 25, everyMs: 20 }));
      assert.equal(grown.result.outcome, "failed");
      assert.match(
        grown.result.reason ?? "",
        /^worker_memory_limit: RSS \d+\.\d MiB reached the hard limit 250\.0 MiB$/,
      );
      assert.ok(Date.now() - began < 10_000, "killed on the way up, long before 2000 MB");
      assert.equal(isRunning(grown.pid!), false);
      assert.equal(pool.stats().killed.memory_limit, 1);
      assert.ok(lines.some((l) => l.kind === "memory_limit" && /^killing worker \d+: worker_memory_limit/.test(l.msg)));
      const next = await runToEnd(pool, moduleJob("counter"));
      assert.equal(next.result.outcome, "succeeded");
      assert.notEqual(next.pid, grown.pid);
    },
  );
});

describe("cancel and timeout", { skip: posixOnly }, () => {
  test(
    "a module job that honours its abort signal is cancelled and its worker kept",
    { timeout: 20_000 },
    async (t) => {
      const { pool } = createPool(t);
      const observed = run(pool, assign(moduleJob("stop", { mode: "honour" }), { cancelGraceMs: 5_000 }));
      await observed.waitFor("waiting for the signal");
      const began = Date.now();
      observed.job.cancel("stop please");
      const result = await observed.job.done;
      assert.deepEqual([result.outcome, result.reason], ["cancelled", "stop please"]);
      assert.ok(Date.now() - began < 2_000, "well within the grace period");
      assert.equal(
        (await runToEnd(pool, moduleJob("counter"))).pid,
        observed.started[0]!.pid,
        "the same worker runs the next job",
      );
      assert.equal(pool.stats().killed.cancel_grace, 0);
    },
  );

  test(
    "a module job that ignores its signal takes its worker, and what it started, down after the grace",
    { timeout: 20_000 },
    async (t) => {
      const { pool, lines } = createPool(t);
      const observed = run(pool, assign(moduleJob("stop", { mode: "ignore" }), { cancelGraceMs: 300 }));
      await observed.waitFor("child ");
      const child = Number(/child (\d+)/.exec(observed.text())![1]);
      assert.ok(isRunning(child));
      const began = Date.now();
      observed.job.cancel("stop please");
      const result = await observed.job.done;
      const elapsed = Date.now() - began;
      assert.equal(result.outcome, "cancelled");
      assert.equal(
        result.reason,
        "stop please (the handler did not stop within 300 ms of its abort signal; its worker was killed)",
      );
      assert.ok(elapsed >= 280, `only the kill after the grace ends it (took ${elapsed} ms)`);
      assert.equal(isRunning(observed.started[0]!.pid), false, "the worker is gone");
      assert.equal(isRunning(child), false, "the child that ignored SIGTERM is gone with it");
      assert.equal(pool.stats().killed.cancel_grace, 1);
      assert.ok(lines.some((l) => l.kind === "cancel_grace"));
      const next = await runToEnd(pool, moduleJob("counter"));
      assert.equal(next.result.outcome, "succeeded");
      assert.notEqual(next.pid, observed.started[0]!.pid, "a fresh worker replaced it");
    },
  );

  test(
    "a module job that blocks its worker's event loop times out through the same path",
    { timeout: 20_000 },
    async (t) => {
      const { pool } = createPool(t);
      const done = await runToEnd(pool, moduleJob("stop", { mode: "busy" }), { timeoutMs: 500, cancelGraceMs: 200 });
      assert.equal(done.result.outcome, "timed_out");
      assert.match(done.result.reason ?? "", /^timed out after 500 ms \(the handler did not stop within 200 ms/);
      assert.equal(isRunning(done.pid!), false);
      assert.equal((await runToEnd(pool, moduleJob("counter"))).result.outcome, "succeeded");
    },
  );

  test("a second cancel with a shorter grace kills sooner", { timeout: 20_000 }, async (t) => {
    const { pool } = createPool(t);
    const observed = run(pool, assign(moduleJob("stop", { mode: "ignore" }), { cancelGraceMs: 60_000 }));
    await observed.waitFor("child ");
    const began = Date.now();
    observed.job.cancel("first");
    observed.job.cancel("second, impatient", 100);
    const result = await observed.job.done;
    assert.ok(Date.now() - began < 5_000);
    assert.match(result.reason ?? "", /^first \(the handler did not stop within 100 ms/, "the first reason stays");
  });

  test(
    "no process of a cancelled command job survives, even grandchildren that ignore SIGTERM, and its worker stays",
    { timeout: 20_000 },
    async (t) => {
      const { pool } = createPool(t);
      await runToEnd(pool, commandJob(["true"]));
      const worker = workerPid(pool);
      const script = `trap "" TERM; (sleep 300; :) & sleep 300 & echo "pids $$ $!"; echo ready; wait`;
      const observed = run(pool, assign(commandJob(["sh", "-c", script]), { cancelGraceMs: 300 }));
      await observed.waitFor("ready");
      const pids = /pids (\d+) (\d+)/.exec(observed.text())!.slice(1).map(Number);
      const began = Date.now();
      observed.job.cancel("operator cancel");
      const result = await observed.job.done;
      assert.deepEqual([result.outcome, result.reason], ["cancelled", "operator cancel"]);
      assert.ok(Date.now() - began >= 280, "SIGTERM was ignored: only the SIGKILL after the grace ends it");
      for (const pid of pids) assert.equal(isRunning(pid), false, `pid ${pid} is gone`);
      assert.equal(workerPid(pool), worker, "cancelling a command does not cost its worker");
    },
  );

  test("a job still waiting for a worker is cancelled without ever running", { timeout: 20_000 }, async (t) => {
    const { pool } = createPool(t);
    const busy = run(pool, assign(moduleJob("stop", { mode: "honour" })));
    const waiting = run(pool, assign(moduleJob("counter")));
    await busy.waitFor("waiting");
    waiting.job.cancel("never mind");
    const result = await waiting.job.done;
    assert.deepEqual(
      [result.outcome, result.reason, result.startedAt, waiting.started.length],
      ["cancelled", "never mind", null, 0],
    );
    busy.job.cancel("done");
    await busy.job.done;
    assert.equal(pool.stats().jobs.dispatched, 1);
  });
});

describe("crashes", { skip: posixOnly }, () => {
  for (const [how, reason, signal] of [
    ["segv", "worker exited with signal SIGSEGV", "SIGSEGV"],
    ["exit", "worker exited with code 7", null],
    ["throw", "worker crashed: uncaught exception: stray boom", null],
  ] as const) {
    test(
      `a worker that dies mid-job (${how}) fails that job with the cause and is replaced`,
      { timeout: 20_000 },
      async (t) => {
        const { pool, lines } = createPool(t);
        const crashed = await runToEnd(pool, moduleJob("crash", { how }));
        assert.deepEqual(
          [crashed.result.outcome, crashed.result.reason, crashed.result.signal],
          ["failed", reason, signal],
        );
        assert.equal(pool.stats().crashed, 1);
        assert.ok(
          lines.some((l) => /exited unexpectedly/.test(l.msg)),
          "logged",
        );
        const next = await runToEnd(pool, moduleJob("counter"));
        assert.equal(next.result.outcome, "succeeded");
        assert.notEqual(next.pid, crashed.pid);
      },
    );
  }

  test(
    "a worker killed from outside mid-job (as the OOM killer does) fails the job; the pool replaces it unasked",
    { timeout: 20_000 },
    async (t) => {
      const { pool } = createPool(t);
      const observed = run(pool, assign(moduleJob("stop", { mode: "honour" })));
      await observed.waitFor("waiting");
      const victim = observed.started[0]!.pid;
      process.kill(victim, "SIGKILL");
      const result = await observed.job.done;
      assert.deepEqual([result.outcome, result.reason], ["failed", "worker exited with signal SIGKILL"]);
      await waitUntil(() => pool.stats().workers.some((w) => w.state === "idle"), 10_000, "a replacement worker");
      assert.notEqual(workerPid(pool), victim);
    },
  );

  test(
    "a worker that dies under a command job takes the command's whole group with it",
    { timeout: 20_000 },
    async (t) => {
      const { pool } = createPool(t);
      await runToEnd(pool, commandJob(["true"]));
      const worker = workerPid(pool)!;
      const observed = run(pool, assign(commandJob(["sh", "-c", "sleep 300 & echo child $!; wait"])));
      await observed.waitFor("child ");
      const child = Number(/child (\d+)/.exec(observed.text())![1]);
      process.kill(worker, "SIGKILL");
      const result = await observed.job.done;
      assert.deepEqual([result.outcome, result.reason], ["failed", "worker exited with signal SIGKILL"]);
      assert.equal(isRunning(observed.started[0]!.pid), false, "the command");
      assert.equal(isRunning(child), false, "and its child");
    },
  );
});

describe("output backpressure", { skip: posixOnly }, () => {
  test(
    "pausing stops the chunks, blocks a command that writes fast, and resuming lets it go on",
    { timeout: 30_000 },
    async (t) => {
      const dir = await tempDir(t);
      const progress = path.join(dir, "progress");
      // Writes 1 KiB lines for as long as stdout takes them, recording every 256 KiB written.
      const producer = `
      const fs = require("fs"); const line = "y".repeat(1023) + "\\n"; let n = 0;
      function go() {
        for (;;) {
          const ok = process.stdout.write(line); n += 1024;
          if (n % (256 * 1024) === 0) fs.writeFileSync(process.argv[1], String(n));
          if (!ok) return process.stdout.once("drain", go);
        }
      }
      go();`;
      const { pool } = createPool(t);
      const observed = run(pool, assign(commandJob([process.execPath, "-e", producer, progress])));
      await waitUntil(() => observed.bytes() > 4 * MiB, 10_000, "4 MiB of output");
      pool.pauseOutput();
      await delay(300); // what was already in flight arrives
      const [received, written] = [observed.bytes(), Number(readFileSync(progress, "utf8"))];
      await delay(700);
      const [receivedLater, writtenLater] = [observed.bytes(), Number(readFileSync(progress, "utf8"))];
      assert.ok(
        receivedLater - received <= 64 * 1024,
        `chunks stopped arriving (${receivedLater - received} bytes more while paused)`,
      );
      assert.ok(
        writtenLater - written <= 256 * 1024,
        `the producer was blocked (${writtenLater - written} bytes more written while paused)`,
      );
      assert.ok(
        written - received < 2 * MiB,
        `little is buffered between the job and the daemon (${written - received} bytes)`,
      );
      pool.resumeOutput();
      await waitUntil(() => observed.bytes() > receivedLater + 4 * MiB, 10_000, "output flowing again");
      observed.job.cancel("enough");
      assert.equal((await observed.job.done).outcome, "cancelled");
    },
  );

  test(
    "a module handler that awaits drained() is held while output is paused and loses nothing",
    { timeout: 30_000 },
    async (t) => {
      const dir = await tempDir(t);
      const progress = path.join(dir, "progress");
      const { pool } = createPool(t);
      await runToEnd(pool, moduleJob("noop")); // a warm worker, so the pause is in place before the job starts
      pool.pauseOutput();
      const observed = run(
        pool,
        assign(moduleJob("chatty", { lines: 5_000, lineBytes: 1000, cooperative: true, progressFile: progress })),
      );
      await delay(800);
      assert.equal(observed.bytes(), 0, "nothing arrives while paused");
      const logged = existsSync(progress) ? Number(readFileSync(progress, "utf8")) : 0;
      assert.ok(logged <= 1_200, `the handler was held back (${logged} of 5000 lines logged)`);
      pool.resumeOutput();
      const result = await observed.job.done;
      assert.equal(result.outcome, "succeeded");
      const lines = observed.text("stdout").split("\n").filter(Boolean);
      assert.equal(lines.length, 5_000, "every line arrived");
      assert.deepEqual(lines.map((l) => Number(l.split(" ")[0])).slice(0, 3), [1, 2, 3]);
      assert.equal(Number(lines.at(-1)!.split(" ")[0]), 5_000);
    },
  );

  test(
    "a module handler that ignores backpressure has its excess lines dropped, counted in a marker, not buffered",
    { timeout: 30_000 },
    async (t) => {
      const { pool } = createPool(t);
      await runToEnd(pool, moduleJob("noop"));
      pool.pauseOutput();
      const observed = run(pool, assign(moduleJob("chatty", { lines: 10_000, lineBytes: 1000, cooperative: false })));
      // The job ends while paused: what is held goes out with its result (bounded), the rest was dropped.
      assert.equal((await observed.job.done).outcome, "succeeded");
      pool.resumeOutput();
      const stdout = observed.text("stdout").length;
      assert.ok(stdout <= HELD_LIMIT_BYTES + 64 * 1024, `at most the held bound arrived (${stdout} bytes of ~10 MB)`);
      assert.ok(stdout > 0);
      assert.match(observed.text("stderr"), /^\[runner\] \d+ bytes of this job's log were dropped/);
    },
  );
});

describe("hostile job frames", { skip: posixOnly }, () => {
  /** An `assign` frame as a control plane would send it, decoded as the daemon's driver does. */
  function decodeAssign(fields: { job: unknown; timeoutMs?: number }): Assignment {
    const frame = JSON.stringify({
      type: "assign",
      jobId: `hostile-${process.pid}-${nextId++}`,
      attempt: 1,
      timeoutMs: 30_000,
      cancelGraceMs: 1_000,
      leaseExpiresAt: new Date().toISOString(),
      ...fields,
    });
    const decoded = decodeControlMessage(frame);
    assert.ok(
      decoded.ok && decoded.message.type === "assign",
      `the frame decodes: ${JSON.stringify(decoded).slice(0, 300)}`,
    );
    return decoded.message as Assignment;
  }
  const nested = (depth: number): unknown => {
    let value: unknown = 1;
    for (let i = 1; i < depth; i++) value = [value];
    return value;
  };

  const cases: { what: string; job: unknown; timeoutMs?: number; reason: RegExp }[] = [
    {
      what: "a payload nested 4,100 deep",
      job: { kind: "module", handler: "counter", payload: nested(4_100) },
      reason: /^invalid job: job\.payload: the payload nests deeper than 64 levels$/,
    },
    {
      what: "a timeoutMs above 2^31 − 1",
      job: { kind: "module", handler: "counter", payload: {} },
      timeoutMs: 2 ** 31,
      reason: /^timeoutMs 2147483648 is above the longest timeout, 2147483647 ms$/,
    },
    {
      what: "a NUL in argv[1]",
      job: { kind: "command", argv: ["echo", "a\u0000b"], env: {} },
      reason: /^invalid job: job\.argv\.1: an argument must not contain a NUL character$/,
    },
    {
      what: "a NUL in an env value",
      job: { kind: "command", argv: ["true"], env: { A: "x\u0000" } },
      reason: /^invalid job: job\.env\.A: an environment value must not contain a NUL character$/,
    },
    {
      what: "an env name with '='",
      job: { kind: "command", argv: ["true"], env: { "A=B": "x" } },
      reason: /^invalid job: job\.env\.A=B: an environment variable name is/,
    },
    {
      what: "a NUL in cwd",
      job: { kind: "command", argv: ["true"], env: {}, cwd: "/tmp\u0000" },
      reason: /^invalid job: job\.cwd: cwd must not contain a NUL character$/,
    },
  ];
  for (const c of cases) {
    test(
      `${c.what} fails at once with the reason, and the same worker runs the next job`,
      { timeout: 20_000 },
      async (t) => {
        const { pool } = createPool(t);
        const before = await runToEnd(pool, moduleJob("counter"));
        const began = Date.now();
        const observed = run(pool, decodeAssign({ job: c.job, timeoutMs: c.timeoutMs ?? 30_000 }));
        const result = await observed.job.done;
        assert.ok(Date.now() - began < 2_000, `answered at once (${Date.now() - began} ms), not at a timeout`);
        assert.equal(result.outcome, "failed");
        assert.match(result.reason ?? "", c.reason);
        assert.deepEqual(
          [observed.started.length, pool.stats().crashed],
          [0, 0],
          "it never started, and no worker crashed",
        );
        const after = await runToEnd(pool, moduleJob("counter"));
        assert.equal(after.result.outcome, "succeeded");
        assert.equal(after.pid, before.pid, "the worker it would have gone to is alive and runs the next job");
      },
    );
  }

  test(
    "a job that cannot be sent to its worker fails at once with the reason instead of holding its slot",
    { timeout: 20_000 },
    async (t) => {
      const { pool } = createPool(t);
      await runToEnd(pool, moduleJob("counter"));
      // Built in-process, past the decoder: only the IPC hand-over can refuse it (a BigInt does not serialize).
      const began = Date.now();
      const stranded = await runToEnd(pool, moduleJob("counter", { big: 1n }));
      assert.ok(Date.now() - began < 5_000, "not held until the 30 s timeout");
      assert.equal(stranded.result.outcome, "failed");
      assert.match(stranded.result.reason ?? "", /^could not hand the job to its worker: /);
      assert.equal(
        (await runToEnd(pool, moduleJob("counter"))).result.outcome,
        "succeeded",
        "a worker runs the next job",
      );
    },
  );
});

describe("closing", { skip: posixOnly }, () => {
  test(
    "close cancels the running job, lets idle workers clean up, and resolves when every worker is gone",
    { timeout: 20_000 },
    async (t) => {
      const dir = await tempDir(t);
      const marker = path.join(dir, "closed");
      const { pool } = createPool(t, { size: 2 });
      const running = run(pool, assign(moduleJob("stop", { mode: "honour" })));
      await running.waitFor("waiting");
      await runToEnd(pool, moduleJob("counter", { cleanupMarker: marker })); // on a second worker
      const pids = pool.stats().workers.map((w) => w.pid);
      assert.equal(pids.length, 2);
      await pool.close();
      assert.equal((await running.job.done).outcome, "cancelled");
      for (const pid of pids) assert.equal(isRunning(pid), false);
      assert.equal(existsSync(marker), true, "the idle worker's cleanup ran");
      const late = await runToEnd(pool, moduleJob("counter"));
      assert.deepEqual([late.result.outcome, late.result.reason], ["failed", "the worker pool is closed"]);
    },
  );
});
