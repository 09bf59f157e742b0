// The channel state machine, driven directly: no sockets, no timers, no clock.
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { initialState, reconnectDelay, step, type Effect, type Input, type MachineConfig, type State } from "../../src/channel/machine.js";
import type { Assignment, ControlMessage, JobResult } from "../../src/protocol/channel.js";
import { ExitCode } from "../../src/errors.js";

const config: MachineConfig = {
  runnerId: "rnr_abcdefghijklmnopqrstuvwx",
  protocolVersion: 1,
  agentVersion: "0.1.0",
  labels: ["linux"],
  capacity: 2,
  reconnectBaseMs: 1000,
  reconnectCapMs: 30_000,
  stableAfterMs: 60_000,
  handshakeTimeoutMs: 10_000,
  drainTimeoutMs: 5_000,
};
const env = { now: 0, random: 0.5 };
const welcome: ControlMessage = { type: "welcome", protocolVersion: 1, heartbeatIntervalMs: 1000, leaseMs: 30_000, maxFrameBytes: 1 << 20, fenced: [], paused: false };
const assignment = (jobId: string, attempt = 1): Assignment => ({
  type: "assign",
  jobId,
  attempt,
  job: { kind: "command", argv: ["true"], env: {} },
  timeoutMs: 1000,
  cancelGraceMs: 100,
  leaseExpiresAt: "2026-01-01T00:00:00Z",
});
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
  return run(initialState(config, held), { type: "start" }, { type: "socket_open" }, { type: "message", message: welcome }).state;
}

const sent = (effects: Effect[]) => effects.filter((e) => e.type === "send").map((e) => (e as Extract<Effect, { type: "send" }>).message);
const types = (effects: Effect[]) => effects.filter((e) => e.type !== "log").map((e) => e.type);

