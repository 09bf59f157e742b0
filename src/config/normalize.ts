// From the resolved settings to what each part of the runner takes. The one place where the
// defaults worked out at run time are filled in (the state dir from the platform's dirs and
// --system; the worker fd limit from RLIMIT_NOFILE) and units are converted (MB → bytes,
// s → ms, 0 or "off" → null, the recycle policy's "no limit"). Pure: the caller
// (cli/context.ts) reads the platform, the environment, the home dir and the rlimit and passes
// them in. Every part gets a value for each of its settings: nothing downstream re-applies a
// default.
import path from "node:path";
import type { MachineConfig } from "../channel/machine.js";
import type { DeviceSyncSettings } from "../devices/index.js";
import type { ServiceInputs } from "../service/render.js";
import type { WorkerPoolOptions } from "../workers/parent/pool.js";
import type { RecycleLimits } from "../workers/parent/recycle-policy.js";
import { defaultSettings } from "./resolve.js";
import { defaultDirs, stateFiles, type StateFiles } from "./paths.js";
import type { Settings } from "./settings.js";
import { proxyConfig, type ProxyConfig } from "../net/proxy.js";

/** What the run-time defaults are worked out from. */
export interface RunTimeFacts {
  platform: NodeJS.Platform;
  env: Record<string, string | undefined>;
  home: string;
  /** The process's RLIMIT_NOFILE soft limit (workers/parent/rlimit.ts); forked workers inherit it. */
  rlimitNofile: number;
}

/** The settings with every run-time default filled in (machineId's is the host's own id: state/host.ts). */
export type NormalizedSettings = Omit<Settings, "stateDir" | "workDir" | "workerMaxFds"> & {
  /** Absolute. */
  stateDir: string;
  /** Absolute. */
  workDir: string;
  /** 0 is off (the pool's limits say null). */
  workerMaxFds: number;
};

/** What the channel machine's config takes from the settings; the rest is the runner's identity. */
export type ChannelSettings = Pick<
  MachineConfig,
  "capacity" | "reconnectBaseMs" | "reconnectCapMs" | "drainTimeoutMs" | "once" | "exitAfterIdleMs"
>;

/** What the worker pool takes from the settings. */
export type PoolSettings = Pick<WorkerPoolOptions, "size" | "limits" | "handlers">;

/** How the runner talks HTTP to its control plane (register, verify, repair, unregister; the channel's URL). */
export interface ControlPlaneAccess {
  requestTimeoutMs: number;
  insecurePlaintext: boolean;
  /** The proxy setting and the proxy variables of the environment: net/proxy.ts decides per URL. */
  proxy: ProxyConfig;
}

/** What `runner service` takes from the settings to render and install a unit. */
export type ServiceSettings = Pick<ServiceInputs, "system" | "stateDir" | "drainTimeoutMs">;

/** Whether the machine can take a job: the work dir's free space against its floor (null: no floor). */
export interface FitnessSettings {
  workDir: string;
  minFreeDiskBytes: number | null;
}

/** Where `runner start` serves its status endpoints: always the state dir's socket; a loopback port when asked. */
export interface StatusSettings {
  socketPath: string;
  /** null: no port (--status-port 0 or off). */
  port: number | null;
}

export interface RunnerConfig {
  settings: NormalizedSettings;
  fitness: FitnessSettings;
  files: StateFiles;
  controlPlane: ControlPlaneAccess;
  channel: ChannelSettings;
  pool: PoolSettings;
  /** The rlimit the default fd limit was worked out from (logged beside the pool's limits). */
  rlimitNofile: number;
  deviceSync: DeviceSyncSettings;
  service: ServiceSettings;
  status: StatusSettings;
}

export function normalizeSettings(settings: Settings, facts: RunTimeFacts): RunnerConfig {
  const stateDir = stateDirFor(settings, facts);
  const normalized: NormalizedSettings = {
    ...settings,
    stateDir,
    workDir: path.resolve(settings.workDir ?? stateFiles(stateDir).work),
    workerMaxFds: settings.workerMaxFds ?? defaultWorkerMaxFds(facts.rlimitNofile),
  };
  return {
    settings: normalized,
    fitness: { workDir: normalized.workDir, minFreeDiskBytes: limitOrOff(settings.minFreeDiskMb, MiB) },
    files: stateFiles(stateDir),
    controlPlane: {
      requestTimeoutMs: settings.requestTimeoutMs,
      insecurePlaintext: settings.insecurePlaintext,
      proxy: proxyConfig(settings.proxy, facts.env),
    },
    channel: channelSettings(settings),
    pool: poolSettings(normalized),
    rlimitNofile: facts.rlimitNofile,
    deviceSync: deviceSyncSettings(settings),
    service: { system: settings.system, stateDir, drainTimeoutMs: settings.drainTimeoutMs },
    status: { socketPath: stateFiles(stateDir).statusSocket, port: limitOrOff(settings.statusPort, 1) },
  };
}

