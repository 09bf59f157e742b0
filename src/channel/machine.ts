// The agent's side of the channel as a sans-IO state machine: `step(state, input, env)`
// returns the next state and the effects to carry out (connect, send, start or cancel a job,
// persist, tell the device sync, log, exit). It does no I/O and reads no clock: time and
// randomness come in `env`, and `nextDeadline(state)` says when the driver must feed the
// named timer back. The state tells the whole connection story:
//
//   - `connection`: the phase, each with only its own data (the handshake deadline while a
//     socket is opening, the welcome and the heartbeat while connected, the backoff deadline
//     while disconnected);
//   - `mode`: serving | paused (by the control plane) | draining (a local signal: no new
//     jobs, stop when done) | stopping (past the drain deadline or a second signal: stop as
//     soon as no job runs).
//
// `step` handles every (phase, input) pair, checked by the compiler: anything a phase does
// not expect is logged and the state kept.
import { ExitCode, unreachable } from "../errors.js";
import { capText } from "../log/cap-text.js";
import { logEffect as log, type LogEffect, type LogEffectLevel } from "../log/log-effect.js";
import {
  HELLO_MAX_JOB_REFS,
  withBoundedFields,
  type Assignment,
  type ControlMessage,
  type JobRef,
  type JobResult,
  type RunnerMessage,
} from "../protocol/channel.js";
import { earliest, type Deadline } from "../time/deadline.js";
import { fitRejectFrame, fitResultFrame, splitLogData } from "./frame-fit.js";

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
  /** Ephemeral (--once): take one job, say goodbye, and stop once its result is acknowledged. */
  once: boolean;
  /** --exit-after-idle: stop (exit 0) after this long with no job running or held; null: never. */
  exitAfterIdleMs: number | null;
}

export type Welcome = Extract<ControlMessage, { type: "welcome" }>;

/** The exit reason of an ephemeral runner whose one job is done: `start --once` then unregisters. */
export const ONCE_DONE = "once: its one job is done and its result acknowledged";

/** The connection, phase by phase: each phase holds what exists only in it. Times are `env.now` times. */
export type Connection =
  | { phase: "idle" }
  /** A socket is opening; the attempt is given up at `handshakeAt`. */
  | { phase: "connecting"; handshakeAt: number }
  /** The socket is open and the hello sent; the welcome must come by `handshakeAt` (the same deadline). */
  | { phase: "handshaking"; handshakeAt: number }
  /**
   * Welcomed: the welcome's heartbeat and frame limit are in force. The next ping goes at
   * `heartbeatAt`; `pongAt` is set while a ping awaits its pong (the connection is dead then).
   */
  | { phase: "connected"; welcome: Welcome; heartbeatAt: number; pongAt: number | null }
  /** Waiting out the reconnect backoff, until `reconnectAt`. */
  | { phase: "disconnected"; reconnectAt: number }
  | { phase: "stopped" };

export type Phase = Connection["phase"];

/**
 * What the runner does with work, whatever the connection: `serving` takes jobs; `paused`
 * (told by the control plane: `pause`, or `welcome.paused`) takes no new jobs and keeps the
 * rest going; `draining` (a local signal) takes no new jobs and stops once running jobs are
 * done and their results acknowledged; `stopping` (past the drain deadline, or told to stop
 * now) stops as soon as no job runs. A local drain wins over the control plane's pause.
 */
export type Mode = "serving" | "paused" | "draining" | "stopping";

export interface RunningEntry {
  ref: JobRef;
  nextLogSeq: number;
  started: boolean;
}

export interface State {
  config: MachineConfig;
  connection: Connection;
  mode: Mode;
  /** When a drain gives up on running jobs: set exactly while the mode is `draining`. */
  drainAt: number | null;
  /** Consecutive connection failures since a connection last answered a heartbeat ping. */
  failures: number;
  /** The heartbeat interval of the last welcome, kept across reconnects: it sets the handshake timeout. */
  lastHeartbeatMs: number | null;
  running: Record<string, RunningEntry>;
  /** Results in the outbox that the control plane has not acknowledged. */
  pending: Record<string, JobResult>;
  /** Log chunks not sent because the socket was down (counted, not kept). */
  droppedLogChunks: number;
  /** Assignments accepted since start (with `once`, the first is the last). */
  jobsTaken: number;
  /** Since when no job has run or been held (serving or paused); null while one does. */
  idleSince: number | null;
  /** Why this machine cannot take a job now (low disk in the work dir), or null; assignments are rejected with it. */
  unfit: string | null;
  /**
   * Credits spent by assignments rejected while unfit, on slots that are still free: granted
   * back (`ready`) once the machine is fit again, not at once (that would invite the next
   * assignment only to reject it too). A welcome grants every free slot anew.
   */
  withheldCredits: number;
}

