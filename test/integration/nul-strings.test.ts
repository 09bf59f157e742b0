// The NUL character (U+0000) in what a runner or an admin sends: PostgreSQL's TEXT cannot hold
// it (SQLite can), so each field the control plane keeps as text or looks up refuses it at the
// schema with the protocol's error for invalid input, on both engines alike; the fields kept as
// bytes (log chunks) or inside JSON (a module job's payload) keep it as sent. The server keeps
// serving and /health stays up (PROTOCOL.md, "Strings and the NUL character").
import { after, before, describe, test, type TestContext } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  startControlPlane,
  type ControlPlane,
  type ControlPlaneOptions,
} from "../../src/control-plane/control-plane.js";
import { AdminClient } from "../../src/api-client/admin.js";
import { createLogger } from "../../src/log/logger.js";
import { errorBodySchema } from "../../src/protocol/http.js";
import {
  postgresUnavailableReason,
  requirePostgres,
  startPostgresCluster,
  type PostgresCluster,
} from "../helpers/postgres.js";
import { RawRunner, registerRawRunner } from "../helpers/raw-runner.js";
import { onCleanup } from "../helpers/cleanup.js";

const ADMIN_TOKEN = "adm_nul-strings-test-admin-token-0123";
const NUL = "\u0000";

let cluster: PostgresCluster | undefined;
before(async () => {
  if (postgresUnavailableReason() === undefined) cluster = await startPostgresCluster();
});
after(() => cluster?.stop());

interface Engine {
  name: string;
  /** Options for a control plane on a fresh store; undefined when the test was skipped. */
  store(t: TestContext): Promise<ControlPlaneOptions | undefined>;
}

const engines: Engine[] = [
  {
    name: "SQLite",
    async store(t) {
      const dataDir = mkdtempSync(join(tmpdir(), "runner-nul-"));
      onCleanup(t, () => rmSync(dataDir, { recursive: true, force: true }));
      return { dataDir };
    },
  },
  {
    name: "PostgreSQL",
    async store(t) {
      if (!requirePostgres(t) || !cluster) return undefined;
      return { databaseUrl: await cluster.createDatabase() };
    },
  },
];

async function start(t: TestContext, engine: Engine): Promise<{ cp: ControlPlane; admin: AdminClient } | undefined> {
  const store = await engine.store(t);
  if (!store) return undefined;
  const cp = await startControlPlane({ logger: createLogger({ level: "silent" }), adminToken: ADMIN_TOKEN, ...store });
  onCleanup(t, () => cp.close());
  return { cp, admin: new AdminClient(cp.url, ADMIN_TOKEN) };
}

/** A control plane and a runner connected to it, past its welcome. */
async function startWithRunner(t: TestContext, engine: Engine, name: string) {
  const plane = await start(t, engine);
  if (!plane) return undefined;
  const runner = await RawRunner.connect(t, plane.cp.url, await registerRawRunner(plane.cp.url, plane.admin, name));
  await runner.hello();
  return { ...plane, runner };
}

