// The reference control plane's WebSocket channel, job queue, leases and reaper, driven by a
// RAW `ws` client over loopback (no agent code): what any implementation of the runner side
// would see. Timings are small (heartbeat 200 ms) so that each test stays well under a second
// or two; every wait has its own timeout.
import { after, test, describe, type TestContext } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import net from "node:net";
import { Writable } from "node:stream";
import WebSocket from "ws";
import {
  startControlPlane,
  type ControlPlane,
  type ControlPlaneOptions,
  type JobEvent,
  type RunnerEvent,
} from "../../src/control-plane/control-plane.js";
import { AdminClient, AdminRequestError } from "../../src/api-client/admin.js";
import { createLogger } from "../../src/log/logger.js";
import {
  AGENT_VERSION_HEADER,
  PROTOCOL_HEADER,
  RUNNER_ID_HEADER,
  type ControlMessage,
  type JobResult,
  type RunnerMessage,
} from "../../src/protocol/channel.js";
import { errorBodySchema, type JobView, type SubmitJobRequest } from "../../src/protocol/http.js";
import { AGENT_VERSION, PROTOCOL_VERSION } from "../../src/protocol/version.js";
import { initialSyncState, stepSync, type SyncInput } from "../../src/devices/sync.js";
import { startPostgresCluster, type PostgresCluster } from "../helpers/postgres.js";
import { channelHeaders, channelUrl, finishedResult } from "../helpers/channel-fixtures.js";
import { RawRunner, registerRawRunner, type HelloOptions, type Identity } from "../helpers/raw-runner.js";
import { onCleanup } from "../helpers/cleanup.js";

const TIMEOUT = { timeout: 10_000 };
const HEARTBEAT_MS = 200;
const ADMIN_TOKEN = "adm_channel-test-admin-token-0123456789";

// ---- harness ----

/** Sends `text` on a raw socket and resolves with everything received once the server closed it. */
function rawExchange(t: TestContext, url: string, text: string): Promise<string> {
  const { hostname, port } = new URL(url);
  const socket = net.connect(Number(port), hostname, () => socket.write(text));
  onCleanup(t, () => socket.destroy());
  let received = "";
  socket.on("data", (data: Buffer) => (received += data.toString("utf8")));
  socket.on("error", () => undefined); // a reset after the answer is a close like any other here
  return new Promise((resolve) => socket.once("close", () => resolve(received)));
}

interface Harness {
  t: TestContext;
  cp: ControlPlane;
  admin: AdminClient;
  events: JobEvent[];
  runnerEvents: RunnerEvent[];
  logLines: string[];
}

/**
 * RUNNER_TEST_CP_ENGINE=postgres runs this file's control planes on PostgreSQL (a throw-away
 * cluster, one database per control plane), except those given a data dir: the whole channel
 * suite then checks the PostgreSQL engine too (the store's own contract suite runs on both
 * engines always).
 */
const ON_POSTGRES = process.env.RUNNER_TEST_CP_ENGINE === "postgres";
let cluster: Promise<PostgresCluster> | undefined;
after(async () => (await cluster)?.stop());

async function startHarness(t: TestContext, options: ControlPlaneOptions = {}): Promise<Harness> {
  if (ON_POSTGRES && options.dataDir === undefined)
    options = { ...options, databaseUrl: await (cluster ??= startPostgresCluster()).then((c) => c.createDatabase()) };
  const logLines: string[] = [];
  const destination = new Writable({
    write(chunk: Buffer, _encoding, done) {
      logLines.push(chunk.toString("utf8"));
      done();
    },
  });
  const cp = await startControlPlane({
    logger: createLogger({ level: "debug", destination }),
    adminToken: ADMIN_TOKEN,
    heartbeatIntervalMs: HEARTBEAT_MS,
    reaperIntervalMs: 20,
    ...options,
  });
  onCleanup(t, () => cp.close());
  const events: JobEvent[] = [];
  const runnerEvents: RunnerEvent[] = [];
  cp.events.on("job", (event: JobEvent) => events.push(event));
  cp.events.on("runner", (event: RunnerEvent) => runnerEvents.push(event));
  return { t, cp, admin: new AdminClient(cp.url, ADMIN_TOKEN), events, runnerEvents, logLines };
}

