// The fleet benchmark: N simulated runners on the control plane, jobs submitted as fast as
// they are taken, for SQLite (one process), PostgreSQL with one replica and with two, beside a
// once-a-second polling model measured in the same run.
//
// - Control planes are real child processes (`runner control-plane --listen 127.0.0.1:0`),
//   their log on a file. SQLite keeps its file in a temp --data dir (and runs once more in
//   memory, to show what the file's fsyncs cost); PostgreSQL is a throw-away cluster (test/helpers/postgres.ts) with fsync, synchronous_commit and
//   full_page_writes off: a benchmark database need not survive a crash, so the numbers
//   leave out the disk's flush latency.
// - The runners are light protocol clients (bench/peers/light-runner.ts), all in one forked
//   process (bench/peers/fleet-peer.ts), each registered through the HTTP API with a one-time
//   token of its own. On `assign` a runner answers at once with accept, started, a succeeded
//   result and `ready { slots: 1 }`: every job is instant, so what is measured is the
//   control plane.
// - Submissions go through the admin HTTP API (POST /api/v1/admin/jobs, keep-alive), a fixed
//   number in flight: a slot is freed when the job's result is acknowledged to its runner,
//   so the queue never grows past what the fleet can take and submitted → assigned measures
//   dispatch, not queueing. With two replicas, submissions alternate between them.
// - submitted → assigned: from just before the POST is written (this process) to the moment
//   the runner reads the `assign` frame (the fleet process), both on process.hrtime, the
//   machine's monotonic clock. The first jobs of each configuration warm it up and are not
//   counted; jobs/s counts the others, from the submission of the first of them to the last
//   acknowledgement.
// - RSS per connected runner: VmRSS of the control-plane process(es) (/proc/<pid>/status)
//   with the N runners connected and idle, minus with none connected (after registration),
//   divided by N; each reading is taken after a 1 s settle.
// - The polling baseline: the same submissions to a PostgreSQL control plane no runner is
//   connected to, and N simulated runners that each poll once a second (first poll at a
//   random moment of the first second): a poll reads the first queued jobs and claims one
//   with the store's own claim (the conditional update the control plane uses, through the
//   store contract, on the same database), then applies a succeeded result. Capacity 1: at
//   most one job per poll. That is SkyTest's claim loop and Bencher's poll; it is timed to
//   the moment of the claim, so it is a lower bound for when such a runner could start.
//
//   npm run build && node dist/bench/fleet.js [runners=500] [jobsPerConfig=5000] [inFlight=200] [secondsPerPhase=30]
//   (or FLEET_RUNNERS, FLEET_JOBS, FLEET_IN_FLIGHT, FLEET_SECONDS in the environment)
import { fork, spawn, type ChildProcess } from "node:child_process";
import { createHash } from "node:crypto";
import { closeSync, openSync, promises as fs, readFileSync } from "node:fs";
import http from "node:http";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { AdminClient } from "../src/api-client/admin.js";
import { register } from "../src/api-client/runner-api.js";
import { NO_PROXY } from "../src/net/proxy.js";
import { openStore } from "../src/control-plane/store/open.js";
import type { ControlPlaneStore } from "../src/control-plane/store/contract.js";
import { AGENT_VERSION, PROTOCOL_VERSION } from "../src/protocol/version.js";
import { postgresUnavailableReason, startPostgresCluster } from "../test/helpers/postgres.js";
import { instantSuccess, type LightRunnerIdentity } from "./peers/light-runner.js";
import type { FleetCommand, FleetObservation, FleetReport } from "./peers/fleet-peer.js";
import { RUNNER_BIN, percentiles, type Percentiles } from "./support.js";

function setting(position: number, env: string, fallback: number): number {
  const text = process.argv[position] ?? process.env[env];
  const value = text === undefined ? fallback : Number(text);
  if (!Number.isInteger(value) || value < 1)
    throw new Error(`${env} (argument ${position - 1}): expected a whole number ≥ 1, got ${text}`);
  return value;
}

const RUNNERS = setting(2, "FLEET_RUNNERS", 500);
const JOBS = setting(3, "FLEET_JOBS", 5000);
const IN_FLIGHT = Math.min(setting(4, "FLEET_IN_FLIGHT", 200), RUNNERS);
const PHASE_SECONDS = setting(5, "FLEET_SECONDS", 30);
/** The latency phase: this many jobs one at a time, for at most this long. */
const LATENCY_JOBS = setting(6, "FLEET_LATENCY_JOBS", 300);
const LATENCY_SECONDS = setting(7, "FLEET_LATENCY_SECONDS", 20);
const CONFIG_NAMES = ["sqlite", "sqlite-memory", "pg1", "pg2", "pg2-cross", "baseline"];
/** Which configurations run: FLEET_CONFIGS=sqlite,pg1,... (default: all of them). */
const CONFIGS = new Set(process.env.FLEET_CONFIGS?.split(",").map((name) => name.trim()) ?? CONFIG_NAMES);
for (const name of CONFIGS)
  if (!CONFIG_NAMES.includes(name))
    throw new Error(`FLEET_CONFIGS: unknown configuration ${name} (known: ${CONFIG_NAMES.join(", ")})`);
