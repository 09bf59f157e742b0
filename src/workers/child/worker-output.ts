// A worker's outgoing log chunks, with flow control on both ends of the IPC channel:
// - the daemon says "paused" when its own consumer (the WebSocket) is slow;
// - the IPC channel itself backs up when the daemon reads slower than we write: we count the
//   bytes handed to process.send whose write callback has not fired yet, and also honour
//   send()'s false return.
// Either way the output is "congested" and the sources are told to stop: a command job's pipes
// stop being read (its writes then block in the kernel), a module job's log() returns false and
// its `drained()` promise waits. What a source still pushes while congested is held here; output
// marked droppable (module log lines, which cannot be blocked because log() is synchronous) is
// held up to HELD_LIMIT_BYTES and past that dropped and counted, with a marker line in the log
// once it flows again. Command output is never dropped: once its pipes are paused, at most a
// read's worth of it arrives.
import type { LogChunk } from "../../jobs/log-chunks.js";
import type { FromWorker } from "../worker-messages.js";

/** Bytes written to the IPC channel but not yet flushed to the socket, past which we stop. */
export const IN_FLIGHT_HIGH_BYTES = 256 * 1024;
/** ...and below which we start again. */
export const IN_FLIGHT_LOW_BYTES = 64 * 1024;
/** Droppable output held while congested, at most. */
export const HELD_LIMIT_BYTES = 1024 * 1024;

export type SendFn = (message: FromWorker, onWritten: () => void) => boolean;

export class WorkerOutput {
  private pausedByDaemon = false;
  private ipcBacklogged = false;
  private inFlightBytes = 0;
  private held: LogChunk[] = [];
  private heldBytes = 0;
  private droppedBytes = 0;
  private wasCongested = false;
  private readonly listeners = new Set<(congested: boolean) => void>();
  private waiters: (() => void)[] = [];

  constructor(private readonly send: SendFn) {}

  get congested(): boolean {
    return this.pausedByDaemon || this.ipcBacklogged || this.held.length > 0;
  }

  /** Called with true when sources must stop, false when they may go on. Returns an unsubscribe. */
  onCongestion(listener: (congested: boolean) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** Resolves once output flows again (at once if it does). */
  whenFlowing(): Promise<void> {
    if (!this.congested) return Promise.resolve();
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  setPaused(paused: boolean): void {
    this.pausedByDaemon = paused;
    this.pump();
  }

  push(chunk: LogChunk, droppable: boolean): void {
    if (!this.congested) this.transmit(chunk);
    else if (droppable && this.heldBytes + chunk.data.length > HELD_LIMIT_BYTES)
      this.droppedBytes += Buffer.byteLength(chunk.data);
    else this.hold(chunk);
    this.notify();
  }

  /**
   * At the end of a job: sends whatever is held, even while paused, so the result (which must
   * come after the job's last chunk) is not held hostage by a slow consumer. Bounded: at most
   * HELD_LIMIT_BYTES plus a read or two of command output.
   */
  flushAll(): void {
    for (const chunk of this.held.splice(0)) this.transmit(chunk);
    this.heldBytes = 0;
    this.sendDropMarker();
    this.notify();
  }

  private hold(chunk: LogChunk): void {
    this.held.push(chunk);
    this.heldBytes += chunk.data.length;
  }

  private transmit(chunk: LogChunk): void {
    const size = chunk.data.length;
    this.inFlightBytes += size;
    const accepted = this.send({ type: "log", stream: chunk.stream, data: chunk.data }, () => {
      this.inFlightBytes -= size;
      if (this.ipcBacklogged && this.inFlightBytes <= IN_FLIGHT_LOW_BYTES) {
        this.ipcBacklogged = false;
        this.pump();
      }
    });
    if (!accepted || this.inFlightBytes >= IN_FLIGHT_HIGH_BYTES) this.ipcBacklogged = true;
  }

  private pump(): void {
    while (this.held.length > 0 && !this.pausedByDaemon && !this.ipcBacklogged) {
      const chunk = this.held.shift() as LogChunk;
      this.heldBytes -= chunk.data.length;
      this.transmit(chunk);
    }
    if (this.held.length === 0 && !this.pausedByDaemon && !this.ipcBacklogged) this.sendDropMarker();
    this.notify();
  }

  private sendDropMarker(): void {
    if (this.droppedBytes === 0) return;
    const data = `[runner] ${this.droppedBytes} bytes of this job's log were dropped: it logged faster than the log stream could carry and ${HELD_LIMIT_BYTES} bytes were already waiting\n`;
    this.droppedBytes = 0;
    this.transmit({ stream: "stderr", data });
  }

  private notify(): void {
    const congested = this.congested;
    if (congested === this.wasCongested) return;
    this.wasCongested = congested;
    for (const listener of this.listeners) listener(congested);
    if (!congested) for (const resolve of this.waiters.splice(0)) resolve();
  }
}
