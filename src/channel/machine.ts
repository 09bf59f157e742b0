// The agent's side of the channel as a sans-IO state machine: `step(state, input, env)`
// returns the next state and the effects to carry out (connect, send, timers, start or
// cancel a job, persist, log, exit). It does no I/O and reads no clock: time and randomness
// come in `env`. Each phase has its own handler that deals with every input; anything a
// phase does not expect is logged and the state kept.
import { ExitCode } from "../errors.js";
import { capText } from "../log/cap-text.js";
import {
  DEFAULT_MAX_FRAME_BYTES,
  type Assignment,
  type ControlMessage,
  type JobRef,
  type JobResult,
  type RunnerMessage,
} from "../protocol/channel.js";
import { fitResultFrame, splitLogData } from "./frame-fit.js";

export interface MachineConfig {
  runnerId: string;
  protocolVersion: number;
  agentVersion: string;
  labels: string[];
  capacity: number;
  /**
   * Reconnect backoff: full jitter over base·2^failures, capped. The failure count resets when
   * a connection has answered one heartbeat ping (a full round trip after the welcome).
   */
  reconnectBaseMs: number;
  reconnectCapMs: number;
  /**
   * The longest a connection attempt may take, from its start to the welcome; also the
   * timeout before any welcome was seen. After a welcome the timeout follows the announced
   * heartbeat: see `handshakeTimeout`.
   */
  handshakeTimeoutMs: number;
  /** After a drain starts, running jobs get this long before they are cancelled. */
  drainTimeoutMs: number;
}

export type Phase = "idle" | "disconnected" | "connecting" | "handshaking" | "connected" | "stopped";

export interface RunningEntry {
  ref: JobRef;
  nextLogSeq: number;
  started: boolean;
}

export interface State {
  phase: Phase;
  config: MachineConfig;
  /** Consecutive connection failures since a connection last answered a heartbeat ping. */
  failures: number;
  heartbeatMs: number | null;
  /** The heartbeat interval of the last welcome, kept across reconnects: it sets the handshake timeout. */
  lastHeartbeatMs: number | null;
  /** The largest frame this runner may send: the last welcome's `maxFrameBytes`. */
  maxFrameBytes: number;
  /** Told by the control plane (`pause`, or `welcome.paused`): take no new jobs, keep the rest going. */
  paused: boolean;
  awaitingPong: boolean;
  /** No new jobs; stop once running jobs are done and their results acknowledged. */
  draining: boolean;
  /** Past the drain deadline (or told to stop now): stop as soon as no job runs. */
  stopping: boolean;
  running: Record<string, RunningEntry>;
  /** Results in the outbox that the control plane has not acknowledged. */
  pending: Record<string, JobResult>;
  /** Log chunks not sent because the socket was down (counted, not kept). */
  droppedLogChunks: number;
}

export type TimerName = "reconnect" | "handshake" | "heartbeat" | "pong" | "drain";

export type Input =
  | { type: "start" }
  | { type: "socket_open" }
  /** The connection attempt failed: an HTTP status from the upgrade, or null for a network error. */
  | { type: "connect_failed"; status: number | null; reason: string }
  | { type: "socket_closed"; code: number; reason: string }
  | { type: "message"; message: ControlMessage }
  | { type: "bad_frame"; detail: string }
  | { type: "pong" }
  | { type: "timer"; timer: TimerName }
  | { type: "job_started"; ref: JobRef; startedAt: string }
  | { type: "job_output"; ref: JobRef; stream: "stdout" | "stderr"; data: string }
  | { type: "job_finished"; result: JobResult }
  /** First local SIGTERM/SIGINT (the control plane's `drain` is a `pause`, not this). */
  | { type: "drain"; reason: string }
  /** Second signal: cancel running jobs and stop. */
  | { type: "stop_now"; reason: string };

export type LogLevel = "debug" | "info" | "warn" | "error";