export type TimerName = "reconnect" | "handshake" | "heartbeat" | "pong" | "drain" | "idle";
/** The timers of the connection's phases; the drain and idle timers are the runner's, whatever the phase. */
type PhaseTimer = Exclude<TimerName, "drain" | "idle">;

export type Input =
  | { type: "start" }
  | { type: "socket_open" }
  /** The connection attempt failed: an HTTP status from the upgrade, or null for a network error. */
  | { type: "connect_failed"; status: number | null; reason: string }
  | { type: "socket_closed"; code: number; reason: string }
  | { type: "message"; message: ControlMessage }
  | { type: "bad_frame"; detail: string }
  | { type: "pong" }
  /** The deadline `nextDeadline` named has come. */
  | { type: "timer"; timer: TimerName }
  | { type: "job_started"; ref: JobRef; startedAt: string }
  | { type: "job_output"; ref: JobRef; stream: "stdout" | "stderr"; data: string }
  | { type: "job_finished"; result: JobResult }
  /** First local SIGTERM/SIGINT (the control plane's `drain` is a `pause`, not this). */
  | { type: "drain"; reason: string }
  /** Second signal: cancel running jobs and stop. */
  | { type: "stop_now"; reason: string }
  /** What the machine's resources allow (the driver checks the work dir's free disk): null is fit. */
  | { type: "fitness"; unfit: string | null };

/** The inputs about the connection itself: what each phase answers in its own way. */
type ConnectionInput =
  | Extract<Input, { type: "start" | "socket_open" | "connect_failed" | "socket_closed" | "message" | "pong" }>
  | { type: "timer"; timer: PhaseTimer };
/** The inputs that mean the same in every live phase (jobs, signals, a frame that did not decode). */
type AnyPhaseInput = Exclude<Input, { type: ConnectionInput["type"] }>;

export type LogLevel = LogEffectLevel;

export type Effect =
  | { type: "connect" }
  | { type: "close"; code: number; reason: string }
  | { type: "send"; message: RunnerMessage }
  | { type: "ping" }
  /** From now on no frame the runner sends may be larger (the welcome's `maxFrameBytes`). */
  | { type: "frame_limit"; maxFrameBytes: number }
  /** Tell the companions (the device sync) the channel is connected, after the welcome's own frames. */
  | { type: "tell_connected"; welcome: Welcome }
  /** Tell the companions the connected channel is gone. */
  | { type: "tell_disconnected" }
  | { type: "start_job"; assignment: Assignment }
  | { type: "cancel_job"; ref: JobRef; reason: string }
  /** Write the result to the outbox (fsync) — carried out before any later effect. */
  | { type: "persist_result"; result: JobResult }
  /** The control plane acknowledged it: remove it from the outbox. */
  | { type: "discard_result"; ref: JobRef }
  | LogEffect
  | { type: "exit"; code: number; reason: string };

export interface StepEnv {
  /** The time of this step, in ms of the driver's clock: deadlines are set from it. */
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
    config,
    connection: { phase: "idle" },
    mode: "serving",
    drainAt: null,
    failures: 0,
    lastHeartbeatMs: null,
    running: Object.fromEntries((held.running ?? []).map((ref) => [keyOf(ref), { ref, nextLogSeq: 0, started: true }])),
    pending: Object.fromEntries((held.pending ?? []).map((result) => [keyOf(result), result])),
    droppedLogChunks: 0,
    unfit: null,
    withheldCredits: 0,
    jobsTaken: 0,
    idleSince: null,
  };
}

/**
 * Every deadline the state holds, the one to honour first listed first on a tie (a pong
 * overdue at the next heartbeat means a dead connection, not another ping).
 */