/** --state-dir when given (made absolute), else the platform's state dir (the system one with --system). */
export function stateDirFor(
  settings: Pick<Settings, "stateDir" | "system">,
  facts: Omit<RunTimeFacts, "rlimitNofile">,
): string {
  const given = settings.stateDir ?? defaultDirs({ ...facts, system: settings.system }).stateDir;
  return path.resolve(given);
}

export function channelSettings(
  settings: Pick<
    Settings,
    "capacity" | "reconnectBaseMs" | "reconnectCapMs" | "drainTimeoutMs" | "once" | "exitAfterIdle"
  >,
): ChannelSettings {
  return {
    capacity: settings.capacity,
    reconnectBaseMs: settings.reconnectBaseMs,
    reconnectCapMs: settings.reconnectCapMs,
    drainTimeoutMs: settings.drainTimeoutMs,
    once: settings.once,
    exitAfterIdleMs: limitOrOff(settings.exitAfterIdle, 1000),
  };
}

/** No fd limit by default above this, however high RLIMIT_NOFILE is (containers often allow 1M). */
export const MAX_DEFAULT_WORKER_FDS = 65_536;

/**
 * The default fd limit: half the process's RLIMIT_NOFILE (a leak is caught with room to spare
 * before EMFILE, and a job that legitimately opens many files is not), at most
 * MAX_DEFAULT_WORKER_FDS, at least 1.
 */
export function defaultWorkerMaxFds(rlimitNofile: number): number {
  return Math.max(1, Math.min(Math.floor(rlimitNofile / 2), MAX_DEFAULT_WORKER_FDS));
}

/** --worker-max-age-s's help promises each worker's age limit is jittered down by up to 10%. */
export const WORKER_AGE_JITTER = 0.1;

const MiB = 1024 * 1024;

/** A worker limit setting in its unit, where 0 (a flag's "off" parses to 0) means off: null to the recycle policy. */
export function limitOrOff(value: number, unit: number): number | null {
  return value === 0 ? null : value * unit;
}

export type WorkerLimitSettings = Pick<
  NormalizedSettings,
  "workerMaxRssMb" | "workerHardRssMb" | "workerMaxFds" | "workerMaxAgeS" | "workerMaxJobs"
>;

/** The recycle limits: MB → bytes, s → ms, 0 → null. */
export function recycleLimits(settings: WorkerLimitSettings): RecycleLimits {
  return {
    maxRssBytes: limitOrOff(settings.workerMaxRssMb, MiB),
    hardRssBytes: limitOrOff(settings.workerHardRssMb, MiB),
    maxOpenFds: limitOrOff(settings.workerMaxFds, 1),
    maxAgeMs: limitOrOff(settings.workerMaxAgeS, 1000),
    ageJitter: WORKER_AGE_JITTER,
    maxJobs: limitOrOff(settings.workerMaxJobs, 1),
  };
}

/** The recycle limits the default settings give under a given RLIMIT_NOFILE (benchmarks and tests start from them). */
export function defaultRecycleLimits(rlimitNofile: number): RecycleLimits {
  return recycleLimits({ ...defaultSettings(), workerMaxFds: defaultWorkerMaxFds(rlimitNofile) });
}

export function poolSettings(
  settings: WorkerLimitSettings & Pick<NormalizedSettings, "capacity" | "handlers">,
): PoolSettings {
  return { size: settings.capacity, limits: recycleLimits(settings), handlers: settings.handlers };
}

export function deviceSyncSettings(
  settings: Pick<
    Settings,
    "deviceProviders" | "deviceScanIntervalMs" | "deviceRefreshMs" | "deviceBatchSize" | "deviceProviderTimeoutMs"
  >,
): DeviceSyncSettings {
  return {
    deviceProviders: settings.deviceProviders,
    deviceScanIntervalMs: settings.deviceScanIntervalMs,
    deviceRefreshMs: settings.deviceRefreshMs,
    deviceBatchSize: settings.deviceBatchSize,
    deviceProviderTimeoutMs: settings.deviceProviderTimeoutMs,
  };
}
