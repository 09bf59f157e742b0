// Every setting, declared once: its flag, its environment variable, its config-file key, its
// default and its help text all come from this table. Precedence: flag > env > file > default.
import path from "node:path";
import { z } from "zod";
import { DEVICE_PROVIDER_NAMES, type DeviceProviderName } from "../devices/provider-names.js";
import { MAX_CAPACITY, handlerNameSchema } from "../protocol/common.js";
import { isProxyOff, parseProxyUrl } from "../net/proxy.js";

export interface SettingSpec<T> {
  /** The config-file key (camelCase). */
  key: string;
  /** The command-line flag, e.g. "--state-dir". */
  flag: string;
  /** The environment variable, always RUNNER_ + the key in SCREAMING_SNAKE_CASE. */
  env: string;
  help: string;
  /** Placeholder in help, e.g. "<dir>"; booleans have none. */
  arg?: string;
  /** Validates a value from the config file, and (after `fromString`) from a flag or env var. */
  schema: z.ZodType<T>;
  /** Turns a flag or env string into the value `schema` checks. */
  fromString: (raw: string) => unknown;
  /** The default; `undefined` means "worked out at run time" (help says how). */
  defaultValue: T | undefined;
  /** Shown in help when the default is computed. */
  defaultHelp?: string;
  /** The value may hold a password: no error message or carried unit argument repeats it. */
  secret?: boolean;
}

const text = (raw: string) => raw;
const bool = (raw: string) =>
  ["1", "true", "yes", "on"].includes(raw.toLowerCase())
    ? true
    : ["0", "false", "no", "off", ""].includes(raw.toLowerCase())
      ? false
      : raw;
const int = (raw: string) => (/^-?\d+$/.test(raw.trim()) ? Number(raw) : raw);
/** A worker limit: a whole number, where 0 (or "off" in a flag or env var) turns the limit off. */
const limit = (raw: string) => (raw.trim().toLowerCase() === "off" ? 0 : int(raw));
/** "name=/abs/path,other=/abs/path" → { name: "/abs/path", ... }; anything else is left for the schema to refuse. */
const handlerList = (raw: string) => {
  const entries = raw
    .split(",")
    .map((item) => item.trim())
    .filter((item) => item.length > 0);
  if (entries.some((item) => !item.includes("="))) return raw;
  return Object.fromEntries(
    entries.map((item) => [item.slice(0, item.indexOf("=")).trim(), item.slice(item.indexOf("=") + 1).trim()]),
  );
};

/**
 * "gpu,usb" → ["gpu", "usb"]; "none" → []. An empty flag (`--device-providers ""`) is left for
 * the schema to refuse: "none" is the way to say none (an empty env var counts as unset).
 */
const nameList = (raw: string) =>
  raw.trim().toLowerCase() === "none"
    ? []
    : raw.split(",").every((item) => item.trim() === "")
      ? raw
      : raw
          .split(",")
          .map((item) => item.trim())
          .filter((item) => item.length > 0);

type SpecInput<T> = Omit<SettingSpec<T>, "env"> & { env?: string };
/**
 * A setting's spec, typed by whether it has a default: the resolved settings (`Settings`) hold
 * a value for every setting with one, and may lack only those worked out at run time (which
 * config/normalize.ts works out, and whose help says how).
 */
function setting<T>(spec: SpecInput<T> & { defaultValue: T }): SettingSpec<T> & { defaultValue: T };
function setting<T>(
  spec: SpecInput<T> & { defaultValue: undefined; defaultHelp: string },
): SettingSpec<T> & { defaultValue: undefined };
function setting<T>(spec: SpecInput<T>): SettingSpec<T> {
  const env = "RUNNER_" + spec.key.replace(/[A-Z]/g, (c) => "_" + c).toUpperCase();
  return { ...spec, env: spec.env ?? env };
}