function makeTempDir(t: TestContext): string {
  const dir = mkdtempSync(join(tmpdir(), "runner-cp-channel-"));
  onCleanup(t, () => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

function registerRunner(h: Harness, name: string, labels: string[] = ["linux"], replace = false): Promise<Identity> {
  return registerRawRunner(h.cp.url, h.admin, name, labels, replace);
}

/** Connects `identity` to `h`'s control plane, pinging like an agent unless `pingMs` is false. */
function connect(h: Harness, identity: Identity, pingMs: number | false = HEARTBEAT_MS / 4): Promise<RawRunner> {
  return RawRunner.connect(h.t, h.cp.url, identity, pingMs, { waitMs: 2000 });
}

async function connected(h: Harness, identity: Identity, hello: HelloOptions = {}): Promise<RawRunner> {
  const runner = await connect(h, identity);
  await runner.hello(hello);
  return runner;
}

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Polls until `check` returns a value (not undefined/false), or fails after `timeoutMs`. */
async function waitFor<T>(
  what: string,
  check: () => T | undefined | false | Promise<T | undefined | false>,
  timeoutMs = 3000,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value !== undefined && value !== false) return value;
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}`);
    await delay(10);
  }
}

function waitForEvent(h: Harness, jobId: string, status: JobEvent["status"], attempt?: number): Promise<JobEvent> {
  return waitFor(`${status} of ${jobId}`, () =>
    h.events.find((e) => e.jobId === jobId && e.status === status && (attempt === undefined || e.attempt === attempt)),
  );
}

function commandJob(...argv: string[]): SubmitJobRequest {
  return { job: { kind: "command", argv: argv.length > 0 ? argv : ["true"], env: {} } };
}

async function submit(h: Harness, request: SubmitJobRequest = commandJob()): Promise<JobView> {
  return (await h.admin.submitJob(request)).job;
}

async function jobOf(h: Harness, jobId: string): Promise<JobView> {
  return (await h.admin.getJob(jobId)).job;
}

interface Refusal {
  status: number;
  code: string;
  message: string;
}

/** Opens a channel expecting the upgrade to be refused; returns the HTTP status and error body. */
function refusedUpgrade(url: string, headers: Record<string, string>): Promise<Refusal> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { headers });
    ws.on("error", () => undefined); // after the refusal the aborted request may report an error
    ws.once("open", () => {
      ws.close();
      reject(new Error("the upgrade was accepted"));
    });
    ws.once("unexpected-response", (req, res) => {
      let text = "";
      res.setEncoding("utf8");
      res.on("data", (chunk: string) => (text += chunk));
      res.on("end", () => {
        const body = errorBodySchema.parse(JSON.parse(text));
        assert.match(String(res.headers["content-type"]), /application\/json/);
        resolve({ status: res.statusCode ?? 0, code: body.error.code, message: body.error.message });
        req.destroy();
      });
    });
  });
}

// ---- tests ----

describe("channel upgrade", () => {
  test("is refused before the upgrade, with the protocol's status and JSON error body", TIMEOUT, async (t) => {
    const h = await startHarness(t, { minAgentVersion: "0.1.0" });
    const runner = await registerRunner(h, "upgrader");
    const other = await registerRunner(h, "other");
    const url = channelUrl(h.cp.url);
    const headers = channelHeaders(runner);
    const without = (name: string) => Object.fromEntries(Object.entries(headers).filter(([key]) => key !== name));

    const cases: [string, string, Record<string, string>, number, string][] = [
      ["no credential", url, without("authorization"), 401, "unauthorized"],
      [
        "another runner's credential",
        url,
        { ...headers, authorization: `Bearer ${other.credential}` },
        401,
        "unauthorized",
      ],
      ["unknown runner", url, { ...headers, [RUNNER_ID_HEADER]: "rnr_" + "Z".repeat(24) }, 404, "runner_not_found"],
      [
        "unsupported protocol",
        url,
        { ...headers, [PROTOCOL_HEADER]: String(PROTOCOL_VERSION + 1) },
        426,
        "upgrade_required",
      ],
      ["agent too old", url, { ...headers, [AGENT_VERSION_HEADER]: "0.0.9" }, 426, "upgrade_required"],
      ["no protocol header", url, without(PROTOCOL_HEADER), 400, "bad_request"],
      ["no runner id", url, without(RUNNER_ID_HEADER), 400, "bad_request"],
      ["another path", url.replace("/channel", "/channels"), headers, 404, "not_found"],
    ];
    for (const [what, target, sent, status, code] of cases) {
      const refusal = await refusedUpgrade(target, sent);
      assert.deepEqual([refusal.status, refusal.code], [status, code], what);
      assert.ok(refusal.message.length > 0);
    }

    await h.admin.revokeRunner(runner.runnerId);
    const revoked = await refusedUpgrade(url, headers);
    assert.deepEqual([revoked.status, revoked.code], [401, "credential_revoked"]);

    // Refusals cost nothing: the server still answers HTTP and upgrades.
    assert.equal((await fetch(`${h.cp.url}/api/v1/health`)).status, 200);
    const ok = await connected(h, other);
    await ok.close();
  });

  test(
    "an upgrade that is not a WebSocket handshake gets the protocol's JSON error, before its credentials are checked",
    TIMEOUT,
    async (t) => {
      const h = await startHarness(t);
      const key = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==";
      const cases: [string, string, number, string][] = [
        ["POST", `Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n${key}`, 405, "not_found"],
        ["GET", "Upgrade: h2c\r\nConnection: Upgrade", 400, "bad_request"],
        ["GET", "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13", 400, "bad_request"],
        ["GET", `Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 7\r\n${key}`, 400, "bad_request"],
      ];
      for (const [method, headers, status, code] of cases) {
        // No credentials at all: the request is refused for what it is, not for who sent it.
        const answer = await rawExchange(
          t,
          h.cp.url,
          `${method} /api/v1/channel HTTP/1.1\r\nHost: x\r\n${headers}\r\nContent-Length: 0\r\n\r\n`,
        );
        const what = `${method} ${headers}`;
        assert.equal(Number(answer.slice(9, 12)), status, what);
        assert.match(answer, /\r\ncontent-type: application\/json/i, what);
        const body = errorBodySchema.parse(JSON.parse(answer.slice(answer.indexOf("\r\n\r\n") + 4)));
        assert.equal(body.error.code, code, what);
        if (status === 405) assert.match(answer, /\r\nAllow: GET\r\n/, what);
      }
      assert.equal((await fetch(`${h.cp.url}/api/v1/health`)).status, 200);
    },
  );

  test(
    "hello gets welcome with the announced timings; the runner is marked seen and reported connected",
    TIMEOUT,
    async (t) => {
      const h = await startHarness(t, { leaseMs: 30_000, maxFrameBytes: 64 * 1024 });
      const identity = await registerRunner(h, "greeter");
      const before = Date.now();
      const runner = await connect(h, identity);
      const welcome = await runner.hello();
      assert.deepEqual(welcome, {
        type: "welcome",
        protocolVersion: PROTOCOL_VERSION,
        heartbeatIntervalMs: HEARTBEAT_MS,
        leaseMs: 30_000,
        maxFrameBytes: 64 * 1024,
        fenced: [],
        deviceScanIntervalMs: 60_000,
        deviceRefreshMs: 600_000,
        paused: false,
      });
      const [view] = await h.admin.listRunners();
      assert.ok(view?.lastSeenAt !== null && Date.parse(view!.lastSeenAt!) >= before - 5);
      assert.deepEqual(h.runnerEvents, [{ runnerId: identity.runnerId, event: "connected" }]);
      await runner.close();
      await waitFor("disconnected event", () => h.runnerEvents.find((e) => e.event === "disconnected"));
    },
  );

  test(
    "revoking or deleting a connected runner closes its channel (4001 / 4002); it cannot come back",
    TIMEOUT,
    async (t) => {
      const h = await startHarness(t);
      const revokedIdentity = await registerRunner(h, "to-revoke");
      const deletedIdentity = await registerRunner(h, "to-delete");
      const revoked = await connected(h, revokedIdentity);
      const deleted = await connected(h, deletedIdentity);
      await h.admin.revokeRunner(revokedIdentity.runnerId);
      await h.admin.deleteRunner(deletedIdentity.runnerId);
      assert.deepEqual(await revoked.closed, { code: 4001, reason: "credential revoked" });
      assert.deepEqual(await deleted.closed, { code: 4002, reason: "runner deleted" });
      assert.equal(
        (await refusedUpgrade(channelUrl(h.cp.url), channelHeaders(revokedIdentity))).code,
        "credential_revoked",
      );
      assert.equal(
        (await refusedUpgrade(channelUrl(h.cp.url), channelHeaders(deletedIdentity))).code,
        "runner_not_found",
      );
    },
  );

  test("anything before hello closes the connection with 1008", TIMEOUT, async (t) => {
    const h = await startHarness(t);
    const identity = await registerRunner(h, "impatient");
    const early = await connect(h, identity);
    early.ready(1);
    assert.equal((await early.closed).code, 1008);
    const garbage = await connect(h, identity);
    garbage.send("{not json");
    assert.equal((await garbage.closed).code, 1008);
    const impostor = await connect(h, identity);
    impostor.send({
      type: "hello",
      protocolVersion: 1,
      agentVersion: AGENT_VERSION,
      runnerId: "rnr_" + "Q".repeat(24),
      capacity: 1,
      running: [],
      pendingResults: [],
    });
    assert.equal((await impostor.closed).code, 1008, "hello for another runner id");
  });

  test(
    "a hello listing more than 1024 running jobs or held results closes with 1008; 1024 of each is welcomed",
    TIMEOUT,
    async (t) => {
      const h = await startHarness(t);
      const identity = await registerRunner(h, "hoarder");
      const refs = (n: number, prefix: string) =>
        Array.from({ length: n }, (_, i) => ({ jobId: `${prefix}_${i}`, attempt: 1 }));
      const tooManyRunning = await connect(h, identity);
      tooManyRunning.sendHello({ running: refs(1025, "run") });
      assert.equal((await tooManyRunning.closed).code, 1008);
      const tooManyResults = await connect(h, identity);
      tooManyResults.sendHello({ pendingResults: refs(1025, "res") });
      assert.equal((await tooManyResults.closed).code, 1008);
      const atTheLimit = await connect(h, identity);
      const welcome = await atTheLimit.hello({ running: refs(1024, "run"), pendingResults: refs(1024, "res") });
      assert.equal(welcome.fenced.length, 1024, "unknown running jobs are fenced");
    },
  );

  test("a second connection of the same runner replaces the first (4000 replaced)", TIMEOUT, async (t) => {
    const h = await startHarness(t);
    const identity = await registerRunner(h, "twice");
    const first = await connected(h, identity);
    first.ready(1);
    const second = await connected(h, identity);
    assert.deepEqual(await first.closed, { code: 4000, reason: "replaced" });
    // Credits of the replaced connection are gone: only the new one's count.
    await submit(h);
    await first.expectNo("assign", 100);
    second.ready(1);
    await second.next("assign");
  });

  test(
    "a connection heard from neither by frame nor by ping is terminated after 2.5 heartbeats",
    TIMEOUT,
    async (t) => {
      const h = await startHarness(t);
      const identity = await registerRunner(h, "quiet");
      const pinging = await connected(h, await registerRunner(h, "chatty"));
      const silent = await connect(h, identity, false);
      const started = Date.now();
      await silent.hello();
      const { code } = await silent.closed;
      const elapsed = Date.now() - started;
      assert.equal(code, 1006, "terminated, no closing handshake");
      assert.ok(elapsed >= HEARTBEAT_MS * 2.5 - 20 && elapsed < HEARTBEAT_MS * 2.5 + 400, `after ${elapsed} ms`);
      await delay(HEARTBEAT_MS * 1.5);
      assert.equal(pinging.ws.readyState, WebSocket.OPEN, "pings keep a connection alive");
    },
  );
});

describe("dispatch", () => {
  test("credits are respected: one ready, three jobs, exactly one assign until the next ready", TIMEOUT, async (t) => {
    const h = await startHarness(t);
    const runner = await connected(h, await registerRunner(h, "credit"));
    runner.ready(1);
    const jobs = [await submit(h), await submit(h), await submit(h)];
    const first = await runner.next("assign");
    assert.equal(first.jobId, jobs[0]!.jobId, "submit order");
    assert.equal(first.attempt, 1);
    await runner.expectNo("assign", 200);
    assert.deepEqual(
      (await h.admin.listJobs()).map((j) => j.status),
      ["assigned", "queued", "queued"],
    );
    assert.equal((await h.admin.listJobs("queued")).length, 2);

    runner.ready(1);
    assert.equal((await runner.next("assign")).jobId, jobs[1]!.jobId);
    await runner.expectNo("assign", 100);
  });

  test("an assign carries the job, its timeout, grace and lease", TIMEOUT, async (t) => {
    const h = await startHarness(t, { leaseMs: 45_000 });
    const runner = await connected(h, await registerRunner(h, "carrier"));
    runner.ready(1);
    const job = await submit(h, {
      job: { kind: "command", argv: ["echo", "hi"], env: { A: "1" }, cwd: "/tmp" },
      timeoutMs: 5000,
      cancelGraceMs: 250,
    });
    const assign = await runner.next("assign");
    assert.deepEqual(
      { ...assign, leaseExpiresAt: undefined },
      {
        type: "assign",
        jobId: job.jobId,
        attempt: 1,
        job: { kind: "command", argv: ["echo", "hi"], env: { A: "1" }, cwd: "/tmp" },
        timeoutMs: 5000,
        cancelGraceMs: 250,
        leaseExpiresAt: undefined,
      },
    );
    assert.ok(Math.abs(Date.parse(assign.leaseExpiresAt) - (Date.now() + 45_000)) < 2000);
    const view = await jobOf(h, job.jobId);
    assert.equal(view.status, "assigned");
    assert.equal(view.runnerId, runner.identity.runnerId);
    assert.notEqual(view.assignedAt, null);
  });

  test("a job goes only to a runner having every required label", TIMEOUT, async (t) => {
    const h = await startHarness(t);
    const plain = await connected(h, await registerRunner(h, "plain", ["linux"]));
    const gpu = await connected(h, await registerRunner(h, "gpu", ["linux", "gpu"]));
    plain.ready(4);
    gpu.ready(1);
    const gpuJob = await submit(h, { ...commandJob(), requiredLabels: ["gpu"] });
    const macJob = await submit(h, { ...commandJob(), requiredLabels: ["macos"] });
    const anyJob = await submit(h, { ...commandJob(), requiredLabels: ["linux"] });
    assert.equal((await gpu.next("assign")).jobId, gpuJob.jobId);
    assert.equal((await plain.next("assign")).jobId, anyJob.jobId);
    await plain.expectNo("assign", 100);
    assert.equal((await jobOf(h, macJob.jobId)).status, "queued", "no runner has macos");
  });

  test("a goodbye stops assignments to that runner", TIMEOUT, async (t) => {
    const h = await startHarness(t);
    const runner = await connected(h, await registerRunner(h, "leaving"));
    runner.ready(2);
    runner.send({ type: "goodbye", reason: "draining" });
    await delay(50);
    runner.ready(1);
    const job = await submit(h);
    await runner.expectNo("assign", 150);
    assert.equal((await jobOf(h, job.jobId)).status, "queued");
  });

  test("two runners racing for 50 jobs: each job is assigned exactly once and both get work", TIMEOUT, async (t) => {
    const h = await startHarness(t);
    const runners = [
      await connected(h, await registerRunner(h, "left")),
      await connected(h, await registerRunner(h, "right")),
    ];
    const assignedTo = new Map<string, string[]>();
    // Each runner finishes a job at once and asks for the next, like a fast agent.
    for (const runner of runners) {
      runner.ws.on("message", (data: Buffer) => {
        const message = JSON.parse(data.toString()) as ControlMessage;
        if (message.type !== "assign") return;
        assignedTo.set(message.jobId, [
          ...(assignedTo.get(message.jobId) ?? []),
          `${runner.identity.runnerId}#${message.attempt}`,
        ]);
        runner.send({ type: "accept", jobId: message.jobId, attempt: message.attempt });
        runner.result(message);
        runner.ready(1);
      });
      runner.ready(3);
    }
    const submitted = await Promise.all(Array.from({ length: 50 }, () => submit(h)));
    await waitFor("all 50 jobs applied", () => h.events.filter((e) => e.status === "result_applied").length === 50);
    for (const job of submitted)
      assert.equal(assignedTo.get(job.jobId)?.length, 1, `${job.jobId}: ${assignedTo.get(job.jobId)?.join(", ")}`);
    const jobs = await h.admin.listJobs();
    assert.ok(jobs.every((j) => j.status === "succeeded" && j.attempt === 1));
    const perRunner = runners.map((r) => jobs.filter((j) => j.runnerId === r.identity.runnerId).length);
    assert.ok(
      perRunner.every((n) => n > 0),
      `work shared: ${perRunner.join(" + ")}`,
    );
  });
});

