// The fault loop: a runner and the reference control plane, a FaultProxy between them, jobs
// submitted through the admin API every cycle, and one fault per cycle from a seeded,
// shuffled schedule. Race windows are held open with SIGSTOP/SIGCONT, never hit by timing.
// Then the audit: every job in exactly one terminal state, every result applied at most once,
// no job process alive.
import { promises as fs, existsSync, readdirSync } from "node:fs";
import path from "node:path";
import type { TestContext } from "node:test";
import { AdminClient } from "../../src/api-client/admin.js";
import type { JobView } from "../../src/protocol/http.js";
import type { LogLine } from "../helpers/daemon.js";
import {
  ADMIN_TOKEN,
  ControlPlaneProcess,
  RunnerProcess,
  parentOf,
  registerThroughCli,
  waitUntil,
  writeAdminTokenFile,
} from "./cluster.js";
import { MarkedJobs, findMarkedProcesses, killMarkedProcesses, type JobShape } from "./marked-jobs.js";
import type { Prng } from "./prng.js";
import { FaultProxy } from "./proxy.js";
import type { Tally } from "./tally.js";
import { freeLoopbackPort } from "../helpers/ports.js";

export const FAULT_KINDS = {
  /** kill -9 of the daemon alone while a job runs. */
  daemon_kill9: 14,
  /** SIGSTOP the daemon, kill -9 its workers, then kill -9 it: no reaction in between. */
  daemon_and_workers_kill9: 14,
  /** The daemon held still between a job's spawn and its pid reaching the journal, then both killed (issue 9, point 3). */
  orphan_window: 8,
  /** kill -9 of the worker running a job; the daemon lives on. */
  worker_kill9: 14,
  control_plane_restart: 8,
  control_plane_kill9: 10,
  /** Existing flows go silent, new connections are refused, until the runner notices. */
  blackhole: 36,
  /** As blackhole, but a new connection attempt is accepted and left silent (issue 9, point 13). */
  blackhole_hang: 4,
  /** Silent for longer than the job lease: the job is re-queued and the old attempt fenced. */
  blackhole_past_lease: 3,
  /** Every connection reset at once. */
  cut: 70,
  /** 50-600 ms of latency on every chunk while a job runs (above the heartbeat, pings time out). */
  delay: 20,
} as const;
export type FaultKind = keyof typeof FAULT_KINDS;

const HEARTBEAT_MS = 200;
const LEASE_MS = 2500;
const TERMINAL = new Set(["succeeded", "failed", "cancelled", "timed_out"]);

export interface FaultRunOptions {
  t: TestContext;
  prng: Prng;
  tally: Tally;
  scale: number;
  runMark: string;
  root: string;
  log: (line: string) => void;
}

export async function runFaultLoop(options: FaultRunOptions): Promise<void> {
  const run = await FaultRun.setUp(options);
  try {
    const schedule = run.schedule();
    options.log(`fault loop: ${schedule.length} faults scheduled`);
    for (const [index, kind] of schedule.entries()) {
      await run.cycle(kind);
      if ((index + 1) % 25 === 0)
        options.log(`  ${index + 1}/${schedule.length} faults, ${options.tally.jobsSubmitted} jobs submitted`);
    }
    await run.audit();
  } finally {
    await run.tearDown();
  }
}

class FaultRun {
  private cp!: ControlPlaneProcess;
  private runner!: RunnerProcess;
  private readonly submitted = new Set<string>();
  /** jobId → "result applied" lines seen, over every control-plane process of the run. */
  private readonly applied = new Map<string, number>();
  private readonly cpLines: LogLine[] = [];
  /** Each job's mark → the fault of the cycle that submitted it, to say which fault left an orphan. */
  private readonly markKinds = new Map<string, FaultKind | "final">();
  private currentKind: FaultKind | "final" = "final";

  private constructor(
    private readonly o: FaultRunOptions,
    private readonly proxy: FaultProxy,
    private readonly admin: AdminClient,
    private readonly jobs: MarkedJobs,
    private readonly port: number,
    private readonly dataDir: string,
    private readonly tokenFile: string,
    private readonly runnerArgs: string[],
    private readonly stateDir: string,
  ) {}