describe("the channel state machine", () => {
  test("starting connects", () => {
    const { state, effects } = run(initialState(config), { type: "start" });
    assert.equal(state.phase, "connecting");
    assert.deepEqual(effects, [{ type: "connect" }]);
  });

  test("an open socket gets a hello stating capacity, running jobs and held results", () => {
    const held = { running: [{ jobId: "j1", attempt: 2 }], pending: [result("j0")] };
    const { state, effects } = run(initialState(config, held), { type: "start" }, { type: "socket_open" });
    assert.equal(state.phase, "handshaking");
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
    assert.deepEqual(effects[1], { type: "set_timer", timer: "handshake", ms: 10_000 });
  });

  test("the welcome starts the heartbeat, re-sends held results and grants the free slots", () => {
    const held = { running: [{ jobId: "j1", attempt: 1 }], pending: [result("j0")] };
    const { state, effects } = run(initialState(config, held), { type: "start" }, { type: "socket_open" }, { type: "message", message: welcome });
    assert.equal(state.phase, "connected");
    assert.ok(effects.some((e) => e.type === "set_timer" && e.timer === "heartbeat" && e.ms === 1000));
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
    const { effects } = run(connected(), ...["a", "b", "c"].map((id): Input => ({ type: "message", message: assignment(id) })));
    assert.deepEqual(sent(effects), [{ type: "reject", jobId: "c", attempt: 1, reason: "no free slot (2/2 busy)" }]);
    assert.ok(!types(effects).includes("start_job"));
  });

  test("a repeated assignment of a running job is ignored", () => {
    const { effects } = run(connected(), { type: "message", message: assignment("j1") }, { type: "message", message: assignment("j1") });
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
    const { state, effects } = run(connected(), { type: "message", message: assignment("j1") }, { type: "job_finished", result: result("j1") });
    assert.deepEqual(types(effects), ["persist_result", "send", "send"]);
    assert.deepEqual(sent(effects), [{ type: "result", result: result("j1") }, { type: "ready", slots: 1 }]);
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
    let { state } = run(connected(), { type: "message", message: assignment("j1") }, { type: "socket_closed", code: 1006, reason: "" });
    const finished = run(state, { type: "job_finished", result: result("j1") });
    assert.deepEqual(types(finished.effects), ["persist_result"]);
    state = finished.state;
    const back = run(state, { type: "timer", timer: "reconnect" }, { type: "socket_open" }, { type: "message", message: welcome });
    assert.deepEqual(sent(back.effects), [{ type: "result", result: result("j1") }, { type: "ready", slots: 2 }]);
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
    assert.equal(state.phase, "handshaking");
  });

  test("a heartbeat sends a ping and arms the pong timeout; a pong disarms it", () => {
    const beat = run(connected(), { type: "timer", timer: "heartbeat" });
    assert.deepEqual(types(beat.effects), ["ping", "set_timer", "set_timer"]);
    assert.ok(beat.state.awaitingPong);
    const pong = run(beat.state, { type: "pong" });
    assert.deepEqual(pong.effects, [{ type: "clear_timer", timer: "pong" }]);
    assert.equal(pong.state.awaitingPong, false);
  });

  test("no pong within the interval drops the connection and reconnects with backoff", () => {
    const { state, effects } = run(connected(), { type: "timer", timer: "heartbeat" }, { type: "timer", timer: "pong" });
    assert.equal(state.phase, "disconnected");
    assert.ok(effects.some((e) => e.type === "close"));
    assert.ok(effects.some((e) => e.type === "log" && /no pong within 1000 ms/.test(e.message)));
    assert.ok(effects.some((e) => e.type === "set_timer" && e.timer === "reconnect"));
  });

  test("waiting a long time for a job is not a connection failure", () => {
    let state = connected();
    for (let i = 0; i < 100; i++) state = run(state, { type: "timer", timer: "heartbeat" }, { type: "pong" }).state;
    assert.equal(state.phase, "connected");
    assert.equal(state.failures, 0);
  });

  test("network errors and 5xx retry for ever with growing, capped, jittered delays", () => {
    let state = run(initialState(config), { type: "start" }).state;
    const delays: number[] = [];
    for (let i = 0; i < 12; i++) {
      const failed = step(state, { type: "connect_failed", status: i % 2 ? 503 : null, reason: "x" }, { now: 0, random: 0.999 });
      const timer = failed.effects.find((e) => e.type === "set_timer" && e.timer === "reconnect") as { ms: number };
      delays.push(timer.ms);
      state = run(failed.state, { type: "timer", timer: "reconnect" }).state;
    }
    assert.deepEqual(delays.slice(0, 5), [999, 1998, 3996, 7992, 15984]);
    assert.ok(delays.slice(5).every((d) => d === 29_970), "capped at reconnectCapMs");
    assert.equal(state.phase, "connecting");
  });

  test("full jitter spreads the delay uniformly from zero to the ceiling", () => {
    assert.equal(reconnectDelay(config, 3, 0), 0);
    assert.equal(reconnectDelay(config, 3, 0.5), 4000);
  });

  test("a connection that stays up resets the backoff", () => {
    let state = run(initialState(config), { type: "start" }, { type: "connect_failed", status: null, reason: "x" }).state;
    state = run(state, { type: "timer", timer: "reconnect" }, { type: "connect_failed", status: null, reason: "x" }).state;
    assert.equal(state.failures, 2);
    state = run(state, { type: "timer", timer: "reconnect" }, { type: "socket_open" }, { type: "message", message: welcome }).state;
    assert.equal(state.failures, 2, "not reset by merely connecting");
    state = run(state, { type: "timer", timer: "stable" }).state;
    assert.equal(state.failures, 0);
  });

  test("401 stops with the needs-operator code instead of reconnecting", () => {
    const { state, effects } = run(initialState(config), { type: "start" }, { type: "connect_failed", status: 401, reason: "HTTP 401 credential_revoked" });
    assert.equal(state.phase, "stopped");
    const exit = effects.find((e) => e.type === "exit") as Extract<Effect, { type: "exit" }>;
    assert.equal(exit.code, ExitCode.NEEDS_OPERATOR);
    assert.ok(!effects.some((e) => e.type === "set_timer"));
  });

  test("426 stops with the upgrade-required code", () => {
    const { effects } = run(initialState(config), { type: "start" }, { type: "connect_failed", status: 426, reason: "HTTP 426" });
    assert.equal((effects.find((e) => e.type === "exit") as { code: number }).code, ExitCode.UPGRADE_REQUIRED);
  });

  test("a handshake without welcome in time drops the socket and reconnects", () => {
    const { state, effects } = run(initialState(config), { type: "start" }, { type: "socket_open" }, { type: "timer", timer: "handshake" });
    assert.equal(state.phase, "disconnected");
    assert.ok(effects.some((e) => e.type === "close"));
  });

  test("a cancel for a running job cancels it; one for an unknown job is only logged", () => {
    const running = run(connected(), { type: "message", message: assignment("j1") }).state;
    const known = run(running, { type: "message", message: { type: "cancel", jobId: "j1", attempt: 1, reason: "user" } });
    assert.deepEqual(types(known.effects), ["cancel_job"]);
    const unknown = run(running, { type: "message", message: { type: "cancel", jobId: "zz", attempt: 1, reason: "user" } });
    assert.deepEqual(types(unknown.effects), []);
  });

  test("a bad frame is logged and the state kept", () => {
    const state = connected();
    const next = step(state, { type: "bad_frame", detail: "not JSON" }, env);
    assert.equal(next.state, state);
    assert.deepEqual(next.effects.map((e) => e.type), ["log"]);
  });

  test("an input a phase does not expect is logged and the state kept", () => {
    const state = initialState(config);
    const next = step(state, { type: "message", message: welcome }, env);
    assert.equal(next.state, state);
    assert.match((next.effects[0] as { message: string }).message, /unexpected message welcome in phase idle/);
  });

  test("draining refuses new jobs, says goodbye, and stops once results are acknowledged", () => {
    let { state, effects } = run(connected(), { type: "message", message: assignment("j1") }, { type: "drain", reason: "SIGTERM" });
    assert.deepEqual(sent(effects), [{ type: "goodbye", reason: "draining" }]);
    assert.ok(effects.some((e) => e.type === "set_timer" && e.timer === "drain" && e.ms === 5000));
    ({ state, effects } = run(state, { type: "message", message: assignment("j2") }));
    assert.deepEqual(sent(effects), [{ type: "reject", jobId: "j2", attempt: 1, reason: "draining" }]);
    ({ state, effects } = run(state, { type: "job_finished", result: result("j1") }));
    assert.ok(!types(effects).includes("exit"), "waits for the acknowledgement");
    assert.ok(!sent(effects).some((m) => m.type === "ready"), "no new slots while draining");
    ({ state, effects } = run(state, { type: "message", message: { type: "result_ack", jobId: "j1", attempt: 1, applied: true } }));
    assert.equal((effects.find((e) => e.type === "exit") as { code: number }).code, ExitCode.OK);
    assert.equal(state.phase, "stopped");
  });

  test("past the drain deadline running jobs are cancelled", () => {
    const { effects } = run(connected(), { type: "message", message: assignment("j1") }, { type: "drain", reason: "SIGTERM" }, { type: "timer", timer: "drain" });
    assert.deepEqual(types(effects), ["cancel_job"]);
  });

  test("a second signal cancels running jobs and stops once they end, results kept in the outbox", () => {
    let { state, effects } = run(connected(), { type: "message", message: assignment("j1") }, { type: "drain", reason: "SIGTERM" }, { type: "stop_now", reason: "second SIGTERM" });
    assert.deepEqual(types(effects), ["cancel_job"]);
    ({ state, effects } = run(state, { type: "job_finished", result: { ...result("j1"), outcome: "cancelled" } }));
    assert.equal(state.phase, "stopped");
    assert.equal(types(effects)[0], "persist_result", "the result is on disk before the exit");
    assert.ok(types(effects).includes("exit"));
  });

  test("stopped ignores everything", () => {
    const stopped = run(initialState(config), { type: "start" }, { type: "connect_failed", status: 401, reason: "x" }).state;
    const next = step(stopped, { type: "timer", timer: "reconnect" }, env);
    assert.equal(next.state, stopped);
    assert.deepEqual(next.effects.map((e) => e.type), ["log"]);
  });
});