describe("results, logs and fencing", () => {
  test(
    "the happy path: accept, started, logs, result applied once; a repeated result is acked but not applied",
    TIMEOUT,
    async (t) => {
      const h = await startHarness(t);
      const runner = await connected(h, await registerRunner(h, "worker"));
      runner.ready(1);
      const job = await submit(h, commandJob("echo", "out"));
      const assign = await runner.next("assign");
      const ref = { jobId: assign.jobId, attempt: assign.attempt };
      runner.send({ type: "accept", ...ref });
      runner.send({ type: "started", ...ref, startedAt: new Date().toISOString() });
      runner.send({ type: "log", ...ref, seq: 0, stream: "stdout", data: "out\n" });
      runner.send({ type: "log", ...ref, seq: 1, stream: "stderr", data: "err\n" });
      runner.send({ type: "log", ...ref, seq: 0, stream: "stdout", data: "a repeat must not replace the first\n" });
      await waitForEvent(h, job.jobId, "started");
      assert.equal((await jobOf(h, job.jobId)).status, "running");

      runner.result(ref, "failed", 3);
      assert.deepEqual(await runner.next("result_ack"), { type: "result_ack", ...ref, applied: true });
      runner.result(ref, "succeeded", 0);
      assert.deepEqual(await runner.next("result_ack"), { type: "result_ack", ...ref, applied: false });

      const { job: view, logs } = await h.admin.getJob(job.jobId);
      assert.equal(view.status, "failed", "the first result stands");
      assert.equal(view.result?.exitCode, 3);
      assert.notEqual(view.finishedAt, null);
      assert.deepEqual(logs, [
        { attempt: 1, seq: 0, stream: "stdout", data: "out\n" },
        { attempt: 1, seq: 1, stream: "stderr", data: "err\n" },
      ]);
      const statuses = h.events.filter((e) => e.jobId === job.jobId).map((e) => `${e.status}:${e.attempt}`);
      assert.deepEqual(statuses, ["submitted:0", "assigned:1", "accepted:1", "started:1", "result_applied:1"]);
      const times = h.events.filter((e) => e.jobId === job.jobId).map((e) => e.at);
      assert.ok(
        times.every((at, i) => i === 0 || at >= times[i - 1]!),
        "event times are monotonic",
      );
      assert.match(h.logLines.join(""), /duplicate, stale attempt or unknown job/);
    },
  );

  test(
    "the runner's timestamps are kept as sent, whatever their form; the job is timed with the control plane's clock",
    TIMEOUT,
    async (t) => {
      const h = await startHarness(t);
      const runner = await connected(h, await registerRunner(h, "odd-clock"));
      runner.ready(1);
      const job = await submit(h);
      const assign = await runner.next("assign");
      const ref = { jobId: assign.jobId, attempt: assign.attempt };
      const before = Date.now();
      runner.send({ type: "started", ...ref, startedAt: "yesterday" });
      runner.send({ type: "result", result: { ...finishedResult(ref), startedAt: "t0", finishedAt: "1700000000" } });
      assert.deepEqual(await runner.next("result_ack"), { type: "result_ack", ...ref, applied: true });
      const { job: view } = await h.admin.getJob(job.jobId);
      assert.deepEqual([view.result?.startedAt, view.result?.finishedAt], ["t0", "1700000000"]);
      for (const at of [view.startedAt, view.finishedAt]) assert.ok(Date.parse(at ?? "") >= before - 5, String(at));
    },
  );

  test(
    "a result whose signal is over 32 characters is refused as invalid and not applied; a 32-character one applies",
    TIMEOUT,
    async (t) => {
      const h = await startHarness(t);
      const runner = await connected(h, await registerRunner(h, "long-signal"));
      runner.ready(1);
      const job = await submit(h);
      const assign = await runner.next("assign");
      const ref = { jobId: assign.jobId, attempt: assign.attempt };
      runner.send({ type: "result", result: { ...finishedResult(ref), signal: "S".repeat(33) } });
      const error = await runner.next("error");
      assert.equal(error.code, "invalid");
      assert.match(error.message, /result\.signal/);
      assert.equal((await jobOf(h, job.jobId)).status, "assigned", "nothing applied");
      runner.send({ type: "result", result: { ...finishedResult(ref), signal: "S".repeat(32) } });
      assert.deepEqual(await runner.next("result_ack"), { type: "result_ack", ...ref, applied: true });
      assert.equal((await jobOf(h, job.jobId)).result?.signal, "S".repeat(32));
    },
  );

  test(
    "a result the store failed to apply closes the connection (1011); the result re-sent after the next hello applies",
    TIMEOUT,
    async (t) => {
      const h = await startHarness(t);
      const identity = await registerRunner(h, "unlucky");
      const runner = await connected(h, identity);
      runner.ready(1);
      const job = await submit(h);
      const assign = await runner.next("assign");
      const ref = { jobId: assign.jobId, attempt: assign.attempt };
      // The database fails once (a restart, a lost connection): the first report is not applied.
      const jobs = h.cp.store.jobs;
      const applyResults = jobs.applyResults.bind(jobs);
      jobs.applyResults = () => {
        jobs.applyResults = applyResults;
        return Promise.reject(new Error("the database went away"));
      };
      runner.result(ref, "failed", 3);
      const error = await runner.next("error");
      assert.equal(error.code, "internal");
      assert.deepEqual(await runner.closed, { code: 1011, reason: "the control plane failed to handle result" });
      assert.equal((await jobOf(h, job.jobId)).status, "assigned", "not applied, and not lost either");

      const again = await connect(h, identity);
      const welcome = await again.hello({ pendingResults: [ref] });
      assert.deepEqual(welcome.fenced, []);
      again.result(ref, "failed", 3);
      assert.deepEqual(await again.next("result_ack"), { type: "result_ack", ...ref, applied: true });
      assert.equal((await jobOf(h, job.jobId)).status, "failed");
    },
  );

  test("pings alone keep the leases of a runner's jobs", TIMEOUT, async (t) => {
    const h = await startHarness(t, { leaseMs: 1000 });
    const runner = await connected(h, await registerRunner(h, "pinger"));
    runner.ready(1);
    const job = await submit(h);
    await runner.next("assign");
    await delay(1500);
    assert.ok(!h.events.some((e) => e.status === "requeued"), "no lease expired");
    assert.equal((await jobOf(h, job.jobId)).status, "assigned");
  });

  test(
    "a stale attempt is fenced: lease expires, job re-queued, re-assigned as attempt 2, the late attempt-1 result is acked but not applied",
    TIMEOUT,
    async (t) => {
      const h = await startHarness(t, { leaseMs: 1000 });
      const slowIdentity = await registerRunner(h, "slow");
      const slow = await connected(h, slowIdentity);
      const fast = await connected(h, await registerRunner(h, "fast"));
      slow.ready(1);
      const job = await submit(h);
      const first = await slow.next("assign");
      assert.equal(first.attempt, 1);
      slow.send({ type: "started", jobId: job.jobId, attempt: 1, startedAt: new Date().toISOString() });
      fast.ready(1);
      await slow.drop(); // the slow runner vanishes past its lease

      const requeued = await waitForEvent(h, job.jobId, "requeued", 1);
      const second = await fast.next("assign");
      assert.equal(second.attempt, 2);
      const assignedAgain = await waitForEvent(h, job.jobId, "assigned", 2);
      assert.ok(assignedAgain.at >= requeued.at);

      // The slow runner comes back with its attempt-1 result.
      const back = await connect(h, slowIdentity);
      const welcome = await back.hello({ pendingResults: [{ jobId: job.jobId, attempt: 1 }] });
      assert.deepEqual(welcome.fenced, []);
      back.send({ type: "log", jobId: job.jobId, attempt: 1, seq: 0, stream: "stdout", data: "stale\n" });
      back.result({ jobId: job.jobId, attempt: 1 }, "failed", 1);
      assert.deepEqual(await back.next("result_ack"), {
        type: "result_ack",
        jobId: job.jobId,
        attempt: 1,
        applied: false,
      });
      // Anything else it says about attempt 1 is answered with a cancel.
      back.send({ type: "started", jobId: job.jobId, attempt: 1, startedAt: new Date().toISOString() });
      assert.equal((await back.next("cancel")).attempt, 1);

      let view = await jobOf(h, job.jobId);
      assert.deepEqual(
        [view.status, view.attempt, view.runnerId, view.result],
        ["assigned", 2, fast.identity.runnerId, null],
      );

      fast.result({ jobId: job.jobId, attempt: 2 });
      assert.equal((await fast.next("result_ack")).applied, true);
      const final = await h.admin.getJob(job.jobId);
      view = final.job;
      assert.deepEqual([view.status, view.attempt, view.result?.attempt], ["succeeded", 2, 2]);
      assert.deepEqual(final.logs, [], "attempt-1 logs after the re-queue are not stored");
      assert.equal(h.events.filter((e) => e.jobId === job.jobId && e.status === "result_applied").length, 1);
    },
  );

  test(
    "the same runner's own stale attempt is fenced: it holds attempt 2 now, its late attempt-1 result is not applied",
    TIMEOUT,
    async (t) => {
      const h = await startHarness(t, { leaseMs: 1000 });
      const identity = await registerRunner(h, "lonely");
      const runner = await connected(h, identity);
      runner.ready(1);
      const job = await submit(h);
      assert.equal((await runner.next("assign")).attempt, 1);
      await runner.drop();
      await waitForEvent(h, job.jobId, "requeued", 1);

      const back = await connect(h, identity);
      await back.hello({ pendingResults: [{ jobId: job.jobId, attempt: 1 }] });
      back.ready(1);
      assert.equal((await back.next("assign")).attempt, 2);
      back.send({ type: "accept", jobId: job.jobId, attempt: 1 });
      assert.equal((await back.next("cancel")).attempt, 1, "an accept of attempt 1 is answered with cancel");
      back.send({ type: "log", jobId: job.jobId, attempt: 1, seq: 0, stream: "stdout", data: "from attempt 1\n" });
      back.result({ jobId: job.jobId, attempt: 1 }, "failed", 1);
      assert.deepEqual(await back.next("result_ack"), {
        type: "result_ack",
        jobId: job.jobId,
        attempt: 1,
        applied: false,
      });
      assert.deepEqual([(await jobOf(h, job.jobId)).status, (await jobOf(h, job.jobId)).attempt], ["assigned", 2]);
      back.send({ type: "log", jobId: job.jobId, attempt: 2, seq: 0, stream: "stdout", data: "from attempt 2\n" });
      back.result({ jobId: job.jobId, attempt: 2 });
      assert.equal((await back.next("result_ack")).applied, true);
      const { job: view, logs } = await h.admin.getJob(job.jobId);
      assert.deepEqual([view.status, view.result?.attempt], ["succeeded", 2]);
      assert.deepEqual(
        logs.map((l) => [l.attempt, l.data]),
        [[2, "from attempt 2\n"]],
      );
    },
  );

  test(
    "hello reporting a job it no longer holds, or another attempt: fenced and cancelled; the attempt it held is re-queued",
    TIMEOUT,
    async (t) => {
      const h = await startHarness(t);
      const identity = await registerRunner(h, "confused");
      const runner = await connected(h, identity);
      runner.ready(1);
      const job = await submit(h);
      await runner.next("assign");
      await runner.drop();

      const back = await connect(h, identity);
      const running = [
        { jobId: job.jobId, attempt: 7 },
        { jobId: "job_neverexisted", attempt: 1 },
      ];
      const welcome = await back.hello({ running });
      assert.deepEqual(welcome.fenced, running);
      const cancels = [await back.next("cancel"), await back.next("cancel")];
      assert.deepEqual(
        cancels.map((c) => [c.jobId, c.attempt]),
        running.map((r) => [r.jobId, r.attempt]),
      );
      const view = await jobOf(h, job.jobId);
      assert.deepEqual([view.status, view.runnerId, view.attempt], ["queued", null, 1]);
    },
  );

  test(
    "a job the store gave the runner but missing from its hello is re-queued at once and goes to the next runner",
    TIMEOUT,
    async (t) => {
      const h = await startHarness(t);
      const identity = await registerRunner(h, "forgetful");
      const runner = await connected(h, identity);
      const helper = await connected(h, await registerRunner(h, "helper"));
      runner.ready(2);
      const lost = await submit(h);
      const kept = await submit(h);
      await runner.next("assign");
      await runner.next("assign");
      await runner.drop();
      helper.ready(1);

      const back = await connect(h, identity);
      const welcome = await back.hello({ running: [{ jobId: kept.jobId, attempt: 1 }] });
      assert.deepEqual(welcome.fenced, []);
      await waitForEvent(h, lost.jobId, "requeued", 1);
      const reassigned = await helper.next("assign");
      assert.deepEqual([reassigned.jobId, reassigned.attempt], [lost.jobId, 2]);
      const keptView = await jobOf(h, kept.jobId);
      assert.deepEqual(
        [keptView.status, keptView.runnerId],
        ["running", identity.runnerId],
        "a job it still runs is kept (and marked running)",
      );
    },
  );

  test("a reject re-queues the job; the next hand-out is attempt 2, to another runner", TIMEOUT, async (t) => {
    const h = await startHarness(t);
    const picky = await connected(h, await registerRunner(h, "picky"));
    const willing = await connected(h, await registerRunner(h, "willing"));
    picky.ready(3); // more credits than the other runner: only the cooldown keeps the job away from it
    const job = await submit(h);
    const assign = await picky.next("assign");
    willing.ready(1);
    picky.send({ type: "reject", jobId: assign.jobId, attempt: 1, reason: "no such tool here" });
    const again = await willing.next("assign");
    assert.deepEqual([again.jobId, again.attempt], [job.jobId, 2]);
    await picky.expectNo("assign", 50);
    assert.ok(h.events.some((e) => e.jobId === job.jobId && e.status === "requeued" && e.attempt === 1));
  });

  test(
    "a control plane restarted on the same data dir keeps its jobs, and the runner's result applies once",
    TIMEOUT,
    async (t) => {
      const dataDir = makeTempDir(t);
      const first = await startHarness(t, { dataDir });
      const identity = await registerRunner(first, "survivor");
      const runner = await connected(first, identity);
      runner.ready(1);
      const running = await submit(first);
      const queued = await submit(first, { ...commandJob(), requiredLabels: ["nowhere"] });
      await runner.next("assign");
      runner.send({ type: "started", jobId: running.jobId, attempt: 1, startedAt: new Date().toISOString() });
      await waitForEvent(first, running.jobId, "started");
      await first.cp.close();
      assert.equal((await runner.closed).code, 1001, "going away");

      const second = await startHarness(t, { dataDir });
      const jobs = await second.admin.listJobs();
      assert.deepEqual(
        jobs.map((j) => [j.jobId, j.status, j.attempt]),
        [
          [running.jobId, "running", 1],
          [queued.jobId, "queued", 0],
        ],
      );
      const back = await connected(second, identity, { running: [{ jobId: running.jobId, attempt: 1 }] });
      back.result({ jobId: running.jobId, attempt: 1 });
      assert.equal((await back.next("result_ack")).applied, true);
      back.result({ jobId: running.jobId, attempt: 1 });
      assert.equal((await back.next("result_ack")).applied, false);
      assert.equal((await jobOf(second, running.jobId)).status, "succeeded");
    },
  );
});