/** Jobs that warm a configuration up, not counted. */
const WARM_UP = Math.min(200, Math.floor(JOBS / 10));
/** After the submissions stop, how long the jobs in flight get to finish. */
const DRAIN_GRACE_MS = 10_000;
const CAPACITY = 1;
/** A polling runner of the baseline reads this many queued jobs and claims one of them. */
const POLL_PAGE = 8;
const ADMIN_TOKEN = "adm_fleet-bench-" + createHash("sha256").update(String(process.pid)).digest("hex").slice(0, 32);
const FLEET_PEER = path.join(path.dirname(fileURLToPath(import.meta.url)), "peers", "fleet-peer.js");
const JOB_BODY = JSON.stringify({ job: { kind: "command", argv: ["true"], env: {} } });

const nowMs = () => Number(process.hrtime.bigint()) / 1e6;
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

// ---- clean-up: every process and the cluster go, on success, error or a signal ----

const children = new Set<ChildProcess>();
const cleanups: (() => Promise<void>)[] = [];

async function cleanUp(): Promise<void> {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup().catch(() => undefined);
  for (const child of children) child.kill("SIGKILL");
}
for (const signal of ["SIGINT", "SIGTERM"] as const) {
  process.once(signal, () => {
    console.error(`\n${signal}: stopping the control planes and the cluster`);
    void cleanUp().finally(() => process.exit(130));
  });
}
// The last resort (an exit while something still runs): no control plane outlives the bench.
process.once("exit", () => {
  for (const child of children) child.kill("SIGKILL");
});

// ---- the processes ----

interface ControlPlaneChild {
  url: string;
  pid: number;
  stop(): Promise<void>;
}

async function startControlPlane(work: string, name: string, store: string[]): Promise<ControlPlaneChild> {
  const tokenFile = path.join(work, "admin-token");
  await fs.writeFile(tokenFile, ADMIN_TOKEN, { mode: 0o600 });
  const logFile = path.join(work, `${name}.log`);
  const log = openSync(logFile, "a");
  const child = spawn(
    process.execPath,
    [RUNNER_BIN, "control-plane", "--listen", "127.0.0.1:0", "--admin-token-file", tokenFile, ...store],
    { stdio: ["ignore", "pipe", log], env: { ...process.env, RUNNER_LOG_FORMAT: "json" } },
  );
  closeSync(log);
  children.add(child);
  let stopping = false;
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  void exited.then(() => {
    if (!stopping)
      console.error(
        `[fleet] ${name} exited unexpectedly (${child.exitCode ?? child.signalCode}): ${readTail(logFile)}`,
      );
  });
  void exited.then(() => children.delete(child));
  const url = await new Promise<string>((resolve, reject) => {
    let out = "";
    const timer = setTimeout(() => reject(new Error(`${name}: not listening within 30 s`)), 30_000);
    child.stdout!.on("data", (chunk: Buffer) => {
      out += chunk.toString();
      const match = /control plane listening on (http:\/\/\S+)/.exec(out);
      if (match) {
        clearTimeout(timer);
        resolve(match[1]!);
      }
    });
    child.once("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`${name} exited (${code}) before listening: ${out} ${readTail(logFile)}`));
    });
  });
  child.stdout!.resume();
  return {
    url,
    pid: child.pid!,
    async stop() {
      stopping = true;
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill("SIGTERM");
      const timer = setTimeout(() => child.kill("SIGKILL"), 15_000);
      await exited;
      clearTimeout(timer);
    },
  };
}

function readTail(file: string): string {
  try {
    return readFileSync(file, "utf8").split("\n").slice(-6).join("\n");
  } catch {
    return "";
  }
}

/** The simulated fleet's process and what it reports. */
class Fleet {
  private readonly child = fork(FLEET_PEER, [], { stdio: ["ignore", "inherit", "inherit", "ipc"] });
  private waiting: ((report: FleetReport) => void) | undefined;
  onObservations: (items: FleetObservation[]) => void = () => undefined;
  readonly troubles = new Map<string, number>();

