// A worker's life as the pool keeps it, as a pure function: a record, an event and the time go
// in, the next record and what the pool must do come out. No processes, no timers.
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import {
  newWorkerRecord,
  stepWorker,
  type WorkerEvent,
  type WorkerRecord,
} from "../../src/workers/parent/lifecycle.js";
import type { RecycleLimits } from "../../src/workers/parent/recycle-policy.js";

const MiB = 1024 * 1024;
const SPAWNED = 1_000_000;
const SOON = SPAWNED + 1_000;
/** Only the limits a boundary is judged on here (the policy's own tests go through every one). */
const limits: RecycleLimits = { ...noLimits(), maxRssBytes: 500 * MiB, maxAgeMs: 600_000 };
const fine = { rssBytes: 100 * MiB, openFds: 20 };

function noLimits(): RecycleLimits {
  return { maxRssBytes: null, hardRssBytes: null, maxOpenFds: null, maxAgeMs: null, ageJitter: 0, maxJobs: null };
}

/** Jobs are opaque to the lifecycle: a name stands in for one. */
type Record = WorkerRecord<string>;

function run(record: Record, events: WorkerEvent<string>[], now = SOON) {
  let current = record;
  const actions = [];
  for (const event of events) {
    const step = stepWorker(current, event, now);
    current = step.record;
    actions.push(step.action);
  }
  return { record: current, actions };
}

const starting = () => newWorkerRecord<string>(limits, SPAWNED);
const idle = () => run(starting(), [{ type: "ready", health: fine, closing: false }]).record;
const busy = (job = "job-1") => run(idle(), [{ type: "assign", job }]).record;

describe("a worker starting", () => {
  test("becomes idle and keeps its readings when it says it is ready", () => {
    const { record, actions } = run(starting(), [{ type: "ready", health: fine, closing: false }]);
    assert.deepEqual(actions, [{ type: "keep" }]);
    assert.equal(record.state, "idle");
    assert.equal(record.booted, true);
    assert.deepEqual(record.health, fine);
  });

  test("is retired as soon as it is ready when the pool is closing", () => {
    const { record, actions } = run(starting(), [{ type: "ready", health: fine, closing: true }]);
    assert.deepEqual(actions, [{ type: "retire" }]);
    assert.equal(record.state, "retiring");
  });

  test("is killed when the pool closes before it is ready", () => {
    const { record, actions } = run(starting(), [{ type: "close" }]);
    assert.deepEqual(actions, [
      { type: "kill", cause: { kind: "shutdown", reason: "the pool closed while it was starting" } },
    ]);
    assert.equal(record.killedBecause?.kind, "shutdown");
  });

  test("that exits before it was ever ready failed to boot, and crashed", () => {
    const { actions } = run(starting(), [{ type: "exit" }]);
    assert.deepEqual(actions, [{ type: "forget", crashed: true, bootFailed: true }]);
  });
});

describe("a job boundary", () => {
  test("a worker under every limit is kept, with its job count up and its job gone", () => {
    const { record, actions } = run(busy(), [{ type: "result", health: fine, closing: false }]);
    assert.deepEqual(actions, [{ type: "keep" }]);
    assert.deepEqual([record.state, record.job, record.jobsRun], ["idle", null, 1]);
  });

  test("a worker whose reported RSS reached the soft limit is recycled for memory", () => {
    const leaky = { ...fine, rssBytes: 500 * MiB };
    const { record, actions } = run(busy(), [{ type: "result", health: leaky, closing: false }]);
    assert.deepEqual(actions, [{ type: "recycle", reason: "memory" }]);
    assert.equal(record.state, "retiring");
    assert.deepEqual(record.health, leaky, "the readings the recycle is logged with");
  });

  test("a worker whose age reached its limit during the job is recycled for age", () => {
    const { actions } = run(busy(), [{ type: "result", health: fine, closing: false }], SPAWNED + 600_000);
    assert.deepEqual(actions, [{ type: "recycle", reason: "age" }]);
  });

  test("a worker is retired, not judged, when the pool is closing", () => {
    const leaky = { ...fine, rssBytes: 900 * MiB };
    const { record, actions } = run(busy(), [{ type: "result", health: leaky, closing: true }]);
    assert.deepEqual(actions, [{ type: "retire" }]);
    assert.equal(record.state, "retiring");
  });

  test("a worker being killed is left to its exit, whatever its readings", () => {
    const killed = run(busy(), [{ type: "kill", cause: { kind: "cancel_grace", reason: "stuck" } }]).record;
    const { record, actions } = run(killed, [
      { type: "result", health: { ...fine, rssBytes: 900 * MiB }, closing: false },
    ]);
    assert.deepEqual(actions, [{ type: "none" }]);
    assert.deepEqual([record.state, record.job, record.jobsRun], ["busy", null, 1]);
  });
});

