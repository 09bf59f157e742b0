// The thin driver around the channel state machine: it turns socket events, the machine's
// deadlines and job events into inputs, feeds them to `step` one at a time, carries out the
// effects in order (awaiting each, so a result is on disk before it is sent), then arms one
// timer for the machine's next deadline. It decides nothing about the connection itself: even
// when to tell the device sync, and which frame limit is in force, are the machine's effects.
import WebSocket from "ws";
import type { IncomingMessage } from "node:http";
import { unreachable } from "../errors.js";
import type { Logger } from "../log/logger.js";
import { performLog } from "../log/log-effect.js";
import { DeadlineTimer, systemClock, type Clock } from "../time/deadline.js";
import type { ChannelTunnel } from "../net/proxy-agents.js";
import {
  AGENT_VERSION_HEADER,
  PROTOCOL_HEADER,
  RUNNER_ID_HEADER,
  DEFAULT_MAX_FRAME_BYTES,
  decodeControlMessage,
  encode,
  type Assignment,
  type ControlMessage,
  type JobRef,
  type JobResult,
  type RunnerMessage,
} from "../protocol/channel.js";
import {
  abandon,
  initialState,
  nextDeadline,
  step,
  type Effect,
  type Input,
  type MachineConfig,
  type State,
  type TimerName,
  type Welcome,
} from "./machine.js";

/** What the driver needs from the rest of the daemon. */
export interface DriverPorts {
  startJob(assignment: Assignment): Promise<void>;
  cancelJob(ref: JobRef, reason: string): void;
  persistResult(result: JobResult): Promise<void>;
  discardResult(ref: JobRef): Promise<void>;
}

/**
 * Something else that talks over the same connection (the device sync): told when the
 * channel is connected (after the welcome) and when it no longer is, and offered each
 * control-plane message before the state machine.
 */
export interface ChannelCompanion {
  /** `send` writes on this connection only: it returns false once that connection is gone. */
  onConnected(send: (message: RunnerMessage) => boolean, welcome: Welcome): void;
  onDisconnected(): void;
  /** True when the message is the companion's: the state machine never sees it. */
  onMessage(message: ControlMessage): boolean;
}

/** One step of the machine, as the driver took it. */
export interface ObservedStep {
  input: Input;
  before: Readonly<State>;
  after: Readonly<State>;
  effects: readonly Effect[];
}

/**
 * Watches the channel without acting on it (the status counts, src/status/counters.ts): told
 * each step (with the step's time) before its effects are carried out, and each frame handed
 * to the socket.
 */
export interface ChannelObserver {
  stepped(step: ObservedStep, now: number): void;
  sent(type: RunnerMessage["type"], bytes: number): void;
}

export interface DriverOptions {
  /** ws:// or wss:// URL of the channel endpoint. */
  url: string;
  credential: string;
  /**
   * The largest frame this runner accepts (ws `maxPayload`; a larger one closes the connection
   * with 1009). What it sends is bounded by the welcome's `maxFrameBytes` instead.
   */
  maxFrameBytes: number;
  logger: Logger;
  ports: DriverPorts;
  companions?: ChannelCompanion[];
  /** Told `true` when the socket has too much queued to send (slow down job output), `false` when it drained. */
  onBackpressure?: (slow: boolean) => void;
  observer?: ChannelObserver;
  /** The proxy the connection goes through (net/proxy-agents.ts); absent: a direct connection. */
  tunnel?: ChannelTunnel;
  /** The clock the machine's deadlines are read on. */
  now?: Clock;
  random?: () => number;
}

/** Job output is paused while more than this waits in the socket, resumed below the low mark. */
const HIGH_WATER_BYTES = 4 * 1024 * 1024;
const LOW_WATER_BYTES = 1024 * 1024;

export interface DriverExit {
  code: number;
  reason: string;
}

export class ChannelDriver {
  private state: State;
  private readonly queue: Input[] = [];
  private processing = false;
  private socket: WebSocket | null = null;
  /** Events from an older socket than this one are dropped. */
  private generation = 0;
  /** The machine's next deadline, armed after every step. */
  private readonly deadline: DeadlineTimer<TimerName>;
  /** The largest frame this runner may send: the last welcome's, told by the machine (`frame_limit`). */
  private frameLimit = DEFAULT_MAX_FRAME_BYTES;
  private readonly clock: Clock;
  private slowTimer: NodeJS.Timeout | null = null;
  private resolveExit!: (exit: DriverExit) => void;
  readonly exited: Promise<DriverExit>;

  constructor(
    config: MachineConfig,
    held: { running?: JobRef[]; pending?: JobResult[] },
    private readonly options: DriverOptions,
  ) {
    this.state = initialState(config, held);
    this.clock = options.now ?? systemClock;
    this.deadline = new DeadlineTimer(this.clock, (due) => this.input({ type: "timer", timer: due.timer }));
    this.exited = new Promise((resolve) => (this.resolveExit = resolve));
  }

  /** The machine's state, read-only, for status output and tests. */
  get current(): Readonly<State> {
    return this.state;
  }

