// A replica killed (kill -9) under real `runner start` daemons that reach two replicas through
// real nginx, loading the example in deploy/nginx with only its certificate, listening port and
// upstream ports put in: the daemons reconnect through nginx to the survivor, their running
// jobs keep attempt and lease (no re-run), a job queued on the victim runs on the survivor,
// each result is applied exactly once, no job is left queued or running, jobs submitted after
// the death run. And a result that waits in a runner's
// outbox while its replica is dead (the runner cut off by a black hole) is applied once by
// the survivor. Audited from the database, the replicas' "result applied" lines and the jobs'
// own marker files. Skipped where PostgreSQL or nginx is not installed; failures under CI=true.
import { after, describe, test, type TestContext } from "node:test";
import assert from "node:assert/strict";
import { promises as fs } from "node:fs";
import path from "node:path";
import pg from "pg";
import type { JobView } from "../../src/protocol/http.js";
import { startDaemon, type DaemonProcess } from "../helpers/daemon.js";
import { registerRunner, tempDir, type RegisteredRunner } from "../helpers/fixtures.js";
import { requirePostgres, startPostgresCluster, type PostgresCluster } from "../helpers/postgres.js";
import { adminTokenFile, startReplica, type Replica } from "../helpers/replica.js";
import {
  requireServer,
  selfSignedCertificate,
  startNginx,
  type Certificate,
  type RunningServer,
} from "../helpers/reverse-proxy.js";
import { startTcpProxy } from "../helpers/tcp-proxy.js";
import { until } from "../helpers/until.js";

const TIMEOUT = { timeout: 180_000 };
const HEARTBEAT_MS = 1000;
const FAST = ["--reconnect-base-ms", "100", "--reconnect-cap-ms", "400", "--capacity", "1"];
const TERMINAL = new Set(["succeeded", "failed", "cancelled", "timed_out"]);

let cluster: Promise<PostgresCluster> | undefined;
after(async () => (await cluster)?.stop());

interface Fleet {
  dir: string;
  databaseUrl: string;
  replicas: [Replica, Replica];
  nginx: RunningServer;
  tls: Certificate;
  /** The daemons' environment: they trust the test certificate nginx presents. */
  env: Record<string, string>;
}

/** A database, two replicas on it, and nginx in front of both: the fleet's one URL. */
async function fleet(t: TestContext): Promise<Fleet> {
  const databaseUrl = await (cluster ??= startPostgresCluster()).then((c) => c.createDatabase());
  const tokenFile = adminTokenFile(t);
  const args = ["--admin-token-file", tokenFile];
  // Started one after the other: starting at once has its own test (replicas.test.ts).
  const a = await startReplica(t, databaseUrl, HEARTBEAT_MS, args);
  const b = await startReplica(t, databaseUrl, HEARTBEAT_MS, args);
  const dir = await tempDir(t, "runner-replica-death-");
  const tls = selfSignedCertificate(dir);
  const ports = [a, b].map((replica) => Number(new URL(replica.url).port));
  const nginx = await startNginx(t, dir, tls, ports);
  return { dir, databaseUrl, replicas: [a, b], nginx, tls, env: { NODE_EXTRA_CA_CERTS: tls.certificate } };
}

/** `runner register` through the given URL (nginx's, or a proxy's in front of it). */
function register(t: TestContext, fleet: Fleet, name: string, url = fleet.nginx.url): Promise<RegisteredRunner> {
  const admin = fleet.replicas[0].admin;
  const plane = {
    cp: { url },
    async tokenFile(dir: string) {
      const { token } = await admin.createRegistrationToken(600);
      const file = path.join(dir, "registration-token");
      await fs.writeFile(file, token + "\n", { mode: 0o600 });
      return file;
    },
  };
  return registerRunner(t, plane, { name, url, env: fleet.env });
}

async function runnerId(replica: Replica, name: string): Promise<string> {
  const runner = (await replica.admin.listRunners()).find((view) => view.name === name);
  assert.ok(runner, `runner ${name} is registered`);
  return runner.runnerId;
}

/** How many channels of the runner the replica has accepted so far (its JSON log lines). */
function channelsAt(replica: Replica, id: string): number {
  return replica
    .output()
    .split("\n")
    .filter((line) => line.includes('"msg":"channel connected; waiting for hello"') && line.includes(`"${id}"`)).length;
}

/** The replica's "result applied" lines for the job: its audit trail (job-queue.ts). */
function appliedAt(replica: Replica, jobId: string): number {
  return replica
    .output()
    .split("\n")
    .filter((line) => line.includes('"msg":"result applied"') && line.includes(`"${jobId}"`)).length;
}

function jobWhere(replica: Replica, jobId: string, done: (job: JobView) => boolean): Promise<JobView> {
  return until(`job ${jobId} to reach the expected state`, async () => {
    const { job } = await replica.admin.getJob(jobId);
    return done(job) ? job : undefined;
  });
}