export type Effect =
  | { type: "connect" }
  | { type: "close"; code: number; reason: string }
  | { type: "send"; message: RunnerMessage }
  | { type: "ping" }
  | { type: "set_timer"; timer: TimerName; ms: number }
  | { type: "clear_timer"; timer: TimerName }
  | { type: "start_job"; assignment: Assignment }
  | { type: "cancel_job"; ref: JobRef; reason: string }
  /** Write the result to the outbox (fsync) — carried out before any later effect. */
  | { type: "persist_result"; result: JobResult }
  /** The control plane acknowledged it: remove it from the outbox. */
  | { type: "discard_result"; ref: JobRef }
  | { type: "log"; level: LogLevel; message: string; fields?: Record<string, unknown> }
  | { type: "exit"; code: number; reason: string };

export interface StepEnv {
  now: number;
  /** A uniform random number in [0, 1), for the reconnect jitter. */
  random: number;
}

export interface Step {
  state: State;
  effects: Effect[];
}

export function keyOf(ref: JobRef): string {
  return `${ref.jobId}#${ref.attempt}`;
}

/** The state a daemon starts in: jobs still running and results still held from before. */
export function initialState(config: MachineConfig, held: { running?: JobRef[]; pending?: JobResult[] } = {}): State {
  return {
    phase: "idle",
    config,
    failures: 0,
    heartbeatMs: null,
    lastHeartbeatMs: null,
    maxFrameBytes: DEFAULT_MAX_FRAME_BYTES,
    paused: false,
    awaitingPong: false,
    draining: false,
    stopping: false,
    running: Object.fromEntries((held.running ?? []).map((ref) => [keyOf(ref), { ref, nextLogSeq: 0, started: true }])),
    pending: Object.fromEntries((held.pending ?? []).map((result) => [keyOf(result), result])),
    droppedLogChunks: 0,
  };
}

export function step(state: State, input: Input, env: StepEnv): Step {
  // Inputs that mean the same in every live phase.
  if (state.phase !== "stopped") {
    switch (input.type) {
      case "bad_frame":
        return { state, effects: [log("warn", `ignored a frame from the control plane: ${capText(input.detail)}`)] };
      case "job_started":
        return onJobStarted(state, input.ref, input.startedAt);
      case "job_output":
        return onJobOutput(state, input);
      case "job_finished":
        return onJobFinished(state, input.result);
      case "drain":
        return onDrain(state, input.reason);
      case "stop_now":
        return onStopNow(state, input.reason);
    }
  }
  switch (state.phase) {
    case "idle":
      return stepIdle(state, input);
    case "disconnected":
      return stepDisconnected(state, input);
    case "connecting":
      return stepConnecting(state, input, env);
    case "handshaking":
      return stepHandshaking(state, input, env);
    case "connected":
      return stepConnected(state, input, env);
    case "stopped":
      return unexpected(state, input, "debug");
  }
}

// ---- per-phase handlers ----

function stepIdle(state: State, input: Input): Step {
  if (input.type === "start") return connectNow(state);
  return unexpected(state, input);
}

function stepDisconnected(state: State, input: Input): Step {
  switch (input.type) {
    case "timer":
      if (input.timer === "reconnect") return connectNow(state);
      if (input.timer === "drain") return onDrainDeadline(state);
      return ignoreStaleTimer(state, input.timer);
    case "socket_closed":
    case "pong":
      return { state, effects: [] }; // late events from a socket already given up on
    default:
      return unexpected(state, input);
  }
}