export function deadlines(state: State): Deadline<TimerName>[] {
  const list: Deadline<TimerName>[] = [];
  const connection = state.connection;
  switch (connection.phase) {
    case "connecting":
    case "handshaking":
      list.push({ timer: "handshake", at: connection.handshakeAt });
      break;
    case "connected":
      if (connection.pongAt !== null) list.push({ timer: "pong", at: connection.pongAt });
      list.push({ timer: "heartbeat", at: connection.heartbeatAt });
      break;
    case "disconnected":
      list.push({ timer: "reconnect", at: connection.reconnectAt });
      break;
    case "idle":
    case "stopped":
      break;
    default:
      return unreachable(connection, "phase");
  }
  if (state.drainAt !== null) list.push({ timer: "drain", at: state.drainAt });
  const idleMs = state.config.exitAfterIdleMs;
  if (idleMs !== null && state.idleSince !== null) list.push({ timer: "idle", at: state.idleSince + idleMs });
  return list;
}

/** When the driver must feed `{ type: "timer", timer }` next; null when nothing waits. */
export function nextDeadline(state: State): Deadline<TimerName> | null {
  return earliest(deadlines(state));
}

export function step(state: State, input: Input, env: StepEnv): Step {
  return followIdleness(stepInput(state, input, env), env);
}

/** Keeps `idleSince`: set when the runner has no job running or held (and may take one), cleared when it has. */
function followIdleness(next: Step, env: StepEnv): Step {
  const state = next.state;
  if (state.config.exitAfterIdleMs === null) return next;
  const idle =
    state.connection.phase !== "stopped" &&
    (state.mode === "serving" || state.mode === "paused") &&
    Object.keys(state.running).length === 0 &&
    Object.keys(state.pending).length === 0;
  const idleSince = idle ? (state.idleSince ?? env.now) : null;
  return idleSince === state.idleSince ? next : { ...next, state: { ...state, idleSince } };
}

function stepInput(state: State, input: Input, env: StepEnv): Step {
  switch (input.type) {
    case "bad_frame":
    case "job_started":
    case "job_output":
    case "job_finished":
    case "drain":
    case "stop_now":
    case "fitness":
      if (state.connection.phase === "stopped") return unexpected(state, input, "debug");
      return stepAnyPhase(state, input, env);
    case "start":
    case "socket_open":
    case "connect_failed":
    case "socket_closed":
    case "message":
    case "pong":
      return stepConnection(state, input, env);
    case "timer":
      if (input.timer !== "drain" && input.timer !== "idle")
        return stepConnection(state, { type: "timer", timer: input.timer }, env);
      // The drain and idle deadlines are the runner's: the same in every live phase.
      if (state.connection.phase === "stopped") return unexpected(state, input, "debug");
      return input.timer === "drain" ? onDrainTimer(state) : onIdleTimer(state, env);
    default:
      return unreachable(input, "input");
  }
}

/**
 * Dropped at once, without a goodbye (tests, hard exits): stopped, the companions told if it
 * was connected. The driver closes the socket itself.
 */
export function abandon(state: State): Step {
  return { state: stopped(state), effects: leaveConnection(state) };
}

function stepAnyPhase(state: State, input: AnyPhaseInput, env: StepEnv): Step {
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
      return onDrain(state, input.reason, env);
    case "stop_now":
      return onStopNow(state, input.reason);
    case "fitness":
      return onFitness(state, input.unfit);
    default:
      return unreachable(input, "input");
  }
}

function stepConnection(state: State, input: ConnectionInput, env: StepEnv): Step {
  const connection = state.connection;
  switch (connection.phase) {
    case "idle":
      return stepIdle(state, input, env);
    case "disconnected":
      return stepDisconnected(state, input, env);
    case "connecting":
      return stepConnecting(state, connection, input, env);
    case "handshaking":
      return stepHandshaking(state, input, env);
    case "connected":
      return stepConnected(state, connection, input, env);
    case "stopped":
      return unexpected(state, input, "debug");
    default:
      return unreachable(connection, "phase");
  }
}

// ---- per-phase handlers ----

function stepIdle(state: State, input: ConnectionInput, env: StepEnv): Step {
  switch (input.type) {
    case "start":
      return connectNow(state, env);
    case "timer":
    case "socket_open":
    case "connect_failed":
    case "socket_closed":
    case "message":
    case "pong":
      return unexpected(state, input);
    default:
      return unreachable(input, "input");
  }
}