describe("limits of what a runner may store", () => {
  test(
    "a log chunk past the attempt's byte cap, past its seq range or after its result gets an error frame naming the limit, and is not stored",
    TIMEOUT,
    async (t) => {
      const h = await startHarness(t, { maxLogBytesPerJob: 1024, maxLogChunksPerJob: 8 });
      const runner = await connected(h, await registerRunner(h, "chatty"));
      runner.ready(1);
      const job = await submit(h);
      const assign = await runner.next("assign");
      const ref = { jobId: assign.jobId, attempt: assign.attempt };
      runner.send({ type: "accept", ...ref });
      const log = (seq: number, data: string) => runner.send({ type: "log", ...ref, seq, stream: "stdout", data });
      log(0, "a".repeat(1000));
      log(1, "b".repeat(100));
      const overBytes = await runner.next("error");
      assert.equal(overBytes.code, "log_limit_exceeded");
      assert.match(overBytes.message, /1024 bytes/);
      log(2, "d".repeat(100)); // over again: dropped without a second error
      log(3, "e".repeat(24)); // fits exactly: stored
      log(8, "c");
      const overSeq = await runner.next("error");
      assert.equal(overSeq.code, "log_seq_out_of_range");
      assert.match(overSeq.message, /below 8/);
      const health = await fetch(`${h.cp.url}/api/v1/health`);
      assert.equal(health.status, 200, "/health answers while the runner is refused");
      runner.result(ref);
      await runner.next("result_ack");
      log(5, "late");
      assert.equal((await runner.next("error")).code, "log_after_result");
      log(6, "later");
      await runner.expectNo("error");
      const { logs } = await h.admin.getJob(job.jobId);
      assert.deepEqual(
        logs.map((chunk) => [chunk.seq, chunk.data.length]),
        [
          [0, 1000],
          [3, 24],
        ],
        "only the chunks within the limits are kept",
      );
    },
  );

  test(
    "device rows past the runner's cap are refused with device_limit_exceeded and acknowledged; an empty snapshot deletes them",
    TIMEOUT,
    async (t) => {
      const h = await startHarness(t, { maxDevicesPerRunner: 3 });
      const identity = await registerRunner(h, "farm");
      const runner = await connected(h, identity);
      const usb = (n: number) => ({
        id: `usb:${n}`,
        kind: "usb",
        name: `usb ${n}`,
        state: "online" as const,
        attributes: {},
        stale: false,
        fingerprint: `fingerprint-${n}`,
      });
      const rows = async () => (await h.admin.listRunnerDevices(identity.runnerId)).length;
      runner.send({ type: "devices", batchId: "b1", last: true, upserts: [usb(1), usb(2), usb(3)], removals: [] });
      assert.equal((await runner.next("devices_ack")).batchId, "b1");
      runner.send({ type: "devices", batchId: "b2", last: true, upserts: [usb(4)], removals: [] });
      const refused = await runner.next("error");
      assert.equal(refused.code, "device_limit_exceeded");
      assert.match(refused.message, /4 device rows, over the limit of 3/);
      assert.equal((await runner.next("devices_ack")).batchId, "b2", "acknowledged, so the runner does not loop");
      assert.equal(await rows(), 3);
      runner.send({ type: "devices", batchId: "b3", snapshotId: "empty", last: true, upserts: [], removals: [] });
      assert.equal((await runner.next("devices_ack")).batchId, "b3");
      assert.equal(await rows(), 0, "an empty full snapshot leaves no rows");
    },
  );
});