function stepConnecting(state: State, input: Input, env: StepEnv): Step {
  switch (input.type) {
    case "socket_open": {
      const hello: RunnerMessage = {
        type: "hello",
        protocolVersion: state.config.protocolVersion,
        agentVersion: state.config.agentVersion,
        runnerId: state.config.runnerId,
        capacity: state.config.capacity,
        running: Object.values(state.running).map((r) => r.ref),
        pendingResults: Object.values(state.pending).map((r) => ({ jobId: r.jobId, attempt: r.attempt })),
        labels: state.config.labels,
      };
      // The handshake timer set at `connect` keeps running until the welcome.
      return { state: { ...state, phase: "handshaking" }, effects: [{ type: "send", message: hello }] };
    }
    case "connect_failed":
      return onConnectFailed(state, input.status, input.reason, env);
    case "socket_closed":
      return reconnectLater(
        state,
        `the connection closed before it opened (${input.code} ${capText(input.reason)})`,
        env,
        [clearTimer("handshake")],
      );
    case "timer":
      if (input.timer === "handshake")
        return dropConnection(state, `the connection did not open within ${handshakeTimeout(state)} ms`, env);
      if (input.timer === "drain") return onDrainDeadline(state);
      return ignoreStaleTimer(state, input.timer);
    default:
      return unexpected(state, input);
  }
}

function stepHandshaking(state: State, input: Input, env: StepEnv): Step {
  switch (input.type) {
    case "message":
      if (input.message.type === "welcome") return onWelcome(state, input.message);
      if (input.message.type === "error")
        return {
          state,
          effects: [
            log("warn", `control plane error: ${capText(input.message.code)}: ${capText(input.message.message)}`),
          ],
        };
      return unexpected(state, input);
    case "timer":
      if (input.timer === "handshake") {
        return dropConnection(state, `no welcome from the control plane within ${handshakeTimeout(state)} ms`, env);
      }
      if (input.timer === "drain") return onDrainDeadline(state);
      return ignoreStaleTimer(state, input.timer);
    case "socket_closed": {
      const cleared = clearConnectionTimers(state);
      return reconnectAfterClose(
        cleared.state,
        "the control plane closed the connection during the handshake",
        input,
        env,
        cleared.effects,
      );
    }
    case "pong":
      return { state, effects: [] };
    default:
      return unexpected(state, input);
  }
}

function stepConnected(state: State, input: Input, env: StepEnv): Step {
  switch (input.type) {
    case "message":
      return onControlMessage(state, input.message);
    case "pong":
      // A full round trip after the welcome: the link works both ways, so the backoff starts over.
      return { state: { ...state, awaitingPong: false, failures: 0 }, effects: [clearTimer("pong")] };
    case "timer":
      switch (input.timer) {
        case "heartbeat":
          return onHeartbeat(state);
        case "pong":
          return dropConnection(state, `no pong within ${state.heartbeatMs} ms: the connection is presumed dead`, env);
        case "drain":
          return onDrainDeadline(state);
        default:
          return ignoreStaleTimer(state, input.timer);
      }
    case "socket_closed": {
      const cleared = clearConnectionTimers(state);
      return reconnectAfterClose(cleared.state, "the connection closed", input, env, cleared.effects);
    }
    default:
      return unexpected(state, input);
  }
}

// ---- connection life ----

function onWelcome(state: State, welcome: Extract<ControlMessage, { type: "welcome" }>): Step {
  const paused = welcome.paused === true;
  const next: State = {
    ...state,
    phase: "connected",
    heartbeatMs: welcome.heartbeatIntervalMs,
    lastHeartbeatMs: welcome.heartbeatIntervalMs,
    maxFrameBytes: welcome.maxFrameBytes,
    paused,
    awaitingPong: false,
  };
  const effects: Effect[] = [
    clearTimer("handshake"),
    { type: "set_timer", timer: "heartbeat", ms: welcome.heartbeatIntervalMs },
    log("info", "connected to the control plane", {
      heartbeatMs: welcome.heartbeatIntervalMs,
      maxFrameBytes: welcome.maxFrameBytes,
      paused,
      running: Object.keys(state.running).length,
      pendingResults: Object.keys(state.pending).length,
    }),
  ];
  for (const result of Object.values(state.pending))
    effects.push({ type: "send", message: fitResultFrame(result, next.maxFrameBytes) });
  if (state.draining) effects.push({ type: "send", message: { type: "goodbye", reason: "draining" } });
  else effects.push(...grantFreeSlots(next));
  return finishIfDone({ state: next, effects });
}