  static async setUp(o: FaultRunOptions): Promise<FaultRun> {
    const port = await freeLoopbackPort();
    const dataDir = path.join(o.root, "cp-data");
    const tokenFile = await writeAdminTokenFile(o.root);
    const proxy = await FaultProxy.start(() => port);
    const admin = new AdminClient(`http://127.0.0.1:${port}`, ADMIN_TOKEN);
    const stateDir = path.join(o.root, "runner-state");
    const identity = ["--state-dir", stateDir, "--machine-id", "faults-machine"];
    const runnerArgs = [
      ...identity,
      "--capacity",
      "2",
      "--reconnect-base-ms",
      "100",
      "--reconnect-cap-ms",
      "1000",
      "--device-providers",
      "none",
      "--drain-timeout-ms",
      "20000",
    ];
    const run = new FaultRun(
      o,
      proxy,
      admin,
      new MarkedJobs(o.runMark),
      port,
      dataDir,
      tokenFile,
      runnerArgs,
      stateDir,
    );
    await run.startControlPlane();
    await registerThroughCli(admin, o.root, proxy.url, "faults-runner", [...identity, "--credential-store", "file"]);
    run.runner = RunnerProcess.start(o.t, runnerArgs, o.tally);
    await run.runner.waitConnectedFrom(0);
    return run;
  }

  schedule(): FaultKind[] {
    const kinds: FaultKind[] = [];
    for (const [kind, count] of Object.entries(FAULT_KINDS) as [FaultKind, number][]) {
      for (let i = 0; i < Math.max(1, Math.round(count * this.o.scale)); i++) kinds.push(kind);
    }
    return this.o.prng.shuffle(kinds);
  }

  async cycle(kind: FaultKind): Promise<void> {
    const { prng, tally } = this.o;
    this.currentKind = kind;
    // Traffic: a few jobs per cycle, some quick, some running across the fault.
    for (let i = prng.int(1, 2); i > 0; i--)
      await this.submit(prng.pick<JobShape>(["quick", "short"]), prng.int(50, 700));
    await this.ensureConnected();
    const began = performance.now();
    await this.inject(kind);
    const ms = performance.now() - began;
    tally.fault(kind, ms);
    // Slow recoveries are what an operator waits through: worth a line each.
    if (ms > 5_000) this.o.log(`  slow: ${kind} took ${Math.round(ms)} ms`);
    tally.cycles++;
  }