  start(): Promise<DriverExit> {
    this.input({ type: "start" });
    return this.exited;
  }

  /** Drops the connection and every timer at once, without a goodbye: for tests and hard exits. */
  dispose(): void {
    this.deadline.cancel();
    this.releaseBackpressure();
    this.closeSocket(4002, "disposed");
    this.queue.length = 0;
    const abandoned = abandon(this.state);
    this.state = abandoned.state;
    // Only companion news and logs come out of `abandon`: none waits on I/O.
    for (const effect of abandoned.effects) void this.carryOut(effect);
  }

  input(input: Input): void {
    this.queue.push(input);
    if (!this.processing) void this.process();
  }

  /** A decoded message: a companion's goes to it, anything else to the state machine. */
  private receive(message: ControlMessage): void {
    for (const companion of this.options.companions ?? []) {
      try {
        if (companion.onMessage(message)) return;
      } catch (error) {
        this.options.logger.error({ err: error, type: message.type }, "a channel companion failed on a message");
        return;
      }
    }
    this.input({ type: "message", message });
  }

  private notifyCompanions(call: (companion: ChannelCompanion) => void): void {
    for (const companion of this.options.companions ?? []) {
      try {
        call(companion);
      } catch (error) {
        this.options.logger.error({ err: error }, "a channel companion failed");
      }
    }
  }

  private async process(): Promise<void> {
    this.processing = true;
    try {
      while (this.queue.length > 0) {
        const input = this.queue.shift()!;
        const now = this.clock();
        const before = this.state;
        const next = step(before, input, { now, random: this.options.random?.() ?? Math.random() });
        this.state = next.state;
        this.options.observer?.stepped({ input, before, after: next.state, effects: next.effects }, now);
        for (const effect of next.effects) await this.carryOut(effect);
        this.deadline.arm(nextDeadline(this.state));
      }
    } finally {
      this.processing = false;
    }
  }

  private async carryOut(effect: Effect): Promise<void> {
    const { logger, ports } = this.options;
    switch (effect.type) {
      case "connect":
        return this.connect();
      case "close":
        return this.closeSocket(effect.code, effect.reason);
      case "send":
        this.send(effect.message);
        return;
      case "ping":
        this.socket?.ping();
        return;
      case "frame_limit":
        this.frameLimit = effect.maxFrameBytes;
        return;
      case "tell_connected":
        return this.tellConnected(effect.welcome);
      case "tell_disconnected":
        return this.notifyCompanions((c) => c.onDisconnected());
      case "start_job":
        try {
          await ports.startJob(effect.assignment);
        } catch (error) {
          logger.error({ err: error, jobId: effect.assignment.jobId }, "could not start a job");
        }
        return;
      case "cancel_job":
        return ports.cancelJob(effect.ref, effect.reason);
      case "persist_result":
        return this.persist(effect.result);
      case "discard_result":
        // Not awaited: nothing later depends on it, and a removal that fails or is undone by a
        // crash only means the result is sent once more and acknowledged without applying.
        void ports
          .discardResult(effect.ref)
          .catch((error: unknown) =>
            logger.warn({ err: error, ...effect.ref }, "could not remove an acknowledged result"),
          );
        return;
      case "log":
        return performLog(logger, effect);
      case "exit":
        this.deadline.cancel();
        this.releaseBackpressure();
        this.closeSocket(1000, "runner stopping");
        this.resolveExit({ code: effect.code, reason: effect.reason });
        return;
      default:
        return unreachable(effect, "effect");
    }
  }

  /** The companions get a `send` bound to this connection: it returns false once the connection is gone. */
  private tellConnected(welcome: Welcome): void {
    const generation = this.generation;
    const send = (message: RunnerMessage) => generation === this.generation && this.send(message);
    this.notifyCompanions((c) => c.onConnected(send, welcome));
  }

  /** A result that cannot be written is retried: losing it is the one thing not allowed. */
  private async persist(result: JobResult): Promise<void> {
    for (let attempt = 1; ; attempt++) {
      try {
        return await this.options.ports.persistResult(result);
      } catch (error) {
        this.options.logger.error(
          { err: error, jobId: result.jobId, attempt },
          "could not write a result to the outbox; retrying",
        );
        await new Promise((r) => setTimeout(r, Math.min(5000, 100 * 2 ** attempt)));
      }
    }
  }