/**
 * `ready` for every free slot, unless draining. A pause does not change the credits: the
 * control plane keeps them and does not use them while the runner is paused, so they are
 * exact again the moment it resumes.
 */
function grantFreeSlots(state: State): Effect[] {
  if (state.draining) return [];
  const free = state.config.capacity - Object.keys(state.running).length;
  return free > 0 ? [{ type: "send", message: { type: "ready", slots: free } }] : [];
}

/** Heartbeat intervals a connection attempt may take once the heartbeat is known... */
export const HANDSHAKE_HEARTBEATS = 2;
/** ...but never less than this: a TCP + TLS + upgrade round trip on a slow link needs it. */
export const HANDSHAKE_FLOOR_MS = 2_000;

/**
 * How long a connection attempt may take, from its start to the welcome. Once a welcome has
 * announced a heartbeat, twice that interval, within [HANDSHAKE_FLOOR_MS, the configured
 * timeout]: an attempt made into a dead link then fails about as fast as a dead connection is
 * noticed. Before any welcome, the configured timeout.
 */
export function handshakeTimeout(state: State): number {
  const ceiling = state.config.handshakeTimeoutMs;
  if (state.lastHeartbeatMs === null) return ceiling;
  return Math.min(ceiling, Math.max(HANDSHAKE_FLOOR_MS, HANDSHAKE_HEARTBEATS * state.lastHeartbeatMs));
}

function connectNow(state: State): Step {
  return {
    state: { ...state, phase: "connecting" },
    effects: [{ type: "connect" }, { type: "set_timer", timer: "handshake", ms: handshakeTimeout(state) }],
  };
}

function onConnectFailed(state: State, status: number | null, wireReason: string, env: StepEnv): Step {
  const reason = capText(wireReason);
  if (status === 401 || status === 403 || status === 404) {
    const why =
      status === 404
        ? "the control plane has no record of this runner"
        : "the control plane rejected this runner's credential";
    return stopWith(state, ExitCode.NEEDS_OPERATOR, `${why} (${reason}); run \`runner repair\` to see what to do`);
  }
  if (status === 426)
    return stopWith(
      state,
      ExitCode.UPGRADE_REQUIRED,
      `the control plane requires a different runner version (${reason})`,
    );
  return reconnectLater(state, `cannot connect: ${reason}`, env, [clearTimer("handshake")]);
}

function onHeartbeat(state: State): Step {
  const ms = state.heartbeatMs ?? 15_000;
  const effects: Effect[] = [{ type: "set_timer", timer: "heartbeat", ms }];
  if (state.awaitingPong) return { state, effects };
  return {
    state: { ...state, awaitingPong: true },
    effects: [{ type: "ping" }, { type: "set_timer", timer: "pong", ms }, ...effects],
  };
}

function clearConnectionTimers(state: State): Step {
  const effects: Effect[] = (["handshake", "heartbeat", "pong"] as const).map(clearTimer);
  return { state: { ...state, awaitingPong: false, heartbeatMs: null }, effects };
}

/** We give up on a live socket (no pong, no welcome): close it and reconnect later. */
function dropConnection(state: State, reason: string, env: StepEnv): Step {
  const cleared = clearConnectionTimers(state);
  return reconnectLater(cleared.state, reason, env, [
    ...cleared.effects,
    { type: "close", code: 4001, reason: "heartbeat or handshake timeout" },
  ]);
}

/** Full jitter: a uniform delay in [0, min(cap, base·2^failures)). */
export function reconnectDelay(config: MachineConfig, failures: number, random: number): number {
  const ceiling = Math.min(config.reconnectCapMs, config.reconnectBaseMs * 2 ** Math.min(failures, 30));
  return Math.floor(random * ceiling);
}