  constructor() {
    children.add(this.child);
    this.child.on("message", (report: FleetReport) => {
      if (report.type === "observations") this.onObservations(report.items);
      else if (report.type === "trouble") this.troubles.set(report.what, (this.troubles.get(report.what) ?? 0) + 1);
      else this.waiting?.(report);
    });
    this.child.once("exit", () => children.delete(this.child));
  }

  async connect(runners: LightRunnerIdentity[], timeoutMs: number): Promise<number> {
    const report = await this.ask({ type: "connect", runners, capacity: CAPACITY, timeoutMs }, timeoutMs + 60_000);
    if (report.type !== "connected") throw new Error(`the fleet did not connect: ${JSON.stringify(report)}`);
    return report.ms;
  }

  async close(): Promise<void> {
    await this.ask({ type: "close" }, 30_000);
  }

  get pid(): number {
    return this.child.pid!;
  }

  stop(): void {
    this.child.disconnect();
  }

  private ask(command: FleetCommand, timeoutMs: number): Promise<FleetReport> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`the fleet did not answer ${command.type} in time`)), timeoutMs);
      this.waiting = (report) => {
        clearTimeout(timer);
        this.waiting = undefined;
        resolve(report);
      };
      this.child.send(command);
    });
  }
}

// ---- registration, memory, submission ----

/** Registers `count` runners, round-robin across the control planes (tokens and credentials work on any replica). */
async function registerRunners(urls: string[], count: number): Promise<LightRunnerIdentity[]> {
  const identities: LightRunnerIdentity[] = new Array(count);
  let next = 0;
  const worker = async () => {
    while (next < count) {
      const index = next++;
      const url = urls[index % urls.length]!;
      const { token } = await new AdminClient(url, ADMIN_TOKEN).createRegistrationToken();
      const answer = await register({ url, timeoutMs: 30_000, proxy: NO_PROXY }, token, {
        protocolVersion: PROTOCOL_VERSION,
        agentVersion: AGENT_VERSION,
        name: `fleet-${index}`,
        labels: ["fleet"],
        host: {
          hostname: `fleet-${index}`,
          platform: "linux",
          arch: "x64",
          fingerprint: createHash("sha256").update(`fleet-${index}`).digest("hex"),
        },
      });
      identities[index] = { url, runnerId: answer.runnerId, credential: answer.credential };
    }
  };
  await Promise.all(Array.from({ length: 16 }, worker));
  return identities;
}

function rssKiB(pid: number): number {
  const match = /^VmRSS:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
  if (!match) throw new Error(`no VmRSS in /proc/${pid}/status`);
  return Number(match[1]);
}

/** utime + stime of the process, in ms (/proc/<pid>/stat, in clock ticks of 10 ms). */
function cpuMs(pid: number): number {
  const fields = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]!.split(" ");
  return (Number(fields[11]) + Number(fields[12])) * 10;
}

async function settledRss(pids: number[]): Promise<number> {
  await sleep(1000);
  return pids.reduce((sum, pid) => sum + rssKiB(pid), 0);
}

/** POST /admin/jobs on keep-alive connections; resolves with the new job's id. */
function makeSubmitter(urls: string[]): { submit(replica: number): Promise<string>; close(): void } {
  // Idle sockets are dropped after 4 s, before the server's keep-alive timeout (Node's 5 s) can
  // close one just as a request goes out on it.
  const agent = new http.Agent({ keepAlive: true, maxSockets: IN_FLIGHT, timeout: 4000 });
  const targets = urls.map((url) => new URL("/api/v1/admin/jobs", url));
  return {
    submit(replica) {
      const attempt = (retried: boolean): Promise<string> =>
        new Promise((resolve, reject) => {
          const request = http.request(
            targets[replica]!,
            {
              method: "POST",
              agent,
              headers: { authorization: `Bearer ${ADMIN_TOKEN}`, "content-type": "application/json" },
              timeout: 30_000,
            },
            (response) => {
              let body = "";
              response.setEncoding("utf8");
              response.on("data", (chunk: string) => (body += chunk));
              response.on("end", () => {
                if (response.statusCode !== 201) return reject(new Error(`submit: ${response.statusCode} ${body}`));
                resolve((JSON.parse(body) as { job: { jobId: string } }).job.jobId);
              });
            },
          );
          request.on("timeout", () => request.destroy(new Error("submit: no answer within 30 s")));
          request.on("error", (error: NodeJS.ErrnoException) => {
            // A kept-alive socket the server closed as we reused it (its keep-alive timeout ran
            // out meanwhile): the request never reached it, so it is sent again, once (Node's
            // documented pattern, request.reusedSocket).
            if (!retried && request.reusedSocket && error.code === "ECONNRESET") resolve(attempt(true));
            else reject(error);
          });
          request.end(JOB_BODY);
        });
      return attempt(false);
    },
    close: () => agent.destroy(),
  };
}