/** A job that records each run in its marker file, then waits (at most 120 s) for the go file. */
async function submitWaiting(replica: Replica, marker: string, go: string): Promise<string> {
  const script = `echo run >> '${marker}'; n=0; while [ ! -e '${go}' ] && [ $n -lt 2400 ]; do sleep 0.05; n=$((n+1)); done; echo done`;
  const { job } = await replica.admin.submitJob({ job: { kind: "command", argv: ["sh", "-c", script], env: {} } });
  return job.jobId;
}

/** Every line a daemon logs on connecting; waits for the n-th. */
function connections(daemon: DaemonProcess, n: number, timeoutMs = 30_000): Promise<unknown> {
  let seen = 0;
  return daemon.waitForLog((line) => line.msg === "connected to the control plane" && ++seen === n, timeoutMs);
}

/** The database's word on every job: status, attempt, the applied result's attempt, lease. */
async function audit(databaseUrl: string) {
  const client = new pg.Client({ connectionString: databaseUrl });
  await client.connect();
  try {
    const { rows } = await client.query<{
      id: string;
      status: string;
      attempt: number;
      result: string | null;
      lease_expires_at: string | null;
    }>("SELECT id, status, attempt, result, lease_expires_at FROM jobs ORDER BY queue_position");
    return rows.map((row) => ({
      id: row.id,
      status: row.status,
      attempt: row.attempt,
      resultAttempt: row.result === null ? null : (JSON.parse(row.result) as { attempt: number }).attempt,
      leased: row.lease_expires_at !== null,
    }));
  } finally {
    await client.end();
  }
}

async function outbox(stateDir: string): Promise<string[]> {
  const files = await fs.readdir(path.join(stateDir, "outbox")).catch(() => []);
  return files.filter((file) => file.endsWith(".json"));
}

