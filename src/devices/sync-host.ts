// The thin shell around the device sync core (sync.ts): scans on a timer while the channel
// is connected (and at once on each connect, and on demand: those two are fresh scans; a
// timer's scan lets providers reuse what a cheap signal says is unchanged), feeds the results and the
// control plane's answers to `stepSync`, sends what it says over the channel (as a channel
// companion, see channel/driver.ts: the channel machine says when it is connected) and writes
// the confirmed state to disk, one write at a time, the latest winning. Its one timer wakes
// for the core's deadline or the next scan, armed as the channel driver arms its own.
import type { ChannelCompanion } from "../channel/driver.js";
import { unreachable } from "../errors.js";
import { stateFiles } from "../config/paths.js";
import type { Logger } from "../log/logger.js";
import { performLog } from "../log/log-effect.js";
import type { ControlMessage, RunnerMessage } from "../protocol/channel.js";
import { DeadlineTimer, earliest, systemClock, type Clock, type Deadline } from "../time/deadline.js";
import type { Device } from "./device.js";
import type { Confirmed } from "./diff.js";
import type { DeviceProviderName } from "./provider-names.js";
import { createProviders, type DeviceProvider } from "./providers/index.js";
import { scanDevices, type LastGood, type ProviderReport } from "./scan.js";
import { loadConfirmed, saveConfirmed } from "./state-file.js";
import {
  initialSyncState,
  nextDeadline,
  stepSync,
  type SyncEffect,
  type SyncInput,
  type SyncPhase,
  type SyncState,
  type SyncTimer,
} from "./sync.js";

/** The host's wake-ups: the core's deadline, or the next scan. */
type HostTimer = SyncTimer | "scan";

/** The device settings, each with its value (config/normalize.ts builds them from the runner's settings). */
export interface DeviceSyncSettings {
  deviceProviders: readonly DeviceProviderName[];
  deviceScanIntervalMs: number;
  deviceRefreshMs: number;
  deviceBatchSize: number;
  deviceProviderTimeoutMs: number;
}

export interface DeviceSyncOptions {
  stateDir: string;
  settings: DeviceSyncSettings;
  logger: Logger;
  /** Instead of the providers the settings name (tests and benchmarks). */
  providers?: DeviceProvider[];
  /** An unacknowledged device message is re-sent after this long (default 30 s). */
  ackTimeoutMs?: number;
  /** The clock of the core's times (the channel driver's, by default: the system clock). */
  now?: Clock;
}

export interface DeviceSyncStatus {
  phase: SyncPhase;
  /** The batch id of the message awaiting its acknowledgement. */
  inFlight: string | null;
  confirmed: number;
  /** Rows of the latest scan; null before the first. */
  inventory: number | null;
  scanIntervalMs: number;
  lastScan: { at: string; ms: number; providers: ProviderReport[] } | null;
  /** When the control plane last acknowledged a device message (ISO 8601); null: not since the start. */
  lastAckAt: string | null;
}

export interface DeviceSync {
  /** Give it to the channel driver (`DriverOptions.companions`). */
  companion: ChannelCompanion;
  /** Scans now (SIGUSR2, `runner devices --rescan`); resolves once the result reached the sync. Never rejects. */
  rescan(): Promise<void>;
  /** Stops the timer; resolves when the running scan and the last state write are done. */
  close(): Promise<void>;
  status(): DeviceSyncStatus;
  /** The latest scan's rows. */
  inventory(): Device[];
}

const DEFAULT_ACK_TIMEOUT_MS = 30_000;

export function createDeviceSync(options: DeviceSyncOptions): DeviceSync {
  const host = new DeviceSyncHost(options);
  return {
    companion: host.companion,
    rescan: () => host.rescan(),
    close: () => host.close(),
    status: () => host.status(),
    inventory: () => host.inventory(),
  };
}

