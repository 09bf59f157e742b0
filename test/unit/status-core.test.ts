// The status core: what is counted as the real channel machine steps, and how the status,
// readiness, metrics and `runner status` lines are shaped from it. Time is passed in.
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { initialState, step, type Input, type State } from "../../src/channel/machine.js";
import type { JobResult } from "../../src/protocol/channel.js";
import {
  countSent,
  countStep,
  newCounters,
  newHistogram,
  observe,
  type DaemonCounters,
} from "../../src/status/counters.js";
import { readiness, statusView, withoutUserinfo, type StatusParts } from "../../src/status/snapshot.js";
import { metricFamilies } from "../../src/status/metric-families.js";
import { renderMetrics } from "../../src/status/exposition.js";
import { statusViewSchema } from "../../src/status/view.js";
import { daemonSummary } from "../../src/status/summary.js";
import { parseExposition, valueOf } from "../helpers/prom-text.js";
import { assignment, machineConfig, welcome } from "../helpers/channel-fixtures.js";
import type { PoolStats } from "../../src/workers/parent/pool.js";
import type { DeviceSyncStatus } from "../../src/devices/sync-host.js";

const config = machineConfig;
const assign = assignment;
const T0 = Date.parse("2026-12-01T00:00:00Z");
const finished = (jobId: string): JobResult => ({
  jobId,
  attempt: 1,
  outcome: "succeeded",
  exitCode: 0,
  signal: null,
  reason: null,
  startedAt: "t",
  finishedAt: "t",
});

/** The real machine, stepped as the driver steps it, each step counted at its time. */
class Channel {
  state: State = initialState(config);
  readonly counters: DaemonCounters = newCounters(T0);
  feed(at: number, ...inputs: Input[]): this {
    for (const input of inputs) {
      const before = this.state;
      const next = step(before, input, { now: at, random: 0.5 });
      this.state = next.state;
      countStep(this.counters, { input, before, after: next.state, effects: next.effects }, at);
    }
    return this;
  }
  connect(at: number): this {
    const begin: Input =
      this.state.connection.phase === "idle" ? { type: "start" } : { type: "timer", timer: "reconnect" };
    return this.feed(at, begin, { type: "socket_open" }, { type: "message", message: welcome });
  }
}

const noPool: PoolStats = {
  size: 1,
  outputPaused: false,
  workers: [],
  spawned: 0,
  recycled: { memory: 0, fds: 0, age: 0, jobs: 0 },
  killed: { memory_limit: 0, cancel_grace: 0, unresponsive: 0, cleanup_timeout: 0, shutdown: 0, ipc_failed: 0 },
  crashed: 0,
  jobs: { dispatched: 0, rejected: 0 },
};
const noDevices: DeviceSyncStatus = {
  phase: "offline",
  inFlight: null,
  confirmed: 0,
  inventory: null,
  scanIntervalMs: 60_000,
  lastScan: null,
  lastAckAt: null,
};
const parts = (channel: Channel, extra: Partial<StatusParts> = {}): StatusParts => ({
  state: channel.state,
  counters: channel.counters,
  pool: noPool,
  devices: noDevices,
  pid: 4242,
  startedAt: T0,
  controlPlaneUrl: "https://cp.example.com",
  ...extra,
});