// ---- one load phase ----

interface Tracker {
  /** A runner (index) was handed the job at `atMs` (monotonic ms). */
  assigned(jobId: string, runner: number, atMs: number): void;
  /** The job's result was acknowledged: its slot is free. */
  done(jobId: string): void;
}

interface LoadResult {
  jobsPerSecond: number;
  counted: number;
  unfinished: number;
  /** Submissions that failed, by message. */
  submitErrors: Map<string, number>;
  all: Percentiles;
  /** Jobs taken by a runner on another replica than the one it was submitted to. */
  cross: Percentiles;
  same: Percentiles;
}

/** How many jobs a load phase submits, how many at a time, for how long at most, and how many of the first are not counted. */
interface LoadPlan {
  jobs: number;
  inFlight: number;
  seconds: number;
  warmUp: number;
}

/** The saturated phase: as fast as the fleet takes them. */
const THROUGHPUT_PLAN: LoadPlan = { jobs: JOBS, inFlight: IN_FLIGHT, seconds: PHASE_SECONDS, warmUp: WARM_UP };
/**
 * The latency phase: one job at a time (the next submitted when the last one's result is
 * acknowledged), so that nothing queues and submitted → assigned is the dispatch path alone.
 */
const LATENCY_PLAN: LoadPlan = {
  jobs: LATENCY_JOBS,
  inFlight: 1,
  seconds: LATENCY_SECONDS,
  warmUp: Math.min(20, Math.floor(LATENCY_JOBS / 10)),
};

/**
 * Submits up to `plan.jobs` jobs, `plan.inFlight` at a time, for at most `plan.seconds`, through
 * `submitTo(n)`'s replica; `runnerReplica(i)` says which replica runner i is connected to.
 */
async function runLoad(
  plan: LoadPlan,
  submitter: ReturnType<typeof makeSubmitter>,
  submitTo: (n: number) => number,
  runnerReplica: (runner: number) => number,
  attach: (tracker: Tracker) => void,
): Promise<LoadResult> {
  const { jobs, inFlight, seconds, warmUp } = plan;
  const submitted = new Map<string, { n: number; atMs: number; replica: number }>();
  const assigned = new Map<string, { runner: number; atMs: number }>();
  const finished = new Set<string>();
  const waiters = new Map<string, () => void>();
  attach({
    assigned: (jobId, runner, atMs) => assigned.set(jobId, { runner, atMs }),
    done: (jobId) => {
      finished.add(jobId);
      waiters.get(jobId)?.();
    },
  });
  const stopSubmittingAt = nowMs() + seconds * 1000;
  let giveUp: () => void = () => undefined;
  const gaveUp = new Promise<void>((resolve) => (giveUp = resolve));
  let issued = 0;
  let countedFromMs = NaN;
  let lastDoneMs = NaN;
  let unfinished = 0;
  const submitErrors = new Map<string, number>();
  const loop = async () => {
    while (issued < jobs && nowMs() < stopSubmittingAt) {
      const n = issued++;
      const replica = submitTo(n);
      const atMs = nowMs();
      if (n === warmUp) countedFromMs = atMs;
      let jobId: string;
      try {
        jobId = await submitter.submit(replica);
      } catch (error) {
        // Counted and reported, not fatal: one refused submission says something, but the run goes on.
        submitErrors.set((error as Error).message, (submitErrors.get((error as Error).message) ?? 0) + 1);
        continue;
      }
      submitted.set(jobId, { n, atMs, replica });
      if (!finished.has(jobId)) {
        const done = new Promise<boolean>((resolve) => waiters.set(jobId, () => resolve(true)));
        if (!(await Promise.race([done, gaveUp.then(() => false)]))) {
          unfinished++;
          return;
        }
        waiters.delete(jobId);
      }
      lastDoneMs = nowMs();
    }
  };
  const loops = Promise.all(Array.from({ length: inFlight }, loop));
  // Submissions stop at the time cap; what is in flight then gets DRAIN_GRACE_MS to finish.
  const capTimer = setTimeout(giveUp, seconds * 1000 + DRAIN_GRACE_MS);
  await loops;
  clearTimeout(capTimer);
  const all: number[] = [];
  const cross: number[] = [];
  const same: number[] = [];
  for (const [jobId, submit] of submitted) {
    const assign = assigned.get(jobId);
    if (submit.n < warmUp || !assign) continue;
    const latency = assign.atMs - submit.atMs;
    all.push(latency);
    (runnerReplica(assign.runner) === submit.replica ? same : cross).push(latency);
  }
  const counted = [...submitted.entries()].filter(([id, s]) => s.n >= warmUp && finished.has(id)).length;
  return {
    jobsPerSecond: counted / ((lastDoneMs - countedFromMs) / 1000),
    counted,
    unfinished,
    submitErrors,
    all: percentiles(all),
    cross: percentiles(cross),
    same: percentiles(same),
  };
}