describe("cancel", () => {
  test(
    "a queued job is cancelled at once; a running one gets cancel and ends with the runner's result",
    TIMEOUT,
    async (t) => {
      const h = await startHarness(t);
      const runner = await connected(h, await registerRunner(h, "cancellable"));
      const queued = await submit(h, { ...commandJob(), requiredLabels: ["nowhere"] });
      const cancelled = (await h.admin.cancelJob(queued.jobId)).job;
      assert.deepEqual([cancelled.status, cancelled.cancelRequested], ["cancelled", false]);
      await waitForEvent(h, queued.jobId, "cancelled");

      runner.ready(1);
      const job = await submit(h);
      const assign = await runner.next("assign");
      runner.send({ type: "started", jobId: job.jobId, attempt: 1, startedAt: new Date().toISOString() });
      await waitForEvent(h, job.jobId, "started");
      const requested = (await h.admin.cancelJob(job.jobId)).job;
      assert.deepEqual([requested.status, requested.cancelRequested], ["running", true]);
      const cancel = await runner.next("cancel");
      assert.deepEqual([cancel.jobId, cancel.attempt], [assign.jobId, 1]);
      runner.result({ jobId: job.jobId, attempt: 1 }, "cancelled", null);
      assert.equal((await runner.next("result_ack")).applied, true);
      const finished = await jobOf(h, job.jobId);
      assert.equal(finished.status, "cancelled");

      // A finished job comes back unchanged; an unknown one is 404.
      assert.deepEqual((await h.admin.cancelJob(job.jobId)).job, finished);
      await assert.rejects(
        h.admin.cancelJob("job_nope"),
        (error: AdminRequestError) => error.status === 404 && error.apiCode === "not_found",
      );
    },
  );

  test("a cancel requested while the runner is away is sent after its next welcome", TIMEOUT, async (t) => {
    const h = await startHarness(t);
    const identity = await registerRunner(h, "away");
    const runner = await connected(h, identity);
    runner.ready(1);
    const job = await submit(h);
    await runner.next("assign");
    await runner.drop();
    assert.equal((await h.admin.cancelJob(job.jobId)).job.cancelRequested, true);

    const back = await connect(h, identity);
    await back.hello({ running: [{ jobId: job.jobId, attempt: 1 }] });
    const cancel = await back.next("cancel");
    assert.deepEqual([cancel.jobId, cancel.attempt], [job.jobId, 1]);
  });

  test(
    "a job with a cancel requested whose runner never comes back ends cancelled when its lease expires",
    TIMEOUT,
    async (t) => {
      const h = await startHarness(t, { leaseMs: 1000 });
      const runner = await connected(h, await registerRunner(h, "gone"));
      runner.ready(1);
      const job = await submit(h);
      await runner.next("assign");
      await runner.drop();
      await h.admin.cancelJob(job.jobId);
      await waitForEvent(h, job.jobId, "cancelled", 1);
      const view = await jobOf(h, job.jobId);
      assert.deepEqual([view.status, view.attempt], ["cancelled", 1]);
      assert.ok(!h.events.some((e) => e.jobId === job.jobId && e.status === "requeued"));
    },
  );
});

