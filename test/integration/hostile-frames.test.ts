// Hostile `assign` frames end to end (issue 9, point 6): the real daemon, behind a relay to the
// real control plane, is handed jobs the control plane itself refuses at submit. Each must be
// accepted and failed at once with a reason naming the problem: none may hold the only slot
// until a timeout, time out at once, or take the worker down.
import { test } from "node:test";
import assert from "node:assert/strict";
import path from "node:path";
import { registerRunner, startTestControlPlane } from "../helpers/fixtures.js";
import { startDaemon } from "../helpers/daemon.js";
import { childrenOf, isRunning } from "../helpers/processes.js";
import { startWsRelay, type Frame, type WsRelay } from "../helpers/ws-relay.js";
import { REPO_ROOT } from "../helpers/cli.js";
import type { SubmitJobRequest } from "../../src/protocol/http.js";
import type { AdminClient } from "../../src/api-client/admin.js";

const FRAME_WAIT_MS = 20_000;
const INJECTED = "job_hostile_";
const NOOP = path.join(REPO_ROOT, "test", "fixtures", "handlers", "noop.mjs");

function nested(depth: number): unknown {
  let value: unknown = 1;
  for (let level = 1; level < depth; level++) value = [value];
  return value;
}

const env2000 = Object.fromEntries(Array.from({ length: 2000 }, (_, i) => [`VAR_${i}`, "x"]));

interface HostileCase {
  what: string;
  job: unknown;
  timeoutMs?: number;
  cancelGraceMs?: number;
  reason: RegExp;
}

// Each would be stranded, time out at once or crash the worker on a runner that trusts the wire.
// Its own timeoutMs is long, so a job that is stranded shows as no result within FRAME_WAIT_MS.
const CASES: HostileCase[] = [
  {
    what: "a module job whose payload is nested 4,100 deep",
    job: { kind: "module", handler: "noop", payload: nested(4100) },
    reason: /^invalid job: job\.payload: the payload nests deeper than 64 levels/,
  },
  {
    what: "a command job with timeoutMs 2^31",
    job: { kind: "command", argv: ["true"], env: {} },
    timeoutMs: 2 ** 31,
    reason: /^timeoutMs 2147483648 is above the longest timeout, 2147483647 ms$/,
  },
  {
    what: "a command job whose argv[1] contains a NUL",
    job: { kind: "command", argv: ["echo", "a\u0000b"], env: {} },
    reason: /^invalid job: job\.argv\.1: an argument must not contain a NUL character/,
  },
  {
    what: "a valid job with cancelGraceMs 10^9",
    job: { kind: "command", argv: ["true"], env: {} },
    cancelGraceMs: 1e9,
    reason: /^invalid assignment: .*cancelGraceMs/,
  },
  {
    what: "a command job with 2,000 env entries",
    job: { kind: "command", argv: ["true"], env: env2000 },
    reason: /^invalid job: job\.env: at most 1024 environment variables/,
  },
];

const isReady = (frame: Frame) => frame.type === "ready";
const resultOf = (frame: Frame) =>
  frame.type === "result"
    ? (frame.result as { jobId: string; outcome: string; reason: string | null; startedAt: string | null })
    : null;

/** Submits a job through the admin API and waits, on the wire, for the runner's result to be applied. */
async function runNormalJob(admin: AdminClient, relay: WsRelay, request: SubmitJobRequest): Promise<number> {
  const from = relay.fromRunner.frames.length;
  const ackFrom = relay.fromControlPlane.frames.length;
  const { job } = await admin.submitJob(request);
  const at = await relay.fromRunner.waitFor((f) => resultOf(f)?.jobId === job.jobId, from, FRAME_WAIT_MS);
  assert.equal(
    resultOf(relay.fromRunner.frames[at]!)?.outcome,
    "succeeded",
    JSON.stringify(relay.fromRunner.frames[at]),
  );
  await relay.fromControlPlane.waitFor(
    (f) => f.type === "result_ack" && f.jobId === job.jobId && f.applied === true,
    ackFrom,
    FRAME_WAIT_MS,
  );
  assert.equal((await admin.getJob(job.jobId)).job.status, "succeeded");
  return at;
}