/**
 * After close 4000 (another connection of this runner replaced this one): a uniform delay in
 * [cap/2, cap), whatever the failure count, so that two processes sharing a credential do not
 * take the connection from each other in a tight loop.
 */
export function replacedDelay(config: MachineConfig, random: number): number {
  return Math.floor((config.reconnectCapMs * (1 + random)) / 2);
}

/** The close code of a connection another one of the same runner replaced (PROTOCOL.md, Close codes). */
export const CLOSE_REPLACED = 4000;

function reconnectAfterClose(
  state: State,
  what: string,
  close: { code: number; reason: string },
  env: StepEnv,
  before: Effect[],
): Step {
  const reason = `${what} (${close.code}${close.reason ? " " + capText(close.reason) : ""})`;
  if (close.code !== CLOSE_REPLACED) return reconnectLater(state, reason, env, before);
  const why = `${reason}: another connection with this runner's credential took its place`;
  return reconnectLater(state, why, env, before, replacedDelay(state.config, env.random));
}

function reconnectLater(state: State, reason: string, env: StepEnv, before: Effect[] = [], delayMs?: number): Step {
  const ms = delayMs ?? reconnectDelay(state.config, state.failures, env.random);
  return {
    state: { ...state, phase: "disconnected", failures: state.failures + 1, awaitingPong: false },
    effects: [
      ...before,
      log("warn", `${reason}; reconnecting in ${ms} ms`, { reason, delayMs: ms, failures: state.failures + 1 }),
      { type: "set_timer", timer: "reconnect", ms },
    ],
  };
}

// ---- messages from the control plane ----

function onControlMessage(state: State, message: ControlMessage): Step {
  switch (message.type) {
    case "assign":
      return onAssign(state, message);
    case "result_ack":
      return onResultAck(state, message);
    case "cancel": {
      const entry = state.running[keyOf(message)];
      if (!entry)
        return {
          state,
          effects: [log("debug", `cancel for ${message.jobId} attempt ${message.attempt}, which is not running here`)],
        };
      return {
        state,
        effects: [
          log("info", `cancelling job ${message.jobId}: ${capText(message.reason)}`),
          { type: "cancel_job", ref: entry.ref, reason: message.reason },
        ],
      };
    }
    case "pause":
    case "drain": // the old name of pause
      return onPause(state, message.reason);
    case "resume":
      return onResume(state);
    case "error":
      return {
        state,
        effects: [
          log("warn", `the control plane could not use a frame: ${capText(message.code)}: ${capText(message.message)}`),
        ],
      };
    case "welcome":
      return { state, effects: [log("warn", "ignored a second welcome")] };
    case "devices_ack":
    case "devices_resync":
      // The driver hands these to its companions (the device sync); they only land here without one.
      return { state, effects: [log("debug", `ignored ${message.type}: no device sync is attached`)] };
  }
}

function onAssign(state: State, assignment: Assignment): Step {
  const ref = { jobId: assignment.jobId, attempt: assignment.attempt };
  const key = keyOf(ref);
  if (state.running[key] || state.pending[key]) {
    return {
      state,
      effects: [log("warn", `ignored a repeated assignment of ${assignment.jobId} attempt ${assignment.attempt}`)],
    };
  }
  const busy = Object.keys(state.running).length;
  const refusal = state.draining
    ? "draining"
    : state.paused
      ? "paused"
      : busy >= state.config.capacity
        ? `no free slot (${busy}/${state.config.capacity} busy)`
        : null;
  if (refusal) {
    const effects: Effect[] = [
      log("warn", `rejected job ${assignment.jobId}: ${refusal}`),
      { type: "send", message: { type: "reject", ...ref, reason: refusal } },
    ];
    // An assignment that crossed the `pause` on the wire used a credit for a slot that is still
    // free: grant it back, so the credits are exact when the pause ends.
    if (refusal === "paused") effects.push({ type: "send", message: { type: "ready", slots: 1 } });
    return { state, effects };
  }
  return {
    state: { ...state, running: { ...state.running, [key]: { ref, nextLogSeq: 0, started: false } } },
    // The job is handed to a worker before `accept` is written: the worker starts it meanwhile.
    effects: [
      { type: "start_job", assignment },
      { type: "send", message: { type: "accept", ...ref } },
    ],
  };
}