function stepDisconnected(state: State, input: ConnectionInput, env: StepEnv): Step {
  switch (input.type) {
    case "timer":
      switch (input.timer) {
        case "reconnect":
          return connectNow(state, env);
        case "handshake":
        case "heartbeat":
        case "pong":
          return ignoreStaleTimer(state, input.timer);
        default:
          return unreachable(input.timer, "timer");
      }
    case "socket_closed":
    case "pong":
      return { state, effects: [] }; // late events from a socket already given up on
    case "start":
    case "socket_open":
    case "connect_failed":
    case "message":
      return unexpected(state, input);
    default:
      return unreachable(input, "input");
  }
}

function stepConnecting(
  state: State,
  connection: Extract<Connection, { phase: "connecting" }>,
  input: ConnectionInput,
  env: StepEnv,
): Step {
  switch (input.type) {
    case "socket_open": {
      const hello: RunnerMessage = {
        type: "hello",
        protocolVersion: state.config.protocolVersion,
        agentVersion: state.config.agentVersion,
        runnerId: state.config.runnerId,
        capacity: state.config.capacity,
        // At most its capacity (≤ HELLO_MAX_JOB_REFS): assignments past it are rejected.
        running: Object.values(state.running).map((r) => r.ref),
        pendingResults: listedPendingResults(Object.values(state.pending)),
        labels: state.config.labels,
      };
      // The handshake deadline set at `connect` holds until the welcome.
      return {
        state: { ...state, connection: { phase: "handshaking", handshakeAt: connection.handshakeAt } },
        effects: [{ type: "send", message: hello }],
      };
    }
    case "connect_failed":
      return onConnectFailed(state, input.status, input.reason, env);
    case "socket_closed":
      return reconnectLater(
        state,
        `the connection closed before it opened (${input.code} ${capText(input.reason)})`,
        env,
      );
    case "timer":
      return stepAttemptTimer(state, input.timer, env, "the connection did not open");
    case "start":
    case "message":
    case "pong":
      return unexpected(state, input);
    default:
      return unreachable(input, "input");
  }
}

function stepHandshaking(state: State, input: ConnectionInput, env: StepEnv): Step {
  switch (input.type) {
    case "message":
      if (input.message.type === "welcome") {
        // The welcome confirms the version the runner stated (X-Runner-Protocol, hello): another
        // one is a control plane this runner cannot speak with, as a 426 would have said.
        if (input.message.protocolVersion !== state.config.protocolVersion)
          return stopWith(
            state,
            ExitCode.UPGRADE_REQUIRED,
            `the control plane's welcome states protocol version ${input.message.protocolVersion}; this runner speaks ${state.config.protocolVersion}`,
            { code: CLOSE_PROTOCOL_ERROR, reason: "protocol version not spoken" },
          );
        return onWelcome(state, input.message, env);
      }
      if (input.message.type === "error")
        return {
          state,
          effects: [
            log("warn", `control plane error: ${capText(input.message.code)}: ${capText(input.message.message)}`),
          ],
        };
      return unexpected(state, input);
    case "timer":
      return stepAttemptTimer(state, input.timer, env, "no welcome from the control plane");
    case "socket_closed":
      return reconnectAfterClose(state, "the control plane closed the connection during the handshake", input, env);
    case "pong":
      return { state, effects: [] };
    case "start":
    case "socket_open":
    case "connect_failed":
      return unexpected(state, input);
    default:
      return unreachable(input, "input");
  }
}

/**
 * The held results a hello lists. After a long outage the outbox may hold more than a hello
 * may list: then the HELLO_MAX_JOB_REFS finished last, whose jobs the control plane most likely
 * still has assigned to this runner (the older ones' leases have likely expired). Every held
 * result is re-sent after the welcome all the same.
 */
function listedPendingResults(pending: JobResult[]): JobRef[] {
  const listed =
    pending.length <= HELLO_MAX_JOB_REFS
      ? pending
      : [...pending]
          .sort((a, b) => (a.finishedAt < b.finishedAt ? 1 : a.finishedAt > b.finishedAt ? -1 : 0))
          .slice(0, HELLO_MAX_JOB_REFS);
  return listed.map((r) => ({ jobId: r.jobId, attempt: r.attempt }));
}