describe("bad frames", () => {
  test("malformed, unknown and invalid frames get an error and the connection stays up", TIMEOUT, async (t) => {
    const h = await startHarness(t);
    const runner = await connected(h, await registerRunner(h, "sloppy"));
    const cases: [string | Buffer, string][] = [
      ["{not json", "not_json"],
      [JSON.stringify({ type: "teleport" }), "unknown_type"],
      [JSON.stringify({ type: "ready", slots: 0 }), "invalid"],
      [
        JSON.stringify({
          type: "hello",
          protocolVersion: 1,
          agentVersion: "x",
          runnerId: runner.identity.runnerId,
          capacity: 1,
          running: [],
          pendingResults: [],
        }),
        "unexpected_hello",
      ],
      [Buffer.from("binary"), "binary_frame"],
    ];
    for (const [frame, code] of cases) {
      if (typeof frame === "string") runner.send(frame);
      else runner.ws.send(frame, { binary: true });
      const error = await runner.next("error");
      assert.equal(error.code, code);
      assert.ok(error.message.length > 0);
    }
    assert.equal(runner.ws.readyState, WebSocket.OPEN);
    runner.ready(1);
    await submit(h);
    await runner.next("assign");
    const warnings = h.logLines
      .map((l) => JSON.parse(l) as { level: number; msg: string; detail?: string })
      .filter((l) => l.msg === "bad frame from runner");
    assert.equal(warnings.length, 4);
    assert.ok(warnings.every((w) => w.level === 40));
    assert.ok(
      warnings.some((w) => w.detail?.includes("slots")),
      "the decode detail is logged",
    );
  });

  test("a frame over maxFrameBytes closes that connection with 1009; the server keeps serving", TIMEOUT, async (t) => {
    const h = await startHarness(t, { maxFrameBytes: 2048 });
    const identity = await registerRunner(h, "verbose");
    const runner = await connected(h, identity);
    runner.send({ type: "log", jobId: "job_x", attempt: 1, seq: 0, stream: "stdout", data: "x".repeat(4096) });
    assert.equal((await runner.closed).code, 1009);
    await waitFor("the size-limit warning", () => h.logLines.some((l) => l.includes("frame over the size limit")));
    const again = await connected(h, identity);
    again.ready(1);
    await submit(h);
    await again.next("assign");
  });
});

describe("bad frames: a small frame limit", () => {
  test(
    "a hello larger than a small maxFrameBytes is taken (the runner does not know the limit yet); a later frame over it gets 1009",
    TIMEOUT,
    async (t) => {
      const h = await startHarness(t, { maxFrameBytes: 1024 });
      // 64 labels of 60 characters: a hello of about 4 KiB, all of it legitimate.
      const labels = Array.from({ length: 64 }, (_, i) => `label-${String(i).padStart(2, "0")}-${"x".repeat(51)}`);
      const runner = await connect(h, await registerRunner(h, "labelled", labels));
      const welcome = await runner.hello({ labels });
      assert.equal(welcome.maxFrameBytes, 1024);
      runner.send({ type: "goodbye", reason: "x".repeat(1000) });
      assert.deepEqual(await runner.closed, { code: 1009, reason: "frame over maxFrameBytes" });
      await waitFor("the size-limit warning", () => h.logLines.some((l) => l.includes("frame over the size limit")));
    },
  );
});

describe("bad frames: encoding", () => {
  test(
    "a text frame that is not valid UTF-8 closes that connection with 1007; the server keeps serving",
    TIMEOUT,
    async (t) => {
      const h = await startHarness(t);
      const identity = await registerRunner(h, "garbled");
      const runner = await connected(h, identity);
      // A text frame (not binary) whose bytes are not UTF-8: RFC 6455 §8.1 fails the connection.
      runner.ws.send(Buffer.from([0x7b, 0xff, 0xfe, 0x7d]), { binary: false });
      assert.equal((await runner.closed).code, 1007);
      const again = await connected(h, identity);
      again.ready(1);
      await submit(h);
      await again.next("assign");
    },
  );
});

/** A connected runner that granted two credits and was assigned one job. */
async function holdingOneJob(h: Harness, name: string): Promise<{ runner: RawRunner; job: JobView }> {
  const runner = await connected(h, await registerRunner(h, name));
  runner.ready(2);
  const job = await submit(h);
  assert.equal((await runner.next("assign")).jobId, job.jobId);
  return { runner, job };
}

describe("pause and resume", () => {
  test(
    "a paused runner is told at once and gets no new job while its running job still reports; resume tells it and its kept credits are used",
    TIMEOUT,
    async (t) => {
      const h = await startHarness(t);
      const { runner, job: running } = await holdingOneJob(h, "pausable");

      const paused = await h.admin.pauseRunner(runner.identity.runnerId, "disk maintenance");
      assert.deepEqual([paused.paused, paused.pauseReason], [true, "disk maintenance"]);
      assert.deepEqual(await runner.next("pause"), { type: "pause", reason: "disk maintenance" });
      const waiting = await submit(h);
      await runner.expectNo("assign", 200);
      assert.equal(
        (await jobOf(h, waiting.jobId)).status,
        "queued",
        "not assigned while paused, though the runner has a credit",
      );
      // What runs goes on: its log and result are taken.
      runner.send({ type: "log", jobId: running.jobId, attempt: 1, seq: 0, stream: "stdout", data: "still here" });
      runner.result({ jobId: running.jobId, attempt: 1 });
      assert.equal((await runner.next("result_ack")).applied, true);
      assert.equal((await h.admin.getJob(running.jobId)).logs.length, 1);
      assert.equal(runner.ws.readyState, WebSocket.OPEN, "the connection stays up");
      const [listed] = await h.admin.listRunners();
      assert.equal(listed?.paused, true);

      const resumed = await h.admin.resumeRunner(runner.identity.runnerId);
      assert.deepEqual([resumed.paused, resumed.pauseReason], [false, null]);
      assert.deepEqual(await runner.next("resume"), { type: "resume" });
      // The credit granted before the pause was kept: no ready needed for this one.
      assert.equal((await runner.next("assign")).jobId, waiting.jobId);
      // Resuming a runner that is not paused changes nothing and sends nothing.
      await h.admin.resumeRunner(runner.identity.runnerId);
      await runner.expectNo("resume", 100);
    },
  );

  test(
    "the paused flag is kept with the runner: a reconnect and a control-plane restart both get welcome.paused true",
    TIMEOUT,
    async (t) => {
      const dataDir = makeTempDir(t);
      const first = await startHarness(t, { dataDir });
      const identity = await registerRunner(first, "stays-paused");
      await first.admin.pauseRunner(identity.runnerId);
      const runner = await connect(first, identity);
      const welcome = await runner.hello();
      assert.equal(welcome.paused, true);
      runner.ready(1);
      const job = await submit(first);
      await runner.expectNo("assign", 150);
      await runner.close();
      assert.equal((await first.admin.listRunners())[0]?.pauseReason, "paused by an admin", "the default reason");
      await first.cp.close();

      const second = await startHarness(t, { dataDir });
      const back = await connect(second, identity);
      assert.equal((await back.hello()).paused, true);
      back.ready(1);
      await back.expectNo("assign", 150);
      assert.equal((await jobOf(second, job.jobId)).status, "queued");
      await second.admin.resumeRunner(identity.runnerId);
      await back.next("resume");
      assert.equal((await back.next("assign")).jobId, job.jobId);
      const again = await connect(second, identity);
      assert.equal((await again.hello()).paused, false);
    },
  );

  test(
    "pause and resume answer 404 for an unknown runner and 400 for a reason over 1024 characters",
    TIMEOUT,
    async (t) => {
      const h = await startHarness(t);
      const identity = await registerRunner(h, "checked");
      const unknown = "rnr_" + "Z".repeat(24);
      await assert.rejects(
        h.admin.pauseRunner(unknown),
        (error: AdminRequestError) => error.status === 404 && error.apiCode === "runner_not_found",
      );
      await assert.rejects(
        h.admin.resumeRunner(unknown),
        (error: AdminRequestError) => error.status === 404 && error.apiCode === "runner_not_found",
      );
      await assert.rejects(
        h.admin.pauseRunner(identity.runnerId, "x".repeat(1025)),
        (error: AdminRequestError) => error.status === 400 && /reason/.test(error.message),
      );
      assert.equal((await h.admin.listRunners())[0]?.paused, false);
    },
  );
});