describe("an idle worker offered a job", () => {
  test("takes it while it is younger than its age limit", () => {
    const { record, actions } = run(idle(), [{ type: "offer" }], SPAWNED + 599_999);
    assert.deepEqual(actions, [{ type: "keep" }]);
    assert.equal(record.state, "idle");
  });

  test("is recycled for age once it reached its limit while idle", () => {
    const { record, actions } = run(idle(), [{ type: "offer" }], SPAWNED + 600_000);
    assert.deepEqual(actions, [{ type: "recycle", reason: "age" }]);
    assert.equal(record.state, "retiring");
  });

  test("is judged on its age alone, not on the start-up readings it reported when ready", () => {
    const heavy = run(starting(), [{ type: "ready", health: { rssBytes: 900 * MiB, openFds: 500 }, closing: false }]);
    assert.deepEqual(run(heavy.record, [{ type: "offer" }]).actions, [{ type: "keep" }]);
  });

  test("with its age limit off, is never too old", () => {
    const ageless = newWorkerRecord<string>({ ...limits, maxAgeMs: null }, SPAWNED);
    const ready = run(ageless, [{ type: "ready", health: fine, closing: false }]).record;
    assert.deepEqual(run(ready, [{ type: "offer" }], SPAWNED + 1e12).actions, [{ type: "keep" }]);
  });
});

describe("kills and exits", () => {
  test("the first kill's cause is kept; a second kill does nothing", () => {
    const { record, actions } = run(busy(), [
      { type: "kill", cause: { kind: "memory_limit", reason: "first" } },
      { type: "kill", cause: { kind: "cancel_grace", reason: "second" } },
    ]);
    assert.deepEqual(actions, [{ type: "kill", cause: { kind: "memory_limit", reason: "first" } }, { type: "none" }]);
    assert.deepEqual(record.killedBecause, { kind: "memory_limit", reason: "first" });
  });

  test("a killed worker's exit is no crash", () => {
    const { actions } = run(busy(), [{ type: "kill", cause: { kind: "unresponsive", reason: "x" } }, { type: "exit" }]);
    assert.deepEqual(actions.at(-1), { type: "forget", crashed: false, bootFailed: false });
  });

  test("a retiring worker's exit is no crash", () => {
    const { actions } = run(busy(), [{ type: "result", health: fine, closing: true }, { type: "exit" }]);
    assert.deepEqual(actions.at(-1), { type: "forget", crashed: false, bootFailed: false });
  });

  test("a busy worker that exits on its own crashed, and its record keeps what it said before dying", () => {
    const { record, actions } = run(busy(), [{ type: "fatal", message: "boom" }, { type: "exit" }]);
    assert.deepEqual(actions, [{ type: "none" }, { type: "forget", crashed: true, bootFailed: false }]);
    assert.deepEqual([record.state, record.job, record.fatal], ["gone", null, "boom"]);
  });

  test("nothing happens to a worker that is gone", () => {
    const gone = run(idle(), [{ type: "exit" }]).record;
    for (const event of [{ type: "kill", cause: { kind: "shutdown", reason: "late" } }, { type: "close" }] as const)
      assert.deepEqual(stepWorker(gone, event, SOON), { record: gone, action: { type: "none" } });
  });
});

describe("a pool closing", () => {
  test("retires an idle worker and leaves a busy one to finish its (cancelled) job", () => {
    assert.deepEqual(run(idle(), [{ type: "close" }]).actions, [{ type: "retire" }]);
    assert.deepEqual(run(busy(), [{ type: "close" }]).actions, [{ type: "none" }]);
  });

  test("only an idle worker is given a job", () => {
    const { record, actions } = run(starting(), [{ type: "assign", job: "job-1" }]);
    assert.deepEqual(actions, [{ type: "none" }]);
    assert.deepEqual([record.state, record.job], ["starting", null]);
  });
});