/** A connection attempt (connecting, then handshaking) holds one deadline: the handshake's. */
function stepAttemptTimer(state: State, timer: PhaseTimer, env: StepEnv, notYet: string): Step {
  switch (timer) {
    case "handshake":
      return dropConnection(state, `${notYet} within ${handshakeTimeout(state)} ms`, env);
    case "reconnect":
    case "heartbeat":
    case "pong":
      return ignoreStaleTimer(state, timer);
    default:
      return unreachable(timer, "timer");
  }
}

function stepConnected(
  state: State,
  connection: Extract<Connection, { phase: "connected" }>,
  input: ConnectionInput,
  env: StepEnv,
): Step {
  switch (input.type) {
    case "message":
      return onControlMessage(state, connection, input.message);
    case "pong":
      // A full round trip after the welcome: the link works both ways, so the backoff starts over.
      return { state: { ...state, connection: { ...connection, pongAt: null }, failures: 0 }, effects: [] };
    case "timer":
      switch (input.timer) {
        case "heartbeat":
          return onHeartbeat(state, connection, env);
        case "pong":
          return dropConnection(
            state,
            `no pong within ${connection.welcome.heartbeatIntervalMs} ms: the connection is presumed dead`,
            env,
          );
        case "reconnect":
        case "handshake":
          return ignoreStaleTimer(state, input.timer);
        default:
          return unreachable(input.timer, "timer");
      }
    case "socket_closed":
      return reconnectAfterClose(state, "the connection closed", input, env);
    case "start":
    case "socket_open":
    case "connect_failed":
      return unexpected(state, input);
    default:
      return unreachable(input, "input");
  }
}

// ---- connection life ----

function onWelcome(state: State, welcome: Welcome, env: StepEnv): Step {
  const paused = welcome.paused === true;
  const heartbeatMs = welcome.heartbeatIntervalMs;
  const next: State = {
    ...state,
    connection: { phase: "connected", welcome, heartbeatAt: env.now + heartbeatMs, pongAt: null },
    lastHeartbeatMs: heartbeatMs,
    withheldCredits: 0,
    // Each welcome says whether this connection starts paused; a local drain outlasts it.
    mode: isWindingDown(state.mode) ? state.mode : paused ? "paused" : "serving",
  };
  const effects: Effect[] = [
    // Before anything is sent on this connection: its frames follow this welcome's limit.
    { type: "frame_limit", maxFrameBytes: welcome.maxFrameBytes },
    log("info", "connected to the control plane", {
      heartbeatMs,
      maxFrameBytes: welcome.maxFrameBytes,
      paused,
      running: Object.keys(state.running).length,
      pendingResults: Object.keys(state.pending).length,
    }),
  ];
  for (const result of Object.values(state.pending))
    effects.push({ type: "send", message: fitResultFrame(result, welcome.maxFrameBytes) });
  if (takesNoMoreJobs(state)) effects.push(goodbye(state));
  else effects.push(...grantFreeSlots(next));
  // The companions speak after the runner's own frames of this welcome.
  effects.push({ type: "tell_connected", welcome });
  return finishIfDone({ state: next, effects });
}

/**
 * `ready` for every free slot, unless draining. A pause does not change the credits: the
 * control plane keeps them and does not use them while the runner is paused, so they are
 * exact again the moment it resumes.
 */
