// One logger factory for the agent and the control plane. JSON lines by default (what a
// service manager's journal wants), readable when stderr is a TTY. Redaction is compiled
// once by pino: any field that can hold a secret is censored wherever it appears.
import { pino, destination, type Logger, type DestinationStream } from "pino";
import { fstatSync } from "node:fs";
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
  /**
   * Start each JSON line with its syslog priority (`<3>` for an error...), which journald takes
   * off and records, so `journalctl -p err` finds errors. By default: when stderr is the
   * journal's stream (systemd sets JOURNAL_STREAM to its device and inode).
   */
  journalPriorities?: boolean;
}

/** pino's level numbers to syslog priorities (sd-daemon(3) prefixes). */
const SYSLOG_PRIORITY: Record<number, number> = { 10: 7, 20: 7, 30: 6, 40: 4, 50: 3, 60: 2 };

export function stderrIsTheJournal(env: NodeJS.ProcessEnv = process.env): boolean {
  if (!env.JOURNAL_STREAM) return false;
  try {
    const { dev, ino } = fstatSync(2);
    return env.JOURNAL_STREAM === `${dev}:${ino}`;
  } catch {
    return false;
  }
}

/** Prefixes a line with its priority; pino writes `{"level":N,...` first, so the level is at the start. */
export function withSyslogPriority(line: string): string {
  const level = /^\{"level":(\d+)/.exec(line)?.[1];
  return `<${SYSLOG_PRIORITY[Number(level)] ?? 6}>${line}`;
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
  const journal = options.journalPriorities ?? (!options.destination && stderrIsTheJournal());
  return pino(
    journal ? { ...base, hooks: { streamWrite: withSyslogPriority } } : base,
    options.destination ?? destination({ dest: 2, sync: true }),
  );
}