function onResultAck(state: State, ack: Extract<ControlMessage, { type: "result_ack" }>): Step {
  const key = keyOf(ack);
  if (!state.pending[key])
    return {
      state,
      effects: [log("debug", `acknowledgement for a result not held: ${ack.jobId} attempt ${ack.attempt}`)],
    };
  const { [key]: _acked, ...pending } = state.pending;
  const effects: Effect[] = [{ type: "discard_result", ref: { jobId: ack.jobId, attempt: ack.attempt } }];
  if (!ack.applied)
    effects.push(
      log(
        "info",
        `the control plane acknowledged but did not apply the result of ${ack.jobId} attempt ${ack.attempt} (duplicate or stale attempt)`,
      ),
    );
  return finishIfDone({ state: { ...state, pending }, effects });
}

// ---- pause and resume (the control plane's) ----

function onPause(state: State, reason: string): Step {
  const running = Object.keys(state.running).length;
  const effects = [
    log("info", `paused by the control plane: ${capText(reason)}; no new jobs, ${running} running job(s) go on`, {
      running,
    }),
  ];
  return { state: { ...state, paused: true }, effects };
}

function onResume(state: State): Step {
  if (!state.paused) return { state, effects: [log("debug", "resume while not paused; ignored")] };
  // No `ready`: the control plane kept this connection's credits through the pause.
  return {
    state: { ...state, paused: false },
    effects: [log("info", "resumed by the control plane: taking jobs again")],
  };
}

// ---- jobs ----

function onJobStarted(state: State, ref: JobRef, startedAt: string): Step {
  const entry = state.running[keyOf(ref)];
  if (!entry) return { state, effects: [log("warn", `a job reported started that is not running: ${ref.jobId}`)] };
  const next = { ...state, running: { ...state.running, [keyOf(ref)]: { ...entry, started: true } } };
  return { state: next, effects: whenConnected(state, { type: "started", ...ref, startedAt }) };
}

function onJobOutput(state: State, input: Extract<Input, { type: "job_output" }>): Step {
  const key = keyOf(input.ref);
  const entry = state.running[key];
  if (!entry) return { state, effects: [] };
  if (state.phase !== "connected") {
    const running = { ...state.running, [key]: { ...entry, nextLogSeq: entry.nextLogSeq + 1 } };
    return { state: { ...state, running, droppedLogChunks: state.droppedLogChunks + 1 }, effects: [] };
  }
  // A chunk whose frame would be over the limit in force goes as several, with consecutive seq.
  const pieces = splitLogData(input.ref, input.stream, input.data, state.maxFrameBytes);
  const effects: Effect[] = pieces.map((data, i) => ({
    type: "send",
    message: { type: "log", ...input.ref, seq: entry.nextLogSeq + i, stream: input.stream, data },
  }));
  const running = { ...state.running, [key]: { ...entry, nextLogSeq: entry.nextLogSeq + pieces.length } };
  return { state: { ...state, running }, effects };
}

function onJobFinished(state: State, result: JobResult): Step {
  const key = keyOf(result);
  const { [key]: _done, ...running } = state.running;
  const next: State = { ...state, running, pending: { ...state.pending, [key]: result } };
  const effects: Effect[] = [
    { type: "persist_result", result },
    log(
      "info",
      `job ${result.jobId} attempt ${result.attempt} ${result.outcome}${result.reason ? `: ${result.reason}` : ""}`,
      { jobId: result.jobId, attempt: result.attempt, outcome: result.outcome, reason: result.reason },
    ),
    ...whenConnected(state, fitResultFrame(result, state.maxFrameBytes)),
  ];
  if (state.phase === "connected" && !state.draining && state.running[key])
    effects.push({ type: "send", message: { type: "ready", slots: 1 } });
  return finishIfDone({ state: next, effects });
}