function grantFreeSlots(state: State): Effect[] {
  if (takesNoMoreJobs(state)) return [];
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

function connectNow(state: State, env: StepEnv): Step {
  return {
    state: { ...state, connection: { phase: "connecting", handshakeAt: env.now + handshakeTimeout(state) } },
    effects: [{ type: "connect" }],
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
  return reconnectLater(state, `cannot connect: ${reason}`, env);
}

/** Pings once per heartbeat; a ping still unanswered keeps its pong deadline (no second ping). */
function onHeartbeat(state: State, connection: Extract<Connection, { phase: "connected" }>, env: StepEnv): Step {
  const ms = connection.welcome.heartbeatIntervalMs;
  const heartbeatAt = env.now + ms;
  if (connection.pongAt !== null)
    return { state: { ...state, connection: { ...connection, heartbeatAt } }, effects: [] };
  return {
    state: { ...state, connection: { ...connection, heartbeatAt, pongAt: env.now + ms } },
    effects: [{ type: "ping" }],
  };
}

/** The effects of leaving the current phase for good: the companions hear of it if it was connected. */
function leaveConnection(state: State): Effect[] {
  return state.connection.phase === "connected" ? [{ type: "tell_disconnected" }] : [];
}

/**
 * The runner's close code when it gives up on a live socket: a code of its own, not the
 * control plane's 4001 (revoked), which a control plane reading the close would misread.
 */
export const CLOSE_TIMED_OUT = 4003;

/** We give up on a live socket (no pong, no welcome): close it and reconnect later. */
function dropConnection(state: State, reason: string, env: StepEnv): Step {
  return reconnectLater(state, reason, env, [
    { type: "close", code: CLOSE_TIMED_OUT, reason: "heartbeat or handshake timeout" },
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

function reconnectAfterClose(state: State, what: string, close: { code: number; reason: string }, env: StepEnv): Step {
  const reason = `${what} (${close.code}${close.reason ? " " + capText(close.reason) : ""})`;
  if (close.code !== CLOSE_REPLACED) return reconnectLater(state, reason, env);
  const why = `${reason}: another connection with this runner's credential took its place`;
  return reconnectLater(state, why, env, [], replacedDelay(state.config, env.random));
}

/** Leaves the current phase for `disconnected`, with the backoff deadline; `before` are the leaving effects. */
function reconnectLater(state: State, reason: string, env: StepEnv, before: Effect[] = [], delayMs?: number): Step {
  const ms = delayMs ?? reconnectDelay(state.config, state.failures, env.random);
  const failures = state.failures + 1;
  return {
    state: { ...state, connection: { phase: "disconnected", reconnectAt: env.now + ms }, failures },
    effects: [
      ...leaveConnection(state),
      ...before,
      log("warn", `${reason}; reconnecting in ${ms} ms`, { reason, delayMs: ms, failures }),
    ],
  };
}

// ---- messages from the control plane ----

function onControlMessage(
  state: State,
  connection: Extract<Connection, { phase: "connected" }>,
  message: ControlMessage,
): Step {
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
    default:
      return unreachable(message, "message");
  }
}

/** Logged once per change: a full disk is worth a warning, not one per assignment. */
function onFitness(state: State, unfit: string | null): Step {
  if (unfit === state.unfit) return { state, effects: [] };
  if (unfit !== null)
    return { state: { ...state, unfit }, effects: [log("warn", `this machine rejects new jobs: ${unfit}`)] };
  const effects: Effect[] = [log("info", "this machine can take jobs again")];
  const regrant = state.connection.phase === "connected" && state.mode === "serving" && state.withheldCredits > 0;
  if (regrant) effects.push({ type: "send", message: { type: "ready", slots: state.withheldCredits } });
  return { state: { ...state, unfit: null, withheldCredits: regrant ? 0 : state.withheldCredits }, effects };
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
  const refusal = isWindingDown(state.mode)
    ? "draining"
    : isSpent(state)
      ? "once: this runner takes one job and has taken it"
      : state.mode === "paused"
        ? "paused"
        : busy >= state.config.capacity
          ? `no free slot (${busy}/${state.config.capacity} busy)`
          : state.unfit;
  if (refusal) {
    const effects: Effect[] = [
      log("warn", `rejected job ${assignment.jobId}: ${refusal}`),
      ...whenConnected(state, (welcome) => fitRejectFrame(ref, refusal, welcome.maxFrameBytes)),
    ];
    // An assignment that crossed the `pause` on the wire used a credit for a slot that is still
    // free: grant it back, so the credits are exact when the pause ends.
    if (refusal === "paused") effects.push({ type: "send", message: { type: "ready", slots: 1 } });
    if (refusal === state.unfit) return { state: { ...state, withheldCredits: state.withheldCredits + 1 }, effects };
    return { state, effects };
  }
  const next: State = {
    ...state,
    running: { ...state.running, [key]: { ref, nextLogSeq: 0, started: false } },
    jobsTaken: state.jobsTaken + 1,
  };
  // The job is handed to a worker before `accept` is written: the worker starts it meanwhile.
  const effects: Effect[] = [
    { type: "start_job", assignment },
    { type: "send", message: { type: "accept", ...ref } },
  ];
  // An ephemeral runner's one job: no credit it granted may be used again.
  if (isSpent(next)) effects.push(goodbye(next));
  return { state: next, effects };
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
  // A local drain already takes no new jobs, and outlasts the pause.
  return { state: isWindingDown(state.mode) ? state : { ...state, mode: "paused" }, effects };
}

function onResume(state: State): Step {
  switch (state.mode) {
    case "paused": {
      // No `ready` for the credits the control plane kept through the pause; only for those
      // withheld while unfit, if the machine has become fit meanwhile.
      const effects: Effect[] = [log("info", "resumed by the control plane: taking jobs again")];
      const regrant = state.unfit === null && state.withheldCredits > 0;
      if (regrant) effects.push({ type: "send", message: { type: "ready", slots: state.withheldCredits } });
      return { state: { ...state, mode: "serving", withheldCredits: regrant ? 0 : state.withheldCredits }, effects };
    }
    case "serving":
      return { state, effects: [log("debug", "resume while not paused; ignored")] };
    case "draining":
    case "stopping":
      // A local drain wins over the control plane's resume.
      return { state, effects: [log("debug", `resume while ${state.mode}; ignored`)] };
    default:
      return unreachable(state.mode, "mode");
  }
}

// ---- jobs ----

function onJobStarted(state: State, ref: JobRef, startedAt: string): Step {
  const entry = state.running[keyOf(ref)];
  if (!entry) return { state, effects: [log("warn", `a job reported started that is not running: ${ref.jobId}`)] };
  const next = { ...state, running: { ...state.running, [keyOf(ref)]: { ...entry, started: true } } };
  return { state: next, effects: whenConnected(state, () => ({ type: "started", ...ref, startedAt })) };
}

function onJobOutput(state: State, input: Extract<Input, { type: "job_output" }>): Step {
  const key = keyOf(input.ref);
  const entry = state.running[key];
  if (!entry) return { state, effects: [] };
  if (state.connection.phase !== "connected") {
    const running = { ...state.running, [key]: { ...entry, nextLogSeq: entry.nextLogSeq + 1 } };
    return { state: { ...state, running, droppedLogChunks: state.droppedLogChunks + 1 }, effects: [] };
  }
  // A chunk whose frame would be over the limit in force goes as several, with consecutive seq.
  const pieces = splitLogData(input.ref, input.stream, input.data, state.connection.welcome.maxFrameBytes);
  const effects: Effect[] = pieces.map((data, i) => ({
    type: "send",
    message: { type: "log", ...input.ref, seq: entry.nextLogSeq + i, stream: input.stream, data },
  }));
  const running = { ...state.running, [key]: { ...entry, nextLogSeq: entry.nextLogSeq + pieces.length } };
  return { state: { ...state, running }, effects };
}

function onJobFinished(state: State, finished: JobResult): Step {
  const result = withBoundedFields(finished);
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
    ...whenConnected(state, (welcome) => fitResultFrame(result, welcome.maxFrameBytes)),
  ];
  if (state.connection.phase === "connected" && !takesNoMoreJobs(state) && state.running[key])
    effects.push({ type: "send", message: { type: "ready", slots: 1 } });
  return finishIfDone({ state: next, effects });
}

// ---- draining and stopping ----

/** A drain or a stop is under way: no new jobs, and the runner stops once it is done. */
function isWindingDown(mode: Mode): boolean {
  return mode === "draining" || mode === "stopping";
}

/** An ephemeral runner (`once`) that has taken its job: no new jobs, and it stops once that one is done. */
function isSpent(state: State): boolean {
  return state.config.once && state.jobsTaken > 0;
}

/** Whether a new job may no longer be offered: a drain, a stop, or an ephemeral runner's one job taken. */
function takesNoMoreJobs(state: State): boolean {
  return isWindingDown(state.mode) || isSpent(state);
}

/** Tells the control plane this connection takes no more jobs. */
function goodbye(state: State): Effect {
  return { type: "send", message: { type: "goodbye", reason: isWindingDown(state.mode) ? "draining" : "once" } };
}

function onIdleTimer(state: State, env: StepEnv): Step {
  const idleMs = state.config.exitAfterIdleMs;
  if (idleMs === null || state.idleSince === null || env.now < state.idleSince + idleMs)
    return ignoreStaleTimer(state, "idle");
  return stopWith(state, ExitCode.OK, `no job for ${idleMs / 1000} s: exiting (--exit-after-idle)`);
}

function onDrain(state: State, reason: string, env: StepEnv): Step {
  if (isWindingDown(state.mode)) return { state, effects: [log("info", `already draining (${reason})`)] };
  const running = Object.keys(state.running).length;
  const effects: Effect[] = [
    log(
      "info",
      `draining: ${reason}; no new jobs, ${running} running job(s) get ${state.config.drainTimeoutMs} ms to finish`,
    ),
    ...whenConnected(state, () => ({ type: "goodbye", reason: "draining" })),
  ];
  return finishIfDone({
    state: { ...state, mode: "draining", drainAt: env.now + state.config.drainTimeoutMs },
    effects,
  });
}

/** The drain deadline is held while draining only; a timer for it at any other time is stale. */
function onDrainTimer(state: State): Step {
  if (state.drainAt === null) return ignoreStaleTimer(state, "drain");
  const effects: Effect[] = Object.values(state.running).map((r) => ({
    type: "cancel_job" as const,
    ref: r.ref,
    reason: "the runner is stopping (drain deadline passed)",
  }));
  effects.unshift(log("warn", `drain deadline passed; cancelling ${effects.length} job(s)`));
  return finishIfDone({ state: { ...state, mode: "stopping", drainAt: null }, effects });
}

function onStopNow(state: State, reason: string): Step {
  const effects: Effect[] = Object.values(state.running).map((r) => ({
    type: "cancel_job" as const,
    ref: r.ref,
    reason: `the runner is stopping (${reason})`,
  }));
  effects.unshift(log("warn", `stopping now (${reason}); cancelling ${effects.length} job(s)`));
  // The jobs are cancelled now: a drain deadline has nothing left to do.
  return finishIfDone({ state: { ...state, mode: "stopping", drainAt: null }, effects });
}

/**
 * While draining: stop once no job runs and every result is acknowledged; past the deadline,
 * once no job runs (unacknowledged results are safe in the outbox for the next start).
 */
function finishIfDone(current: Step): Step {
  const { state } = current;
  if (!isWindingDown(state.mode) && isSpent(state)) {
    if (Object.keys(state.running).length > 0 || Object.keys(state.pending).length > 0) return current;
    const done = stopWith(state, ExitCode.OK, ONCE_DONE);
    return { state: done.state, effects: [...current.effects, ...done.effects] };
  }
  if (!isWindingDown(state.mode) || Object.keys(state.running).length > 0) return current;
  const unacked = Object.keys(state.pending).length;
  if (unacked > 0 && state.mode !== "stopping") return current;
  const reason =
    unacked > 0
      ? `stopped with ${unacked} result(s) kept in the outbox for the next start`
      : "drained: every job finished and every result was acknowledged";
  const done = stopWith(state, ExitCode.OK, reason);
  return { state: done.state, effects: [...current.effects, ...done.effects] };
}

/** RFC 6455's "protocol error": the runner closes with it on a welcome of a version it does not speak. */
export const CLOSE_PROTOCOL_ERROR = 1002;

function stopWith(
  state: State,
  code: number,
  reason: string,
  close: { code: number; reason: string } = { code: 1000, reason: "runner stopping" },
): Step {
  const effects: Effect[] = leaveConnection(state);
  if (state.connection.phase === "connected" || state.connection.phase === "handshaking")
    effects.push({ type: "close", ...close });
  effects.push(log(code === ExitCode.OK ? "info" : "error", reason), { type: "exit", code, reason });
  return { state: stopped(state), effects };
}

/** Stopped holds no deadline: nothing wakes it again. */
function stopped(state: State): State {
  return { ...state, connection: { phase: "stopped" }, drainAt: null };
}

// ---- helpers ----

/** A frame for the current connection, built with its welcome's limits; nothing while not connected. */
function whenConnected(state: State, build: (welcome: Welcome) => RunnerMessage): Effect[] {
  return state.connection.phase === "connected" ? [{ type: "send", message: build(state.connection.welcome) }] : [];
}

function ignoreStaleTimer(state: State, timer: TimerName): Step {
  return { state, effects: [log("debug", `ignored the ${timer} timer in phase ${state.connection.phase}`)] };
}

function unexpected(state: State, input: Input, level: LogLevel = "warn"): Step {
  const what =
    input.type === "message"
      ? `message ${input.message.type}`
      : input.type === "timer"
        ? `timer ${input.timer}`
        : input.type;
  return { state, effects: [log(level, `unexpected ${what} in phase ${state.connection.phase}; ignored`)] };
}