test(
  "hostile assign frames are each accepted and failed at once with a reason naming the problem, the worker survives them all, and the only slot then runs a normal job",
  { timeout: 180_000 },
  async (t) => {
    const plane = await startTestControlPlane(t);
    // The control plane never assigned the injected jobs, so it answers their accept with a
    // fencing `cancel`. Passed on, that cancel would free a slot a hostile job had stranded
    // (on a runner without the fix, it did, within a second): held back, the runner is on its
    // own, as with a control plane that did assign the job.
    const relay = await startWsRelay(t, plane.cp.url, {
      holdBack: (f) => f.type === "cancel" && String(f.jobId).startsWith(INJECTED),
    });
    const runner = await registerRunner(t, plane, { url: relay.url });
    const daemon = startDaemon(t, [
      ...runner.flags,
      "--capacity",
      "1",
      "--device-providers",
      "none",
      "--handlers",
      `noop=${NOOP}`,
    ]);
    await daemon.waitForLog((l) => l.msg === "connected to the control plane", 30_000);

    // A first job spawns the pool's one worker; its pid must outlive every hostile frame.
    // Credits: each `ready` the runner sends grants one slot, and each assignment uses one. The
    // runner grants its slot back after each result; an injected frame waits for that grant.
    let creditFrom = (await runNormalJob(plane.admin, relay, { job: { kind: "module", handler: "noop" } })) + 1;
    const workers = childrenOf(daemon.child.pid!);
    assert.equal(workers.length, 1, `the daemon has one worker: ${JSON.stringify(workers)}`);
    const workerPid = workers[0]!;

    for (const [n, hostile] of CASES.entries()) {
      await t.test(
        `${hostile.what} is accepted, then failed at once with a reason naming the problem, and the worker survives`,
        { timeout: 60_000 },
        async () => {
          // A stranded slot shows here first: the runner never grants it back.
          creditFrom = (await relay.fromRunner.waitFor(isReady, creditFrom, FRAME_WAIT_MS)) + 1;
          const from = relay.fromRunner.frames.length;
          const jobId = `${INJECTED}${n}`;
          const frame = {
            type: "assign",
            jobId,
            attempt: 1,
            job: hostile.job,
            timeoutMs: hostile.timeoutMs ?? 600_000,
            cancelGraceMs: hostile.cancelGraceMs ?? 1_000,
            leaseExpiresAt: new Date(Date.now() + 600_000).toISOString(),
          };
          relay.inject(JSON.stringify(frame));

          const accepted = await relay.fromRunner.waitFor(
            (f) => f.type === "accept" && f.jobId === jobId,
            from,
            FRAME_WAIT_MS,
          );
          const finished = await relay.fromRunner.waitFor((f) => resultOf(f)?.jobId === jobId, from, FRAME_WAIT_MS);
          assert.ok(accepted < finished, "accept comes before the result");
          const result = resultOf(relay.fromRunner.frames[finished]!)!;
          assert.equal(result.outcome, "failed", JSON.stringify(result));
          assert.match(result.reason ?? "", hostile.reason);
          assert.equal(result.startedAt, null, "nothing was started");
          assert.deepEqual(childrenOf(daemon.child.pid!), [workerPid], "the same worker is the daemon's only child");
          assert.ok(isRunning(workerPid), "the worker is alive (not a zombie)");
        },
      );
    }

    // Nothing was stranded: the only slot runs a command job and a module job, on the same worker.
    await runNormalJob(plane.admin, relay, { job: { kind: "command", argv: ["true"], env: {} } });
    await runNormalJob(plane.admin, relay, { job: { kind: "module", handler: "noop" } });
    assert.deepEqual(childrenOf(daemon.child.pid!), [workerPid]);
    assert.ok(!daemon.lines.some((l) => /exited unexpectedly/.test(l.msg)), "no worker died");
  },
);
