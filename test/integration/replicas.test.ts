// Several control-plane replicas on one PostgreSQL database, each a real child process
// (`runner control-plane --database …` on its own loopback port), with runners reduced to
// raw protocol clients: a job submitted to one replica reaches a runner on another at once
// (NOTIFY, no polling), an admin's cancel reaches the runner wherever it is connected, a
// runner's new connection to one replica closes its old one on another (4000), and replicas
// starting at once on an empty database agree on one schema and one admin token, and a
// replica keeps the admin token's hash in memory until another stores a new one (its NOTIFY)
// or its own listener reconnects.
// Skipped where PostgreSQL is not installed; a failure under CI=true (test/helpers/postgres.ts).
import { after, describe, test, type TestContext } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import pg from "pg";
import { AdminClient } from "../../src/api-client/admin.js";
import type { JobRef } from "../../src/protocol/channel.js";
import { RawRunner, registerRawRunner, type Identity } from "../helpers/raw-runner.js";
import { ADMIN_TOKEN, adminTokenFile, startReplica as startReplicaProcess, type Replica } from "../helpers/replica.js";
import { LISTENER_APPLICATION_NAME } from "../../src/control-plane/store/postgres/engine.js";
import { ADMIN_TOKEN_HASH_SETTING } from "../../src/control-plane/context.js";
import { hashSecret } from "../../src/control-plane/tokens.js";
import { requirePostgres, startPostgresCluster, type PostgresCluster } from "../helpers/postgres.js";
import { onCleanup } from "../helpers/cleanup.js";

const TIMEOUT = { timeout: 60_000 };
const HEARTBEAT_MS = 1000;

let cluster: Promise<PostgresCluster> | undefined;
after(async () => (await cluster)?.stop());

async function newDatabase(): Promise<string> {
  return (await (cluster ??= startPostgresCluster())).createDatabase();
}

/** Starts a replica on the database (test/helpers/replica.ts) at this file's heartbeat. */
function startReplica(t: TestContext, databaseUrl: string, args: string[] = []): Promise<Replica> {
  return startReplicaProcess(t, databaseUrl, HEARTBEAT_MS, args);
}

// ---- runners ----

function registerRunner(replica: Replica, name: string): Promise<Identity> {
  return registerRawRunner(replica.url, replica.admin, name);
}

function connect(t: TestContext, replica: Replica, identity: Identity): Promise<RawRunner> {
  return RawRunner.connect(t, replica.url, identity, HEARTBEAT_MS / 4);
}

async function submit(replica: Replica): Promise<string> {
  const { job } = await replica.admin.submitJob({ job: { kind: "command", argv: ["true"], env: {} } });
  return job.jobId;
}

async function twoReplicas(t: TestContext): Promise<[Replica, Replica]> {
  const databaseUrl = await newDatabase();
  const tokenFile = adminTokenFile(t);
  // The first creates the schema; the second finds it (starting at once has its own test).
  const a = await startReplica(t, databaseUrl, ["--admin-token-file", tokenFile]);
  const b = await startReplica(t, databaseUrl, ["--admin-token-file", tokenFile]);
  return [a, b];
}