export const SETTINGS = {
  stateDir: setting<string>({
    key: "stateDir",
    flag: "--state-dir",
    arg: "<dir>",
    help: "where the runner keeps its registration, lock and outbox",
    schema: z.string().min(1),
    fromString: text,
    defaultValue: undefined,
    defaultHelp:
      "per platform: $XDG_STATE_HOME/runner (~/.local/state/runner), ~/Library/Application Support/runner/state, %LOCALAPPDATA%\\runner\\state; /var/lib/runner or /Library/Application Support/runner/state with --system",
  }),
  system: setting<boolean>({
    key: "system",
    flag: "--system",
    help: "use the system-wide config and state dirs (as a system service does)",
    schema: z.boolean(),
    fromString: bool,
    defaultValue: false,
  }),
  credentialStore: setting<"auto" | "keychain" | "file">({
    key: "credentialStore",
    flag: "--credential-store",
    arg: "<auto|keychain|file>",
    help: "where the runner credential is kept: the OS keychain, a 0600 file in the state dir, or auto (keychain when it works)",
    schema: z.enum(["auto", "keychain", "file"]),
    fromString: text,
    defaultValue: "auto",
  }),
  logLevel: setting<"trace" | "debug" | "info" | "warn" | "error" | "fatal" | "silent">({
    key: "logLevel",
    flag: "--log-level",
    arg: "<level>",
    help: "trace, debug, info, warn, error, fatal or silent",
    schema: z.enum(["trace", "debug", "info", "warn", "error", "fatal", "silent"]),
    fromString: text,
    defaultValue: "info",
  }),
  logFormat: setting<"auto" | "json" | "pretty">({
    key: "logFormat",
    flag: "--log-format",
    arg: "<auto|json|pretty>",
    help: "log lines as JSON, or readable; auto is readable on a terminal and JSON otherwise",
    schema: z.enum(["auto", "json", "pretty"]),
    fromString: text,
    defaultValue: "auto",
  }),
  machineId: setting<string>({
    key: "machineId",
    flag: "--machine-id",
    arg: "<id>",
    help: "the identity the host fingerprint is derived from (set it on cloned VMs that share /etc/machine-id)",
    schema: z.string().min(1).max(256),
    fromString: text,
    defaultValue: undefined,
    defaultHelp: "/etc/machine-id on Linux, IOPlatformUUID on macOS, MachineGuid on Windows, else the hostname",
  }),
  requestTimeoutMs: setting<number>({
    key: "requestTimeoutMs",
    flag: "--request-timeout-ms",
    arg: "<ms>",
    help: "how long one HTTP request to the control plane may take",
    schema: z.number().int().min(100).max(600_000),
    fromString: int,
    defaultValue: 10_000,
  }),
  proxy: setting<string>({
    key: "proxy",
    flag: "--proxy",
    arg: "<url|off>",
    help: "the HTTP proxy for the control plane (its API and its WebSocket), e.g. http://user:password@proxy:3128; wins over HTTPS_PROXY, HTTP_PROXY and NO_PROXY; off or none: connect directly, whatever they say",
    schema: z.string().superRefine((value, context) => {
      const parsed = isProxyOff(value) ? null : parseProxyUrl(value);
      if (typeof parsed === "string") context.addIssue({ code: z.ZodIssueCode.custom, message: parsed });
    }),
    fromString: text,
    defaultValue: undefined,
    defaultHelp: "from the environment: https_proxy/HTTPS_PROXY, http_proxy/HTTP_PROXY, no_proxy/NO_PROXY",
    secret: true,
  }),
  insecurePlaintext: setting<boolean>({
    key: "insecurePlaintext",
    flag: "--insecure-plaintext",
    help: "DANGEROUS: allow http:// and ws:// to a control plane that is not on loopback; credentials then cross the network unencrypted",
    schema: z.boolean(),
    fromString: bool,
    defaultValue: false,
  }),
  once: setting<boolean>({
    key: "once",
    flag: "--once",
    help: "start: take exactly one job, report it, unregister and exit 0 (an ephemeral runner for autoscaled machines)",
    schema: z.boolean(),
    fromString: bool,
    defaultValue: false,
  }),
  exitAfterIdle: setting<number>({
    key: "exitAfterIdle",
    flag: "--exit-after-idle",
    arg: "<s|off>",
    help: "start: exit 0 after this many seconds with no job running or held (for autoscalers; 0 or off: never)",
    schema: z.number().int().min(0).max(31_536_000),
    fromString: limit,
    defaultValue: 0,
  }),
  statusPort: setting<number>({
    key: "statusPort",
    flag: "--status-port",
    arg: "<port|off>",
    help: "start: also serve /healthz, /readyz, /status and /metrics on 127.0.0.1:<port> (always on the Unix socket status.sock in the state dir; 0 or off: no port)",
    schema: z.number().int().min(0).max(65_535),
    fromString: limit,
    defaultValue: 0,
  }),
  capacity: setting<number>({
    key: "capacity",
    flag: "--capacity",
    arg: "<n>",
    help: "how many jobs this runner runs at once",
    schema: z.number().int().min(1).max(MAX_CAPACITY),
    fromString: int,
    defaultValue: 1,
  }),
  drainTimeoutMs: setting<number>({
    key: "drainTimeoutMs",
    flag: "--drain-timeout-ms",
    arg: "<ms>",
    help: "on SIGTERM, how long running jobs may take to finish before they are cancelled (a second signal cancels at once)",
    schema: z
      .number()
      .int()
      .min(0)
      .max(24 * 3600 * 1000),
    fromString: int,
    defaultValue: 600_000,
  }),
  reconnectBaseMs: setting<number>({
    key: "reconnectBaseMs",
    flag: "--reconnect-base-ms",
    arg: "<ms>",
    help: "first reconnect delay ceiling; it doubles per failure, with full jitter",
    schema: z.number().int().min(1).max(600_000),
    fromString: int,
    defaultValue: 1_000,
  }),
  workerMaxRssMb: setting<number>({
    key: "workerMaxRssMb",
    flag: "--worker-max-rss-mb",
    arg: "<mb|off>",
    help: "soft memory limit: a worker whose RSS reaches it is replaced after its current job (0 or off: never)",
    schema: z
      .number()
      .int()
      .min(0)
      .max(1024 * 1024),
    fromString: limit,
    defaultValue: 1024,
  }),
  workerHardRssMb: setting<number>({
    key: "workerHardRssMb",
    flag: "--worker-hard-rss-mb",
    arg: "<mb|off>",
    help: "hard memory ceiling: a worker whose RSS reaches it is killed mid-job and the job fails with worker_memory_limit (0 or off: never)",
    schema: z
      .number()
      .int()
      .min(0)
      .max(1024 * 1024),
    fromString: limit,
    defaultValue: 2048,
  }),
  workDir: setting<string>({
    key: "workDir",
    flag: "--work-dir",
    arg: "<dir>",
    help: "where a command job without a cwd gets a fresh directory of its own, removed after the job (unless the job sets keepWorkDir)",
    schema: z.string().min(1),
    fromString: text,
    defaultValue: undefined,
    defaultHelp: "work/ in the state dir",
  }),
  minFreeDiskMb: setting<number>({
    key: "minFreeDiskMb",
    flag: "--min-free-disk-mb",
    arg: "<mb|off>",
    help: "reject new jobs while the work dir's file system has less free space than this (checked every 15 s; 0 or off: never)",
    schema: z.number().int().min(0).max(100_000_000),
    fromString: limit,
    defaultValue: 512,
  }),
  workerMaxFds: setting<number>({
    key: "workerMaxFds",
    flag: "--worker-max-fds",
    arg: "<n|off>",
    help: "a worker with this many open file descriptors is replaced after its current job (0 or off: never)",
    schema: z.number().int().min(0).max(100_000_000),
    fromString: limit,
    defaultValue: undefined,
    defaultHelp: "half of the process's RLIMIT_NOFILE soft limit, at most 65536",
  }),
  workerMaxAgeS: setting<number>({
    key: "workerMaxAgeS",
    flag: "--worker-max-age-s",
    arg: "<s|off>",
    help: "a worker older than this (less up to 10% jitter per worker) is replaced at its next job boundary (0 or off: never)",
    schema: z
      .number()
      .int()
      .min(0)
      .max(365 * 24 * 3600),
    fromString: limit,
    defaultValue: 3600,
  }),
  workerMaxJobs: setting<number>({
    key: "workerMaxJobs",
    flag: "--worker-max-jobs",
    arg: "<n|off>",
    help: "a worker that has run this many jobs is replaced (1: a fresh worker per job; 0 or off: never)",
    schema: z.number().int().min(0).max(1_000_000_000),
    fromString: limit,
    defaultValue: 0,
  }),
  handlers: setting<Record<string, string>>({
    key: "handlers",
    flag: "--handlers",
    arg: "<name=path,...>",
    help: "module job handlers: the name a job may ask for, mapped to the absolute path of the module that handles it",
    schema: z.record(
      handlerNameSchema,
      z.string().refine((file) => path.isAbsolute(file), "the module path must be absolute"),
    ),
    fromString: handlerList,
    defaultValue: {},
  }),
  reconnectCapMs: setting<number>({
    key: "reconnectCapMs",
    flag: "--reconnect-cap-ms",
    arg: "<ms>",
    help: "the longest reconnect delay",
    schema: z.number().int().min(1).max(3_600_000),
    fromString: int,
    defaultValue: 60_000,
  }),
  deviceProviders: setting<DeviceProviderName[]>({
    key: "deviceProviders",
    flag: "--device-providers",
    arg: "<list|none>",
    help: `which device providers scan this machine, comma-separated (${DEVICE_PROVIDER_NAMES.join(", ")}), or none`,
    schema: z.array(z.enum(DEVICE_PROVIDER_NAMES)),
    fromString: nameList,
    defaultValue: [...DEVICE_PROVIDER_NAMES],
  }),
  deviceScanIntervalMs: setting<number>({
    key: "deviceScanIntervalMs",
    flag: "--device-scan-interval-ms",
    arg: "<ms>",
    help: "how often the device inventory is scanned while connected, unless the control plane's welcome says otherwise",
    schema: z
      .number()
      .int()
      .min(1000)
      .max(24 * 3600 * 1000),
    fromString: int,
    defaultValue: 60_000,
  }),
  deviceRefreshMs: setting<number>({
    key: "deviceRefreshMs",
    flag: "--device-refresh-ms",
    arg: "<ms>",
    help: "an unchanged device is re-sent once its last confirmed sync is this old, so the control plane's last-seen stays fresh (the welcome may say otherwise)",
    schema: z
      .number()
      .int()
      .min(1000)
      .max(7 * 24 * 3600 * 1000),
    fromString: int,
    defaultValue: 600_000,
  }),
  deviceBatchSize: setting<number>({
    key: "deviceBatchSize",
    flag: "--device-batch-size",
    arg: "<n>",
    help: "at most this many device rows per batch (each batch is acknowledged before the next)",
    schema: z.number().int().min(1).max(1000),
    fromString: int,
    defaultValue: 100,
  }),
  deviceProviderTimeoutMs: setting<number>({
    key: "deviceProviderTimeoutMs",
    flag: "--device-provider-timeout-ms",
    arg: "<ms>",
    help: "a device provider that takes longer fails this scan (its last good rows are kept, marked stale)",
    schema: z.number().int().min(100).max(600_000),
    fromString: int,
    defaultValue: 10_000,
  }),
} as const;

export type SettingKey = keyof typeof SETTINGS;
type ValueOf<K extends SettingKey> = (typeof SETTINGS)[K] extends SettingSpec<infer T> ? T : never;
/** The settings whose default is worked out at run time (the spec's defaultValue is undefined). */
export type RunTimeDefaultKey = {
  [K in SettingKey]: (typeof SETTINGS)[K]["defaultValue"] extends undefined ? K : never;
}[SettingKey];
/** What the resolver returns: a value for every setting that has a default; the others may be unset. */
export type Settings = { [K in Exclude<SettingKey, RunTimeDefaultKey>]: ValueOf<K> } & {
  [K in RunTimeDefaultKey]: ValueOf<K> | undefined;
};
export type SettingSource = "flag" | "env" | "file" | "default";

/** The config file is the one setting that cannot live in the config file. */
export const CONFIG_FILE_FLAG = "--config";
export const CONFIG_FILE_ENV = "RUNNER_CONFIG";
