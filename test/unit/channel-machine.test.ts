// The channel state machine, driven directly: no sockets, no timers, no clock.
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import {
  abandon,
  deadlines,
  initialState,
  nextDeadline,
  ONCE_DONE,
  reconnectDelay,
  replacedDelay,
  step,
  type Effect,
  type Input,
  type State,
  type TimerName,
} from "../../src/channel/machine.js";
import { encode, type ControlMessage, type JobResult } from "../../src/protocol/channel.js";
import { ExitCode } from "../../src/errors.js";
import { assignment, machineConfig, welcome } from "../helpers/channel-fixtures.js";

const config = machineConfig;
const env = { now: 0, random: 0.5 };
const result = (jobId: string, attempt = 1): JobResult => ({
  jobId,
  attempt,
  outcome: "succeeded",
  exitCode: 0,
  signal: null,
  reason: null,
  startedAt: "t0",
  finishedAt: "t1",
});

function run(state: State, ...inputs: Input[]): { state: State; effects: Effect[] } {
  let effects: Effect[] = [];
  for (const input of inputs) {
    const next = step(state, input, env);
    state = next.state;
    effects = next.effects;
  }
  return { state, effects };
}

function connected(held: Parameters<typeof initialState>[1] = {}): State {
  return run(
    initialState(config, held),
    { type: "start" },
    { type: "socket_open" },
    { type: "message", message: welcome },
  ).state;
}

const sent = (effects: Effect[]) =>
  effects.filter((e) => e.type === "send").map((e) => (e as Extract<Effect, { type: "send" }>).message);
const types = (effects: Effect[]) => effects.filter((e) => e.type !== "log").map((e) => e.type);
/** When the state's `timer` deadline falls (env.now is 0 here, so it is also the delay); undefined when it holds none. */
const deadlineOf = (state: State, timer: TimerName) => deadlines(state).find((d) => d.timer === timer)?.at;