describe("status counters", () => {
  test("each lost connection is counted once under its reason, and the last warning is kept with its time", () => {
    const channel = new Channel().feed(
      T0,
      { type: "start" },
      { type: "connect_failed", status: null, reason: "ECONNREFUSED" },
    );
    channel.feed(
      T0 + 10_000,
      { type: "timer", timer: "reconnect" },
      { type: "connect_failed", status: 503, reason: "HTTP 503" },
    );
    channel.connect(T0 + 20_000).feed(T0 + 25_000, { type: "socket_closed", code: 4000, reason: "replaced" });
    channel
      .connect(T0 + 40_000)
      .feed(T0 + 41_000, { type: "timer", timer: "heartbeat" }, { type: "timer", timer: "pong" });
    channel.connect(T0 + 50_000).feed(T0 + 51_000, { type: "socket_closed", code: 1006, reason: "" });
    channel.feed(T0 + 60_000, { type: "timer", timer: "reconnect" }, { type: "timer", timer: "handshake" });
    assert.deepEqual(channel.counters.reconnects, {
      network: 1,
      http_error: 1,
      closed: 1,
      replaced: 1,
      handshake_timeout: 1,
      heartbeat_timeout: 1,
    });
    assert.equal(channel.counters.lastError?.at, T0 + 60_000);
    assert.match(channel.counters.lastError?.message ?? "", /did not open within \d+ ms; reconnecting in/);
    assert.equal(channel.counters.phaseSince, T0 + 60_000, "disconnected since the handshake timed out");
  });

  test("dispatch-to-start is observed when the job starts, and its outcome is counted when it finishes", () => {
    const channel = new Channel().connect(T0);
    channel.feed(T0 + 1000, { type: "message", message: assign("job-a") });
    assert.deepEqual(channel.counters.jobs, { "job-a#1": { acceptedAt: T0 + 1000, startedAt: null } });
    channel.feed(T0 + 1040, { type: "job_started", ref: { jobId: "job-a", attempt: 1 }, startedAt: "t" });
    const histogram = channel.counters.dispatchToStart;
    assert.equal(histogram.count, 1);
    assert.equal(histogram.sum, 0.04);
    assert.equal(histogram.counts[histogram.bounds.indexOf(0.05)], 1, "0.04 s falls in the 0.05 bucket");
    channel.feed(T0 + 5000, { type: "job_finished", result: { ...finished("job-a"), outcome: "failed", exitCode: 1 } });
    assert.equal(channel.counters.jobsByOutcome.failed, 1);
    assert.equal(channel.counters.jobsByOutcome.succeeded, 0);
    assert.deepEqual(channel.counters.jobs, {}, "a finished job is no longer held");
  });

  test("a rejected assignment is not held, and a second start report is not observed twice", () => {
    const channel = new Channel()
      .connect(T0)
      .feed(T0, { type: "message", message: { type: "pause", reason: "maint" } });
    channel.feed(T0 + 1, { type: "message", message: assign("job-b") });
    assert.deepEqual(channel.counters.jobs, {});
    channel.feed(
      T0 + 2,
      { type: "message", message: { type: "resume" } },
      { type: "message", message: assign("job-c") },
    );
    const ref = { jobId: "job-c", attempt: 1 };
    channel.feed(T0 + 3, { type: "job_started", ref, startedAt: "t" }, { type: "job_started", ref, startedAt: "t" });
    assert.equal(channel.counters.dispatchToStart.count, 1);
  });

  test("a result the machine ignores (it has stopped) is not counted", () => {
    const channel = new Channel().connect(T0).feed(T0, { type: "stop_now", reason: "test" });
    assert.equal(channel.state.connection.phase, "stopped");
    channel.feed(T0 + 1, {
      type: "job_finished",
      result: { ...finished("job-z"), outcome: "cancelled" },
    });
    assert.equal(channel.counters.jobsByOutcome.cancelled, 0);
  });

  test("only device sync frames count as device bytes", () => {
    const counters = newCounters(T0);
    countSent(counters, "devices", 1200);
    countSent(counters, "devices_summary", 300);
    countSent(counters, "log", 5000);
    assert.equal(counters.deviceBytesSent, 1500);
  });

  test("a histogram puts a value in the first bucket whose bound is not below it, and above every bound in the last", () => {
    const histogram = newHistogram([1, 2]);
    for (const value of [0.5, 1, 1.5, 3]) observe(histogram, value);
    assert.deepEqual(histogram.counts, [2, 1, 1]);
    assert.equal(histogram.sum, 6);
  });
});

describe("readiness and the status view", () => {
  test("ready only while connected, serving and fit; otherwise the reason says which", () => {
    const channel = new Channel();
    assert.deepEqual(readiness(channel.state), { ready: false, reason: "not connected (idle)" });
    channel.connect(T0);
    assert.deepEqual(readiness(channel.state), { ready: true, reason: null });
    channel.feed(T0, { type: "fitness", unfit: "12 MB free in /w, below 512 MB" });
    assert.deepEqual(readiness(channel.state), { ready: false, reason: "unfit: 12 MB free in /w, below 512 MB" });
    channel.feed(T0, { type: "fitness", unfit: null }, { type: "message", message: { type: "pause", reason: "x" } });
    assert.deepEqual(readiness(channel.state), { ready: false, reason: "paused by the control plane" });
    channel.feed(T0, { type: "message", message: { type: "resume" } }, { type: "message", message: assign("job-a") });
    channel.feed(T0, { type: "drain", reason: "SIGTERM" });
    assert.equal(readiness(channel.state).reason, "draining");
  });

  test("the view has running jobs with their ages, workers, the outbox, and passes its own schema", () => {
    const channel = new Channel().connect(T0).feed(T0 + 1000, { type: "message", message: assign("job-a") });
    const pool: PoolStats = {
      ...noPool,
      workers: [
        { pid: 99, state: "busy", jobsRun: 3, ageMs: 61_500, maxAgeMs: null, rssBytes: 52_428_800, openFds: 21 },
      ],
      recycled: { memory: 1, fds: 0, age: 2, jobs: 0 },
    };
    const view = statusView(parts(channel, { pool, controlPlaneUrl: "https://user:pw@cp.example.com/" }), T0 + 3500);
    assert.deepEqual(statusViewSchema.parse(view), view);
    assert.equal(view.controlPlaneUrl, "https://cp.example.com/", "no userinfo");
    assert.deepEqual(view.jobs.running, [{ jobId: "job-a", attempt: 1, started: false, ageSeconds: 2.5 }]);
    assert.equal(view.connection.state, "connected");
    assert.equal(view.connection.since, "2026-12-01T00:00:00.000Z");
    assert.deepEqual(view.workers, [
      { pid: 99, state: "busy", jobsRun: 3, ageSeconds: 61.5, rssBytes: 52_428_800, openFds: 21 },
    ]);
    assert.deepEqual(view.recycles, { memory: 1, fds: 0, age: 2, jobs: 0 });
    assert.deepEqual(view.outbox, { results: 0 });
    assert.equal(view.ready, true);

    const lines = daemonSummary(view);
    assert.equal(lines[0], "daemon: pid 4242, runner 0.1.0, up since 2026-12-01T00:00:00.000Z");
    assert.equal(lines[1], "  connected to https://cp.example.com/ since 2026-12-01T00:00:00.000Z");
    assert.ok(lines.includes("  mode: serving; ready for jobs"), lines.join("\n"));
    assert.ok(lines.includes("  jobs running: 1 of 2"));
    assert.ok(lines.includes("    job-a attempt 1: waiting for a worker for 2.5 s"));
    assert.ok(
      lines.includes("    pid 99 busy, 3 job(s) run, up 1 min 2 s, RSS 50.0 MiB, 21 open fds"),
      lines.join("\n"),
    );
    assert.ok(lines.includes("  last error: none"));
  });

  test("a URL without userinfo is kept as it is", () => {
    assert.equal(withoutUserinfo("http://127.0.0.1:8080"), "http://127.0.0.1:8080");
  });
});