/** An admin request by hand (the client would refuse some of these itself): status and error code. */
async function adminCall(cp: ControlPlane, method: string, path: string, body?: unknown) {
  const response = await fetch(`${cp.url}/api/v1/admin${path}`, {
    method,
    headers: { authorization: `Bearer ${ADMIN_TOKEN}`, "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  const error = errorBodySchema.safeParse(JSON.parse(text || "{}"));
  return { status: response.status, code: error.success ? error.data.error.code : undefined, text };
}

async function healthy(cp: ControlPlane): Promise<void> {
  const response = await fetch(`${cp.url}/api/v1/health`);
  assert.equal(response.status, 200, "/health stays up");
}

for (const engine of engines) {
  describe(`U+0000 on ${engine.name}`, () => {
    test(
      "an admin's pause reason, job id or list cursor with a NUL is refused as bad input",
      { timeout: 60_000 },
      async (t) => {
        const plane = await start(t, engine);
        if (!plane) return;
        const { cp, admin } = plane;
        const identity = await registerRawRunner(cp.url, admin, "paused");
        const pause = await adminCall(cp, "POST", `/runners/${identity.runnerId}/pause`, { reason: `a${NUL}b` });
        assert.deepEqual([pause.status, pause.code], [400, "bad_request"], pause.text);
        assert.match(pause.text, /must not contain a NUL character/);
        const job = await adminCall(cp, "GET", `/jobs/job_${encodeURIComponent(NUL)}x`);
        assert.deepEqual([job.status, job.code], [404, "not_found"], job.text);
        const cursor = Buffer.from(JSON.stringify(`job_${NUL}`)).toString("base64url");
        const list = await adminCall(cp, "GET", `/jobs?after=${cursor}`);
        assert.deepEqual([list.status, list.code], [400, "bad_request"], list.text);
        await admin.pauseRunner(identity.runnerId, "still works");
        await healthy(cp);
      },
    );

    test(
      "a runner's job id, device name or attribute, or batch id with a NUL gets the documented answer, not internal",
      { timeout: 60_000 },
      async (t) => {
        const plane = await startWithRunner(t, engine, "sender");
        if (!plane) return;
        const { cp, admin, runner } = plane;
        for (const type of ["accept", "started"] as const) {
          runner.send(JSON.stringify({ type, jobId: `job_${NUL}`, attempt: 1, startedAt: new Date().toISOString() }));
          const error = await runner.next("error");
          assert.equal(error.code, "invalid", `${type}: ${error.message}`);
          assert.match(error.message, /must not contain a NUL character/);
        }
        const device = (name: string, attributes: Record<string, string>) => ({
          id: "usb-1",
          kind: "usb",
          name,
          state: "online",
          attributes,
          fingerprint: "fingerprint-1",
        });
        runner.send(JSON.stringify({ type: "devices_summary", batchId: `s${NUL}`, count: 0, digest: "0".repeat(64) }));
        assert.equal((await runner.next("error")).code, "invalid");
        const batches = [
          { batchId: "b1", upserts: [device(`phone${NUL}`, {})], removals: [] },
          { batchId: "b2", upserts: [device("phone", { [`k${NUL}`]: "v" })], removals: [] },
          { batchId: "b3", upserts: [device("phone", { k: `v${NUL}` })], removals: [] },
          { batchId: "b4", snapshotId: `snap${NUL}`, last: true, upserts: [device("phone", {})], removals: [] },
        ];
        for (const batch of batches) {
          runner.send(JSON.stringify({ type: "devices", ...batch }));
          const answer = await runner.nextOf(["devices_ack", "devices_resync", "error"]);
          assert.notEqual(answer.type === "error" && answer.code, "internal", JSON.stringify(answer));
        }
        assert.ok(!runner.received.some((m) => m.type === "error" && m.code === "internal"), "no internal error");
        assert.deepEqual(await admin.listDevices(), [], "no row with a NUL was stored");
        await healthy(cp);
      },
    );

    test(
      "log chunks, a module job's payload and a result's reason keep a NUL as sent",
      { timeout: 60_000 },
      async (t) => {
        const plane = await startWithRunner(t, engine, "logger");
        if (!plane) return;
        const { cp, admin, runner } = plane;
        runner.ready(1);
        const payload = { text: `a${NUL}b`, [`key${NUL}`]: 1 };
        const {
          job: { jobId },
        } = await admin.submitJob({ job: { kind: "module", handler: "echo", payload } });
        const assign = await runner.next("assign");
        assert.deepEqual(assign.job, { kind: "module", handler: "echo", payload });
        const ref = { jobId, attempt: assign.attempt };
        runner.send({ type: "accept", ...ref });
        runner.send({ type: "log", ...ref, seq: 0, stream: "stdout", data: `out${NUL}put\n` });
        const at = new Date().toISOString();
        const result = {
          ...ref,
          outcome: "failed" as const,
          exitCode: 1,
          signal: null,
          reason: `died${NUL}`,
          startedAt: at,
          finishedAt: at,
        };
        runner.send({ type: "result", result });
        assert.equal((await runner.next("result_ack")).applied, true);
        const stored = await admin.getJob(jobId);
        assert.deepEqual(
          stored.logs.map((chunk) => chunk.data),
          [`out${NUL}put\n`],
        );
        assert.deepEqual(stored.job.job, { kind: "module", handler: "echo", payload });
        assert.equal(stored.job.result?.reason, `died${NUL}`);
        await healthy(cp);
      },
    );
  });
}