describe("the channel state machine", () => {
  test("starting connects, with the configured handshake timeout while no welcome has been seen", () => {
    const { state, effects } = run(initialState(config), { type: "start" });
    assert.equal(state.connection.phase, "connecting");
    assert.deepEqual(effects, [{ type: "connect" }]);
    assert.deepEqual(nextDeadline(state), { timer: "handshake", at: 10_000 });
  });

  test("an open socket gets a hello stating capacity, running jobs and held results", () => {
    const held = { running: [{ jobId: "j1", attempt: 2 }], pending: [result("j0")] };
    const { state, effects } = run(initialState(config, held), { type: "start" }, { type: "socket_open" });
    assert.equal(state.connection.phase, "handshaking");
    assert.deepEqual(sent(effects), [
      {
        type: "hello",
        protocolVersion: 1,
        agentVersion: "0.1.0",
        runnerId: config.runnerId,
        capacity: 2,
        running: [{ jobId: "j1", attempt: 2 }],
        pendingResults: [{ jobId: "j0", attempt: 1 }],
        labels: ["linux"],
      },
    ]);
    assert.deepEqual(
      nextDeadline(state),
      { timer: "handshake", at: 10_000 },
      "the handshake timer set at connect keeps running to the welcome",
    );
  });

  test(
    "a hello lists at most 1024 held results, those finished last; every held result is re-sent after the welcome",
    { timeout: 5000 },
    () => {
      const finishedAt = (i: number) => new Date(Date.UTC(2026, 0, 1) + i * 1000).toISOString();
      const pending = Array.from({ length: 1030 }, (_, i) => ({ ...result(`j${i}`), finishedAt: finishedAt(i) }));
      const opened = run(initialState(config, { pending }), { type: "start" }, { type: "socket_open" });
      const hello = sent(opened.effects)[0];
      assert.ok(hello?.type === "hello");
      assert.equal(hello.pendingResults.length, 1024);
      assert.deepEqual(
        new Set(hello.pendingResults.map((r) => r.jobId)),
        new Set(pending.slice(6).map((r) => r.jobId)),
        "the six finished first are left out",
      );
      const welcomed = run(opened.state, { type: "message", message: welcome });
      assert.equal(sent(welcomed.effects).filter((m) => m.type === "result").length, 1030);
    },
  );

  test(
    "a welcome stating another protocol version closes the connection with 1002 and stops with exit 79, sending nothing",
    { timeout: 5000 },
    () => {
      const held = { pending: [result("j0")] };
      const opened = run(initialState(config, held), { type: "start" }, { type: "socket_open" });
      const { state, effects } = run(opened.state, {
        type: "message",
        message: { ...welcome, protocolVersion: 2 } as ControlMessage,
      });
      assert.equal(state.connection.phase, "stopped");
      assert.deepEqual(sent(effects), [], "no result, no ready");
      assert.deepEqual(
        effects.filter((e) => e.type === "close"),
        [{ type: "close", code: 1002, reason: "protocol version not spoken" }],
      );
      const exit = effects.find((e) => e.type === "exit");
      assert.equal(exit?.type === "exit" ? exit.code : undefined, ExitCode.UPGRADE_REQUIRED);
      assert.match(exit?.type === "exit" ? exit.reason : "", /protocol version 2; this runner speaks 1/);
      assert.equal(nextDeadline(state), null);
    },
  );

  test("the welcome starts the heartbeat, re-sends held results and grants the free slots", () => {
    const held = { running: [{ jobId: "j1", attempt: 1 }], pending: [result("j0")] };
    const { state, effects } = run(
      initialState(config, held),
      { type: "start" },
      { type: "socket_open" },
      { type: "message", message: welcome },
    );
    assert.equal(state.connection.phase, "connected");
    assert.equal(deadlineOf(state, "heartbeat"), 1000);
    assert.deepEqual(sent(effects), [
      { type: "result", result: result("j0") },
      { type: "ready", slots: 1 },
    ]);
  });

  test("an assignment within capacity is started, then accepted", () => {
    const { state, effects } = run(connected(), { type: "message", message: assignment("j1") });
    assert.deepEqual(types(effects), ["start_job", "send"]);
    assert.deepEqual(sent(effects), [{ type: "accept", jobId: "j1", attempt: 1 }]);
    assert.ok(state.running["j1#1"]);
  });

  test("an assignment beyond capacity is rejected and not started", () => {
    const { effects } = run(
      connected(),
      ...["a", "b", "c"].map((id): Input => ({ type: "message", message: assignment(id) })),
    );
    assert.deepEqual(sent(effects), [{ type: "reject", jobId: "c", attempt: 1, reason: "no free slot (2/2 busy)" }]);
    assert.ok(!types(effects).includes("start_job"));
  });

  test("while the machine is unfit (low disk) assignments are rejected with the reason; once fit they run again", () => {
    const unfit = "low disk: 100 MiB free for /w, below --min-free-disk-mb 512";
    const low = run(connected(), { type: "fitness", unfit });
    assert.deepEqual(low.effects, [{ type: "log", level: "warn", message: `this machine rejects new jobs: ${unfit}` }]);
    assert.deepEqual(run(low.state, { type: "fitness", unfit }).effects, [], "an unchanged reading logs nothing");
    const rejected = run(low.state, { type: "message", message: assignment("j1") });
    assert.deepEqual(sent(rejected.effects), [{ type: "reject", jobId: "j1", attempt: 1, reason: unfit }]);
    assert.deepEqual(rejected.state.running, {});

    const twice = run(rejected.state, { type: "message", message: assignment("j2") });
    assert.equal(twice.state.withheldCredits, 2, "no credit is granted back while unfit: it would only be rejected");
    const fit = run(twice.state, { type: "fitness", unfit: null });
    assert.deepEqual(sent(fit.effects), [{ type: "ready", slots: 2 }], "the slots spent on rejects are granted back");
    assert.equal(fit.state.withheldCredits, 0);
    const runs = run(fit.state, { type: "message", message: assignment("j3") });
    assert.deepEqual(types(runs.effects), ["start_job", "send"]);
    assert.deepEqual(sent(runs.effects), [{ type: "accept", jobId: "j3", attempt: 1 }]);
  });

  test("a low-disk reason naming a long work dir is cut to the protocol's 1024 characters in the reject", () => {
    const unfit = `low disk: 100 MiB free for /${"w".repeat(3000)}, below --min-free-disk-mb 512`;
    const low = run(connected(), { type: "fitness", unfit });
    const [reject] = sent(run(low.state, { type: "message", message: assignment("j1") }).effects);
    assert.equal(reject?.type, "reject");
    const reason = (reject as Extract<typeof reject, { type: "reject" }>).reason;
    assert.ok(reason.length <= 1024, `${reason.length} characters`);
    assert.match(reason, /^low disk: 100 MiB free for \/w+… \[\d+ more chars\]$/);
  });

  test("a finished job's reason over 4096 characters is cut before it is kept and sent", () => {
    const long = { ...result("j1"), outcome: "failed" as const, reason: `cannot start: ENOENT: ${"x".repeat(10_000)}` };
    const running = run(connected(), { type: "message", message: assignment("j1") }).state;
    const { effects } = run(running, { type: "job_finished", result: long });
    const persisted = effects.find((e) => e.type === "persist_result") as Extract<Effect, { type: "persist_result" }>;
    const frame = sent(effects).find((message) => message.type === "result");
    assert.ok(frame?.type === "result");
    for (const kept of [persisted.result, frame.result]) {
      assert.ok((kept?.reason ?? "").length <= 4096);
      assert.match(kept?.reason ?? "", /^cannot start: ENOENT: x+… \[\d+ more chars\]$/);
    }
  });

  test("an ephemeral runner (once) takes one job, says goodbye, rejects any other, and stops once its result is acknowledged", () => {
    const onceConfig = { ...config, once: true };
    const ready = run(
      initialState(onceConfig),
      { type: "start" },
      { type: "socket_open" },
      { type: "message", message: welcome },
    );
    assert.deepEqual(sent(ready.effects), [{ type: "ready", slots: 2 }]);
    const taken = run(ready.state, { type: "message", message: assignment("j1") });
    assert.deepEqual(sent(taken.effects), [
      { type: "accept", jobId: "j1", attempt: 1 },
      { type: "goodbye", reason: "once" },
    ]);
    const second = run(taken.state, { type: "message", message: assignment("j2") });
    assert.deepEqual(sent(second.effects), [
      { type: "reject", jobId: "j2", attempt: 1, reason: "once: this runner takes one job and has taken it" },
    ]);
    const finished = run(second.state, { type: "job_finished", result: result("j1") });
    assert.deepEqual(sent(finished.effects), [{ type: "result", result: result("j1") }], "no credit for another job");
    const acked = run(finished.state, {
      type: "message",
      message: { type: "result_ack", jobId: "j1", attempt: 1, applied: true },
    });
    assert.deepEqual(acked.effects.at(-1), { type: "exit", code: ExitCode.OK, reason: ONCE_DONE });
  });

  test("with exit-after-idle the runner stops after that long with no job, and a job restarts the wait", () => {
    const idleConfig = { ...config, exitAfterIdleMs: 5_000 };
    const at = (now: number) => ({ now, random: 0.5 });
    let state = step(initialState(idleConfig), { type: "start" }, at(0)).state;
    state = step(state, { type: "socket_open" }, at(10)).state;
    state = step(state, { type: "message", message: welcome }, at(20)).state;
    assert.deepEqual(
      deadlines(state).find((d) => d.timer === "idle"),
      { timer: "idle", at: 5_000 },
    );
    state = step(state, { type: "message", message: assignment("j1") }, at(1_000)).state;
    assert.equal(
      deadlines(state).find((d) => d.timer === "idle"),
      undefined,
      "no idle deadline while a job runs",
    );
    state = step(state, { type: "job_finished", result: result("j1") }, at(2_000)).state;
    state = step(
      state,
      { type: "message", message: { type: "result_ack", jobId: "j1", attempt: 1, applied: true } },
      at(3_000),
    ).state;
    assert.deepEqual(
      deadlines(state).find((d) => d.timer === "idle"),
      { timer: "idle", at: 8_000 },
    );
    const early = step(state, { type: "timer", timer: "idle" }, at(5_000));
    assert.ok(!early.effects.some((e) => e.type === "exit"), "a stale wake-up does not stop it");
    const due = step(state, { type: "timer", timer: "idle" }, at(8_000));
    assert.deepEqual(due.effects.at(-1), {
      type: "exit",
      code: ExitCode.OK,
      reason: "no job for 5 s: exiting (--exit-after-idle)",
    });
  });

  test("a repeated assignment of a running job is ignored", () => {
    const { effects } = run(
      connected(),
      { type: "message", message: assignment("j1") },
      { type: "message", message: assignment("j1") },
    );
    assert.deepEqual(types(effects), []);
  });

  test("job output becomes numbered log chunks", () => {
    const ref = { jobId: "j1", attempt: 1 };
    const { effects } = run(
      connected(),
      { type: "message", message: assignment("j1") },
      { type: "job_output", ref, stream: "stdout", data: "a" },
      { type: "job_output", ref, stream: "stderr", data: "b" },
    );
    assert.deepEqual(sent(effects), [{ type: "log", jobId: "j1", attempt: 1, seq: 1, stream: "stderr", data: "b" }]);
  });

  test("a finished job's result is persisted before it is sent, and its slot is granted again", () => {
    const { state, effects } = run(
      connected(),
      { type: "message", message: assignment("j1") },
      { type: "job_finished", result: result("j1") },
    );
    assert.deepEqual(types(effects), ["persist_result", "send", "send"]);
    assert.deepEqual(sent(effects), [
      { type: "result", result: result("j1") },
      { type: "ready", slots: 1 },
    ]);
    assert.ok(state.pending["j1#1"]);
    assert.equal(state.running["j1#1"], undefined);
  });

  test("a result acknowledgement discards the result from the outbox", () => {
    const { state, effects } = run(
      connected(),
      { type: "message", message: assignment("j1") },
      { type: "job_finished", result: result("j1") },
      { type: "message", message: { type: "result_ack", jobId: "j1", attempt: 1, applied: true } },
    );
    assert.deepEqual(types(effects), ["discard_result"]);
    assert.deepEqual(state.pending, {});
  });

  test("a result finished while disconnected is persisted, held, and sent after the next welcome", () => {
    let { state } = run(
      connected(),
      { type: "message", message: assignment("j1") },
      { type: "socket_closed", code: 1006, reason: "" },
    );
    const finished = run(state, { type: "job_finished", result: result("j1") });
    assert.deepEqual(types(finished.effects), ["persist_result"]);
    state = finished.state;
    const back = run(
      state,
      { type: "timer", timer: "reconnect" },
      { type: "socket_open" },
      { type: "message", message: welcome },
    );
    assert.deepEqual(sent(back.effects), [
      { type: "result", result: result("j1") },
      { type: "ready", slots: 2 },
    ]);
  });

  test("jobs keep running while the socket is down and are reported in the next hello", () => {
    const { state, effects } = run(
      connected(),
      { type: "message", message: assignment("j1") },
      { type: "socket_closed", code: 1006, reason: "" },
      { type: "timer", timer: "reconnect" },
      { type: "socket_open" },
    );
    assert.ok(!types(effects).includes("cancel_job"));
    const hello = sent(effects)[0] as Extract<ReturnType<typeof sent>[number], { type: "hello" }>;
    assert.deepEqual(hello.running, [{ jobId: "j1", attempt: 1 }]);
    assert.equal(state.connection.phase, "handshaking");
  });

  test("a heartbeat sends a ping and arms the pong timeout; a pong disarms it", () => {
    const beat = run(connected(), { type: "timer", timer: "heartbeat" });
    assert.deepEqual(types(beat.effects), ["ping"]);
    assert.equal(deadlineOf(beat.state, "heartbeat"), 1000);
    assert.equal(deadlineOf(beat.state, "pong"), 1000);
    const pong = run(beat.state, { type: "pong" });
    assert.deepEqual(pong.effects, []);
    assert.equal(deadlineOf(pong.state, "pong"), undefined);
  });

  test("no pong within the interval drops the connection and reconnects with backoff", () => {
    const { state, effects } = run(
      connected(),
      { type: "timer", timer: "heartbeat" },
      { type: "timer", timer: "pong" },
    );
    assert.equal(state.connection.phase, "disconnected");
    assert.deepEqual(
      effects.filter((e) => e.type === "close"),
      [{ type: "close", code: 4003, reason: "heartbeat or handshake timeout" }],
      "the runner's own close code, not the control plane's 4001 (revoked)",
    );
    assert.ok(effects.some((e) => e.type === "log" && /no pong within 1000 ms/.test(e.message)));
    assert.notEqual(deadlineOf(state, "reconnect"), undefined);
  });

  test("waiting a long time for a job is not a connection failure", () => {
    let state = connected();
    for (let i = 0; i < 100; i++) state = run(state, { type: "timer", timer: "heartbeat" }, { type: "pong" }).state;
    assert.equal(state.connection.phase, "connected");
    assert.equal(state.failures, 0);
  });

  test("network errors and 5xx retry for ever with growing, capped, jittered delays", () => {
    let state = run(initialState(config), { type: "start" }).state;
    const delays: number[] = [];
    for (let i = 0; i < 12; i++) {
      const failed = step(
        state,
        { type: "connect_failed", status: i % 2 ? 503 : null, reason: "x" },
        { now: 0, random: 0.999 },
      );
      delays.push(deadlineOf(failed.state, "reconnect") ?? -1);
      state = run(failed.state, { type: "timer", timer: "reconnect" }).state;
    }
    assert.deepEqual(delays.slice(0, 5), [999, 1998, 3996, 7992, 15984]);
    assert.ok(
      delays.slice(5).every((d) => d === 29_970),
      "capped at reconnectCapMs",
    );
    assert.equal(state.connection.phase, "connecting");
  });

  test("full jitter spreads the delay uniformly from zero to the ceiling", () => {
    assert.equal(reconnectDelay(config, 3, 0), 0);
    assert.equal(reconnectDelay(config, 3, 0.5), 4000);
  });

  test("a connection that answers one heartbeat ping resets the backoff; a welcome alone does not", () => {
    let state = run(
      initialState(config),
      { type: "start" },
      { type: "connect_failed", status: null, reason: "x" },
    ).state;
    state = run(
      state,
      { type: "timer", timer: "reconnect" },
      { type: "connect_failed", status: null, reason: "x" },
    ).state;
    assert.equal(state.failures, 2);
    state = run(
      state,
      { type: "timer", timer: "reconnect" },
      { type: "socket_open" },
      { type: "message", message: welcome },
    ).state;
    assert.equal(state.failures, 2, "not reset by merely connecting");
    state = run(state, { type: "timer", timer: "heartbeat" }).state;
    assert.equal(state.failures, 2, "a ping sent is not yet a round trip");
    state = run(state, { type: "pong" }).state;
    assert.equal(state.failures, 0);
  });

  test("outages spaced one heartbeat round trip apart each start from the base delay", () => {
    // Each outage: connected, one ping answered, then the link dies (no pong) and reconnects.
    let state = connected();
    const ceilings: number[] = [];
    for (let outage = 0; outage < 5; outage++) {
      state = run(
        state,
        { type: "timer", timer: "heartbeat" },
        { type: "pong" },
        { type: "timer", timer: "heartbeat" },
      ).state;
      const dropped = step(state, { type: "timer", timer: "pong" }, { now: 0, random: 0.999 });
      ceilings.push(deadlineOf(dropped.state, "reconnect") ?? -1);
      state = run(
        dropped.state,
        { type: "timer", timer: "reconnect" },
        { type: "socket_open" },
        { type: "message", message: welcome },
      ).state;
    }
    assert.deepEqual(ceilings, [999, 999, 999, 999, 999]);
  });

  test("after a welcome, a connection attempt times out after two heartbeat intervals, within [2 s, the configured timeout]", () => {
    const attemptTimeout = (heartbeatIntervalMs: number) => {
      const message: ControlMessage = { ...welcome, heartbeatIntervalMs } as ControlMessage;
      const state = run(
        initialState(config),
        { type: "start" },
        { type: "socket_open" },
        { type: "message", message },
      ).state;
      const attempt = run(
        state,
        { type: "socket_closed", code: 1006, reason: "" },
        { type: "timer", timer: "reconnect" },
      ).state;
      return deadlineOf(attempt, "handshake");
    };
    assert.equal(attemptTimeout(1000), 2000);
    assert.equal(attemptTimeout(300), 2000, "never under the floor");
    assert.equal(attemptTimeout(3000), 6000);
    assert.equal(attemptTimeout(15_000), 10_000, "never over the configured timeout");
  });

  test("an attempt that does not open before the handshake timer is given up and retried with backoff", () => {
    const { state, effects } = run(initialState(config), { type: "start" }, { type: "timer", timer: "handshake" });
    assert.equal(state.connection.phase, "disconnected");
    assert.ok(
      effects.some((e) => e.type === "close"),
      "the half-made socket is dropped",
    );
    assert.notEqual(deadlineOf(state, "reconnect"), undefined);
    assert.equal(state.failures, 1);
  });

  test("after close 4000 replaced the runner waits between half the reconnect cap and the cap, whatever its failure count", () => {
    for (const random of [0, 0.5, 0.999]) {
      const { state } = step(
        connected(),
        { type: "socket_closed", code: 4000, reason: "replaced" },
        { now: 0, random },
      );
      const delay = deadlineOf(state, "reconnect") ?? -1;
      assert.equal(delay, replacedDelay(config, random));
      assert.ok(delay >= config.reconnectCapMs / 2 && delay < config.reconnectCapMs, `${delay}`);
      assert.equal(state.connection.phase, "disconnected");
    }
    const other = step(
      connected(),
      { type: "socket_closed", code: 1001, reason: "going away" },
      { now: 0, random: 0.5 },
    );
    assert.equal(deadlineOf(other.state, "reconnect"), 500, "other closes use the backoff");
  });

  test("401 stops with the needs-operator code instead of reconnecting", () => {
    const { state, effects } = run(
      initialState(config),
      { type: "start" },
      { type: "connect_failed", status: 401, reason: "HTTP 401 credential_revoked" },
    );
    assert.equal(state.connection.phase, "stopped");
    const exit = effects.find((e) => e.type === "exit") as Extract<Effect, { type: "exit" }>;
    assert.equal(exit.code, ExitCode.NEEDS_OPERATOR);
    assert.equal(nextDeadline(state), null);
  });

  test("426 stops with the upgrade-required code", () => {
    const { effects } = run(
      initialState(config),
      { type: "start" },
      { type: "connect_failed", status: 426, reason: "HTTP 426" },
    );
    assert.equal((effects.find((e) => e.type === "exit") as { code: number }).code, ExitCode.UPGRADE_REQUIRED);
  });

  test("a handshake without welcome in time drops the socket and reconnects", () => {
    const { state, effects } = run(
      initialState(config),
      { type: "start" },
      { type: "socket_open" },
      { type: "timer", timer: "handshake" },
    );
    assert.equal(state.connection.phase, "disconnected");
    assert.ok(effects.some((e) => e.type === "close"));
  });

  test("a cancel for a running job cancels it; one for an unknown job is only logged", () => {
    const running = run(connected(), { type: "message", message: assignment("j1") }).state;
    const known = run(running, {
      type: "message",
      message: { type: "cancel", jobId: "j1", attempt: 1, reason: "user" },
    });
    assert.deepEqual(types(known.effects), ["cancel_job"]);
    const unknown = run(running, {
      type: "message",
      message: { type: "cancel", jobId: "zz", attempt: 1, reason: "user" },
    });
    assert.deepEqual(types(unknown.effects), []);
  });

  test("a bad frame is logged and the state kept", () => {
    const state = connected();
    const next = step(state, { type: "bad_frame", detail: "not JSON" }, env);
    assert.equal(next.state, state);
    assert.deepEqual(
      next.effects.map((e) => e.type),
      ["log"],
    );
  });

  test("an input a phase does not expect is logged and the state kept", () => {
    const state = initialState(config);
    const next = step(state, { type: "message", message: welcome }, env);
    assert.equal(next.state, state);
    assert.match((next.effects[0] as { message: string }).message, /unexpected message welcome in phase idle/);
  });

  test("draining refuses new jobs, says goodbye, and stops once results are acknowledged", () => {
    let { state, effects } = run(
      connected(),
      { type: "message", message: assignment("j1") },
      { type: "drain", reason: "SIGTERM" },
    );
    assert.deepEqual(sent(effects), [{ type: "goodbye", reason: "draining" }]);
    assert.equal(deadlineOf(state, "drain"), 5000);
    ({ state, effects } = run(state, { type: "message", message: assignment("j2") }));
    assert.deepEqual(sent(effects), [{ type: "reject", jobId: "j2", attempt: 1, reason: "draining" }]);
    ({ state, effects } = run(state, { type: "job_finished", result: result("j1") }));
    assert.ok(!types(effects).includes("exit"), "waits for the acknowledgement");
    assert.ok(!sent(effects).some((m) => m.type === "ready"), "no new slots while draining");
    ({ state, effects } = run(state, {
      type: "message",
      message: { type: "result_ack", jobId: "j1", attempt: 1, applied: true },
    }));
    assert.equal((effects.find((e) => e.type === "exit") as { code: number }).code, ExitCode.OK);
    assert.equal(state.connection.phase, "stopped");
  });

  test("past the drain deadline running jobs are cancelled", () => {
    const { effects } = run(
      connected(),
      { type: "message", message: assignment("j1") },
      { type: "drain", reason: "SIGTERM" },
      { type: "timer", timer: "drain" },
    );
    assert.deepEqual(types(effects), ["cancel_job"]);
  });

  test("a second signal cancels running jobs and stops once they end, results kept in the outbox", () => {
    let { state, effects } = run(
      connected(),
      { type: "message", message: assignment("j1") },
      { type: "drain", reason: "SIGTERM" },
      { type: "stop_now", reason: "second SIGTERM" },
    );
    assert.deepEqual(types(effects), ["cancel_job"]);
    ({ state, effects } = run(state, { type: "job_finished", result: { ...result("j1"), outcome: "cancelled" } }));
    assert.equal(state.connection.phase, "stopped");
    assert.equal(types(effects)[0], "persist_result", "the result is on disk before the exit");
    assert.ok(types(effects).includes("exit"));
  });

  test("stopped ignores everything", () => {
    const stopped = run(
      initialState(config),
      { type: "start" },
      { type: "connect_failed", status: 401, reason: "x" },
    ).state;
    const next = step(stopped, { type: "timer", timer: "reconnect" }, env);
    assert.equal(next.state, stopped);
    assert.deepEqual(
      next.effects.map((e) => e.type),
      ["log"],
    );
  });

  describe("frames fit the limit the welcome announces", () => {
    const small: ControlMessage = { ...welcome, maxFrameBytes: 1024 } as ControlMessage;
    const smallConnected = () =>
      run(initialState(config), { type: "start" }, { type: "socket_open" }, { type: "message", message: small }).state;
    const ref = { jobId: "j1", attempt: 1 };

    test("a chunk whose escaped frame is over the limit goes as several log frames with consecutive seq, nothing lost", () => {
      const data = '\u0001\u0002é€😀\n"\\'.repeat(200) + "tail";
      const state = run(
        smallConnected(),
        { type: "message", message: assignment("j1") },
        { type: "job_output", ref, stream: "stdout", data: "first" },
      ).state;
      const { state: after, effects } = run(state, { type: "job_output", ref, stream: "stdout", data });
      const frames = sent(effects) as Extract<ReturnType<typeof sent>[number], { type: "log" }>[];
      assert.ok(frames.length > 5, `${frames.length} frames`);
      for (const frame of frames)
        assert.ok(Buffer.byteLength(encode(frame)) <= 1024, `a frame of ${Buffer.byteLength(encode(frame))} bytes`);
      assert.deepEqual(
        frames.map((f) => f.seq),
        frames.map((_, i) => i + 1),
      );
      assert.equal(frames.map((f) => f.data).join(""), data);
      assert.equal(after.running["j1#1"]!.nextLogSeq, frames.length + 1);
    });

    test("the limit in force is the last welcome's", () => {
      const big = run(
        connected(),
        { type: "message", message: assignment("j1") },
        { type: "job_output", ref, stream: "stdout", data: "x".repeat(5000) },
      );
      assert.equal(sent(big.effects).length, 1, "1 MiB: one frame");
      const state = run(
        big.state,
        { type: "socket_closed", code: 1006, reason: "" },
        { type: "timer", timer: "reconnect" },
        { type: "socket_open" },
        { type: "message", message: small },
      ).state;
      const after = run(state, { type: "job_output", ref, stream: "stdout", data: "x".repeat(5000) });
      assert.ok(sent(after.effects).length >= 5);
    });

    test("a result whose reason would not fit is sent with the reason cut and marked; the outbox keeps it whole", () => {
      const long = { ...result("j1"), outcome: "failed" as const, reason: "\u0007".repeat(4096) };
      const state = run(smallConnected(), { type: "message", message: assignment("j1") }).state;
      const { effects } = run(state, { type: "job_finished", result: long });
      const persisted = effects.find((e) => e.type === "persist_result") as Extract<Effect, { type: "persist_result" }>;
      assert.equal(persisted.result.reason, long.reason);
      const frame = sent(effects)[0] as Extract<ReturnType<typeof sent>[number], { type: "result" }>;
      assert.ok(Buffer.byteLength(encode(frame)) <= 1024);
      const reason = frame.result.reason ?? "";
      const kept = reason.indexOf("…");
      assert.equal(reason.slice(0, kept), "\u0007".repeat(kept), "the start of the reason, unchanged");
      assert.equal(reason.slice(kept), `… [${4096 - kept} more chars]`);
      assert.ok(Buffer.byteLength(encode(frame)) > 900, "as much of the reason as fits is kept");
    });
  });

  describe("pause and resume from the control plane", () => {
    const pause: Input = { type: "message", message: { type: "pause", reason: "maintenance" } };
    const resume: Input = { type: "message", message: { type: "resume" } };

    test("a paused runner rejects assignments with reason paused and gives the credit back, keeps its running jobs and connection, and does not exit", () => {
      const { state, effects } = run(connected(), { type: "message", message: assignment("j1") }, pause, {
        type: "message",
        message: assignment("j2"),
      });
      assert.deepEqual(sent(effects), [
        { type: "reject", jobId: "j2", attempt: 1, reason: "paused" },
        { type: "ready", slots: 1 },
      ]);
      assert.equal(state.connection.phase, "connected");
      assert.ok(state.running["j1#1"]);
      const finished = run(
        state,
        { type: "job_output", ref: { jobId: "j1", attempt: 1 }, stream: "stdout", data: "x" },
        { type: "job_finished", result: result("j1") },
      );
      assert.deepEqual(
        sent(finished.effects).map((m) => m.type),
        ["result", "ready"],
        "the result flows, and the finished job's slot is granted as always (the control plane keeps it unused)",
      );
      assert.equal(finished.state.connection.phase, "connected");
    });

    test("resume takes jobs again and sends nothing back: the credits were kept through the pause", () => {
      const paused = run(connected(), { type: "message", message: assignment("j1") }, pause).state;
      const { state, effects } = run(paused, resume);
      assert.deepEqual(sent(effects), []);
      assert.equal(state.mode, "serving");
      assert.deepEqual(types(run(state, { type: "message", message: assignment("j2") }).effects), [
        "start_job",
        "send",
      ]);
    });

    test("resume with every slot busy grants nothing", () => {
      const paused = run(
        connected(),
        { type: "message", message: assignment("j1") },
        { type: "message", message: assignment("j2") },
        pause,
      ).state;
      assert.deepEqual(sent(run(paused, resume).effects), []);
    });

    test("the old drain message is a pause: the runner neither says goodbye nor exits once idle", () => {
      const { state, effects } = run(connected(), {
        type: "message",
        message: { type: "drain", reason: "old control plane" },
      });
      assert.equal(state.mode, "paused", "paused, not draining");
      assert.deepEqual(types(effects), []);
      assert.deepEqual(sent(run(state, { type: "message", message: assignment("j1") }).effects), [
        { type: "reject", jobId: "j1", attempt: 1, reason: "paused" },
        { type: "ready", slots: 1 },
      ]);
    });

    test("a welcome with paused true starts the connection paused, with its credits granted as always", () => {
      const message = { ...welcome, paused: true } as ControlMessage;
      const { state, effects } = run(
        initialState(config),
        { type: "start" },
        { type: "socket_open" },
        { type: "message", message },
      );
      assert.equal(state.mode, "paused");
      assert.deepEqual(
        sent(effects).filter((m) => m.type !== "hello"),
        [{ type: "ready", slots: 2 }],
      );
      assert.deepEqual(sent(run(state, resume).effects), []);
    });

    test("a welcome without paused ends a pause of the previous connection", () => {
      const paused = run(
        connected(),
        pause,
        { type: "socket_closed", code: 1006, reason: "" },
        { type: "timer", timer: "reconnect" },
        { type: "socket_open" },
      ).state;
      const { state, effects } = run(paused, { type: "message", message: welcome });
      assert.equal(state.mode, "serving");
      assert.deepEqual(sent(effects), [{ type: "ready", slots: 2 }]);
    });

    test("a local drain still wins over resume: no ready, and the runner stops when idle", () => {
      const { state, effects } = run(connected(), pause, { type: "drain", reason: "SIGTERM" }, resume);
      assert.deepEqual(sent(effects), []);
      assert.equal(state.connection.phase, "stopped");
    });
  });

  describe("what the machine tells the driver to tell others", () => {
    const news = (effects: Effect[]) =>
      effects.filter((e) => e.type === "tell_connected" || e.type === "tell_disconnected").map((e) => e.type);

    test("the welcome puts its frame limit in force before any frame of the connection goes out", () => {
      const small = { ...welcome, maxFrameBytes: 2048 } as ControlMessage;
      const { effects } = run(
        initialState(config, { pending: [result("j0")] }),
        { type: "start" },
        { type: "socket_open" },
        { type: "message", message: small },
      );
      const limit = effects.findIndex((e) => e.type === "frame_limit");
      assert.deepEqual(effects[limit], { type: "frame_limit", maxFrameBytes: 2048 });
      assert.ok(limit < effects.findIndex((e) => e.type === "send"), "the held result is sent under the new limit");
    });

    test("the welcome tells the companions the channel is connected, with the welcome, after its own frames", () => {
      const { effects } = run(
        initialState(config),
        { type: "start" },
        { type: "socket_open" },
        {
          type: "message",
          message: welcome,
        },
      );
      assert.deepEqual(effects.at(-1), { type: "tell_connected", welcome });
      assert.ok(effects.findIndex((e) => e.type === "send") < effects.length - 1, "after the ready");
    });

    test("leaving the connected phase tells the companions it is disconnected, whichever way it ends", () => {
      const ways: Input[][] = [
        [{ type: "socket_closed", code: 1006, reason: "" }],
        [{ type: "socket_closed", code: 4000, reason: "replaced" }],
        [
          { type: "timer", timer: "heartbeat" },
          { type: "timer", timer: "pong" },
        ],
        [{ type: "drain", reason: "SIGTERM" }],
      ];
      for (const inputs of ways) {
        const { state, effects } = run(connected(), ...inputs);
        assert.notEqual(state.connection.phase, "connected");
        assert.deepEqual(news(effects), ["tell_disconnected"], inputs.map((i) => i.type).join(", "));
      }
    });

    test("a connection that never got its welcome tells the companions nothing when it ends", () => {
      const handshaking = run(initialState(config), { type: "start" }, { type: "socket_open" }).state;
      for (const input of [
        { type: "socket_closed", code: 1006, reason: "" },
        { type: "timer", timer: "handshake" },
        { type: "drain", reason: "SIGTERM" },
      ] satisfies Input[])
        assert.deepEqual(news(step(handshaking, input, env).effects), [], input.type);
    });

    test("inputs that keep the connection tell the companions nothing", () => {
      const { effects } = run(
        connected(),
        { type: "timer", timer: "heartbeat" },
        { type: "pong" },
        { type: "message", message: assignment("j1") },
      );
      assert.deepEqual(news(effects), []);
    });

    test("abandoning a connected machine stops it and tells the companions it is disconnected", () => {
      const { state, effects } = abandon(connected());
      assert.equal(state.connection.phase, "stopped");
      assert.deepEqual(effects, [{ type: "tell_disconnected" }]);
      assert.deepEqual(abandon(initialState(config)).effects, [], "a machine never connected has nothing to tell");
    });
  });

  describe("each phase holds only its own deadlines", () => {
    const at = (now: number): typeof env => ({ now, random: 0.5 });

    test("the handshake deadline while opening, the heartbeat while connected, the backoff while disconnected, none when stopped", () => {
      let state = step(initialState(config), { type: "start" }, at(100)).state;
      assert.deepEqual(deadlines(state), [{ timer: "handshake", at: 10_100 }]);
      state = step(state, { type: "socket_open" }, at(200)).state;
      assert.deepEqual(deadlines(state), [{ timer: "handshake", at: 10_100 }], "the same deadline to the welcome");
      state = step(state, { type: "message", message: welcome }, at(300)).state;
      assert.deepEqual(deadlines(state), [{ timer: "heartbeat", at: 1300 }]);
      state = step(state, { type: "timer", timer: "heartbeat" }, at(1300)).state;
      assert.deepEqual(deadlines(state), [
        { timer: "pong", at: 2300 },
        { timer: "heartbeat", at: 2300 },
      ]);
      assert.deepEqual(nextDeadline(state), { timer: "pong", at: 2300 }, "on a tie an overdue pong comes first");
      state = step(state, { type: "socket_closed", code: 1006, reason: "" }, at(1400)).state;
      assert.deepEqual(deadlines(state), [{ timer: "reconnect", at: 1400 + 500 }]);
      state = step(state, { type: "timer", timer: "reconnect" }, at(1900)).state;
      assert.deepEqual(
        deadlines(state),
        [{ timer: "handshake", at: 1900 + 2000 }],
        "after a welcome: two heartbeats, floored",
      );
      state = step(state, { type: "connect_failed", status: 401, reason: "x" }, at(2000)).state;
      assert.deepEqual(deadlines(state), []);
    });

    test("the drain deadline is held while draining, whatever the phase, and the next deadline is the earliest", () => {
      const draining = step(connected(), { type: "message", message: assignment("j1") }, env).state;
      const { state } = step(draining, { type: "drain", reason: "SIGTERM" }, at(50));
      assert.equal(deadlineOf(state, "drain"), 5050);
      assert.deepEqual(nextDeadline(state), { timer: "heartbeat", at: 1000 });
      const away = step(state, { type: "socket_closed", code: 1006, reason: "" }, at(60)).state;
      assert.equal(deadlineOf(away, "drain"), 5050, "kept across the disconnect");
      assert.deepEqual(nextDeadline(away), { timer: "reconnect", at: 60 + 500 });
    });

    test("a timer for a deadline the phase does not hold is ignored and the state kept", () => {
      const state = connected();
      const next = step(state, { type: "timer", timer: "reconnect" }, env);
      assert.equal(next.state, state);
      assert.match((next.effects[0] as { message: string }).message, /ignored the reconnect timer in phase connected/);
      const notDraining = step(state, { type: "timer", timer: "drain" }, env);
      assert.equal(notDraining.state, state);
    });
  });

  describe("the mode is one of serving, paused, draining, stopping", () => {
    const pause: Input = { type: "message", message: { type: "pause", reason: "maintenance" } };
    const resume: Input = { type: "message", message: { type: "resume" } };
    const withJob = () => run(connected(), { type: "message", message: assignment("j1") }).state;

    test("a new machine serves; a pause makes it paused and a resume serving again", () => {
      assert.equal(initialState(config).mode, "serving");
      const paused = run(withJob(), pause).state;
      assert.equal(paused.mode, "paused");
      assert.equal(run(paused, resume).state.mode, "serving");
    });

    test("a local drain makes a serving or paused runner draining, with its deadline", () => {
      for (const before of [withJob(), run(withJob(), pause).state]) {
        const { state } = run(before, { type: "drain", reason: "SIGTERM" });
        assert.equal(state.mode, "draining", `from ${before.mode}`);
        assert.equal(state.drainAt, config.drainTimeoutMs);
      }
    });

    test("the drain deadline makes a draining runner stopping, with no deadline left", () => {
      const { state } = run(withJob(), { type: "drain", reason: "SIGTERM" }, { type: "timer", timer: "drain" });
      assert.equal(state.mode, "stopping");
      assert.equal(state.drainAt, null);
    });

    test("a second signal makes a draining runner stopping and drops the drain deadline", () => {
      const { state } = run(withJob(), { type: "drain", reason: "SIGTERM" }, { type: "stop_now", reason: "again" });
      assert.equal(state.mode, "stopping");
      assert.equal(deadlineOf(state, "drain"), undefined);
    });

    test("a pause or a resume while draining leaves the runner draining", () => {
      const draining = run(withJob(), { type: "drain", reason: "SIGTERM" }).state;
      assert.equal(run(draining, pause).state.mode, "draining");
      assert.equal(run(draining, resume).state.mode, "draining");
      assert.deepEqual(sent(run(draining, resume).effects), []);
    });

    test("a welcome while draining keeps the runner draining, whatever it says of the pause", () => {
      const away = run(
        withJob(),
        { type: "drain", reason: "SIGTERM" },
        { type: "socket_closed", code: 1006, reason: "" },
        { type: "timer", timer: "reconnect" },
        { type: "socket_open" },
      ).state;
      for (const paused of [true, false]) {
        const { state, effects } = run(away, { type: "message", message: { ...welcome, paused } as ControlMessage });
        assert.equal(state.mode, "draining");
        assert.deepEqual(sent(effects), [{ type: "goodbye", reason: "draining" }]);
      }
    });

    test("a second signal before any drain makes a serving runner stopping at once", () => {
      const { state } = run(withJob(), { type: "stop_now", reason: "SIGKILL-like" });
      assert.equal(state.mode, "stopping");
    });
  });

  test("text from the network is capped before it reaches a log line", () => {
    const huge = "x".repeat(900_000);
    const running = run(connected(), { type: "message", message: assignment("j1") }).state;
    const inputs: Input[] = [
      { type: "bad_frame", detail: huge },
      { type: "message", message: { type: "error", code: huge, message: huge } },
      { type: "message", message: { type: "cancel", jobId: "j1", attempt: 1, reason: huge } },
      { type: "message", message: { type: "pause", reason: huge } },
      { type: "socket_closed", code: 1011, reason: huge },
    ];
    for (const input of inputs) {
      for (const effect of step(running, input, env).effects) {
        if (effect.type === "log")
          assert.ok(JSON.stringify(effect).length < 3000, `${input.type}: ${JSON.stringify(effect).length} chars`);
      }
    }
    const failed = step(
      run(initialState(config), { type: "start" }).state,
      { type: "connect_failed", status: 503, reason: huge },
      env,
    );
    for (const effect of failed.effects) if (effect.type === "log") assert.ok(JSON.stringify(effect).length < 3000);
  });
});