describe("metrics", () => {
  test("the exposition parses strictly, with every family typed and the counts in place", async () => {
    const channel = new Channel().connect(T0).feed(T0 + 1000, { type: "message", message: assign("job-a") });
    channel.feed(T0 + 1200, { type: "job_started", ref: { jobId: "job-a", attempt: 1 }, startedAt: "t" });
    countSent(channel.counters, "devices", 777);
    const pool: PoolStats = {
      ...noPool,
      workers: [{ pid: 99, state: "busy", jobsRun: 0, ageMs: 5, maxAgeMs: null, rssBytes: 1000, openFds: null }],
    };
    const devices = { ...noDevices, inventory: 3, confirmed: 2 };
    const { contentType, body } = await renderMetrics(metricFamilies(parts(channel, { pool, devices })));
    assert.match(contentType, /^text\/plain; version=0\.0\.4/);
    const metrics = parseExposition(body);
    const types = Object.fromEntries([...metrics.values()].map((f) => [f.name, f.type]));
    assert.deepEqual(types, {
      runner_connected: "gauge",
      runner_ready: "gauge",
      runner_jobs_total: "counter",
      runner_jobs_running: "gauge",
      runner_job_dispatch_to_start_seconds: "histogram",
      runner_reconnects_total: "counter",
      runner_worker_recycles_total: "counter",
      runner_workers: "gauge",
      runner_worker_rss_bytes: "gauge",
      runner_worker_open_fds: "gauge",
      runner_outbox_results: "gauge",
      runner_device_rows: "gauge",
      runner_device_sync_sent_bytes_total: "counter",
    });
    assert.equal(valueOf(metrics, "runner_connected"), 1);
    assert.equal(valueOf(metrics, "runner_jobs_running"), 1);
    assert.equal(valueOf(metrics, "runner_jobs_total", { outcome: "succeeded" }), 0);
    assert.equal(valueOf(metrics, "runner_job_dispatch_to_start_seconds_bucket", { le: "0.1" }), 0);
    assert.equal(valueOf(metrics, "runner_job_dispatch_to_start_seconds_bucket", { le: "0.25" }), 1);
    assert.equal(valueOf(metrics, "runner_job_dispatch_to_start_seconds_count"), 1);
    assert.equal(valueOf(metrics, "runner_worker_rss_bytes", { pid: "99" }), 1000);
    assert.equal(metrics.get("runner_worker_open_fds")?.samples.length, 0, "no reading, no sample");
    assert.equal(valueOf(metrics, "runner_device_rows", { set: "inventory" }), 3);
    assert.equal(valueOf(metrics, "runner_device_sync_sent_bytes_total"), 777);
  });

  test("the test parser refuses what the format does not allow", () => {
    assert.throws(() => parseExposition("x 1\n"), /before its # TYPE/);
    assert.throws(() => parseExposition("# TYPE x counter\nx 1\nx 2\n"), /repeated/);
    assert.throws(() => parseExposition('# TYPE x gauge\nx{a="1" 2\n'), /not a sample line|bad labels/);
    assert.throws(
      () => parseExposition('# TYPE h histogram\nh_bucket{le="1"} 2\nh_bucket{le="+Inf"} 1\nh_sum 1\nh_count 1\n'),
      /not cumulative/,
    );
    assert.throws(() => parseExposition('# TYPE h histogram\nh_bucket{le="1"} 2\nh_sum 1\nh_count 2\n'), /no \+Inf/);
  });
});