  private async inject(kind: FaultKind): Promise<void> {
    const { prng } = this.o;
    switch (kind) {
      case "cut": {
        const from = this.runner.lines.length;
        this.proxy.cut();
        return this.measureReconnect(from);
      }
      case "delay": {
        // Held while one job runs across it, until the job ends or the runner drops the slow
        // link (a delay above the heartbeat interval makes pings time out): whichever first.
        const from = this.runner.lines.length;
        this.proxy.setDelay(prng.int(50, 600));
        const id = await this.submit("short", prng.int(100, 600));
        const dropped = this.runner.waitForLogFrom(
          from,
          "reconnecting",
          (l) => /reconnecting in \d+ ms/.test(l.msg),
          30_000,
        );
        const finished = this.waitJob(id, (j) => TERMINAL.has(j.status), 30_000);
        await Promise.race([dropped, finished]).catch((e: Error) => this.o.tally.notes.push(`delay: ${e.message}`));
        dropped.catch(() => undefined);
        finished.catch(() => undefined);
        this.proxy.setDelay(0);
        return;
      }
      case "blackhole":
      case "blackhole_hang": {
        const from = this.runner.lines.length;
        this.proxy.blackhole(kind === "blackhole" ? "refuse" : "hang");
        // Also submitted into the hole: it waits for the runner.
        await this.submit("quick");
        await this.runner.waitForLogFrom(
          from,
          "reconnecting (the dead link noticed)",
          (l) => /reconnecting in \d+ ms/.test(l.msg),
          10_000,
        );
        // Hang: resume only once an attempt is stuck in the hole, the case issue 9 point 13 is about.
        if (kind === "blackhole_hang")
          await withTimeout(this.proxy.nextConnection(), 10_000, "a connection attempt into the black hole");
        const resumed = this.runner.lines.length;
        this.proxy.resume();
        return this.measureReconnect(resumed);
      }
      case "blackhole_past_lease": {
        const id = await this.submit("short", 4000);
        await this.waitJob(id, (j) => j.status === "running", 15_000);
        const cpFrom = this.cpLines.length;
        this.proxy.blackhole("refuse");
        await waitUntil(
          "the control plane to expire the job's lease",
          () => this.cpLines.slice(cpFrom).some((l) => l.msg === "job lease expired"),
          20_000,
        );
        const resumed = this.runner.lines.length;
        this.proxy.resume();
        return this.measureReconnect(resumed);
      }
      case "control_plane_restart":
      case "control_plane_kill9": {
        const from = this.runner.lines.length;
        await this.cp.stop(kind === "control_plane_restart" ? "SIGTERM" : "SIGKILL");
        await this.startControlPlane();
        await this.runner.waitConnectedFrom(from);
        return;
      }
      case "worker_kill9": {
        const { id, mark } = await this.submitMarked("short", 3000);
        const job = await this.waitMarkedProcess(mark, 15_000);
        const worker = job === null ? null : parentOf(job.pid);
        if (worker === null || !this.runner.workers().includes(worker)) {
          this.o.tally.notes.push(`worker_kill9: job ${id}'s process was not found under a worker`);
          return;
        }
        process.kill(worker, "SIGKILL");
        this.runner.workersKilled++;
        await this.waitJob(id, (j) => TERMINAL.has(j.status), 30_000);
        return;
      }
      case "daemon_kill9":
      case "daemon_and_workers_kill9": {
        const { id, mark } = await this.submitMarked("endless");
        if ((await this.waitMarkedProcess(mark, 15_000)) === null)
          this.o.tally.notes.push(`${kind}: job ${id} had not started when the daemon was killed`);
        if (kind === "daemon_kill9") this.runner.signal("SIGKILL");
        else this.killDaemonAndWorkers();
        await this.restartRunner();
        return this.endEndlessJob(id);
      }
      case "orphan_window":
        return this.holdOrphanWindow();
    }
  }

  /**
   * Issue 9 point 3, held open: workers stopped, a job assigned (its journal entry exists),
   * the daemon stopped, the workers let go: the job's process now exists and the daemon cannot
   * have recorded its pid. Then kill -9 daemon and workers, and start again.
   */
  private async holdOrphanWindow(): Promise<void> {
    await this.waitIdle();
    const workers = this.runner.workers();
    for (const pid of workers) process.kill(pid, "SIGSTOP");
    const { id, mark } = await this.submitMarked("endless");
    const journal = path.join(this.stateDir, "running");
    const entryOf = () =>
      existsSync(journal) ? readdirSync(journal).find((f) => f.startsWith(`${id}.`) && f.endsWith(".json")) : undefined;
    try {
      await waitUntil(`job ${id}'s journal entry`, () => entryOf() !== undefined, 15_000, 2);
    } catch (error) {
      for (const pid of workers) process.kill(pid, "SIGCONT");
      throw error;
    }
    // The run message was written in the same synchronous turn as the journal entry.
    this.runner.signal("SIGSTOP");
    for (const pid of workers) process.kill(pid, "SIGCONT");
    const spawned = await this.waitMarkedProcess(mark, 10_000);
    if (spawned === null)
      this.o.tally.notes.push(
        `orphan_window: job ${id}'s process did not appear while the daemon was stopped (window not held)`,
      );
    else {
      const entry = JSON.parse(await fs.readFile(path.join(journal, entryOf()!), "utf8")) as { pid: number | null };
      if (entry.pid !== null) this.o.tally.notes.push(`orphan_window: job ${id}'s pid was already journalled`);
    }
    this.killDaemonAndWorkers();
    await this.restartRunner();
    await this.endEndlessJob(id);
  }

