// A real `runner start` child process, with its JSON log lines parsed as they come.
import { spawn, type ChildProcess } from "node:child_process";
import type { TestContext } from "node:test";
import { RUNNER_BIN } from "./cli.js";
import { onCleanup } from "./cleanup.js";

export interface LogLine {
  level: number;
  msg: string;
  [field: string]: unknown;
}

export interface DaemonProcess {
  child: ChildProcess;
  lines: LogLine[];
  stderr: () => string;
  /** Resolves with the first log line (already seen or to come) that matches. */
  waitForLog(match: (line: LogLine) => boolean, timeoutMs?: number): Promise<LogLine>;
  /** Resolves with the exit code (or 128+signal number when killed). */
  exited: Promise<number>;
  stop(signal?: NodeJS.Signals): Promise<number>;
}

export function startDaemon(
  t: TestContext,
  args: string[],
  env: Record<string, string> = {},
  bin: string = RUNNER_BIN,
): DaemonProcess {
  const child = spawn(process.execPath, [bin, "start", ...args], {
    env: { ...process.env, RUNNER_LOG_FORMAT: "json", ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  const lines: LogLine[] = [];
  const waiters: { match: (l: LogLine) => boolean; resolve: (l: LogLine) => void }[] = [];
  let raw = "";
  let partial = "";
  child.stderr!.on("data", (chunk: Buffer) => {
    raw += chunk.toString();
    partial += chunk.toString();
    const parts = partial.split("\n");
    partial = parts.pop() ?? "";
    for (const text of parts) {
      if (!text.trim()) continue;
      let line: LogLine;
      try {
        line = JSON.parse(text) as LogLine;
      } catch {
        line = { level: 0, msg: text };
      }
      lines.push(line);
      for (const waiter of [...waiters]) {
        if (waiter.match(line)) {
          waiters.splice(waiters.indexOf(waiter), 1);
          waiter.resolve(line);
        }
      }
    }
  });
  child.stdout!.resume();
  const signals: Record<string, number> = { SIGKILL: 9, SIGTERM: 15, SIGINT: 2 };
  const exited = new Promise<number>((resolve) =>
    child.on("exit", (code, signal) => resolve(code ?? 128 + (signals[signal ?? ""] ?? 0))),
  );
  onCleanup(t, () => {
    if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
  });
  return {
    child,
    lines,
    stderr: () => raw,
    exited,
    waitForLog(match, timeoutMs = 10_000) {
      const seen = lines.find(match);
      if (seen) return Promise.resolve(seen);
      return new Promise((resolve, reject) => {
        const timer = setTimeout(
          () => reject(new Error(`no matching log line within ${timeoutMs} ms; got:\n${raw}`)),
          timeoutMs,
        );
        waiters.push({ match, resolve: (l) => (clearTimeout(timer), resolve(l)) });
        void exited.then((code) => {
          clearTimeout(timer);
          reject(new Error(`the daemon exited (${code}) before a matching log line; got:\n${raw}`));
        });
      });
    },
    async stop(signal = "SIGTERM") {
      child.kill(signal);
      return exited;
    },
  };
}