describe("replaced runners and labels", () => {
  test(
    "register with replace closes the old runner's channel with 4002 at once; it gets no assign and cannot come back",
    TIMEOUT,
    async (t) => {
      const h = await startHarness(t);
      const { runner: old, job: held } = await holdingOneJob(h, "taken-over");
      const successor = await registerRunner(h, "taken-over", ["linux"], true);
      // Sent before the old socket has seen its close: it must not be applied.
      if (old.ws.readyState === WebSocket.OPEN) old.result({ jobId: held.jobId, attempt: 1 });
      // Submitted right after the registration answered: the old socket must not get it (nor its env).
      const next = await submit(h, { job: { kind: "command", argv: ["true"], env: { SECRET_FOR_NEW_RUNNER: "s" } } });
      assert.deepEqual(await old.closed, { code: 4002, reason: "runner replaced by a new registration" });
      await old.expectNo("assign", 50);
      assert.equal((await jobOf(h, next.jobId)).status, "queued");
      assert.equal((await jobOf(h, held.jobId)).status, "assigned", "the replaced runner's result was not applied");
      assert.equal((await refusedUpgrade(channelUrl(h.cp.url), channelHeaders(old.identity))).code, "runner_not_found");
      const fresh = await connected(h, successor);
      fresh.ready(1);
      assert.equal((await fresh.next("assign")).jobId, next.jobId);
    },
  );

  test(
    "labels a runner claims in hello do not gate jobs: it is told labels_ignored, and only an admin's PUT labels changes them",
    TIMEOUT,
    async (t) => {
      const h = await startHarness(t);
      const identity = await registerRunner(h, "claimer", ["linux"]);
      const runner = await connected(h, identity, { labels: ["linux", "gpu"] });
      const told = await runner.next("error");
      assert.equal(told.code, "labels_ignored");
      assert.match(told.message, /\[linux\]/);
      const warning = h.logLines
        .map((l) => JSON.parse(l) as { level: number; msg: string; claimed?: string[] })
        .find((l) => l.msg.startsWith("hello.labels differ"));
      assert.deepEqual([warning?.level, warning?.claimed], [40, ["linux", "gpu"]]);
      runner.ready(1);
      const gpuJob = await submit(h, { ...commandJob(), requiredLabels: ["gpu"] });
      await runner.expectNo("assign", 200);
      assert.equal((await jobOf(h, gpuJob.jobId)).status, "queued");

      const view = await h.admin.setRunnerLabels(identity.runnerId, ["linux", "gpu"]);
      assert.deepEqual(view.labels, ["linux", "gpu"]);
      assert.equal((await runner.next("assign")).jobId, gpuJob.jobId, "matched with the new labels at once");
      // Labels equal to the registered ones, in any order, draw no complaint.
      const quiet = await connected(h, identity, { labels: ["gpu", "linux"] });
      await quiet.expectNo("error", 150);
      await assert.rejects(
        h.admin.setRunnerLabels("rnr_" + "Z".repeat(24), []),
        (error: AdminRequestError) => error.status === 404,
      );
      await assert.rejects(
        h.admin.setRunnerLabels(identity.runnerId, ["no spaces"]),
        (error: AdminRequestError) => error.status === 400,
      );
    },
  );
});

