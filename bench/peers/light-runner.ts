// A light runner for the fleet benchmark: one WebSocket speaking the runner's side of the
// channel (PROTOCOL.md) with no daemon, no worker and no outbox behind it, so that hundreds
// fit in one process. Every `assign` is answered at once with the frames a real runner sends
// for a job that succeeds instantly: accept, started, result, then `ready { slots: 1 }` to
// grant the freed credit back (PROTOCOL.md, "Sequence: connect, one job"). It pings every
// heartbeat interval, as a real runner does, so that the control plane keeps the connection.
import WebSocket from "ws";
import { decodeControlMessage, encode, type JobResult, type RunnerMessage } from "../../src/protocol/channel.js";
import { AGENT_VERSION, PROTOCOL_VERSION } from "../../src/protocol/version.js";
import { channelHeaders, channelUrl, finishedResult } from "../../test/helpers/channel-fixtures.js";

export interface LightRunnerIdentity {
  /** The control plane's base URL (http://127.0.0.1:port). */
  url: string;
  runnerId: string;
  credential: string;
}

export interface LightRunnerHooks {
  /** An `assign` arrived; `at` is process.hrtime.bigint() when its frame was read. */
  onAssign(jobId: string, at: bigint): void;
  /** The control plane acknowledged the job's result. */
  onResultAck(jobId: string, applied: boolean): void;
  /** Something a well-behaved run never sees: an `error` or `cancel` frame, a dropped socket. */
  onTrouble(what: string): void;
}

export class LightRunner {
  private socket: WebSocket | undefined;
  private pinger: NodeJS.Timeout | undefined;
  private closing = false;

  constructor(
    private readonly identity: LightRunnerIdentity,
    private readonly capacity: number,
    private readonly hooks: LightRunnerHooks,
  ) {}

  /** Opens the channel, says hello, grants its credits; resolves at the welcome. */
  connect(timeoutMs: number): Promise<void> {
    const { url, runnerId } = this.identity;
    const socket = new WebSocket(channelUrl(url), { perMessageDeflate: false, headers: channelHeaders(this.identity) });
    this.socket = socket;
    return new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        socket.terminate();
        reject(new Error(`runner ${runnerId}: no welcome within ${timeoutMs} ms`));
      }, timeoutMs);
      socket.once("open", () =>
        this.send({
          type: "hello",
          protocolVersion: PROTOCOL_VERSION,
          agentVersion: AGENT_VERSION,
          runnerId,
          capacity: this.capacity,
          running: [],
          pendingResults: [],
        }),
      );
      socket.once("error", (error) => {
        clearTimeout(timer);
        reject(error);
      });
      socket.on("close", (code) => {
        clearTimeout(timer);
        clearInterval(this.pinger);
        if (!this.closing) this.hooks.onTrouble(`socket closed by the control plane (${code})`);
      });
      socket.on("message", (data) => {
        const at = process.hrtime.bigint();
        const decoded = decodeControlMessage(data.toString());
        if (!decoded.ok) return this.hooks.onTrouble(`undecodable frame: ${decoded.detail}`);
        const message = decoded.message;
        switch (message.type) {
          case "welcome":
            clearTimeout(timer);
            this.pinger = setInterval(() => socket.ping(), message.heartbeatIntervalMs);
            this.send({ type: "ready", slots: this.capacity });
            resolve();
            return;
          case "assign":
            this.hooks.onAssign(message.jobId, at);
            this.runInstantly(message.jobId, message.attempt);
            return;
          case "result_ack":
            this.hooks.onResultAck(message.jobId, message.applied);
            return;
          case "cancel":
          case "error":
          case "pause":
          case "drain":
            this.hooks.onTrouble(`${message.type} frame`);
            return;
          default:
            return;
        }
      });
    });
  }

  /** Closes the channel as a stopping runner does (1000); the control plane sees a normal close. */
  close(): Promise<void> {
    this.closing = true;
    clearInterval(this.pinger);
    const socket = this.socket;
    if (!socket || socket.readyState === WebSocket.CLOSED) return Promise.resolve();
    return new Promise((resolve) => {
      socket.once("close", () => resolve());
      socket.close(1000);
    });
  }

  private runInstantly(jobId: string, attempt: number): void {
    const result = instantSuccess(jobId, attempt);
    this.send({ type: "accept", jobId, attempt });
    this.send({ type: "started", jobId, attempt, startedAt: result.startedAt! });
    this.send({ type: "result", result });
    this.send({ type: "ready", slots: 1 });
  }

  private send(message: RunnerMessage): void {
    this.socket?.send(encode(message));
  }
}

/** The result of a job that started and succeeded this very moment. */
export function instantSuccess(jobId: string, attempt: number): JobResult {
  return finishedResult({ jobId, attempt });
}
