// Every setting, declared once: its flag, its environment variable, its config-file key, its
// default and its help text all come from this table. Precedence: flag > env > file > default.
import { z } from "zod";

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
}

const text = (raw: string) => raw;
const bool = (raw: string) => (["1", "true", "yes", "on"].includes(raw.toLowerCase()) ? true : ["0", "false", "no", "off", ""].includes(raw.toLowerCase()) ? false : raw);
const int = (raw: string) => (/^-?\d+$/.test(raw.trim()) ? Number(raw) : raw);

function setting<T>(spec: Omit<SettingSpec<T>, "env"> & { env?: string }): SettingSpec<T> {
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
    defaultHelp: "per platform: $XDG_STATE_HOME/runner, ~/Library/Application Support/runner, %LOCALAPPDATA%\\runner; system dirs with --system",
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
  insecurePlaintext: setting<boolean>({
    key: "insecurePlaintext",
    flag: "--insecure-plaintext",
    help: "DANGEROUS: allow http:// and ws:// to a control plane that is not on loopback; credentials then cross the network unencrypted",
    schema: z.boolean(),
    fromString: bool,
    defaultValue: false,
  }),
  capacity: setting<number>({
    key: "capacity",
    flag: "--capacity",
    arg: "<n>",
    help: "how many jobs this runner runs at once",
    schema: z.number().int().min(1).max(1024),
    fromString: int,
    defaultValue: 1,
  }),
  drainTimeoutMs: setting<number>({
    key: "drainTimeoutMs",
    flag: "--drain-timeout-ms",
    arg: "<ms>",
    help: "on SIGTERM, how long running jobs may take to finish before they are cancelled (a second signal cancels at once)",
    schema: z.number().int().min(0).max(24 * 3600 * 1000),
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
  reconnectCapMs: setting<number>({
    key: "reconnectCapMs",
    flag: "--reconnect-cap-ms",
    arg: "<ms>",
    help: "the longest reconnect delay",
    schema: z.number().int().min(1).max(3_600_000),
    fromString: int,
    defaultValue: 60_000,
  }),
} as const;

export type SettingKey = keyof typeof SETTINGS;
type ValueOf<K extends SettingKey> = (typeof SETTINGS)[K] extends SettingSpec<infer T> ? T : never;
export type Settings = { [K in SettingKey]: ValueOf<K> | undefined };
export type SettingSource = "flag" | "env" | "file" | "default";

/** The config file is the one setting that cannot live in the config file. */
export const CONFIG_FILE_FLAG = "--config";
export const CONFIG_FILE_ENV = "RUNNER_CONFIG";