// ---- the configurations ----

interface Row {
  name: string;
  connected: number | null;
  connectMs: number | null;
  load: LoadResult;
  /** The latency phase: one job at a time. */
  latency: LoadResult;
  rssIdleKiB: number | null;
  rssConnectedKiB: number | null;
  /** RSS growth per runner while the second half of the fleet connected. */
  marginalKiB: number | null;
  troubles: Map<string, number>;
  /** Per control-plane process: CPU time over wall time during the load phase (1 = one core). */
  cpuBusy: number[];
  /** The other processes' share of the machine during the load phase. */
  context: string;
}

interface PushConfig {
  name: string;
  replicas: number;
  /** Which replica runner i connects to. */
  runnerReplica: (runner: number) => number;
  /** Which replica the n-th job is submitted to. */
  submitTo: (n: number) => number;
  store: () => Promise<string[]>;
}

async function runPushConfig(config: PushConfig, fleet: Fleet, work: string): Promise<Row> {
  console.error(`[fleet] ${config.name}: starting ${config.replicas} control plane(s)`);
  const storeArgs = await config.store();
  const planes: ControlPlaneChild[] = [];
  const stopPlanes = async () => {
    for (const plane of planes.splice(0)) await plane.stop();
  };
  cleanups.push(stopPlanes);
  try {
    for (let r = 0; r < config.replicas; r++)
      planes.push(await startControlPlane(work, `${config.name}-${r}`, storeArgs));
    const urls = planes.map((p) => p.url);
    const pids = planes.map((p) => p.pid);
    console.error(`[fleet] ${config.name}: registering ${RUNNERS} runners`);
    const identities = (await registerRunners(urls, RUNNERS)).map((identity, i) => ({
      ...identity,
      url: urls[config.runnerReplica(i)]!,
    }));
    const rssIdleKiB = await settledRss(pids);
    console.error(`[fleet] ${config.name}: connecting ${RUNNERS} runners`);
    fleet.troubles.clear();
    // In two halves: the second half's growth, per runner, leaves out what the first connections
    // cost once (buffers, code compiled on first use), which the brief's figure spreads over N.
    const half = Math.floor(RUNNERS / 2);
    const connectMs = await fleet.connect(identities.slice(0, half), 30_000);
    const rssHalfKiB = await settledRss(pids);
    const connectRestMs = await fleet.connect(identities.slice(half), 30_000);
    const rssConnectedKiB = await settledRss(pids);
    const marginalKiB = (rssConnectedKiB - rssHalfKiB) / (RUNNERS - half);
    const submitter = makeSubmitter(urls);
    const attach = (tracker: Tracker) => {
      fleet.onObservations = (items) => {
        for (const item of items) {
          if (item.kind === "a") tracker.assigned(item.jobId, item.runner, item.atMs);
          else tracker.done(item.jobId);
        }
      };
    };
    console.error(`[fleet] ${config.name}: latency phase, up to ${LATENCY_JOBS} jobs one at a time`);
    const latency = await runLoad(LATENCY_PLAN, submitter, config.submitTo, config.runnerReplica, attach);
    console.error(`[fleet] ${config.name}: submitting up to ${JOBS} jobs, ${IN_FLIGHT} in flight`);
    const cpuBefore = pids.map(cpuMs);
    const fleetCpuBefore = cpuMs(fleet.pid);
    const benchCpuBefore = process.cpuUsage();
    const wallBefore = nowMs();
    const load = await runLoad(THROUGHPUT_PLAN, submitter, config.submitTo, config.runnerReplica, attach);
    const wall = nowMs() - wallBefore;
    const cpuBusy = pids.map((pid, i) => (cpuMs(pid) - cpuBefore[i]!) / wall);
    const benchCpu = process.cpuUsage(benchCpuBefore);
    const context = `${RUNNERS} connected in ${((connectMs + connectRestMs) / 1000).toFixed(1)} s; fleet process ${((100 * (cpuMs(fleet.pid) - fleetCpuBefore)) / wall).toFixed(0)}% CPU, submitting process ${((benchCpu.user + benchCpu.system) / 10 / wall).toFixed(0)}%, load average ${os.loadavg()[0]!.toFixed(1)} at the end (${os.cpus().length} cores shared with other work)`;
    submitter.close();
    await fleet.close();
    return {
      name: config.name,
      connected: RUNNERS,
      connectMs: connectMs + connectRestMs,
      load,
      latency,
      marginalKiB,
      rssIdleKiB,
      rssConnectedKiB,
      troubles: new Map(fleet.troubles),
      cpuBusy,
      context,
    };
  } finally {
    await stopPlanes();
    cleanups.splice(cleanups.indexOf(stopPlanes), 1);
  }
}

