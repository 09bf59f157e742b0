// Dispatch work is proportional to what can match, not to the queue: one runner sends 200
// `ready` frames while 5,000 jobs it cannot take (a label it lacks) are queued, and the
// control plane keeps answering /health about as fast as when idle. Before, every `ready`
// could rescan the whole queue and the server froze for seconds. Bounded: 5,000 jobs, 200
// frames, one runner, on loopback; the bound is relative to an idle baseline taken in the
// same run, with a generous floor for a loaded 2-core machine.
import { after, describe, test, type TestContext } from "node:test";
import assert from "node:assert/strict";
import { startControlPlane, type ControlPlane } from "../../src/control-plane/control-plane.js";
import { AdminClient } from "../../src/api-client/admin.js";
import { createLogger } from "../../src/log/logger.js";
import { RawRunner, registerRawRunner } from "../helpers/raw-runner.js";
import { requirePostgres, startPostgresCluster, type PostgresCluster } from "../helpers/postgres.js";
import { onCleanup } from "../helpers/cleanup.js";

const TIMEOUT = { timeout: 120_000 };
const ADMIN_TOKEN = "adm_dispatch-load-admin-token-0123456789";
const UNMATCHED_JOBS = 5000;
const READY_FRAMES = 200;

let cluster: Promise<PostgresCluster> | undefined;
after(async () => (await cluster)?.stop());

async function healthMs(url: string): Promise<number> {
  const started = performance.now();
  const response = await fetch(`${url}/api/v1/health`);
  assert.equal(response.status, 200);
  await response.arrayBuffer();
  return performance.now() - started;
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)]!;
}

async function runLoad(t: TestContext, cp: ControlPlane): Promise<void> {
  onCleanup(t, () => cp.close());
  const admin = new AdminClient(cp.url, ADMIN_TOKEN);
  const identity = await registerRawRunner(cp.url, admin, "busy", ["linux"]);

  // The queue: jobs that need a label this runner lacks, written straight to the store (fast, bounded).
  for (let i = 0; i < UNMATCHED_JOBS; i++) {
    await cp.store.jobs.insert({
      id: `job_unmatched${String(i).padStart(12, "0")}`,
      spec: { kind: "command", argv: ["true"], env: {} },
      timeoutMs: 60_000,
      cancelGraceMs: 1000,
      requiredLabels: ["gpu"],
      submittedAt: new Date(),
    });
  }

  const idle: number[] = [];
  for (let i = 0; i < 20; i++) idle.push(await healthMs(cp.url));
  const baseline = median(idle);

  const runner = await RawRunner.connect(t, cp.url, identity);
  await runner.hello({ capacity: READY_FRAMES });

  // The load: 200 `ready` frames, then a second hello, whose `error` answer says every frame
  // before it was handled (a connection's frames are handled in order).
  for (let i = 0; i < READY_FRAMES; i++) runner.send({ type: "ready", slots: 1 });
  runner.sendHello({ capacity: READY_FRAMES });
  const loaded: number[] = [];
  let handled = false;
  // Kept, not left to float: a wrong answer or its timeout fails the test here, not at its own timeout.
  const answered = runner.next("error", 60_000).then((error) => {
    handled = true;
    return error;
  });
  answered.catch(() => (handled = true));
  // /health while the frames are handled, and as many times again after: the passes they asked for run then.
  while (!handled) loaded.push(await healthMs(cp.url));
  assert.equal((await answered).code, "unexpected_hello");
  for (let i = 0; i < 20; i++) loaded.push(await healthMs(cp.url));

  const worst = Math.max(...loaded);
  const bound = Math.max(250, baseline * 50);
  assert.ok(
    worst < bound,
    `/health took up to ${worst.toFixed(1)} ms under the load (idle median ${baseline.toFixed(2)} ms; bound ${bound.toFixed(0)} ms)`,
  );
  t.diagnostic(
    `/health idle median ${baseline.toFixed(2)} ms; under load worst ${worst.toFixed(1)} ms, ${loaded.length} requests`,
  );
  assert.ok(!runner.received.some((m) => m.type === "assign"), "no unmatched job was assigned");

  // The runner still gets a job it can take, at once, behind the 5,000 it cannot.
  const { job } = await admin.submitJob({
    job: { kind: "command", argv: ["true"], env: {} },
    requiredLabels: ["linux"],
  });
  assert.equal((await runner.next("assign")).jobId, job.jobId);
}

describe("dispatch under 200 ready frames with 5,000 unmatched jobs queued", () => {
  test("/health stays fast on SQLite", TIMEOUT, async (t) => {
    const cp = await startControlPlane({ adminToken: ADMIN_TOKEN, logger: createLogger({ level: "silent" }) });
    await runLoad(t, cp);
  });

  test("/health stays fast on PostgreSQL", TIMEOUT, async (t) => {
    if (!requirePostgres(t)) return;
    const databaseUrl = await (await (cluster ??= startPostgresCluster())).createDatabase();
    const cp = await startControlPlane({
      adminToken: ADMIN_TOKEN,
      databaseUrl,
      logger: createLogger({ level: "silent" }),
    });
    await runLoad(t, cp);
  });
});