class DeviceSyncHost {
  readonly companion: ChannelCompanion;
  private core: SyncState | null = null;
  /** Inputs that arrived before the confirmed state was loaded. */
  private readonly early: SyncInput[] = [];
  private send: ((message: RunnerMessage) => boolean) | null = null;
  private readonly providers: DeviceProvider[];
  private readonly defaultScanIntervalMs: number;
  private scanIntervalMs: number;
  private readonly providerTimeoutMs: number;
  private readonly stateFile: string;
  private readonly now: Clock;
  private readonly timer: DeadlineTimer<HostTimer>;
  private nextScanAt: number | null = null;
  private scanning: Promise<void> | null = null;
  private scanAgain = false;
  /** Whether the next scan reads everything again (see ScanOptions.fresh). */
  private nextFresh = true;
  private lastGood: LastGood = new Map();
  private readonly stillRunning = new Map<string, Promise<unknown>>();
  private lastScan: DeviceSyncStatus["lastScan"] = null;
  private lastAckAt: string | null = null;
  private latest: Device[] = [];
  private readonly failing = new Set<string>();
  private pendingWrite: Confirmed | null = null;
  private writing: Promise<void> | null = null;
  private closed = false;
  private readonly loaded: Promise<void>;

  constructor(private readonly options: DeviceSyncOptions) {
    const s = options.settings;
    this.providers = options.providers ?? createProviders(s.deviceProviders);
    this.defaultScanIntervalMs = s.deviceScanIntervalMs;
    this.scanIntervalMs = this.defaultScanIntervalMs;
    this.providerTimeoutMs = s.deviceProviderTimeoutMs;
    this.stateFile = stateFiles(options.stateDir).devices;
    this.now = options.now ?? systemClock;
    // Unreferenced: the channel's own timer keeps the daemon alive; this one must not keep a finished process up.
    this.timer = new DeadlineTimer(this.now, (due) => this.wake(due), true);
    const config = {
      batchSize: s.deviceBatchSize,
      refreshMs: s.deviceRefreshMs,
      ackTimeoutMs: options.ackTimeoutMs ?? DEFAULT_ACK_TIMEOUT_MS,
      idPrefix: this.now().toString(36),
    };
    this.loaded = loadConfirmed(this.stateFile, options.logger)
      .catch((error: unknown) => {
        options.logger.error(
          { err: error, file: this.stateFile },
          "could not read the device sync state; starting from nothing",
        );
        return new Map() as Confirmed;
      })
      .then((confirmed) => {
        this.core = initialSyncState(config, confirmed);
        for (const input of this.early.splice(0)) this.feed(input);
      });
    this.companion = {
      onConnected: (send, welcome) => {
        this.send = send;
        this.scanIntervalMs = welcome.deviceScanIntervalMs ?? this.defaultScanIntervalMs;
        this.feed({
          type: "connected",
          now: this.now(),
          maxFrameBytes: welcome.maxFrameBytes,
          refreshMs: welcome.deviceRefreshMs,
        });
        // The inventory may have changed while the connection was down.
        void this.rescan();
      },
      onDisconnected: () => {
        this.send = null;
        this.feed({ type: "disconnected" });
      },
      onMessage: (message: ControlMessage) => {
        if (message.type === "devices_ack") {
          this.lastAckAt = new Date(this.now()).toISOString();
          this.feed({ type: "ack", now: this.now(), batchId: message.batchId });
        } else if (message.type === "devices_resync")
          this.feed({ type: "resync", now: this.now(), batchId: message.batchId, reason: message.reason });
        else return false;
        return true;
      },
    };
  }

  /** `fresh` false: the periodic scan, which lets providers reuse what a cheap signal says is unchanged. */
  rescan(fresh = true): Promise<void> {
    if (this.closed) return Promise.resolve();
    this.nextFresh ||= fresh;
    if (this.scanning) {
      this.scanAgain = true;
      return this.scanning;
    }
    this.scanning = this.scanUntilSettled()
      .catch((error: unknown) => this.options.logger.error({ err: error }, "device scan failed"))
      .finally(() => {
        this.scanning = null;
        this.nextScanAt = this.now() + this.scanIntervalMs;
        this.schedule();
      });
    return this.scanning;
  }

  async close(): Promise<void> {
    this.closed = true;
    this.timer.cancel();
    await this.scanning;
    await this.writing;
  }