/** N runners polling once a second through the store's claim; submissions as for the others. */
async function runPollingBaseline(databaseUrl: string, work: string): Promise<Row> {
  console.error(`[fleet] polling baseline: ${RUNNERS} runners polling once a second`);
  const plane = await startControlPlane(work, "polling-baseline", ["--database", databaseUrl]);
  let store: ControlPlaneStore | undefined;
  const timers = new Set<NodeJS.Timeout>();
  let polling = true;
  const polls = new Set<Promise<void>>();
  const stopAll = async () => {
    polling = false;
    for (const timer of timers) clearTimeout(timer);
    await Promise.all(polls);
    await store?.close();
    await plane.stop();
  };
  cleanups.push(stopAll);
  try {
    store = await openStore({ databaseUrl });
    const jobs = store.jobs;
    const submitter = makeSubmitter([plane.url]);
    // The pollers start with the first phase and report to the phase that runs.
    let current: Tracker | undefined;
    const attach = (phaseTracker: Tracker) => {
      const started = current !== undefined;
      current = phaseTracker;
      if (!started)
        for (let r = 0; r < RUNNERS; r++) {
          const runnerId = `rnr_poller${String(r).padStart(14, "0")}`;
          const poll = async () => {
            const tracker = current!;
            // Tried from a random place in the first page: pollers that all went for the head of
            // the queue would mostly wait on each other's row locks (SKIP LOCKED's effect).
            const page = await jobs.listQueued(0, POLL_PAGE);
            const from = Math.floor(Math.random() * page.length);
            for (let i = 0; i < page.length; i++) {
              const queued = page[(from + i) % page.length]!;
              const now = new Date();
              const job = await jobs.claim(queued.id, runnerId, now, new Date(now.getTime() + 60_000));
              if (!job) continue;
              tracker.assigned(job.id, r, nowMs());
              await jobs.applyResult(instantSuccess(job.id, job.attempt), runnerId, new Date());
              tracker.done(job.id);
              return;
            }
          };
          // Each runner polls on its own second: the first poll at a random moment, then every 1000 ms.
          let due = performance.now() + Math.random() * 1000;
          const schedule = () => {
            if (!polling) return;
            const timer = setTimeout(
              () => {
                timers.delete(timer);
                due += 1000;
                const polled: Promise<void> = poll()
                  .catch((error: Error) => console.error(`[fleet] poller ${r}: ${error.message}`))
                  .finally(() => {
                    polls.delete(polled);
                    schedule();
                  });
                polls.add(polled);
              },
              Math.max(0, due - performance.now()),
            );
            timers.add(timer);
          };
          schedule();
        }
    };
    const latency = await runLoad(
      LATENCY_PLAN,
      submitter,
      () => 0,
      () => 0,
      attach,
    );
    const load = await runLoad(
      THROUGHPUT_PLAN,
      submitter,
      () => 0,
      () => 0,
      attach,
    );
    submitter.close();
    polling = false;
    return {
      name: "baseline: poll once a second (PostgreSQL)",
      connected: null,
      connectMs: null,
      load,
      latency,
      rssIdleKiB: null,
      rssConnectedKiB: null,
      marginalKiB: null,
      troubles: new Map(),
      cpuBusy: [],
      context: `load average ${os.loadavg()[0]!.toFixed(1)} at the end`,
    };
  } finally {
    await stopAll();
    cleanups.splice(cleanups.indexOf(stopAll), 1);
  }
}

// ---- report ----