  private connect(): void {
    const generation = ++this.generation;
    const { url, credential, maxFrameBytes, tunnel } = this.options;
    const config = this.state.config;
    const socket = new WebSocket(url, {
      ...(tunnel === undefined ? {} : { agent: tunnel.agent }),
      headers: {
        authorization: `Bearer ${credential}`,
        [RUNNER_ID_HEADER]: config.runnerId,
        [PROTOCOL_HEADER]: String(config.protocolVersion),
        [AGENT_VERSION_HEADER]: config.agentVersion,
      },
      maxPayload: maxFrameBytes,
      // No ws handshakeTimeout: the machine's handshake timer covers the attempt up to the welcome.
      perMessageDeflate: false,
    });
    this.socket = socket;
    let opened = false;
    let failed = false;
    const current = () => generation === this.generation;
    // The proxy's answer to this attempt's CONNECT: one other than 200 is the proxy refusing the
    // tunnel, which must not pass for the control plane refusing the runner (a 403 would stop it).
    let tunnelAnswer: number | null = null;
    const stopListening = tunnel?.onConnectAnswer((status) => {
      if (current()) tunnelAnswer = status;
    });
    const via = tunnel === undefined ? "" : ` (through the proxy ${tunnel.proxy})`;
    const fail = (status: number | null, reason: string) => {
      stopListening?.();
      if (failed || opened || !current()) return;
      failed = true;
      this.input({ type: "connect_failed", status, reason: reason + via });
    };
    socket.on("unexpected-response", (request, response: IncomingMessage) => {
      if (tunnelAnswer !== null && tunnelAnswer !== 200) {
        // Retried like any outage: the proxy may be restarting, or a person fixes its rules.
        fail(null, `the proxy refused the tunnel: HTTP ${tunnelAnswer}`);
        request.destroy();
        return;
      }
      void readErrorBody(response).then((detail) => {
        fail(response.statusCode ?? null, `HTTP ${response.statusCode}${detail ? ` ${detail}` : ""}`);
        request.destroy();
      });
    });
    socket.on("open", () => {
      stopListening?.();
      opened = true;
      if (current()) this.input({ type: "socket_open" });
    });
    socket.on("message", (data, isBinary) => {
      if (!current()) return;
      if (isBinary) return this.input({ type: "bad_frame", detail: "a binary frame" });
      const decoded = decodeControlMessage(data.toString());
      if (decoded.ok) this.receive(decoded.message);
      else this.input({ type: "bad_frame", detail: decoded.detail });
    });
    socket.on("pong", () => current() && this.input({ type: "pong" }));
    socket.on("error", (error: NodeJS.ErrnoException) => {
      if (!opened) fail(null, error.code ?? error.message);
      else this.options.logger.warn({ code: error.code }, `socket error: ${error.message}`);
    });
    socket.on("close", (code, reason) => {
      stopListening?.();
      if (!current()) return;
      if (!opened) fail(null, `closed before opening (${code})`);
      else this.input({ type: "socket_closed", code, reason: reason.toString() });
    });
  }

  /** Returns whether the frame was handed to the socket. */
  private send(message: RunnerMessage): boolean {
    const socket = this.socket;
    if (!socket || socket.readyState !== WebSocket.OPEN) {
      this.options.logger.debug({ type: message.type }, "not connected; message not sent");
      return false;
    }
    const frame = encode(message);
    // The machine sizes its frames to the limit in force; this guard only catches a bug, since
    // the control plane would close the connection (1009) on a larger frame.
    const limit = this.frameLimit;
    const bytes = Buffer.byteLength(frame);
    if (bytes > limit) {
      this.options.logger.error(
        { type: message.type, bytes, maxFrameBytes: limit },
        "message larger than the frame limit; not sent",
      );
      return false;
    }
    socket.send(frame);
    this.options.observer?.sent(message.type, bytes);
    this.watchBackpressure(socket);
    return true;
  }

  /**
   * ws queues without bound when the peer reads slowly; job output is what fills it. Past the
   * high-water mark the daemon pauses output at its source (the workers), and a short timer,
   * running only while paused, resumes it below the low-water mark or once the socket is gone
   * (output is not sent while disconnected anyway).
   */
  private watchBackpressure(socket: WebSocket): void {
    if (this.slowTimer || socket.bufferedAmount <= HIGH_WATER_BYTES || !this.options.onBackpressure) return;
    this.options.onBackpressure(true);
    this.slowTimer = setInterval(() => {
      if (this.socket !== socket || socket.bufferedAmount < LOW_WATER_BYTES) this.releaseBackpressure();
    }, 20);
  }

  private releaseBackpressure(): void {
    if (!this.slowTimer) return;
    clearInterval(this.slowTimer);
    this.slowTimer = null;
    this.options.onBackpressure?.(false);
  }

  private closeSocket(code: number, reason: string): void {
    const socket = this.socket;
    if (!socket) return;
    this.socket = null;
    this.generation++;
    // A socket given up for silence may be half-open: a close handshake would never finish.
    if (code === 1000 && socket.readyState === WebSocket.OPEN) socket.close(code, reason);
    else socket.terminate();
  }
}

/** The control plane's JSON error body, shortened, for the log line. */
async function readErrorBody(response: IncomingMessage): Promise<string> {
  const chunks: Buffer[] = [];
  let size = 0;
  try {
    for await (const chunk of response) {
      size += (chunk as Buffer).length;
      if (size > 4096) break;
      chunks.push(chunk as Buffer);
    }
    const body = JSON.parse(Buffer.concat(chunks).toString()) as { error?: { code?: string; message?: string } };
    return body.error ? `${body.error.code}: ${body.error.message}` : "";
  } catch {
    return "";
  }
}
