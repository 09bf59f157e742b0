// The store contract (src/control-plane/store/contract.ts), one body run against both engines:
// SQLite in a temp dir, and PostgreSQL in a throw-away cluster (test/helpers/postgres.ts;
// skipped where PostgreSQL is not installed, a failure under CI=true). Races use two separate
// stores on one database (two connections, or two pools), as two replicas would.
import { after, before, describe, test, type TestContext } from "node:test";
import assert from "node:assert/strict";
import pg from "pg";
import { createHash } from "node:crypto";
import { mkdtempSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { JobResult } from "../../src/protocol/channel.js";
import type { Device, DevicesBatchMessage } from "../../src/protocol/devices.js";
import type { ControlPlaneStore, NewRunner } from "../../src/control-plane/store/contract.js";
import { DATABASE_FILE, SCHEMA_VERSION, openSqliteStore } from "../../src/control-plane/store/sqlite/engine.js";
import { PG_SCHEMA_VERSION, openPostgresStore } from "../../src/control-plane/store/postgres/engine.js";
import { openStore } from "../../src/control-plane/store/open.js";
import { RunnerError } from "../../src/errors.js";
import { runCli } from "../helpers/cli.js";
import {
  postgresUnavailableReason,
  requirePostgres,
  startPostgresCluster,
  type PostgresCluster,
} from "../helpers/postgres.js";
import { finishedResult } from "../helpers/channel-fixtures.js";
import { onCleanup } from "../helpers/cleanup.js";

const TIMEOUT = { timeout: 30_000 };
/** Limits far above what a test stores, where a test is not about them. */
const LOG_LIMITS = { maxBytes: 1024 * 1024, maxChunks: 2 ** 41 };
const MAX_ROWS = 1000;
const HOST = { hostname: "box", platform: "linux", arch: "x64", fingerprint: "a".repeat(64) };

/** One database per test; `open` may be called again for a second connection to it. */
interface Fresh {
  open(): Promise<ControlPlaneStore>;
  schemaVersion: number;
  /** PostgreSQL's database URL, for a client of the test's own (a LISTEN). */
  url?: string;
}

interface Engine {
  name: string;
  /** undefined: the test was skipped. */
  fresh(t: TestContext): Promise<Fresh | undefined>;
}

function track(t: TestContext, opened: Promise<ControlPlaneStore>): Promise<ControlPlaneStore> {
  return opened.then((store) => {
    onCleanup(t, () => store.close());
    return store;
  });
}

const sqlite: Engine = {
  name: "SQLite",
  async fresh(t) {
    const dir = mkdtempSync(join(tmpdir(), "runner-store-"));
    onCleanup(t, () => rmSync(dir, { recursive: true, force: true }));
    return { open: () => track(t, Promise.resolve(openSqliteStore(dir))), schemaVersion: SCHEMA_VERSION };
  },
};

let cluster: PostgresCluster | undefined;
const postgres: Engine = {
  name: "PostgreSQL",
  async fresh(t) {
    if (!requirePostgres(t) || !cluster) return undefined;
    const url = await cluster.createDatabase();
    return { open: () => track(t, openPostgresStore({ url })), schemaVersion: PG_SCHEMA_VERSION, url };
  },
};

before(async () => {
  if (postgresUnavailableReason() === undefined) cluster = await startPostgresCluster();
});
after(() => cluster?.stop());

function newRunner(name: string, id = "rnr_" + name.padEnd(24, "x").slice(0, 24)): NewRunner {
  return { id, name, labels: ["linux"], host: HOST, credentialHash: "c".repeat(64) };
}

async function tokenIn(store: ControlPlaneStore, hash: string, expiresInMs = 60_000): Promise<void> {
  const now = new Date();
  await store.insertRegistrationToken({
    id: "rgi_" + hash.slice(0, 24),
    tokenHash: hash,
    createdAt: now,
    expiresAt: new Date(now.getTime() + expiresInMs),
  });
}

async function submit(store: ControlPlaneStore, id: string, env: Record<string, string> = {}) {
  return submitWith(store, id, undefined, env);
}

async function submitWith(
  store: ControlPlaneStore,
  id: string,
  notice: { channel: string; payload: string } | undefined,
  env: Record<string, string> = {},
) {
  return store.jobs.insert(
    {
      id,
      spec: { kind: "command", argv: ["true"], env },
      timeoutMs: 60_000,
      cancelGraceMs: 1000,
      requiredLabels: [],
      submittedAt: new Date(),
    },
    notice,
  );
}

const result = (jobId: string, attempt: number): JobResult => finishedResult({ jobId, attempt });

function device(id: string, overrides: Partial<Device> = {}): Device {
  return {
    id,
    kind: "usb",
    name: id,
    state: "online",
    attributes: {},
    stale: false,
    fingerprint: `f-${id}`,
    ...overrides,
  };
}

function batch(overrides: Partial<DevicesBatchMessage>): DevicesBatchMessage {
  return { type: "devices", batchId: "b1", last: true, upserts: [], removals: [], ...overrides };
}

const later = (ms: number) => new Date(Date.now() + ms);

/** One store on a fresh database; undefined when the test was skipped. */
async function oneStore(engine: Engine, t: TestContext): Promise<ControlPlaneStore | undefined> {
  return (await engine.fresh(t))?.open();
}

/** Two stores (two connections, or two pools) on one fresh database, as two replicas have. */
async function twoStores(engine: Engine, t: TestContext): Promise<[ControlPlaneStore, ControlPlaneStore] | undefined> {
  const fresh = await engine.fresh(t);
  return fresh && Promise.all([fresh.open(), fresh.open()]);
}

/** Registers a runner through a new token; returns its id. */
async function registered(store: ControlPlaneStore, name: string): Promise<string> {
  const hash = createHash("sha256").update(name).digest("hex");
  await tokenIn(store, hash);
  const outcome = await store.registerRunner({
    tokenHash: hash,
    runner: newRunner(name),
    replace: false,
    now: new Date(),
  });
  assert.ok(outcome.outcome === "registered");
  return outcome.runner.id;
}

for (const engine of [sqlite, postgres]) {
  describe(`the store contract on ${engine.name}`, () => {
    test(
      "a schema is created at the current version, and a second open finds nothing to migrate",
      TIMEOUT,
      async (t) => {
        const fresh = await engine.fresh(t);
        if (!fresh) return;
        const [first, second] = await Promise.all([fresh.open(), fresh.open()]);
        assert.equal(await first.schemaVersion(), fresh.schemaVersion);
        assert.equal(await second.schemaVersion(), fresh.schemaVersion);
        await first.setSetting("k", "v");
        assert.equal(await second.getSetting("k"), "v");
        const third = await fresh.open();
        assert.equal(await third.getSetting("k"), "v", "reopening keeps the data");
      },
    );

    test(
      "a job's insert carrying a notice sends that NOTIFY with the row readable on PostgreSQL, and is refused on SQLite",
      TIMEOUT,
      async (t) => {
        const fresh = await engine.fresh(t);
        if (!fresh) return;
        const store = await fresh.open();
        const notice = { channel: "contract_test", payload: '{"hello":"there"}' };
        if (fresh.url === undefined) {
          await assert.rejects(submitWith(store, "job_refused", notice), /cannot send a NOTIFY/);
          assert.equal(await store.jobs.find("job_refused"), undefined, "nothing stored");
          return;
        }
        const listener = new pg.Client({ connectionString: fresh.url });
        await listener.connect();
        onCleanup(t, () => listener.end());
        await listener.query(`LISTEN ${notice.channel}`);
        const heard = new Promise<string | undefined>((resolve) =>
          listener.once("notification", (message) => resolve(message.payload)),
        );
        const inserted = await submitWith(store, "job_announced", notice);
        assert.equal(inserted.status, "queued");
        assert.equal(await heard, notice.payload);
        // Heard on another connection: the row it announces is there to read.
        const { rows } = await listener.query<{ status: string }>("SELECT status FROM jobs WHERE id = $1", [
          "job_announced",
        ]);
        assert.deepEqual(rows, [{ status: "queued" }]);
      },
    );

    test("settings are set and replaced; insert-if-absent keeps the first value", TIMEOUT, async (t) => {
      const stores = await twoStores(engine, t);
      if (!stores) return;
      const [store, other] = stores;
      assert.equal(await store.getSetting("missing"), undefined);
      await store.setSetting("a", "1");
      await store.setSetting("a", "2");
      assert.equal(await store.getSetting("a"), "2");
      const won = await Promise.all([store.insertSettingIfAbsent("b", "x"), other.insertSettingIfAbsent("b", "y")]);
      assert.deepEqual(won.filter(Boolean).length, 1, "exactly one of two stores starting at once stores its value");
      assert.equal(await store.getSetting("b"), won[0] ? "x" : "y");
    });

    test(
      "a token registers one runner; used, expired or unknown it is refused, and a taken name keeps the token",
      TIMEOUT,
      async (t) => {
        const store = await oneStore(engine, t);
        if (!store) return;
        const now = new Date();
        await tokenIn(store, "1".repeat(64));
        await tokenIn(store, "2".repeat(64));
        await tokenIn(store, "3".repeat(64), -60_000);
        const first = await store.registerRunner({
          tokenHash: "1".repeat(64),
          runner: newRunner("alpha"),
          replace: false,
          now,
        });
        assert.equal(first.outcome, "registered");
        assert.equal(
          (await store.registerRunner({ tokenHash: "1".repeat(64), runner: newRunner("beta"), replace: false, now }))
            .outcome,
          "token_invalid",
          "a used token",
        );
        assert.equal(
          (await store.registerRunner({ tokenHash: "3".repeat(64), runner: newRunner("beta"), replace: false, now }))
            .outcome,
          "token_invalid",
          "an expired token",
        );
        assert.equal(
          (await store.registerRunner({ tokenHash: "9".repeat(64), runner: newRunner("beta"), replace: false, now }))
            .outcome,
          "token_invalid",
          "an unknown token",
        );
        const taken = await store.registerRunner({
          tokenHash: "2".repeat(64),
          runner: newRunner("alpha", "rnr_" + "Y".repeat(24)),
          replace: false,
          now,
        });
        assert.equal(taken.outcome, "name_taken");
        const replaced = await store.registerRunner({
          tokenHash: "2".repeat(64),
          runner: newRunner("alpha", "rnr_" + "Y".repeat(24)),
          replace: true,
          now,
        });
        assert.ok(replaced.outcome === "registered");
        assert.equal(replaced.replaced?.id, "rnr_alphaxxxxxxxxxxxxxxxxxxx");
        assert.deepEqual(
          (await store.listRunners()).map((r) => r.id),
          ["rnr_" + "Y".repeat(24)],
        );
      },
    );

    test(
      "two registrations racing with one token, on two connections, register exactly one runner",
      TIMEOUT,
      async (t) => {
        const stores = await twoStores(engine, t);
        if (!stores) return;
        const [left, right] = stores;
        const now = new Date();
        for (let round = 0; round < 5; round++) {
          const hash = String(round).repeat(64);
          await tokenIn(left, hash);
          const outcomes = await Promise.all([
            left.registerRunner({ tokenHash: hash, runner: newRunner(`l${round}`), replace: false, now }),
            right.registerRunner({ tokenHash: hash, runner: newRunner(`r${round}`), replace: false, now }),
          ]);
          assert.deepEqual(outcomes.map((o) => o.outcome).sort(), ["registered", "token_invalid"], `round ${round}`);
        }
        assert.equal((await left.listRunners()).length, 5);
      },
    );

    test(
      "two registrations of one new name with two tokens at once: one registers, the other is name_taken",
      TIMEOUT,
      async (t) => {
        const stores = await twoStores(engine, t);
        if (!stores) return;
        const [left, right] = stores;
        await tokenIn(left, "a".repeat(64));
        await tokenIn(left, "b".repeat(64));
        const now = new Date();
        const outcomes = await Promise.all([
          left.registerRunner({
            tokenHash: "a".repeat(64),
            runner: newRunner("same", "rnr_" + "L".repeat(24)),
            replace: false,
            now,
          }),
          right.registerRunner({
            tokenHash: "b".repeat(64),
            runner: newRunner("same", "rnr_" + "R".repeat(24)),
            replace: false,
            now,
          }),
        ]);
        assert.deepEqual(outcomes.map((o) => o.outcome).sort(), ["name_taken", "registered"]);
      },
    );

    test(
      "runner updates return the row as changed; pause keeps its first time; delete removes devices too",
      TIMEOUT,
      async (t) => {
        const store = await oneStore(engine, t);
        if (!store) return;
        const id = await registered(store, "r");
        const first = new Date(1_000_000);
        assert.equal((await store.setRunnerPaused(id, { reason: "one", at: first }))?.pausedAt?.getTime(), 1_000_000);
        const again = await store.setRunnerPaused(id, { reason: "two", at: new Date(2_000_000) });
        assert.deepEqual([again?.pausedAt?.getTime(), again?.pauseReason], [1_000_000, "two"]);
        assert.equal((await store.setRunnerPaused(id, null))?.pausedAt, null);
        assert.deepEqual((await store.setRunnerLabels(id, ["gpu", "linux"]))?.labels, ["gpu", "linux"]);
        assert.equal((await store.revokeRunner(id, first))?.revokedAt?.getTime(), 1_000_000);
        assert.equal((await store.revokeRunner(id, new Date()))?.revokedAt?.getTime(), 1_000_000, "revoked once");
        assert.equal((await store.touchRunner(id, new Date(3_000_000)))?.lastSeenAt?.getTime(), 3_000_000);
        const rebound = await store.rebindRunnerHost(id, { ...HOST, fingerprint: "b".repeat(64) }, new Date());
        assert.equal(rebound?.host.fingerprint, "b".repeat(64));
        await store.devices.applyBatch(id, batch({ upserts: [device("usb:1")] }), new Date(), MAX_ROWS);
        assert.equal(await store.deleteRunner(id), true);
        assert.equal(await store.deleteRunner(id), false);
        assert.equal(await store.touchRunner(id, new Date()), undefined);
        assert.deepEqual(await store.devices.list({ runnerId: id }), []);
      },
    );

    test("two claimers racing on two connections hand each job to exactly one runner", TIMEOUT, async (t) => {
      const stores = await twoStores(engine, t);
      if (!stores) return;
      const [left, right] = stores;
      const ids = Array.from({ length: 40 }, (_, i) => `job_${String(i).padStart(24, "0")}`);
      for (const id of ids) await submit(left, id);
      const now = new Date();
      const claims = await Promise.all(
        ids.flatMap((id) => [
          left.jobs.claim(id, "rnr_" + "L".repeat(24), now, later(60_000)),
          right.jobs.claim(id, "rnr_" + "R".repeat(24), now, later(60_000)),
        ]),
      );
      const won = claims.filter((job) => job !== undefined);
      assert.equal(won.length, ids.length, "one claim per job");
      assert.deepEqual(new Set(won.map((job) => job.id)).size, ids.length);
      for (const job of await left.jobs.list()) {
        assert.equal(job.status, "assigned");
        assert.equal(job.attempt, 1);
      }
      assert.equal(await left.jobs.claim(ids[0]!, "rnr_" + "L".repeat(24), now, later(60_000)), undefined);
      assert.deepEqual(await left.jobs.listQueued(0, 100), []);
    });

    test(
      "a batch claim gives each queued job to its own runner, and leaves out jobs that are not queued",
      TIMEOUT,
      async (t) => {
        const store = await oneStore(engine, t);
        if (!store) return;
        for (const id of ["job_b1", "job_b2", "job_b3"]) await submit(store, id);
        await store.jobs.claim("job_b3", "rnr_" + "Z".repeat(24), new Date(), later(60_000));
        const now = new Date();
        const lease = later(60_000);
        const claimed = await store.jobs.claimMany(
          [
            { jobId: "job_b1", runnerId: "rnr_" + "A".repeat(24) },
            { jobId: "job_b2", runnerId: "rnr_" + "B".repeat(24) },
            { jobId: "job_b3", runnerId: "rnr_" + "C".repeat(24) },
            { jobId: "job_none", runnerId: "rnr_" + "D".repeat(24) },
          ],
          now,
          lease,
        );
        const byId = new Map(claimed.map((job) => [job.id, job]));
        assert.deepEqual([...byId.keys()].sort(), ["job_b1", "job_b2"]);
        assert.equal(byId.get("job_b1")?.runnerId, "rnr_" + "A".repeat(24));
        assert.equal(byId.get("job_b2")?.runnerId, "rnr_" + "B".repeat(24));
        for (const job of claimed) {
          assert.deepEqual([job.status, job.attempt], ["assigned", 1]);
          assert.equal(job.assignedAt?.getTime(), now.getTime());
          assert.equal(job.leaseExpiresAt?.getTime(), lease.getTime());
        }
        assert.equal((await store.jobs.find("job_b3"))?.runnerId, "rnr_" + "Z".repeat(24), "a claimed job stays put");
        assert.deepEqual(
          await store.jobs.claimMany([{ jobId: "job_b1", runnerId: "rnr_" + "D".repeat(24) }], now, lease),
          [],
        );
        assert.deepEqual(await store.jobs.claimMany([], now, lease), []);
        await assert.rejects(
          store.jobs.claimMany(
            [
              { jobId: "job_b1", runnerId: "rnr_" + "A".repeat(24) },
              { jobId: "job_b1", runnerId: "rnr_" + "B".repeat(24) },
            ],
            now,
            lease,
          ),
          (error: unknown) => error instanceof RunnerError && error.code === "internal",
        );
      },
    );

    test(
      "batched started and result reports change only the rows whose runner holds that attempt, unfinished",
      TIMEOUT,
      async (t) => {
        const store = await oneStore(engine, t);
        if (!store) return;
        const holder = "rnr_" + "H".repeat(24);
        const other = "rnr_" + "O".repeat(24);
        for (const id of ["job_s1", "job_s2", "job_s3"]) await submit(store, id);
        await store.jobs.claimMany(
          ["job_s1", "job_s2", "job_s3"].map((jobId) => ({ jobId, runnerId: holder })),
          new Date(),
          later(60_000),
        );
        const at = new Date(1_700_000_000_000);
        const started = await store.jobs.markRunningMany([
          { ref: { jobId: "job_s1", attempt: 1 }, runnerId: holder, at },
          { ref: { jobId: "job_s2", attempt: 2 }, runnerId: holder, at },
          { ref: { jobId: "job_s3", attempt: 1 }, runnerId: other, at },
        ]);
        assert.deepEqual(
          started.map((job) => [job.id, job.status, job.startedAt?.getTime()]),
          [["job_s1", "running", at.getTime()]],
          "a stale attempt and another runner's report change nothing",
        );
        assert.deepEqual(
          await store.jobs.markRunningMany([{ ref: { jobId: "job_s1", attempt: 1 }, runnerId: holder, at }]),
          [],
        );
        const applied = await store.jobs.applyResults([
          { result: result("job_s1", 1), runnerId: holder, at },
          { result: { ...result("job_s2", 1), outcome: "failed", exitCode: 3 }, runnerId: holder, at },
          { result: result("job_s3", 2), runnerId: holder, at },
          { result: result("job_none", 1), runnerId: holder, at },
        ]);
        const byId = new Map(applied.map((job) => [job.id, job]));
        assert.deepEqual([...byId.keys()].sort(), ["job_s1", "job_s2"], "from running and from assigned");
        assert.equal(byId.get("job_s1")?.status, "succeeded");
        assert.deepEqual([byId.get("job_s2")?.status, byId.get("job_s2")?.result?.exitCode], ["failed", 3]);
        assert.equal(byId.get("job_s2")?.finishedAt?.getTime(), at.getTime());
        assert.equal(byId.get("job_s2")?.leaseExpiresAt, null);
        assert.deepEqual(
          await store.jobs.applyResults([{ result: result("job_s1", 1), runnerId: holder, at }]),
          [],
          "a result applies once",
        );
        assert.equal((await store.jobs.find("job_s3"))?.status, "assigned");
        await assert.rejects(
          store.jobs.applyResults([
            { result: result("job_s3", 1), runnerId: holder, at },
            { result: result("job_s3", 1), runnerId: holder, at },
          ]),
          (error: unknown) => error instanceof RunnerError && error.code === "internal",
        );
      },
    );

    test(
      "an attempt above 2^31 - 1 is held by no one: every report of it changes nothing, and its batch still applies",
      TIMEOUT,
      async (t) => {
        const store = await oneStore(engine, t);
        if (!store) return;
        const holder = "rnr_" + "H".repeat(24);
        for (const id of ["job_h1", "job_h2"]) await submit(store, id);
        await store.jobs.claimMany(
          ["job_h1", "job_h2"].map((jobId) => ({ jobId, runnerId: holder })),
          new Date(),
          later(60_000),
        );
        const at = new Date();
        for (const attempt of [2 ** 31, 2 ** 53, 1e308]) {
          const ref = { jobId: "job_h1", attempt };
          assert.equal(await store.jobs.holds(ref, holder), false);
          assert.equal(await store.jobs.release(ref, holder, at), undefined);
          assert.equal(
            await store.jobs.insertLog(ref, holder, { seq: 0, stream: "stdout", data: "x" }, LOG_LIMITS),
            "not_held",
          );
          assert.deepEqual(await store.jobs.markRunningMany([{ ref, runnerId: holder, at }]), []);
        }
        const applied = await store.jobs.applyResults([
          { result: result("job_h1", 2 ** 31), runnerId: holder, at },
          { result: result("job_h2", 1), runnerId: holder, at },
        ]);
        assert.deepEqual(
          applied.map((job) => [job.id, job.status]),
          [["job_h2", "succeeded"]],
          "the report of a held attempt in the same batch applies",
        );
        assert.equal((await store.jobs.find("job_h1"))?.status, "assigned");
      },
    );

    test("two batch claims racing on two connections hand each job to exactly one runner", TIMEOUT, async (t) => {
      const stores = await twoStores(engine, t);
      if (!stores) return;
      const [left, right] = stores;
      const ids = Array.from({ length: 60 }, (_, i) => `job_${String(i).padStart(24, "0")}`);
      for (const id of ids) await submit(left, id);
      const now = new Date();
      // Overlapping batches in opposite orders, several at once from each side.
      const batch = (store: ControlPlaneStore, side: string, order: string[]) =>
        store.jobs.claimMany(
          order.map((jobId, i) => ({ jobId, runnerId: `rnr_${side}${String(i).padStart(23, "0")}` })),
          now,
          later(60_000),
        );
      const reversed = [...ids].reverse();
      const claims = (
        await Promise.all([
          batch(left, "L", ids.slice(0, 40)),
          batch(right, "R", reversed.slice(0, 40)),
          batch(left, "M", ids.slice(20)),
          batch(right, "S", reversed.slice(20)),
        ])
      ).flat();
      assert.equal(claims.length, ids.length, "one claim per job");
      assert.equal(new Set(claims.map((job) => job.id)).size, ids.length);
      for (const job of await left.jobs.list()) {
        assert.deepEqual([job.status, job.attempt], ["assigned", 1]);
        assert.equal(job.runnerId, claims.find((claimed) => claimed.id === job.id)?.runnerId);
      }
    });

    test(
      "the queue's distinct requirements are listed, and listQueued reads only the groups it is given",
      TIMEOUT,
      async (t) => {
        const store = await oneStore(engine, t);
        if (!store) return;
        const spec = { kind: "command" as const, argv: ["true"], env: {} };
        const add = (id: string, requiredLabels: string[]) =>
          store.jobs.insert({
            id,
            spec,
            timeoutMs: 60_000,
            cancelGraceMs: 1000,
            requiredLabels,
            submittedAt: new Date(),
          });
        await add("job_gpu1", ["gpu"]);
        await add("job_any", []);
        await add("job_gpu2", ["gpu"]);
        await add("job_mac", ["macos", "arm64"]);
        const groups = await store.jobs.listQueuedRequirements();
        assert.deepEqual(groups.map((group) => group.requiredLabels.join(",")).sort(), ["", "gpu", "macos,arm64"]);
        const gpu = groups.find((group) => group.requiredLabels.join(",") === "gpu")!;
        assert.deepEqual(
          (await store.jobs.listQueued(0, 10, [gpu.key])).map((job) => job.id),
          ["job_gpu1", "job_gpu2"],
        );
        assert.deepEqual(await store.jobs.listQueued(0, 10, []), []);
        await store.jobs.claim("job_gpu1", "rnr_" + "G".repeat(24), new Date(), later(60_000));
        assert.deepEqual(
          (await store.jobs.listQueued(0, 10, [gpu.key])).map((job) => job.id),
          ["job_gpu2"],
        );
      },
    );

    test("each new channel of a runner gets a higher generation, from any replica", TIMEOUT, async (t) => {
      const stores = await twoStores(engine, t);
      if (!stores) return;
      const [left, right] = stores;
      const id = await registered(left, "generations");
      assert.equal(await right.channelGeneration(id), 0);
      const now = new Date();
      const opened = await Promise.all([
        left.openChannelGeneration(id, now),
        right.openChannelGeneration(id, now),
        left.openChannelGeneration(id, now),
      ]);
      assert.deepEqual([...opened].sort(), [1, 2, 3]);
      assert.equal(await left.channelGeneration(id), 3);
      assert.equal(await right.openChannelGeneration("rnr_" + "N".repeat(24), now), undefined);
    });

    test("jobs keep their submit order, and listQueued pages through the queued ones", TIMEOUT, async (t) => {
      const store = await oneStore(engine, t);
      if (!store) return;
      for (const n of [3, 1, 2]) await submit(store, `job_${n}`);
      const queued = await store.jobs.listQueued(0, 2);
      assert.deepEqual(
        queued.map((job) => job.id),
        ["job_3", "job_1"],
      );
      assert.deepEqual(
        (await store.jobs.listQueued(queued[1]!.position, 2)).map((job) => job.id),
        ["job_2"],
      );
      assert.deepEqual(
        (await store.jobs.list("queued")).map((job) => job.id),
        ["job_3", "job_1", "job_2"],
      );
    });

    test(
      "listQueuedHead answers in one statement what listQueuedRequirements and listQueued would",
      TIMEOUT,
      async (t) => {
        const store = await oneStore(engine, t);
        if (!store) return;
        assert.deepEqual(await store.jobs.listQueuedHead(5), { groups: [], head: [] });
        for (const n of [4, 2, 3, 1]) await submit(store, `job_${n}`);
        await store.jobs.insert({
          id: "job_gpu",
          spec: { kind: "command", argv: ["true"], env: {} },
          timeoutMs: 60_000,
          cancelGraceMs: 1000,
          requiredLabels: ["gpu"],
          submittedAt: new Date(),
        });
        await store.jobs.claim("job_2", "rnr_" + "Q".repeat(24), new Date(), new Date(Date.now() + 60_000));
        for (const limit of [1, 3, 10]) {
          const { groups, head } = await store.jobs.listQueuedHead(limit);
          assert.deepEqual(head, await store.jobs.listQueued(0, limit), `head of ${limit}`);
          const byKey = (a: { key: { labels: string } }, b: { key: { labels: string } }) =>
            a.key.labels.localeCompare(b.key.labels);
          assert.deepEqual(groups.sort(byKey), (await store.jobs.listQueuedRequirements()).sort(byKey));
        }
        assert.deepEqual(
          (await store.jobs.listQueuedHead(10)).head.map((job) => job.id),
          ["job_4", "job_3", "job_1", "job_gpu"],
        );
      },
    );

    test(
      "leases: the holder renews them; an expired one is reaped once, and a renewal in between wins",
      TIMEOUT,
      async (t) => {
        const stores = await twoStores(engine, t);
        if (!stores) return;
        const [store, other] = stores;
        const runner = "rnr_" + "H".repeat(24);
        await submit(store, "job_a");
        await submit(store, "job_b");
        const t0 = new Date(10_000_000);
        await store.jobs.claim("job_a", runner, t0, new Date(t0.getTime() + 1000));
        await store.jobs.claim("job_b", runner, t0, new Date(t0.getTime() + 1000));
        assert.equal(await store.jobs.renewLeases(runner, new Date(t0.getTime() + 5000)), 2);
        assert.deepEqual(await store.jobs.listExpired(new Date(t0.getTime() + 4000)), []);
        const expired = await store.jobs.listExpired(new Date(t0.getTime() + 5000));
        assert.deepEqual(
          expired.map((ref) => [ref.jobId, ref.attempt, ref.runnerId]),
          [
            ["job_a", 1, runner],
            ["job_b", 1, runner],
          ],
        );
        // job_b's runner is heard from after the reaper listed it: the renewal wins.
        await store.jobs.renewLeases(runner, new Date(t0.getTime() + 60_000));
        await store.jobs.release({ jobId: "job_a", attempt: 1 }, runner, t0);
        const reaped = await Promise.all(
          expired.flatMap((ref) => [
            store.jobs.releaseExpired(ref, new Date(t0.getTime() + 6000)),
            other.jobs.releaseExpired(ref, new Date(t0.getTime() + 6000)),
          ]),
        );
        assert.deepEqual(reaped, [undefined, undefined, undefined, undefined], "nothing left to reap");
        // An expiry nobody renewed is reaped by exactly one of two reapers.
        await store.jobs.claim("job_a", runner, t0, new Date(t0.getTime() + 1000));
        const ref = { jobId: "job_a", attempt: 2 };
        const twice = await Promise.all([
          store.jobs.releaseExpired(ref, new Date(t0.getTime() + 2000)),
          other.jobs.releaseExpired(ref, new Date(t0.getTime() + 2000)),
        ]);
        assert.equal(twice.filter((job) => job !== undefined).length, 1);
        const job = await store.jobs.find("job_a");
        assert.deepEqual([job?.status, job?.attempt, job?.runnerId, job?.leaseExpiresAt], ["queued", 2, null, null]);
        assert.equal(await store.jobs.extendActiveLeases(new Date(t0.getTime() + 120_000)), 1, "job_b only");
      },
    );

    test(
      "a result applies once, for the attempt and runner that hold the job, even from two connections at once",
      TIMEOUT,
      async (t) => {
        const stores = await twoStores(engine, t);
        if (!stores) return;
        const [left, right] = stores;
        const holder = "rnr_" + "H".repeat(24);
        await submit(left, "job_r");
        const now = new Date();
        await left.jobs.claim("job_r", holder, now, later(60_000));
        assert.equal(await left.jobs.holds({ jobId: "job_r", attempt: 1 }, holder), true);
        assert.equal(await left.jobs.holds({ jobId: "job_r", attempt: 1 }, "rnr_" + "X".repeat(24)), false);
        assert.equal((await left.jobs.markRunning({ jobId: "job_r", attempt: 1 }, holder, now))?.status, "running");
        assert.equal(await left.jobs.markRunning({ jobId: "job_r", attempt: 1 }, holder, now), undefined, "once");
        assert.equal(await left.jobs.applyResult(result("job_r", 2), holder, now), undefined, "a future attempt");
        assert.equal(await left.jobs.applyResult(result("job_r", 1), "rnr_" + "X".repeat(24), now), undefined);
        const applied = await Promise.all([
          left.jobs.applyResult(result("job_r", 1), holder, now),
          right.jobs.applyResult(result("job_r", 1), holder, now),
        ]);
        assert.equal(applied.filter((job) => job !== undefined).length, 1);
        const job = await right.jobs.find("job_r");
        assert.deepEqual([job?.status, job?.result?.outcome, job?.leaseExpiresAt], ["succeeded", "succeeded", null]);
        assert.equal(await left.jobs.holds({ jobId: "job_r", attempt: 1 }, holder), false);
        assert.deepEqual(await left.jobs.listActiveForRunner(holder), []);
      },
    );

    test(
      "cancel: a queued job ends at once; a held one is marked, and released it ends cancelled",
      TIMEOUT,
      async (t) => {
        const store = await oneStore(engine, t);
        if (!store) return;
        const holder = "rnr_" + "H".repeat(24);
        await submit(store, "job_q");
        await submit(store, "job_h");
        const now = new Date();
        const queued = await store.jobs.requestCancel("job_q", now);
        assert.deepEqual([queued?.change, queued?.job.status], ["cancelled", "cancelled"]);
        assert.equal((await store.jobs.requestCancel("job_q", now))?.change, "unchanged");
        assert.equal(await store.jobs.requestCancel("job_missing", now), undefined);
        await store.jobs.claim("job_h", holder, now, later(60_000));
        const held = await store.jobs.requestCancel("job_h", now);
        assert.deepEqual([held?.change, held?.job.status, held?.job.cancelRequested], ["requested", "assigned", true]);
        assert.equal((await store.jobs.requestCancel("job_h", now))?.change, "unchanged");
        const released = await store.jobs.release({ jobId: "job_h", attempt: 1 }, holder, now);
        assert.deepEqual([released?.status, released?.runnerId], ["cancelled", holder]);
        assert.equal(await store.jobs.claim("job_h", holder, now, later(60_000)), undefined);
      },
    );

    test(
      "logs: a chunk is kept once per attempt and seq, only from the holder, and comes back as sent",
      TIMEOUT,
      async (t) => {
        const store = await oneStore(engine, t);
        if (!store) return;
        const holder = "rnr_" + "H".repeat(24);
        await submit(store, "job_l");
        await store.jobs.claim("job_l", holder, new Date(), later(60_000));
        const ref = { jobId: "job_l", attempt: 1 };
        const odd = "tab\t, NUL \u0000, emoji \u{1F600}, quote ' and ?";
        const insert = (chunk: { seq: number; stream?: "stdout" | "stderr"; data: string }, who = holder, at = ref) =>
          store.jobs.insertLog(at, who, { stream: "stdout", ...chunk }, LOG_LIMITS);
        assert.equal(await insert({ seq: 1, stream: "stderr", data: "second" }), "stored");
        assert.equal(await insert({ seq: 0, data: odd }), "stored");
        assert.equal(await insert({ seq: 0, data: "repeat" }), "repeat");
        assert.equal(await insert({ seq: 2, data: "x" }, "rnr_" + "X".repeat(24)), "not_held");
        assert.equal(await insert({ seq: 2, data: "x" }, holder, { ...ref, attempt: 2 }), "not_held");
        assert.equal(await insert({ seq: 2 ** 40, data: "big seq" }), "stored");
        assert.deepEqual(await store.jobs.listLogs("job_l"), [
          { attempt: 1, seq: 0, stream: "stdout", data: odd },
          { attempt: 1, seq: 1, stream: "stderr", data: "second" },
          { attempt: 1, seq: 2 ** 40, stream: "stdout", data: "big seq" },
        ]);
      },
    );

    test(
      "logs: an attempt stores chunks up to its byte cap and seq range, and nothing after its result",
      TIMEOUT,
      async (t) => {
        const store = await oneStore(engine, t);
        if (!store) return;
        const holder = "rnr_" + "C".repeat(24);
        await submit(store, "job_c");
        await store.jobs.claim("job_c", holder, new Date(), later(60_000));
        const ref = { jobId: "job_c", attempt: 1 };
        const limits = { maxBytes: 10, maxChunks: 4 };
        const insert = (seq: number, data: string) =>
          store.jobs.insertLog(ref, holder, { seq, stream: "stdout", data }, limits);
        assert.equal(await insert(4, "x"), "seq_out_of_range", "seq is below maxChunks");
        assert.equal(await insert(0, "é".repeat(4)), "stored", "8 UTF-8 bytes");
        assert.equal(await insert(1, "abc"), "limit_reached", "8 + 3 bytes is over 10");
        assert.equal(await insert(1, "ab"), "stored", "exactly 10 bytes");
        assert.equal(await insert(2, ""), "stored", "an empty chunk adds no bytes");
        assert.equal(await insert(3, "z"), "limit_reached");
        assert.equal(await insert(1, "ab"), "repeat", "a repeat at the cap is still a repeat");
        await store.jobs.applyResult(result("job_c", 1), holder, new Date());
        assert.equal(await insert(3, ""), "finished", "after the result nothing is stored");
        assert.deepEqual(
          (await store.jobs.listLogs("job_c")).map((chunk) => [chunk.seq, chunk.data]),
          [
            [0, "éééé"],
            [1, "ab"],
            [2, ""],
          ],
        );
        // A new attempt has its own budget.
        await submit(store, "job_d");
        await store.jobs.claim("job_d", holder, new Date(), later(60_000));
        assert.equal(
          await store.jobs.insertLog(
            { jobId: "job_d", attempt: 1 },
            holder,
            { seq: 0, stream: "stdout", data: "x".repeat(10) },
            limits,
          ),
          "stored",
        );
      },
    );

    test(
      "devices: a runner holds at most its cap of rows; removed ones make room, an empty snapshot deletes them all",
      TIMEOUT,
      async (t) => {
        const store = await oneStore(engine, t);
        if (!store) return;
        const id = await registered(store, "cap");
        const ids = (from: number, to: number) => Array.from({ length: to - from }, (_, i) => `usb:${from + i}`);
        const rows = async () => (await store.devices.list({ runnerId: id })).length;
        const first = batch({ upserts: ids(0, 3).map((n) => device(n)) });
        assert.deepEqual(await store.devices.applyBatch(id, first, new Date(1000), 3), {
          upserted: 3,
          removed: 0,
          missing: 0,
        });
        const over = batch({ batchId: "b2", upserts: [device("usb:3")] });
        assert.deepEqual(await store.devices.applyBatch(id, over, new Date(2000), 3), {
          upserted: 0,
          removed: 0,
          missing: 0,
          refusedRows: 4,
        });
        assert.deepEqual(
          (await store.devices.list({ runnerId: id })).map((row) => row.id),
          ["usb:0", "usb:1", "usb:2"],
          "nothing of a refused batch is applied",
        );
        await store.devices.applyBatch(id, batch({ batchId: "b3", removals: ["usb:0"] }), new Date(3000), 3);
        assert.equal((await store.devices.applyBatch(id, over, new Date(4000), 3)).refusedRows, undefined);
        assert.deepEqual(
          (await store.devices.list({ runnerId: id })).map((row) => row.id),
          ["usb:1", "usb:2", "usb:3"],
          "the removed device's row made room",
        );
        const empty = batch({ batchId: "b4", snapshotId: "s-empty", upserts: [] });
        assert.deepEqual(await store.devices.applyBatch(id, empty, new Date(5000), 3), {
          upserted: 0,
          removed: 0,
          missing: 3,
        });
        assert.equal(await rows(), 0, "an empty snapshot leaves no rows");
      },
    );

    test(
      "pages: jobs, runners, devices and logs continue after a cursor, in order, within the limit",
      TIMEOUT,
      async (t) => {
        const store = await oneStore(engine, t);
        if (!store) return;
        for (const n of [1, 2, 3, 4, 5]) await submit(store, `job_${n}`);
        assert.deepEqual(
          (await store.jobs.list(undefined, { afterId: "job_2", limit: 2 })).map((job) => job.id),
          ["job_3", "job_4"],
        );
        assert.deepEqual(
          (await store.jobs.list("queued", { limit: 2 })).map((job) => job.id),
          ["job_1", "job_2"],
        );
        const ids = [await registered(store, "pa"), await registered(store, "pb"), await registered(store, "pc")];
        assert.deepEqual(
          (await store.listRunners({ afterName: "pa", limit: 1 })).map((runner) => runner.name),
          ["pb"],
        );
        const [left, right] = [...ids].sort() as [string, string];
        for (const id of [left, right])
          await store.devices.applyBatch(id, batch({ upserts: [device("a:1"), device("b:2")] }), new Date(), MAX_ROWS);
        assert.deepEqual(
          (await store.devices.list({}, { after: { runnerId: left, deviceId: "b:2" }, limit: 3 })).map((row) => [
            row.runnerId,
            row.id,
          ]),
          [
            [right, "a:1"],
            [right, "b:2"],
          ],
        );
        const holder = ids[0]!;
        await store.jobs.claim("job_1", holder, new Date(), later(60_000));
        for (const seq of [0, 1, 2, 3])
          await store.jobs.insertLog(
            { jobId: "job_1", attempt: 1 },
            holder,
            { seq, stream: "stdout", data: `${seq}` },
            LOG_LIMITS,
          );
        assert.deepEqual(
          (await store.jobs.listLogs("job_1", { after: { attempt: 1, seq: 1 }, limit: 5 })).map((chunk) => chunk.seq),
          [2, 3],
        );
        assert.deepEqual(
          (await store.jobs.listLogs("job_1", { limit: 1 })).map((chunk) => chunk.seq),
          [0],
        );
      },
    );

    test(
      "registration tokens: usable until used or expired, and checking one does not consume it",
      TIMEOUT,
      async (t) => {
        const store = await oneStore(engine, t);
        if (!store) return;
        const hash = createHash("sha256").update("usable").digest("hex");
        const now = new Date();
        assert.equal(await store.registrationTokenUsable(hash, now), false, "unknown");
        await store.insertRegistrationToken({
          id: "rgi_" + "U".repeat(24),
          tokenHash: hash,
          createdAt: now,
          expiresAt: later(60_000),
        });
        assert.equal(await store.registrationTokenUsable(hash, now), true);
        assert.equal(await store.registrationTokenUsable(hash, now), true, "still usable: checking consumed nothing");
        assert.equal(await store.registrationTokenUsable(hash, later(120_000)), false, "expired");
        const outcome = await store.registerRunner({
          tokenHash: hash,
          runner: newRunner("usable"),
          replace: false,
          now,
        });
        assert.equal(outcome.outcome, "registered");
        assert.equal(await store.registrationTokenUsable(hash, now), false, "used");
      },
    );

    test(
      "devices: a batch applies idempotently, a full snapshot marks the missing offline, stale rows match no job",
      TIMEOUT,
      async (t) => {
        const store = await oneStore(engine, t);
        if (!store) return;
        const id = await registered(store, "d");
        const first = batch({ upserts: [device("usb:1"), device("gpu:0", { kind: "gpu", stale: true })] });
        assert.deepEqual(await store.devices.applyBatch(id, first, new Date(1000), MAX_ROWS), {
          upserted: 2,
          removed: 0,
          missing: 0,
        });
        const again = await store.devices.applyBatch(id, first, new Date(2000), MAX_ROWS);
        assert.deepEqual(again, { upserted: 2, removed: 0, missing: 0 });
        const rows = await store.devices.list({ runnerId: id });
        assert.deepEqual(
          rows.map((row) => [row.id, row.updatedAt.getTime(), row.lastSeenAt.getTime()]),
          [
            ["gpu:0", 1000, 2000],
            ["usb:1", 1000, 2000],
          ],
          "an unchanged row keeps its updatedAt",
        );
        const summary = await store.devices.summarize(id);
        assert.equal(summary.count, 2);
        assert.equal(await store.devices.hasOnlineDevice(id, { kind: "usb" }), true);
        assert.equal(await store.devices.hasOnlineDevice(id, { kind: "gpu" }), false, "stale");
        assert.equal(await store.devices.hasOnlineDevice(id, { id: "usb:1", kind: "usb" }), true);
        assert.equal(await store.devices.hasOnlineDevice(id, { id: "usb:2" }), false);
        const snapshot = batch({ batchId: "b2", snapshotId: "s1", upserts: [device("usb:1")] });
        assert.deepEqual(await store.devices.applyBatch(id, snapshot, new Date(3000), MAX_ROWS), {
          upserted: 1,
          removed: 0,
          missing: 1,
        });
        const gpu = (await store.devices.list({ kind: "gpu" }))[0];
        assert.deepEqual([gpu?.present, gpu?.state], [false, "offline"]);
        assert.deepEqual(
          (await store.devices.list({ state: "online" })).map((row) => row.id),
          ["usb:1"],
        );
        assert.deepEqual(
          await store.devices.applyBatch(
            id,
            batch({ batchId: "b3", removals: ["usb:1", "usb:9"] }),
            new Date(4000),
            MAX_ROWS,
          ),
          {
            upserted: 0,
            removed: 1,
            missing: 0,
          },
        );
        assert.equal((await store.devices.summarize(id)).count, 0);
        await store.devices.touchPresent(id, new Date(5000));
      },
    );
  });
}

describe("choosing and opening a store", () => {
  test("a database URL that is not postgres:// is refused, and so is a data dir beside one", TIMEOUT, async () => {
    await assert.rejects(openStore({ databaseUrl: "mysql://x/y" }), (error: RunnerError) => error.code === "usage");
    await assert.rejects(
      openStore({ databaseUrl: "postgres://127.0.0.1/x", dataDir: "/tmp/nowhere" }),
      (error: RunnerError) => error.code === "usage",
    );
  });

  test(
    "an unreachable PostgreSQL is database_unavailable, and the error never shows the password",
    TIMEOUT,
    async () => {
      // Port 1 on loopback: nothing listens there.
      await assert.rejects(
        openStore({ databaseUrl: "postgres://runner:s3cret-pw@127.0.0.1:1/runner" }),
        (error: RunnerError) => {
          assert.equal(error.code, "database_unavailable");
          assert.match(error.message, /postgres:\/\/127\.0\.0\.1:1\/runner/);
          assert.doesNotMatch(`${error.message} ${error.hint ?? ""}`, /s3cret/);
          return true;
        },
      );
    },
  );

  test("the SQLite file and its -wal and -shm are 0600, even in a 0755 directory", TIMEOUT, async (t) => {
    const dir = mkdtempSync(join(tmpdir(), "runner-store-"));
    onCleanup(t, () => rmSync(dir, { recursive: true, force: true }));
    const { chmodSync } = await import("node:fs");
    chmodSync(dir, 0o755);
    const store = openSqliteStore(dir);
    onCleanup(t, () => store.close());
    await store.setSetting("k", "v");
    for (const name of [DATABASE_FILE, `${DATABASE_FILE}-wal`, `${DATABASE_FILE}-shm`]) {
      assert.equal(statSync(join(dir, name)).mode & 0o777, 0o600, name);
    }
  });
});

describe("runner control-plane --database", () => {
  test("a password in --database is refused with exit 2, and the password is echoed nowhere", TIMEOUT, async () => {
    const result = await runCli(["control-plane", "--database", "postgres://runner:hunter2-pw@127.0.0.1:1/runner"], {
      env: { RUNNER_CP_DATABASE: undefined },
    });
    assert.equal(result.code, 2, result.all);
    assert.match(result.all, /RUNNER_CP_DATABASE/);
    assert.doesNotMatch(result.all, /hunter2/);
  });

  test("--data and --database together exit 2", TIMEOUT, async (t) => {
    const dir = mkdtempSync(join(tmpdir(), "runner-store-"));
    onCleanup(t, () => rmSync(dir, { recursive: true, force: true }));
    const result = await runCli(["control-plane", "--data", dir, "--database", "postgres://runner@127.0.0.1:1/x"]);
    assert.equal(result.code, 2, result.all);
    assert.match(result.all, /exclude each other/);
  });

  test("RUNNER_CP_DATABASE naming an unreachable PostgreSQL exits 69, without its password", TIMEOUT, async () => {
    const result = await runCli(["control-plane"], {
      env: { RUNNER_CP_DATABASE: "postgres://runner:hunter2-pw@127.0.0.1:1/runner" },
    });
    assert.equal(result.code, 69, result.all);
    assert.match(result.all, /postgres:\/\/127\.0\.0\.1:1\/runner/);
    assert.doesNotMatch(result.all, /hunter2/);
  });
});