  /**
   * An endless job the restarted daemon reported failed is over. One that was not running
   * when the daemon died was re-queued and now runs again: an admin cancel ends it, so that
   * it does not hold a slot for the rest of the run.
   */
  private async endEndlessJob(id: string): Promise<void> {
    const job = await this.waitJob(id, (j) => TERMINAL.has(j.status) || j.status === "running", 30_000);
    if (TERMINAL.has(job.status)) return;
    await this.admin.cancelJob(id);
    await this.waitJob(id, (j) => TERMINAL.has(j.status), 30_000);
  }

  /** SIGSTOP the daemon so it cannot react, SIGKILL its workers, then it. */
  private killDaemonAndWorkers(): void {
    this.runner.signal("SIGSTOP");
    for (const pid of this.runner.workers()) process.kill(pid, "SIGKILL");
    this.runner.signal("SIGKILL");
  }

  private async restartRunner(): Promise<void> {
    await withTimeout(this.runner.daemon.exited, 15_000, "the killed daemon to be reaped");
    this.runner = RunnerProcess.start(this.o.t, this.runnerArgs, this.o.tally);
    await this.runner.waitConnectedFrom(0);
  }

  private async measureReconnect(from: number): Promise<void> {
    const began = performance.now();
    await this.runner.waitConnectedFrom(from, 60_000);
    this.o.tally.recoveryMs.push(Math.round(performance.now() - began));
  }

  private async ensureConnected(): Promise<void> {
    if (this.runner.isConnected()) return;
    await this.runner.waitConnectedFrom(this.runner.lines.length, 60_000);
  }

  private async startControlPlane(): Promise<void> {
    this.cp = await ControlPlaneProcess.start({
      port: this.port,
      dataDir: this.dataDir,
      adminTokenFile: this.tokenFile,
      extra: ["--heartbeat-interval-ms", String(HEARTBEAT_MS), "--lease-ms", String(LEASE_MS)],
      tally: this.o.tally,
      onLine: (line) => this.onControlPlaneLine(line),
    });
  }

  private onControlPlaneLine(line: LogLine): void {
    this.cpLines.push(line);
    if (line.msg === "result applied" && typeof line.jobId === "string")
      this.applied.set(line.jobId, (this.applied.get(line.jobId) ?? 0) + 1);
  }

  private async submit(shape: JobShape, ms?: number): Promise<string> {
    return (await this.submitMarked(shape, ms)).id;
  }