describe("invalid device batches", () => {
  const device = (id: string, extra: Record<string, unknown> = {}) => ({
    id,
    kind: "usb",
    name: id,
    state: "online",
    attributes: {},
    fingerprint: `fingerprint-${id}`,
    ...extra,
  });

  test(
    "an invalid batch outside a snapshot gets devices_resync for its batchId; nothing of it is applied",
    TIMEOUT,
    async (t) => {
      const h = await startHarness(t);
      const runner = await connected(h, await registerRunner(h, "bad-diff"));
      runner.send(
        JSON.stringify({
          type: "devices",
          batchId: "d-1",
          last: true,
          upserts: [device("good"), device("bad", { kind: "Not A Kind" })],
          removals: [],
        }),
      );
      const resync = await runner.next("devices_resync");
      assert.equal(resync.batchId, "d-1");
      assert.match(resync.reason, /upserts\.1\.kind/);
      await runner.expectNo("error", 50);
      assert.deepEqual(await h.admin.listRunnerDevices(runner.identity.runnerId), []);
    },
  );

  test(
    "a snapshot batch with invalid rows is applied without them, acknowledged and said so: the resync does not loop",
    TIMEOUT,
    async (t) => {
      const h = await startHarness(t);
      const runner = await connected(h, await registerRunner(h, "bad-snapshot"));
      runner.send(
        JSON.stringify({
          type: "devices",
          batchId: "s-1",
          snapshotId: "snap",
          last: false,
          upserts: [device("a")],
          removals: [],
        }),
      );
      assert.equal((await runner.next("devices_ack")).batchId, "s-1");
      runner.send(
        JSON.stringify({
          type: "devices",
          batchId: "s-2",
          snapshotId: "snap",
          last: true,
          upserts: [device("b"), device("c", { attributes: { long: "x".repeat(300) } }), { id: "d" }, device("e")],
          removals: [],
        }),
      );
      const dropped = await runner.next("error");
      assert.equal(dropped.code, "device_rows_dropped");
      assert.match(dropped.message, /s-2: 2 invalid row\(s\) dropped/);
      assert.match(dropped.message, /upserts\[1\] \(id "c"\): attributes\.long/);
      assert.match(dropped.message, /upserts\[2\] \(id "d"\)/);
      assert.equal((await runner.next("devices_ack")).batchId, "s-2");
      await runner.expectNo("devices_resync", 50);
      const stored = await h.admin.listRunnerDevices(runner.identity.runnerId);
      assert.deepEqual(
        stored.map((d) => [d.id, d.present]),
        [
          ["a", true],
          ["b", true],
          ["e", true],
        ],
      );
    },
  );

  test(
    "a batch naming a device id twice is invalid: outside a snapshot devices_resync, in a snapshot the repeated row is dropped",
    TIMEOUT,
    async (t) => {
      const h = await startHarness(t);
      const runner = await connected(h, await registerRunner(h, "twice-named"));
      runner.send(
        JSON.stringify({
          type: "devices",
          batchId: "d-1",
          upserts: [device("x"), device("y"), device("x", { name: "again" })],
          removals: [],
        }),
      );
      const resync = await runner.next("devices_resync");
      assert.equal(resync.batchId, "d-1");
      assert.match(resync.reason, /upserts\.2: device id "x" is already named by upserts\[0\]/);
      runner.send(JSON.stringify({ type: "devices", batchId: "d-2", upserts: [device("z")], removals: ["z"] }));
      assert.match(
        (await runner.next("devices_resync")).reason,
        /removals\.0: device id "z" is already named by upserts\[0\]/,
      );
      await runner.expectNo("error", 50);
      assert.deepEqual(await h.admin.listRunnerDevices(runner.identity.runnerId), [], "nothing of either applied");

      runner.send(
        JSON.stringify({
          type: "devices",
          batchId: "s-1",
          snapshotId: "snap",
          upserts: [device("a"), device("b"), device("a", { name: "again" })],
          removals: ["b"],
        }),
      );
      const dropped = await runner.next("error");
      assert.equal(dropped.code, "device_rows_dropped");
      assert.match(dropped.message, /s-1: 2 invalid row\(s\) dropped/);
      assert.match(dropped.message, /upserts\[2\]: device id "a" is already named by upserts\[0\]/);
      assert.match(dropped.message, /removals\[0\]: device id "b" is already named by upserts\[1\]/);
      assert.equal((await runner.next("devices_ack")).batchId, "s-1");
      const stored = await h.admin.listRunnerDevices(runner.identity.runnerId);
      assert.deepEqual(
        stored.map((d) => [d.id, d.name, d.present]),
        [
          ["a", "a", true],
          ["b", "b", true],
        ],
        "the first row naming each device stands",
      );
    },
  );

  test(
    "the runner's own device sync ends when one of its devices is invalid: one full snapshot, then quiet, again after a reconnect",
    TIMEOUT,
    async (t) => {
      const h = await startHarness(t);
      const identity = await registerRunner(h, "sync-ends");
      // The reference runner's sync state machine (src/devices/sync.ts), its frames carried by a raw socket.
      let state = initialSyncState({ batchSize: 100, refreshMs: 600_000, ackTimeoutMs: 30_000, idPrefix: "t" });
      const good = { ...device("good"), state: "online" as const, stale: false };
      const bad = { ...good, id: "bad", kind: "Not A Kind", fingerprint: "fingerprint-bad" };

      /** Feeds the machine until nothing is in flight; returns the types of the messages it sent. */
      const syncUntilQuiet = async (runner: RawRunner, first: SyncInput): Promise<string[]> => {
        const sent: string[] = [];
        let input: SyncInput | undefined = first;
        while (input) {
          const step = stepSync(state, input);
          state = step.state;
          for (const effect of step.effects) {
            if (effect.type !== "send") continue;
            const message = effect.message as Extract<RunnerMessage, { type: "devices" | "devices_summary" }>;
            sent.push(message.type === "devices" && message.snapshotId !== undefined ? "snapshot" : message.type);
            runner.send(message);
          }
          input = undefined;
          if (state.inFlight) {
            const answer = await runner.nextOf(["devices_ack", "devices_resync"]);
            input =
              answer.type === "devices_ack"
                ? { type: "ack", now: 1, batchId: answer.batchId }
                : { type: "resync", now: 1, batchId: answer.batchId, reason: answer.reason };
          }
          assert.ok(sent.length < 10, `the sync does not end: ${sent.join(", ")}`);
        }
        return sent;
      };

      const runner = await connected(h, identity);
      assert.deepEqual(await syncUntilQuiet(runner, { type: "connected", now: 0, maxFrameBytes: 1 << 20 }), [
        "devices_summary",
      ]);
      assert.deepEqual(await syncUntilQuiet(runner, { type: "scanned", now: 1, devices: [good, bad] }), [
        "devices",
        "snapshot",
      ]);
      assert.equal(state.phase, "diff");
      assert.equal((await runner.next("error")).code, "device_rows_dropped");
      assert.deepEqual(
        (await h.admin.listRunnerDevices(identity.runnerId)).map((d) => d.id),
        ["good"],
      );

      await runner.close();
      state = stepSync(state, { type: "disconnected" }).state;
      const back = await connected(h, identity);
      assert.deepEqual(await syncUntilQuiet(back, { type: "connected", now: 2, maxFrameBytes: 1 << 20 }), [
        "devices_summary",
        "snapshot",
      ]);
      assert.equal(state.phase, "diff");
    },
  );

  test(
    "a devices frame without a usable batchId, or a snapshot batch whose envelope is broken, gets error invalid",
    TIMEOUT,
    async (t) => {
      const h = await startHarness(t);
      const runner = await connected(h, await registerRunner(h, "bad-envelope"));
      runner.send(JSON.stringify({ type: "devices", upserts: [], removals: [] }));
      assert.equal((await runner.next("error")).code, "invalid");
      runner.send(
        JSON.stringify({
          type: "devices",
          batchId: "s-9",
          snapshotId: "snap",
          last: true,
          upserts: "none",
          removals: [],
        }),
      );
      assert.equal((await runner.next("error")).code, "invalid");
      await runner.expectNo("devices_ack", 50);
      await runner.expectNo("devices_resync", 0);
      assert.equal(runner.ws.readyState, WebSocket.OPEN);
    },
  );
});

describe("admin job API", () => {
  test("submit validates the job and refuses one whose assign frame would exceed maxFrameBytes", TIMEOUT, async (t) => {
    const h = await startHarness(t, { maxFrameBytes: 2048 });
    const fits = await submit(h, commandJob("echo", "x".repeat(1000)));
    assert.equal(fits.status, "queued");
    assert.equal(fits.attempt, 0);
    assert.deepEqual(fits.requiredLabels, []);
    assert.equal(fits.timeoutMs, 600_000);
    assert.equal(fits.cancelGraceMs, 10_000);
    await assert.rejects(
      h.admin.submitJob(commandJob("echo", "x".repeat(3000))),
      (error: AdminRequestError) => error.status === 413 && error.apiCode === "payload_too_large",
    );
    await assert.rejects(
      h.admin.submitJob({ job: { kind: "command", argv: [], env: {} } }),
      (error: AdminRequestError) => error.status === 400 && /job\.argv/.test(error.message),
    );
    await assert.rejects(h.admin.getJob("job_missing"), (error: AdminRequestError) => error.status === 404);
    const badStatus = await fetch(`${h.cp.url}/api/v1/admin/jobs?status=lost`, {
      headers: { authorization: `Bearer ${ADMIN_TOKEN}` },
    });
    assert.equal(badStatus.status, 400);
    const unauthorized = await fetch(`${h.cp.url}/api/v1/admin/jobs`, {
      method: "POST",
      body: JSON.stringify(commandJob()),
    });
    assert.equal(unauthorized.status, 401);
    assert.deepEqual(
      (await h.admin.listJobs()).map((j) => j.jobId),
      [fits.jobId],
    );
    assert.match(fits.jobId, /^job_[A-Za-z0-9]{24}$/);
  });
});

describe("store guards", () => {
  test(
    "a job is claimed once: a second claim, even from a second control plane on the same file, fails",
    TIMEOUT,
    async (t) => {
      const dataDir = makeTempDir(t);
      const left = await startHarness(t, { dataDir });
      const right = await startHarness(t, { dataDir });
      const job = await submit(left);
      const now = new Date();
      const lease = new Date(now.getTime() + 60_000);
      const claimed = await left.cp.store.jobs.claim(job.jobId, "rnr_" + "L".repeat(24), now, lease);
      assert.equal(claimed?.attempt, 1);
      assert.equal(await right.cp.store.jobs.claim(job.jobId, "rnr_" + "R".repeat(24), now, lease), undefined);
      assert.equal(await left.cp.store.jobs.claim(job.jobId, "rnr_" + "L".repeat(24), now, lease), undefined);
      assert.equal((await jobOf(right, job.jobId)).runnerId, "rnr_" + "L".repeat(24));
    },
  );

  test("a result applies only for the attempt and runner that hold the job, and only once", TIMEOUT, async (t) => {
    const h = await startHarness(t);
    const jobs = h.cp.store.jobs;
    const job = await submit(h);
    const holder = "rnr_" + "H".repeat(24);
    const now = new Date();
    await jobs.claim(job.jobId, holder, now, new Date(now.getTime() + 60_000));
    const result = (attempt: number): JobResult => finishedResult({ jobId: job.jobId, attempt });
    assert.equal(await jobs.applyResult(result(2), holder, now), undefined, "a future attempt");
    assert.equal(await jobs.applyResult(result(1), "rnr_" + "X".repeat(24), now), undefined, "another runner");
    assert.equal((await jobs.applyResult(result(1), holder, now))?.status, "succeeded");
    assert.equal(await jobs.applyResult(result(1), holder, now), undefined, "a repeat");
  });
});
