// One logger factory for the agent and the control plane. JSON lines by default (what a
// service manager's journal wants), readable when stderr is a TTY. Redaction is compiled
// once by pino: any field that can hold a secret is censored wherever it appears.
import { pino, destination, type Logger, type DestinationStream } from "pino";
import { createRequire } from "node:module";

export type { Logger };
export type LogFormat = "json" | "pretty" | "auto";
export type LogLevel = "trace" | "debug" | "info" | "warn" | "error" | "fatal" | "silent";

/** Field names that may carry a secret, at the top level or one or two levels down. */
const SECRET_FIELDS = ["credential", "token", "registrationToken", "adminToken", "authorization", "password", "secret"];
export const REDACT_PATHS = [
  ...SECRET_FIELDS,
  ...SECRET_FIELDS.map((f) => `*.${f}`),
  ...SECRET_FIELDS.map((f) => `*.*.${f}`),
  'headers["authorization"]',
  'req.headers["authorization"]',
];

export interface LoggerOptions {
  level?: LogLevel;
  format?: LogFormat;
  name?: string;
  /** Where lines go; stderr by default so that stdout stays for command output. */
  destination?: DestinationStream;
}

export function createLogger(options: LoggerOptions = {}): Logger {
  const format = options.format ?? "auto";
  const pretty = format === "pretty" || (format === "auto" && process.stderr.isTTY === true && !options.destination);
  const base = {
    level: options.level ?? "info",
    name: options.name ?? "runner",
    redact: { paths: REDACT_PATHS, censor: "[redacted]" },
    base: { pid: process.pid },
  };
  if (pretty) {
    // In-thread and synchronous: lines appear in order with command output, and at exit.
    // Required only here, so JSON logging (the daemon under a service manager) never loads it.
    const { PinoPretty } = createRequire(import.meta.url)("pino-pretty") as typeof import("pino-pretty");
    return pino(
      base,
      PinoPretty({ destination: 2, sync: true, colorize: process.stderr.isTTY === true, ignore: "pid,hostname" }),
    );
  }
  return pino(base, options.destination ?? destination({ dest: 2, sync: true }));
}