function printRows(rows: Row[]): void {
  const fmt = (v: number) => (Number.isNaN(v) ? "-" : v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2));
  const header = [
    "configuration",
    "runners",
    "jobs",
    "jobs/s",
    "p50 ms",
    "p99 ms",
    "cross n",
    "cross p50",
    "cross p99",
    "1-by-1 n",
    "p50 ms",
    "p99 ms",
    "cross p50",
    "cross p99",
    "RSS 0 MiB",
    "RSS N MiB",
    "KiB/runner",
    "2nd half",
    "CP CPU",
  ];
  const table = rows.map((row) => {
    const perRunner =
      row.rssIdleKiB === null || row.rssConnectedKiB === null ? NaN : (row.rssConnectedKiB - row.rssIdleKiB) / RUNNERS;
    return [
      row.name,
      row.connected === null ? "-" : String(row.connected),
      String(row.load.counted),
      fmt(row.load.jobsPerSecond),
      fmt(row.load.all.p50),
      fmt(row.load.all.p99),
      String(row.load.cross.n),
      fmt(row.load.cross.p50),
      fmt(row.load.cross.p99),
      String(row.latency.counted),
      fmt(row.latency.all.p50),
      fmt(row.latency.all.p99),
      fmt(row.latency.cross.p50),
      fmt(row.latency.cross.p99),
      row.rssIdleKiB === null ? "-" : fmt(row.rssIdleKiB / 1024),
      row.rssConnectedKiB === null ? "-" : fmt(row.rssConnectedKiB / 1024),
      fmt(perRunner),
      row.marginalKiB === null ? "-" : fmt(row.marginalKiB),
      row.cpuBusy.length === 0 ? "-" : row.cpuBusy.map((busy) => `${(busy * 100).toFixed(0)}%`).join("+"),
    ];
  });
  const widths = header.map((h, i) => Math.max(h.length, ...table.map((r) => r[i]!.length)));
  const line = (cells: string[]) =>
    cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join("  ");
  console.log(line(header));
  for (const cells of table) console.log(line(cells));
}

/**
 * The fleet's process holds a socket per runner, and so do the control planes. Node raises
 * its soft RLIMIT_NOFILE to the hard limit at start, never above: a hard limit too low for
 * the fleet is refused here with what to do, rather than failing on the N-th connect.
 */
function checkFileLimit(): void {
  const match = /^Max open files\s+(\d+|unlimited)\s+(\d+|unlimited)/m.exec(readFileSync("/proc/self/limits", "utf8"));
  const soft = match?.[1] === "unlimited" ? Infinity : Number(match?.[1] ?? Infinity);
  const needed = RUNNERS + 256;
  if (soft < needed)
    throw new Error(
      `${RUNNERS} runners need about ${needed} open files per process, and this process may open ${soft}: raise the hard limit (ulimit -Hn) or run fewer runners`,
    );
}