// ---- draining and stopping ----

function onDrain(state: State, reason: string): Step {
  if (state.draining) return { state, effects: [log("info", `already draining (${reason})`)] };
  const running = Object.keys(state.running).length;
  const effects: Effect[] = [
    log(
      "info",
      `draining: ${reason}; no new jobs, ${running} running job(s) get ${state.config.drainTimeoutMs} ms to finish`,
    ),
    { type: "set_timer", timer: "drain", ms: state.config.drainTimeoutMs },
    ...whenConnected(state, { type: "goodbye", reason: "draining" }),
  ];
  return finishIfDone({ state: { ...state, draining: true }, effects });
}

function onDrainDeadline(state: State): Step {
  const effects: Effect[] = Object.values(state.running).map((r) => ({
    type: "cancel_job" as const,
    ref: r.ref,
    reason: "the runner is stopping (drain deadline passed)",
  }));
  effects.unshift(log("warn", `drain deadline passed; cancelling ${effects.length} job(s)`));
  return finishIfDone({ state: { ...state, stopping: true }, effects });
}

function onStopNow(state: State, reason: string): Step {
  const effects: Effect[] = Object.values(state.running).map((r) => ({
    type: "cancel_job" as const,
    ref: r.ref,
    reason: `the runner is stopping (${reason})`,
  }));
  effects.unshift(log("warn", `stopping now (${reason}); cancelling ${effects.length} job(s)`));
  return finishIfDone({ state: { ...state, draining: true, stopping: true }, effects });
}

/**
 * While draining: stop once no job runs and every result is acknowledged; past the deadline,
 * once no job runs (unacknowledged results are safe in the outbox for the next start).
 */
function finishIfDone(current: Step): Step {
  const { state } = current;
  if (!state.draining || Object.keys(state.running).length > 0) return current;
  const unacked = Object.keys(state.pending).length;
  if (unacked > 0 && !state.stopping) return current;
  const reason =
    unacked > 0
      ? `stopped with ${unacked} result(s) kept in the outbox for the next start`
      : "drained: every job finished and every result was acknowledged";
  const stopped = stopWith(state, ExitCode.OK, reason);
  return { state: stopped.state, effects: [...current.effects, ...stopped.effects] };
}

function stopWith(state: State, code: number, reason: string): Step {
  const effects: Effect[] = [...(["reconnect", "handshake", "heartbeat", "pong", "drain"] as const).map(clearTimer)];
  if (state.phase === "connected" || state.phase === "handshaking")
    effects.push({ type: "close", code: 1000, reason: "runner stopping" });
  effects.push(log(code === ExitCode.OK ? "info" : "error", reason), { type: "exit", code, reason });
  return { state: { ...state, phase: "stopped" }, effects };
}

// ---- helpers ----

function clearTimer(timer: TimerName): Effect {
  return { type: "clear_timer", timer };
}

function whenConnected(state: State, message: RunnerMessage): Effect[] {
  return state.phase === "connected" ? [{ type: "send", message }] : [];
}

function ignoreStaleTimer(state: State, timer: TimerName): Step {
  return { state, effects: [log("debug", `ignored the ${timer} timer in phase ${state.phase}`)] };
}

function unexpected(state: State, input: Input, level: LogLevel = "warn"): Step {
  const what =
    input.type === "message"
      ? `message ${input.message.type}`
      : input.type === "timer"
        ? `timer ${input.timer}`
        : input.type;
  return { state, effects: [log(level, `unexpected ${what} in phase ${state.phase}; ignored`)] };
}

function log(level: LogLevel, message: string, fields?: Record<string, unknown>): Effect {
  return fields ? { type: "log", level, message, fields } : { type: "log", level, message };
}