describe("a replica killed under real daemons behind nginx", () => {
  test(
    "kill -9 of the replica holding the daemons mid-run: they reconnect through nginx, keep their attempts, and every result is applied once",
    TIMEOUT,
    async (t) => {
      if (!requirePostgres(t) || !requireServer(t, "nginx")) return;
      const f = await fleet(t);
      const [a, b] = f.replicas;
      const names = ["death-1", "death-2", "death-3"];
      const runners = await Promise.all(names.map((name) => register(t, f, name)));
      const ids = await Promise.all(names.map((name) => runnerId(a, name)));
      const daemons = runners.map((runner) => startDaemon(t, [...runner.flags, ...FAST], f.env));
      await Promise.all(daemons.map((daemon) => connections(daemon, 1)));

      // One waiting job per daemon (capacity 1 each), all running before the kill.
      const go = path.join(f.dir, "go");
      const markers = names.map((name) => path.join(f.dir, `${name}.runs`));
      const jobs: string[] = [];
      for (const marker of markers) jobs.push(await submitWaiting(a, marker, go));
      await Promise.all(jobs.map((jobId) => jobWhere(a, jobId, (job) => job.status === "running")));

      // nginx spread the daemons over the replicas: each has exactly one channel, on one of
      // them. The victim is the replica holding the most (two at least, of three).
      // (A replica's log line may trail what its API says a little: waited for.)
      const channels = (id: string) => channelsAt(a, id) + channelsAt(b, id);
      await until("each runner's channel in a replica's log", async () =>
        ids.every((id) => channels(id) > 0) ? true : undefined,
      );
      for (const id of ids) assert.equal(channels(id), 1, `runner ${id} connected once`);
      const heldBy = (replica: Replica) => ids.filter((id) => channelsAt(replica, id) === 1);
      const [victim, survivor] = heldBy(a).length >= heldBy(b).length ? [a, b] : [b, a];
      const orphaned = heldBy(victim);
      assert.ok(orphaned.length >= 2);
      const before = await Promise.all(jobs.map(async (jobId) => (await survivor.admin.getJob(jobId)).job));
      // One more, submitted to the victim and queued behind the three when it dies: the survivor must run it.
      const queuedMarker = path.join(f.dir, "queued.runs");
      const queued = await submitWaiting(victim, queuedMarker, go);
      assert.equal((await victim.admin.getJob(queued)).job.status, "queued");

      const killedAt = Date.now();
      victim.child.kill("SIGKILL");
      // Each orphaned daemon connects again, through nginx, and lands on the survivor.
      const orphanDaemons = ids.flatMap((id, index) => (orphaned.includes(id) ? [daemons[index]!] : []));
      await Promise.all(orphanDaemons.map((daemon) => connections(daemon, 2)));
      t.diagnostic(
        `${orphanDaemons.length} daemons reconnected through nginx ${Date.now() - killedAt} ms after the kill`,
      );
      for (const id of orphaned)
        await until(`runner ${id} on the survivor`, async () => (channelsAt(survivor, id) === 1 ? true : undefined));

      // Still running, same attempt, same runner: the lease held across the reconnect.
      for (const previous of before) {
        const { job } = await survivor.admin.getJob(previous.jobId);
        assert.deepEqual(
          { status: job.status, attempt: job.attempt, runnerId: job.runnerId },
          { status: "running", attempt: 1, runnerId: previous.runnerId },
        );
      }

      await fs.writeFile(go, "");
      for (const jobId of [...jobs, queued]) {
        const done = await jobWhere(survivor, jobId, (job) => TERMINAL.has(job.status));
        assert.deepEqual({ status: done.status, attempt: done.attempt }, { status: "succeeded", attempt: 1 });
      }

      // Jobs submitted after the death run too.
      const later: string[] = [];
      for (let i = 0; i < 3; i++)
        later.push((await survivor.admin.submitJob({ job: { kind: "command", argv: ["true"], env: {} } })).job.jobId);
      for (const jobId of later)
        assert.equal((await jobWhere(survivor, jobId, (job) => TERMINAL.has(job.status))).status, "succeeded");

      // The audit. Each waiting job ran once (its marker has one line) ...
      for (const marker of [...markers, queuedMarker]) assert.equal(await fs.readFile(marker, "utf8"), "run\n", marker);
      // ... every job is in one terminal state with its attempt-1 result, nothing holds a lease ...
      const rows = await audit(f.databaseUrl);
      assert.deepEqual(
        rows.map((row) => ({ ...row, id: "" })),
        [...jobs, queued, ...later].map(() => ({
          id: "",
          status: "succeeded",
          attempt: 1,
          resultAttempt: 1,
          leased: false,
        })),
      );
      // ... and each result was applied exactly once, by the survivor
      // (its log line may trail its ack a little: waited for).
      for (const jobId of [...jobs, queued, ...later]) {
        await until(`the applied line of ${jobId}`, async () => (appliedAt(survivor, jobId) > 0 ? true : undefined));
        assert.equal(appliedAt(a, jobId) + appliedAt(b, jobId), 1, `result of ${jobId} applied once`);
      }
      for (const jobId of jobs) assert.equal(appliedAt(victim, jobId), 0);
      for (const runner of runners)
        await until("the outbox to empty", async () =>
          (await outbox(runner.stateDir)).length === 0 ? true : undefined,
        );
      for (const daemon of daemons)
        assert.ok(!daemon.lines.some((line) => /did not apply the result/.test(line.msg)), daemon.stderr());
    },
  );

  test(
    "a result that waits in the runner's outbox while its replica is dead is applied once by the survivor",
    TIMEOUT,
    async (t) => {
      if (!requirePostgres(t) || !requireServer(t, "nginx")) return;
      const f = await fleet(t);
      const [a, b] = f.replicas;
      // The daemon reaches nginx through a proxy that can black-hole its connection.
      const cut = await startTcpProxy(t, Number(new URL(f.nginx.url).port));
      const url = `https://127.0.0.1:${cut.port}`;
      const runner = await register(t, f, "outbox", url);
      const id = await runnerId(a, "outbox");
      const daemon = startDaemon(t, [...runner.flags, ...FAST], f.env);
      await connections(daemon, 1);
      const go = path.join(f.dir, "go");
      const marker = path.join(f.dir, "outbox.runs");
      const jobId = await submitWaiting(a, marker, go);
      await jobWhere(a, jobId, (job) => job.status === "running");
      await until("the runner's channel in a replica's log", async () =>
        channelsAt(a, id) + channelsAt(b, id) > 0 ? true : undefined,
      );
      const [victim, survivor] = channelsAt(a, id) === 1 ? [a, b] : [b, a];
      assert.equal(channelsAt(victim, id), 1);

      // Cut off, then its replica dies, then the job ends: the result can only go to the outbox.
      cut.blackhole();
      victim.child.kill("SIGKILL");
      await fs.writeFile(go, "");
      const held = await until("the result in the outbox", async () => {
        const files = await outbox(runner.stateDir);
        return files.length === 1 ? files : undefined;
      });
      assert.deepEqual(held, [`${jobId}.1.json`]);
      assert.equal((await survivor.admin.getJob(jobId)).job.status, "running", "no one has the result yet");

      // The way back opens: the daemon gives up the dead connection, reconnects through nginx
      // to the survivor, and its outbox sends the result there.
      cut.resume();
      await until("the survivor to take the runner", async () => (channelsAt(survivor, id) >= 1 ? true : undefined));
      const done = await jobWhere(survivor, jobId, (job) => TERMINAL.has(job.status));
      assert.deepEqual(
        { status: done.status, attempt: done.attempt, resultAttempt: done.result?.attempt },
        { status: "succeeded", attempt: 1, resultAttempt: 1 },
      );
      await until("the outbox to empty", async () => ((await outbox(runner.stateDir)).length === 0 ? true : undefined));
      await until("the applied line", async () => (appliedAt(survivor, jobId) > 0 ? true : undefined));
      assert.equal(appliedAt(survivor, jobId) + appliedAt(victim, jobId), 1, "applied once");
      assert.equal(await fs.readFile(marker, "utf8"), "run\n", "the job ran once");
      const rows = await audit(f.databaseUrl);
      assert.deepEqual(rows, [{ id: jobId, status: "succeeded", attempt: 1, resultAttempt: 1, leased: false }]);
    },
  );
});