async function main(): Promise<void> {
  checkFileLimit();
  // The machine is shared: its load around the run is part of the result.
  const loadAtStart = os.loadavg();
  const work = await fs.mkdtemp(path.join(os.tmpdir(), "runner-bench-fleet-"));
  cleanups.push(() => fs.rm(work, { recursive: true, force: true }));
  const fleet = new Fleet();
  cleanups.push(async () => fleet.stop());
  const rows: Row[] = [];
  const alternate = (n: number) => n % 2;
  const sqlite = async () => ["--data", await fs.mkdtemp(path.join(work, "sqlite-"))];
  if (CONFIGS.has("sqlite")) {
    const config = { name: "SQLite, 1 process", replicas: 1, runnerReplica: () => 0, submitTo: () => 0, store: sqlite };
    rows.push(await runPushConfig(config, fleet, work));
  }
  if (CONFIGS.has("sqlite-memory")) {
    // No --data: the same control plane with its SQLite database in memory, so no commit waits for
    // the disk. It shows what the file's fsyncs cost (not a way to run: everything is lost at exit).
    const config = {
      name: "SQLite in memory (no fsync), 1 process",
      replicas: 1,
      runnerReplica: () => 0,
      submitTo: () => 0,
      store: async () => [],
    };
    rows.push(await runPushConfig(config, fleet, work));
  }
  const unavailable = postgresUnavailableReason();
  const wantsPostgres = [...CONFIGS].some((name) => name !== "sqlite");
  if (unavailable === undefined && wantsPostgres) {
    console.error("[fleet] starting a throw-away PostgreSQL cluster (fsync off)");
    const cluster = await startPostgresCluster();
    cleanups.push(() => cluster.stop());
    const database = async () => ["--database", await cluster.createDatabase()];
    const postgres: [string, PushConfig][] = [
      [
        "pg1",
        { name: "PostgreSQL, 1 replica", replicas: 1, runnerReplica: () => 0, submitTo: () => 0, store: database },
      ],
      [
        "pg2",
        {
          name: "PostgreSQL, 2 replicas (runners split, submits alternate)",
          replicas: 2,
          runnerReplica: alternate,
          submitTo: alternate,
          store: database,
        },
      ],
      [
        "pg2-cross",
        {
          name: "PostgreSQL, 2 replicas, every job cross-replica (runners on B, submits to A)",
          replicas: 2,
          runnerReplica: () => 1,
          submitTo: () => 0,
          store: database,
        },
      ],
    ];
    for (const [key, config] of postgres) if (CONFIGS.has(key)) rows.push(await runPushConfig(config, fleet, work));
    if (CONFIGS.has("baseline")) rows.push(await runPollingBaseline(await cluster.createDatabase(), work));
  }

  const title = `fleet: ${RUNNERS} light runners (capacity ${CAPACITY}, instant jobs), up to ${JOBS} jobs per configuration (${WARM_UP} warm-up not counted), ${IN_FLIGHT} in flight, submissions capped at ${PHASE_SECONDS} s`;
  console.log(`\n${title}`);
  const loads = (l: number[]) => l.map((v) => v.toFixed(1)).join(" / ");
  console.log(
    `load average (1 / 5 / 15 min) of the machine (${os.cpus().length} cores, shared with other work): ${loads(loadAtStart)} at the start, ${loads(os.loadavg())} at the end`,
  );
  console.log(
    "latencies: submitted (client, before the POST) → assign read by the runner, ms; cross: jobs taken by a runner on another replica than the one they were submitted to",
  );
  console.log(
    `1-by-1: the latency phase before the saturated one, ${LATENCY_JOBS} jobs one at a time (the next submitted when the last one's result is acknowledged; ${LATENCY_PLAN.warmUp} warm-up not counted; at most ${LATENCY_SECONDS} s): submitted → assigned with nothing queued`,
  );
  console.log(
    "RSS: control-plane process(es), VmRSS idle with 0 connected vs. the N runners connected and idle; KiB/runner = the difference / N; 2nd half: KiB per runner while the second half of the N connected; CP CPU: CPU time of each control-plane process over the load phase's wall time (100% = one core)\n",
  );
  printRows(rows);
  if (unavailable !== undefined)
    console.log(`\nPostgreSQL configurations and the polling baseline skipped: ${unavailable}`);
  for (const row of rows) {
    console.log(`${row.name}: ${row.context}`);
    if (row.load.unfinished > 0) console.log(`${row.name}: ${row.load.unfinished} jobs unfinished at the time cap`);
    for (const [what, count] of row.load.submitErrors) console.log(`${row.name}: ${count} submissions failed: ${what}`);
    for (const [what, count] of row.troubles) console.log(`${row.name}: ${count} × ${what}`);
  }

  const byName = (prefix: string) => rows.find((r) => r.name.startsWith(prefix));
  const split = byName("PostgreSQL, 2 replicas (");
  const crossOnly = byName("PostgreSQL, 2 replicas, every job");
  const baseline = byName("baseline");
  const verdict = (ok: boolean | undefined) => (ok === undefined ? "not measured" : ok ? "met" : "NOT met");
  const pushRows = rows.filter((r) => r.connected !== null);
  const perRunner = pushRows.map((r) => (r.rssConnectedKiB! - r.rssIdleKiB!) / RUNNERS);
  console.log("\ntargets (printed, never failing the bench):");
  console.log(
    `  500 connected runners: ${Math.min(...pushRows.map((r) => r.connected!))} connected in every configuration: ${verdict(pushRows.every((r) => r.connected! >= 500))}`,
  );
  console.log(
    `  ≥ 1,000 jobs/s through 2 PostgreSQL replicas: ${split ? split.load.jobsPerSecond.toFixed(0) : "-"} jobs/s: ${verdict(split && split.load.jobsPerSecond >= 1000)}`,
  );
  // The target is about dispatch, so it is judged on the latency phase (nothing queued); the
  // saturated phase's figures, which are mostly queueing, are printed beside it.
  console.log(
    `  cross-replica dispatch p50 < 5 ms, p99 < 50 ms (one job at a time, submitted to A, runner on B): ${crossOnly ? `p50 ${crossOnly.latency.cross.p50.toFixed(2)} ms, p99 ${crossOnly.latency.cross.p99.toFixed(2)} ms` : "-"}: ${verdict(crossOnly && crossOnly.latency.cross.p50 < 5 && crossOnly.latency.cross.p99 < 50)}${crossOnly ? ` (saturated, ${IN_FLIGHT} in flight: p50 ${crossOnly.load.cross.p50.toFixed(0)} ms, p99 ${crossOnly.load.cross.p99.toFixed(0)} ms, mostly queueing)` : ""}`,
  );
  console.log(
    `  < 50 KB of control-plane memory per connected runner: ${perRunner.map((v) => v.toFixed(1)).join(", ")} KiB: ${verdict(perRunner.every((v) => v * 1024 < 50_000))}`,
  );
  if (baseline) {
    const push = byName("PostgreSQL, 1 replica");
    if (push)
      console.log(
        `\nmedian ratio, polling baseline / PostgreSQL 1 replica: ${(baseline.load.all.p50 / push.load.all.p50).toFixed(0)}x; jobs/s ${baseline.load.jobsPerSecond.toFixed(0)} vs ${push.load.jobsPerSecond.toFixed(0)}`,
      );
  }
}

try {
  await main();
} finally {
  await cleanUp();
}