  status(): DeviceSyncStatus {
    const core = this.core;
    return {
      phase: core?.phase ?? "offline",
      inFlight: core?.inFlight?.message.batchId ?? null,
      confirmed: core?.confirmed.size ?? 0,
      inventory: core?.inventory?.size ?? null,
      scanIntervalMs: this.scanIntervalMs,
      lastScan: this.lastScan,
      lastAckAt: this.lastAckAt,
    };
  }

  inventory(): Device[] {
    return [...this.latest];
  }

  // ---- scanning ----

  /** A rescan asked for during a scan runs right after it, once. */
  private async scanUntilSettled(): Promise<void> {
    await this.loaded;
    do {
      this.scanAgain = false;
      const fresh = this.nextFresh;
      this.nextFresh = false;
      const result = await scanDevices(this.providers, {
        timeoutMs: this.providerTimeoutMs,
        fresh,
        now: this.now(),
        lastGood: this.lastGood,
        stillRunning: this.stillRunning,
      });
      this.lastGood = result.lastGood;
      this.latest = result.devices;
      this.lastScan = { at: new Date(this.now()).toISOString(), ms: result.ms, providers: result.reports };
      this.reportProviders(result.reports);
      this.options.logger.debug(
        { devices: result.devices.length, ms: result.ms, providers: result.reports },
        "device scan",
      );
      this.feed({ type: "scanned", now: this.now(), devices: result.devices });
    } while (this.scanAgain && !this.closed);
  }

  /** A provider that starts failing is logged once (warn), and once when it recovers. */
  private reportProviders(reports: ProviderReport[]): void {
    for (const report of reports) {
      if (!report.ok && !this.failing.has(report.name)) {
        this.failing.add(report.name);
        this.options.logger.warn(
          { provider: report.name, error: report.error, keptRows: report.rows },
          "device provider failed; its last good rows are kept, marked stale",
        );
      } else if (report.ok && this.failing.delete(report.name)) {
        this.options.logger.info({ provider: report.name }, "device provider works again");
      }
    }
  }

  // ---- the core ----

  private feed(input: SyncInput): void {
    if (!this.core) {
      this.early.push(input);
      return;
    }
    const step = stepSync(this.core, input);
    this.core = step.state;
    for (const effect of step.effects) this.carryOut(effect);
    this.schedule();
  }

  private carryOut(effect: SyncEffect): void {
    switch (effect.type) {
      case "send":
        // Not sent (the connection just went): the message stays in flight and goes again on the next connect.
        this.send?.(effect.message);
        return;
      case "persist":
        this.pendingWrite = effect.confirmed;
        this.writing ??= this.writeConfirmed();
        return;
      case "log":
        return performLog(this.options.logger, effect);
      default:
        return unreachable(effect, "effect");
    }
  }

  private async writeConfirmed(): Promise<void> {
    try {
      while (this.pendingWrite) {
        const confirmed = this.pendingWrite;
        this.pendingWrite = null;
        try {
          await saveConfirmed(this.stateFile, confirmed);
        } catch (error) {
          // The next acknowledgement writes again; a restart in between costs a resync at most.
          this.options.logger.error({ err: error, file: this.stateFile }, "could not write the device sync state");
        }
      }
    } finally {
      this.writing = null;
    }
  }

  // ---- the one timer ----

  /** Arms the timer for the core's deadline or the next scan (only while connected), whichever is first. */
  private schedule(): void {
    if (this.closed || !this.core) return this.timer.cancel();
    const connected = this.core.phase !== "offline";
    const scan: Deadline<HostTimer> | null =
      connected && !this.scanning && this.nextScanAt !== null ? { timer: "scan", at: this.nextScanAt } : null;
    this.timer.arm(earliest<HostTimer>([nextDeadline(this.core), scan]));
  }

  private wake(due: Deadline<HostTimer>): void {
    switch (due.timer) {
      case "scan":
        // Scanning, the timer waits for the core's deadline only; the scan's end arms the next one.
        void this.rescan(false);
        return this.schedule();
      case "ack":
        return this.feed({ type: "timer", timer: "ack", now: this.now() });
      default:
        return unreachable(due.timer, "timer");
    }
  }
}