  /** Submits through the admin API, retrying while the control plane is down. */
  private async submitMarked(shape: JobShape, ms?: number): Promise<{ id: string; mark: string }> {
    const { request, mark } = this.jobs.next(shape, ms);
    this.markKinds.set(mark, this.currentKind);
    const deadline = performance.now() + 30_000;
    for (;;) {
      try {
        const { job } = await this.admin.submitJob(request);
        this.submitted.add(job.jobId);
        this.o.tally.jobsSubmitted++;
        return { id: job.jobId, mark };
      } catch (error) {
        if (performance.now() > deadline) throw error;
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
    }
  }

  private async waitMarkedProcess(mark: string, timeoutMs: number): Promise<{ pid: number } | null> {
    let found: { pid: number } | undefined;
    try {
      await waitUntil(
        `a process of job ${mark}`,
        () =>
          (found = findMarkedProcesses(this.o.runMark).find((p) => p.mark === mark && /faultjob-/.test(p.cmdline))) !==
          undefined,
        timeoutMs,
        5,
      );
    } catch {
      return null;
    }
    return found ?? null;
  }

  private async waitJob(id: string, done: (job: JobView) => boolean, timeoutMs: number): Promise<JobView> {
    let last: JobView | undefined;
    await waitUntil(
      `job ${id} to reach the expected state`,
      async () => {
        last = (await this.admin.getJob(id).catch(() => undefined))?.job ?? last;
        return last !== undefined && done(last);
      },
      timeoutMs,
      50,
    );
    return last!;
  }

  /** No job assigned or running: both workers idle. */
  private async waitIdle(): Promise<void> {
    await waitUntil(
      "the runner to be idle",
      async () => {
        const jobs = await this.admin.listJobs().catch(() => null);
        return (
          jobs !== null && jobs.every((j) => j.status !== "assigned" && j.status !== "running" && j.status !== "queued")
        );
      },
      60_000,
      50,
    );
  }

  /**
   * Every submitted job must reach a terminal state (the runner is still up and connected),
   * be applied at most once, and leave no process behind once the daemon stopped.
   */
  async audit(): Promise<void> {
    const { tally, log } = this.o;
    log("audit: waiting for every job to finish");
    let jobs: JobView[] = [];
    try {
      await waitUntil(
        "every job to reach a terminal state",
        async () => {
          jobs = (await this.admin.listJobs().catch(() => null)) ?? jobs;
          return jobs.length > 0 && jobs.every((j) => TERMINAL.has(j.status));
        },
        90_000,
        200,
      );
    } catch {
      // Counted below, job by job.
    }
    const known = new Map(jobs.map((j) => [j.jobId, j]));
    for (const id of this.submitted) {
      const job = known.get(id);
      if (!job) tally.finding("lost", `job ${id} was accepted (201) but is not in the store`);
      else if (!TERMINAL.has(job.status))
        tally.finding("lost", `job ${id} is still ${job.status} (attempt ${job.attempt})`);
    }
    for (const job of jobs) {
      const count = this.applied.get(job.jobId) ?? 0;
      if (count > 1) tally.finding("appliedTwice", `job ${job.jobId}: ${count} results applied`, count - 1);
      if (job.result !== null && job.result.attempt !== job.attempt)
        tally.finding(
          "appliedTwice",
          `job ${job.jobId}: the applied result is attempt ${job.result.attempt}, the job's is ${job.attempt}`,
        );
    }
    const unaudited = jobs.filter((j) => j.result !== null && !this.applied.has(j.jobId)).length;
    if (unaudited > 0)
      tally.notes.push(
        `${unaudited} applied result(s) without a "result applied" line (a control plane killed between its write and its log line)`,
      );
    const outcomes = new Map<string, number>();
    for (const job of jobs) outcomes.set(job.status, (outcomes.get(job.status) ?? 0) + 1);
    log(`audit: ${jobs.length} jobs in the store: ${[...outcomes].map(([s, n]) => `${s}=${n}`).join(" ")}`);

    const code = await this.runner.stop("SIGTERM");
    if (code !== 0) tally.finding("crashes", `the final SIGTERM drain exited ${code}`);
    const unexpectedWorkerExits =
      this.runner.lines.filter((l) => /exited unexpectedly/.test(l.msg)).length - this.runner.workersKilled;
    if (unexpectedWorkerExits > 0)
      tally.finding(
        "crashes",
        `${unexpectedWorkerExits} worker(s) exited unexpectedly in the last daemon's life`,
        unexpectedWorkerExits,
      );
    const survivors = findMarkedProcesses(this.o.runMark);
    const byJob = new Set(survivors.map((p) => p.mark));
    if (survivors.length > 0) {
      const byKind = new Map<string, number>();
      for (const mark of byJob)
        byKind.set(this.markKinds.get(mark) ?? "?", (byKind.get(this.markKinds.get(mark) ?? "?") ?? 0) + 1);
      tally.finding(
        "orphans",
        `${survivors.length} process(es) of ${byJob.size} job(s) outlived every daemon; the jobs by the fault of their cycle: ` +
          `${[...byKind].map(([k, n]) => `${k}=${n}`).join(" ")}; e.g. ${survivors
            .slice(0, 2)
            .map((p) => `${p.pid} ${p.cmdline.slice(0, 90)}`)
            .join("; ")}`,
        byJob.size,
      );
    }
  }

  async tearDown(): Promise<void> {
    await this.runner.stop("SIGKILL").catch(() => undefined);
    await this.cp.stop("SIGTERM").catch(() => undefined);
    await this.proxy.close();
    killMarkedProcesses(this.o.runMark);
  }
}

function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  return Promise.race([
    promise,
    new Promise<never>((_, reject) =>
      setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms).unref(),
    ),
  ]);
}