describe("control-plane replicas on one PostgreSQL database", () => {
  test("a job submitted to replica A is assigned at once to a runner connected to replica B", TIMEOUT, async (t) => {
    if (!requirePostgres(t)) return;
    const [a, b] = await twoReplicas(t);
    const runner = await connect(t, b, await registerRunner(a, "on-b"));
    await runner.hello();
    runner.send({ type: "ready", slots: 1 });
    // B has no job yet: the pass its `ready` caused found none. Only A's NOTIFY can wake it now.
    const jobId = await submit(a);
    const assign = await runner.next("assign");
    assert.equal(assign.jobId, jobId);
    runner.send({ type: "accept", jobId, attempt: assign.attempt });
    runner.result(assign);
    assert.equal((await runner.next("result_ack")).applied, true);
    assert.equal((await a.admin.getJob(jobId)).job.status, "succeeded");
  });

  test("an admin's cancel on replica A reaches the runner connected to replica B", TIMEOUT, async (t) => {
    if (!requirePostgres(t)) return;
    const [a, b] = await twoReplicas(t);
    const runner = await connect(t, b, await registerRunner(b, "cancel-on-b"));
    await runner.hello();
    runner.send({ type: "ready", slots: 1 });
    const jobId = await submit(b);
    const assign = await runner.next("assign");
    runner.send({ type: "accept", jobId, attempt: assign.attempt });
    runner.send({ type: "started", jobId, attempt: assign.attempt, startedAt: new Date().toISOString() });
    await a.admin.cancelJob(jobId);
    const cancel = await runner.next("cancel");
    assert.deepEqual({ jobId: cancel.jobId, attempt: cancel.attempt }, { jobId, attempt: assign.attempt });
  });

  test(
    "a runner reconnecting to replica B has its old connection on replica A closed with 4000",
    TIMEOUT,
    async (t) => {
      if (!requirePostgres(t)) return;
      const [a, b] = await twoReplicas(t);
      const identity = await registerRunner(a, "moving");
      const old = await connect(t, a, identity);
      await old.hello();
      const fresh = await connect(t, b, identity);
      await fresh.hello();
      assert.equal((await old.closed).code, 4000);
      // The new connection is the one that takes work, whichever replica the job comes to.
      fresh.send({ type: "ready", slots: 1 });
      const jobId = await submit(a);
      assert.equal((await fresh.next("assign")).jobId, jobId);
    },
  );

  test("an admin's pause on replica A reaches the runner connected to replica B", TIMEOUT, async (t) => {
    if (!requirePostgres(t)) return;
    const [a, b] = await twoReplicas(t);
    const identity = await registerRunner(a, "paused-on-b");
    const runner = await connect(t, b, identity);
    await runner.hello();
    await a.admin.pauseRunner(identity.runnerId, "maintenance");
    assert.equal((await runner.next("pause")).reason, "maintenance");
  });

  test("a replica whose LISTEN connection is cut reconnects it and still delivers a cancel", TIMEOUT, async (t) => {
    if (!requirePostgres(t)) return;
    const [a, b] = await twoReplicas(t);
    const runner = await connect(t, b, await registerRunner(b, "listener-cut"));
    await runner.hello();
    runner.send({ type: "ready", slots: 1 });
    const jobId = await submit(b);
    const assign = await runner.next("assign");
    runner.send({ type: "accept", jobId, attempt: assign.attempt });
    // Both replicas' listeners are cut (as by a database restart or a network cut); the cancel
    // on A is sent at once, so its NOTIFY may well reach no listener: B's resync makes up for it.
    const databaseUrl = a.databaseUrl;
    const admin = new pg.Client({ connectionString: databaseUrl });
    await admin.connect();
    try {
      const { rowCount } = await admin.query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
        [LISTENER_APPLICATION_NAME],
      );
      assert.equal(rowCount, 2);
    } finally {
      await admin.end();
    }
    await a.admin.cancelJob(jobId);
    assert.equal((await runner.next("cancel")).jobId, jobId);
    await b.outputWhere((text) => text.includes("replica listener reconnected"));
    // And the reconnected listeners carry signals again.
    runner.send({ type: "ready", slots: 1 });
    const next = await submit(a);
    assert.equal((await runner.next("assign")).jobId, next);
  });

  test(
    "replica A killed mid-run: its runner goes on at replica B with its lease, every job ends once, none stranded",
    TIMEOUT,
    async (t) => {
      if (!requirePostgres(t)) return;
      const databaseUrl = await newDatabase();
      const tokenFile = adminTokenFile(t);
      const lease = ["--admin-token-file", tokenFile, "--lease-ms", "4000"];
      const a = await startReplica(t, databaseUrl, lease);
      const b = await startReplica(t, databaseUrl, lease);
      const survivor = await registerRunner(a, "survivor");
      const ghost = await registerRunner(a, "ghost");
      // Both runners on A, each running one job when A dies; the ghost never comes back.
      const onA = await connect(t, a, survivor);
      await onA.hello({ capacity: 1 });
      onA.send({ type: "ready", slots: 1 });
      const ghostOnA = await connect(t, a, ghost);
      await ghostOnA.hello({ capacity: 1 });
      ghostOnA.send({ type: "ready", slots: 1 });
      const jobs = [await submit(a), await submit(a)];
      const running = new Map<string, JobRef>();
      for (const runner of [onA, ghostOnA]) {
        const assign = await runner.next("assign");
        runner.send({ type: "accept", jobId: assign.jobId, attempt: assign.attempt });
        runner.send({
          type: "started",
          jobId: assign.jobId,
          attempt: assign.attempt,
          startedAt: new Date().toISOString(),
        });
        running.set(runner.identity.runnerId, { jobId: assign.jobId, attempt: assign.attempt });
      }
      // Queued behind them, submitted to A just before it dies: B must dispatch it.
      jobs.push(await submit(a));
      a.child.kill("SIGKILL");
      await Promise.all([onA.closed, ghostOnA.closed]);

      // The survivor reconnects (as through a load balancer) to B, still running its job.
      const held = running.get(survivor.runnerId)!;
      const onB = await connect(t, b, survivor);
      const welcome = await onB.hello({ capacity: 2, running: [held] });
      assert.deepEqual(welcome.fenced, [], "the job keeps its attempt and lease across the reconnect");
      assert.equal((await b.admin.getJob(held.jobId)).job.attempt, held.attempt);
      onB.result(held);
      assert.equal((await onB.next("result_ack")).applied, true);
      // Its outbox sends it again after another reconnect: acknowledged, not applied twice.
      onB.result(held);
      assert.equal((await onB.next("result_ack")).applied, false);

      // The queued job, and the ghost's once its lease runs out on B's reaper, come to the survivor.
      onB.send({ type: "ready", slots: 2 });
      const rest = new Set(jobs.filter((jobId) => jobId !== held.jobId));
      while (rest.size > 0) {
        const assign = await onB.next("assign", 30_000);
        assert.ok(rest.delete(assign.jobId), `unexpected assign of ${assign.jobId}`);
        onB.send({ type: "accept", jobId: assign.jobId, attempt: assign.attempt });
        onB.result(assign);
        assert.equal((await onB.next("result_ack")).applied, true);
        onB.send({ type: "ready", slots: 1 });
      }

      // The audit: every job succeeded exactly once, and nothing is left queued or running.
      const all = await b.admin.listJobs();
      assert.deepEqual(
        all.map((job) => job.status),
        jobs.map(() => "succeeded"),
      );
      const ghostJob = all.find((job) => job.jobId === running.get(ghost.runnerId)!.jobId)!;
      assert.equal(ghostJob.attempt, 2, "the ghost's job ran again as attempt 2 after its lease ran out");
      // The audit trail: one "result applied" line per job (B's log lines may trail its acks a little).
      const appliedLines = (text: string) => text.match(/"msg":"result applied"/g)?.length ?? 0;
      await b.outputWhere((text) => appliedLines(text) >= jobs.length);
      assert.equal(appliedLines(a.output()) + appliedLines(b.output()), jobs.length, "no result applied twice");
    },
  );

  test(
    "a replica started with a new admin token file makes the old token refused at once on a replica already serving",
    TIMEOUT,
    async (t) => {
      if (!requirePostgres(t)) return;
      const databaseUrl = await newDatabase();
      const b = await startReplica(t, databaseUrl, ["--admin-token-file", adminTokenFile(t)]);
      // B serves the old token, and keeps its hash in memory from here on.
      assert.deepEqual(await b.admin.listJobs(), []);
      const dir = mkdtempSync(join(tmpdir(), "runner-replicas-rotated-"));
      onCleanup(t, () => rmSync(dir, { recursive: true, force: true }));
      const rotated = "adm_replicas-test-rotated-token-9876543210";
      writeFileSync(join(dir, "admin-token"), rotated, { mode: 0o600 });
      const c = await startReplica(t, databaseUrl, ["--admin-token-file", join(dir, "admin-token")]);
      // The event: B heard C's `admin_token` signal (no sleep; nothing else makes B read the hash again).
      await b.outputWhere((text) => text.includes("admin token replaced on another replica"));
      for (const replica of [b, c]) {
        const old = await fetch(`${replica.url}/api/v1/admin/jobs`, {
          headers: { authorization: `Bearer ${ADMIN_TOKEN}` },
        });
        assert.equal(old.status, 401, `the old token on ${replica.url}`);
        assert.equal(((await old.json()) as { error: { code: string } }).error.code, "unauthorized");
        assert.deepEqual(await new AdminClient(replica.url, rotated).listJobs(), []);
      }
    },
  );

  test(
    "a replica keeps the admin token's hash in memory and reads it again when its listener reconnects",
    TIMEOUT,
    async (t) => {
      if (!requirePostgres(t)) return;
      const databaseUrl = await newDatabase();
      const b = await startReplica(t, databaseUrl, ["--admin-token-file", adminTokenFile(t)]);
      assert.deepEqual(await b.admin.listJobs(), []);
      const rotated = "adm_replicas-test-resync-token-0123456789";
      const client = new pg.Client({ connectionString: databaseUrl });
      await client.connect();
      onCleanup(t, () => client.end());
      // Changed behind B's back (no signal, as if said while B's listener was away): B still
      // answers from the hash it keeps.
      await client.query("UPDATE settings SET value = $1 WHERE key = $2", [
        hashSecret(rotated),
        ADMIN_TOKEN_HASH_SETTING,
      ]);
      assert.deepEqual(await b.admin.listJobs(), [], "the kept hash");
      const { rowCount } = await client.query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
        [LISTENER_APPLICATION_NAME],
      );
      assert.equal(rowCount, 1);
      await b.outputWhere((text) => text.includes("replica listener reconnected"));
      const old = await fetch(`${b.url}/api/v1/admin/jobs`, { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } });
      assert.equal(old.status, 401);
      assert.deepEqual(await new AdminClient(b.url, rotated).listJobs(), []);
    },
  );

  test(
    "two replicas starting at once on an empty database share one schema and one admin token",
    TIMEOUT,
    async (t) => {
      if (!requirePostgres(t)) return;
      const databaseUrl = await newDatabase();
      const [a, b] = await Promise.all([startReplica(t, databaseUrl), startReplica(t, databaseUrl)]);
      // Each prints the admin token only when it stored it: exactly one did, and it works on both.
      // (That line follows the "listening" one: waited for.)
      await Promise.all([a, b].map((replica) => replica.outputWhere((text) => /admin token: \S+/.test(text))));
      const tokens = [a, b]
        .map((replica) => /admin token: (adm_\S+)/.exec(replica.output())?.[1])
        .filter((token): token is string => token !== undefined);
      assert.equal(tokens.length, 1, `${a.output()}\n${b.output()}`);
      for (const replica of [a, b]) {
        const admin = new AdminClient(replica.url, tokens[0]!);
        assert.deepEqual(await admin.listJobs(), []);
      }
      const client = new pg.Client({ connectionString: databaseUrl });
      await client.connect();
      try {
        const { rows } = await client.query<{ version: number }>(
          "SELECT version FROM schema_migrations ORDER BY version",
        );
        assert.deepEqual(
          rows.map((row) => row.version),
          rows.map((_row, index) => index + 1),
        );
      } finally {
        await client.end();
      }
    },
  );
});
